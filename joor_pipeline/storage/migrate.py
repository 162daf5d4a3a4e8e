"""Move data written before accounts existed into the ``default`` account: automatic, idempotent, crash-safe.

Before issue 12 the layout had no account level::

    raw/connections/snapshot_date=D/            ->  raw/connections/account=default/snapshot_date=D/
    parquet/<table>/snapshot_date=D/            ->  parquet/<table>/account=default/snapshot_date=D/
    _work/quarantine/snapshot_date=D/           ->  _work/quarantine/account=default/snapshot_date=D/

:func:`migrate_legacy_layout` runs at the start of every fetch, flatten and warehouse build. Each move is one
``rename`` of a directory (atomic on one file system), taken under the migration lock and under the old
layout's lock of that date (a process of the previous version writing that date is waited for: its date is
left for the next run). A crash between two renames leaves some dates moved and some not, and the next run
moves the rest; with nothing left to move it only lists a few directories. Parquet files written before the
``account`` column existed lack it in the file; readers take it from the ``account=default`` directory.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from pathlib import Path
from typing import Final

from joor_pipeline.config import DEFAULT_ACCOUNT
from joor_pipeline.joor.errors import JoorError
from joor_pipeline.storage.locks import LOCKS_DIR, WORK_DIR, account_key, release, try_flock

log = logging.getLogger(__name__)

_LEGACY_DATE_DIR: Final = re.compile(r"snapshot_date=\d{4}-\d{2}-\d{2}")
MIGRATION_LOCK: Final = LOCKS_DIR / "migration.lock"


class MigrationError(JoorError):
    """The old layout cannot be moved into the default account (both copies of a partition exist)."""


def _legacy_parents(data_dir: Path) -> list[Path]:
    """The directories that held ``snapshot_date=D`` directories directly in the old layout."""
    parents = [data_dir / "raw" / "connections", data_dir / WORK_DIR / "quarantine"]
    parquet = data_dir / "parquet"
    if parquet.is_dir():
        parents += sorted(path for path in parquet.iterdir() if path.is_dir())
    return parents


def legacy_partitions(data_dir: Path) -> list[Path]:
    """Every directory of the old layout still to be moved, sorted."""
    found: list[Path] = []
    for parent in _legacy_parents(data_dir):
        if parent.is_dir():
            found += [path for path in parent.iterdir() if _LEGACY_DATE_DIR.fullmatch(path.name) and path.is_dir()]
    return sorted(found)


def migrate_legacy_layout(data_dir: Path) -> list[Path]:
    """Move every old-layout partition under ``account=default``; the directories moved (their new paths).

    Cheap when there is nothing to move (a few directory listings, no lock). Logs one line when it moved
    something. Raises :class:`MigrationError` when a partition exists in both layouts (nothing is overwritten).
    """
    if not legacy_partitions(data_dir):
        return []
    lock_path = data_dir / MIGRATION_LOCK
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # two first runs at once: the second waits, then finds nothing left
        moved: list[Path] = []
        busy: list[str] = []
        for old in legacy_partitions(data_dir):
            new = old.parent / account_key(DEFAULT_ACCOUNT) / old.name
            # The previous version's lock of that date: a fetch or flatten of it may still be running.
            date_lock = try_flock(data_dir / LOCKS_DIR / f"{old.name}.lock")
            if date_lock is None:
                busy.append(str(old))
                continue
            try:
                if new.exists():
                    raise MigrationError(
                        f"cannot move {old} into the default account: {new} exists too; keep the one you want "
                        "and delete the other"
                    )
                new.parent.mkdir(parents=True, exist_ok=True)
                os.replace(old, new)
                fd = os.open(old.parent, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                moved.append(new)
            finally:
                release(date_lock)
    if moved:
        log.warning(
            "moved %d partition(s) of the single-account layout into account=%s (%s): a one-time migration",
            len(moved),
            DEFAULT_ACCOUNT,
            data_dir,
        )
    if busy:
        log.warning("left %d old-layout partition(s) being written by another process for the next run", len(busy))
    return moved

"""Bring a local data directory written by an older version to the current layout: once, automatically, crash-safe.

1. Before accounts existed the layout had no account level; that data moves into the ``default`` account::

       raw/connections/snapshot_date=D/            ->  raw/connections/account=default/snapshot_date=D/
       parquet/<table>/snapshot_date=D/            ->  parquet/<table>/account=default/snapshot_date=D/
       _work/quarantine/snapshot_date=D/           ->  _work/quarantine/account=default/snapshot_date=D/

2. Before manifests existed a partition was its ``part-00000.parquet``, ``part-00001.parquet``... files; each such
   folder gets the ``_manifest.json`` that lists them (a folder without one is never data).

Then ``_work/layout.json`` records that the layout is current, and :func:`migrate_legacy_layout` (run at the start
of every fetch, flatten and warehouse build) costs one ``stat`` from then on: a folder without a manifest met
later is a stray, ignored by every reader with a warning, never migrated into data. Each move is one ``rename``
of a directory (atomic on one file system), taken under the migration lock and under the old layout's lock of that
date (a process of the previous version writing that date is waited for: its date is left for the next run), and
each manifest an atomic write. A crash between two steps leaves whole partitions in one layout or the other, and
the next run does the rest. Parquet files written before the ``account`` column existed lack it in the file;
readers take it from the ``account=default`` directory. Only local disk ever had these layouts.
"""

from __future__ import annotations

import logging
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from joor_pipeline import layout
from joor_pipeline.joor.errors import JoorError
from joor_pipeline.layout import DEFAULT_ACCOUNT, SnapshotKey
from joor_pipeline.storage.durable import flocked, fsync_dir, release, try_flock, write_json_atomically
from joor_pipeline.storage.factory import store_of
from joor_pipeline.storage.local import LocalStore
from joor_pipeline.storage.store import LocalFiles

log = logging.getLogger(__name__)

_LEGACY_DATE_DIR: Final = re.compile(r"snapshot_date=\d{4}-\d{2}-\d{2}")
#: How the files of a partition were named before manifests existed.
_LEGACY_PART: Final = re.compile(r"part-\d{5}\.parquet")
#: The layout ``_work/layout.json`` records once the migrations are done.
LAYOUT_VERSION: Final = 2


class MigrationError(JoorError):
    """The old layout cannot be moved into the default account (both copies of a partition exist)."""


def _legacy_parents(data_dir: Path) -> list[Path]:
    """The directories that held ``snapshot_date=D`` directories directly in the old layout."""
    parents = [data_dir / layout.RAW / "connections", data_dir / layout.QUARANTINE]
    parquet = data_dir / layout.PARQUET
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


def unlisted_partitions(data_dir: Path) -> list[Path]:
    """Every Parquet partition folder with files of the pre-manifest naming and no manifest, sorted."""
    parquet = data_dir / layout.PARQUET
    if not parquet.is_dir():
        return []
    found = []
    for folder in sorted(parquet.glob("*/account=*/snapshot_date=*")):
        if layout.partition_of(folder.relative_to(data_dir).as_posix()) is None or (folder / layout.MANIFEST).exists():
            continue
        if any(_LEGACY_PART.fullmatch(path.name) for path in folder.iterdir()):
            found.append(folder)
    return found


def _write_manifest(data_dir: Path, folder: Path) -> None:
    """List a pre-manifest partition's files in the manifest it lacks (its id: its files' latest change, as the
    warehouse recorded it before)."""
    from joor_pipeline.storage.parquet import partition_manifest  # pyarrow, only when there is one to write

    found = layout.partition_of(folder.relative_to(data_dir).as_posix())
    assert found is not None, folder  # unlisted_partitions gives partition folders only
    account, day = found
    names = sorted(path.name for path in folder.iterdir() if _LEGACY_PART.fullmatch(path.name))
    publication_id = "legacy-" + str(max((folder / name).stat().st_mtime_ns for name in names))
    manifest = partition_manifest(folder, names, folder.parent.parent.name, SnapshotKey(account, day), publication_id)
    LocalStore(data_dir).write(layout.manifest(folder.relative_to(data_dir).as_posix()), manifest)


def migrate_legacy_layout(data_dir: Path) -> list[Path]:
    """Move every old-layout partition under ``account=default`` and write the manifests pre-manifest partitions
    lack; the directories moved (their new paths).

    One ``stat`` once the layout is current. Logs one line when it changed something. Raises
    :class:`MigrationError` when a partition exists in both layouts (nothing is overwritten).
    """
    marker = data_dir / layout.LAYOUT_MARKER
    if marker.is_file() or not isinstance(store_of(data_dir), LocalFiles):
        return []
    with flocked(data_dir / layout.MIGRATION_LOCK):  # two first runs at once: the second waits, then finds it done
        if marker.is_file():
            return []
        moved, busy = _move_legacy(data_dir)
        listed = unlisted_partitions(data_dir)
        for folder in listed:
            _write_manifest(data_dir, folder)
        if not busy:
            write_json_atomically(
                marker, {"layout": LAYOUT_VERSION, "migrated_at": datetime.now(UTC).isoformat(timespec="seconds")}
            )
    if moved:
        log.warning(
            "moved %d partition(s) of the single-account layout into account=%s (%s): a one-time migration",
            len(moved),
            DEFAULT_ACCOUNT,
            data_dir,
        )
    if listed:
        log.warning(
            "wrote the manifests of %d partition(s) written before manifests existed (%s): a one-time migration",
            len(listed),
            data_dir,
        )
    if busy:
        log.warning("left %d old-layout partition(s) being written by another process for the next run", len(busy))
    return moved


def _move_legacy(data_dir: Path) -> tuple[list[Path], list[str]]:
    moved: list[Path] = []
    busy: list[str] = []
    for old in legacy_partitions(data_dir):
        new = old.parent / layout.account_dir(DEFAULT_ACCOUNT) / old.name
        # The previous version's lock of that date: a fetch or flatten of it may still be running.
        date_lock = try_flock(data_dir / layout.LOCKS / f"{old.name}.lock")
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
            fsync_dir(old.parent)
            moved.append(new)
        finally:
            release(date_lock)
    return moved, busy

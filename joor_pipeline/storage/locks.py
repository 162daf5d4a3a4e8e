"""Advisory file locks under ``$JOOR_DATA_DIR/_work/locks/``: one run per snapshot date, and live staging owners.

Both are ``fcntl.flock`` locks on files that are never deleted (deleting a lock file races with a process about
to lock it). The kernel drops a flock when the last descriptor of its open file goes, so a SIGKILLed holder
frees it at once: no stale lock to clear by hand, and "can I lock it?" tells a live owner from a dead one.

Forked children (the flatten workers) would inherit the descriptors and with them the locks, keeping a dead
parent's lock alive for as long as an orphaned worker runs; a fork handler closes them in every child.

:func:`snapshot_lock` is re-entrant within one process (the CLI's ``run`` executes the fetch and the flatten
steps in-process, one after the other, and recovery needs to know which dates this process already holds).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import IO, Any, Final

from joor_pipeline.config import DEFAULT_ACCOUNT
from joor_pipeline.joor.errors import JoorError

__all__ = ["DEFAULT_ACCOUNT", "SnapshotBusy", "account_key", "of_account", "snapshot_lock"]

WORK_DIR: Final = Path("_work")
LOCKS_DIR: Final = WORK_DIR / "locks"


class SnapshotBusy(JoorError):
    """Another process holds the lock of this snapshot date."""


@dataclass
class _Held:
    handle: IO[bytes]
    depth: int
    #: With an object-store data directory, the date's lease object (see storage.objectstore), held with the flock.
    lease: Any = None


# (resolved lock path) -> the open, locked file of this process; closed in forked children.
_held: dict[Path, _Held] = {}
_owned: set[IO[bytes]] = set()
_guard = threading.Lock()


def _close_in_child() -> None:
    for handle in [*(held.handle for held in _held.values()), *_owned]:
        with suppress(OSError):
            handle.close()  # the parent's lock lives on through its own descriptor
    _held.clear()
    _owned.clear()


os.register_at_fork(after_in_child=_close_in_child)


def holder_description() -> dict[str, object]:
    """Who this process is, for lock and owner files (no environment, no argument that could hold a secret)."""
    command = " ".join(os.path.basename(arg) if i == 0 else arg for i, arg in enumerate(sys.argv[:4]))
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def describe_holder(path: Path) -> str:
    """The holder recorded in a lock or owner file, in words; 'another process' when it cannot be read."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {info['pid']} on {info['host']} ({info['command']!r}, since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def try_flock(path: Path) -> IO[bytes] | None:
    """``path`` opened and exclusively flocked without waiting, or None when another open file holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+b")  # noqa: SIM115 - the caller keeps it open as long as it holds the lock
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    except BaseException:
        handle.close()
        raise
    with _guard:
        _owned.add(handle)
    return handle


def release(handle: IO[bytes]) -> None:
    """Unlock and close a handle from :func:`try_flock`."""
    with _guard:
        _owned.discard(handle)
    try:
        fcntl.flock(handle, fcntl.LOCK_UN)
    finally:
        handle.close()


def write_holder(handle: IO[bytes]) -> None:
    """Record this process in a locked file, for the message another process gets."""
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(holder_description()).encode() + b"\n")
    handle.flush()


def of_account(account: str) -> str:
    """`` of account <name>`` for messages, nothing for the default account (the single-account wording)."""
    return "" if account == DEFAULT_ACCOUNT else f" of account {account}"


def account_key(account: str) -> str:
    """The hive directory name of an account: ``account=<name>``."""
    return f"account={account}"


def snapshot_lock_path(data_dir: Path, snapshot_date: date, *, account: str = DEFAULT_ACCOUNT) -> Path:
    """The lock file of one account's snapshot date."""
    return data_dir / LOCKS_DIR / account_key(account) / f"snapshot_date={snapshot_date.isoformat()}.lock"


def holds_snapshot_lock(data_dir: Path, snapshot_date: date, *, account: str = DEFAULT_ACCOUNT) -> bool:
    """True when this process holds the lock of ``snapshot_date`` of ``account``."""
    return snapshot_lock_path(data_dir, snapshot_date, account=account).resolve() in _held


@contextmanager
def snapshot_lock(data_dir: Path, snapshot_date: date, *, account: str = DEFAULT_ACCOUNT) -> Iterator[None]:
    """Hold the lock of one snapshot date for the block, or raise :class:`SnapshotBusy` at once.

    Fetch and flatten of a date take it, so two runs of one account's date never write the same snapshot;
    different dates and accounts run side by side. Re-entrant within this process.
    """
    path = snapshot_lock_path(data_dir, snapshot_date, account=account).resolve()
    with _guard:
        held = _held.get(path)
        if held is not None:
            held.depth += 1
    if held is None:
        handle = try_flock(path)
        if handle is None:
            raise SnapshotBusy(
                f"snapshot {snapshot_date.isoformat()}{of_account(account)} is busy: {describe_holder(path)} is "
                f"fetching or flattening "
                f"it (lock {path}); wait for it to finish, then try again"
            )
        write_holder(handle)
        try:
            lease = _store_lease(data_dir, snapshot_date, account)
        except BaseException:
            release(handle)
            raise
        held = _Held(handle, 1, lease)
        with _guard:
            _held[path] = held
    try:
        yield
    finally:
        with _guard:
            held.depth -= 1
            last = held.depth == 0
            if last:
                del _held[path]
        if last:
            try:
                if held.lease is not None:
                    held.lease.release()
            finally:
                release(held.handle)


def _store_lease(data_dir: Path, snapshot_date: date, account: str) -> Any:
    """On an object store, the date's lease object at the lock path (SnapshotBusy when live elsewhere)."""
    from joor_pipeline.storage.objectstore import acquire_lease, store_of

    store = store_of(data_dir)
    if store is None:
        return None
    rel = snapshot_lock_path(data_dir, snapshot_date, account=account).relative_to(data_dir).as_posix()
    return acquire_lease(store, rel, f"snapshot {snapshot_date.isoformat()}{of_account(account)}")


def held_lease(data_dir: Path, snapshot_date: date, *, account: str = DEFAULT_ACCOUNT) -> Any:
    """The store lease this process holds for ``snapshot_date`` (None on local disk or when not held)."""
    with _guard:
        held = _held.get(snapshot_lock_path(data_dir, snapshot_date, account=account).resolve())
    return None if held is None else held.lease

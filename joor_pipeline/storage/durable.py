"""Durability on local disk, written once: fsync of files and directories, atomic writes, and flock locks.

Every local write that must survive a power cut goes through here (the local store, staging, the migration, the
warehouse's publish, the Dagster home's creation lock). A file is complete on disk when :func:`write_durably`
returns; :func:`write_atomically` replaces a file so that a reader sees the old bytes or the new ones, and the
rename itself is durable once it returns.

Locks are ``fcntl.flock`` locks on files that are never deleted (deleting a lock file races with a process about
to lock it). The kernel drops a flock when the last descriptor of its open file goes, so a SIGKILLed holder frees
it at once. Forked children (flatten workers forked from a caller) would inherit the descriptors and with them the
locks, keeping a dead parent's lock alive as long as an orphan runs: a fork handler closes them in every child.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from joor_pipeline.joor.errors import JoorError


class LockTimeout(JoorError):
    """A flock was not free within the time allowed."""


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make the directory's entries (a rename, a new file) durable."""
    _fsync(path)


def fsync_file(path: Path) -> None:
    """Flush a file written without fsync (e.g. by pyarrow) to disk."""
    _fsync(path)


def write_durably(path: Path, data: bytes) -> None:
    """Write a file and flush it to disk before returning."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def scratch_name(path: Path) -> Path:
    """A hidden name beside ``path`` that no other process or thread uses at the same time."""
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` durably: readers see the old bytes or the new ones, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = scratch_name(path)
    try:
        write_durably(scratch, data)
        os.replace(scratch, path)
    except BaseException:
        scratch.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json_atomically(path: Path, value: Any) -> None:
    """:func:`write_atomically` of a JSON document (indented, one trailing newline)."""
    write_atomically(path, json.dumps(value, indent=2, ensure_ascii=False, default=str).encode() + b"\n")


def move_durably(source: Path, target: Path) -> None:
    """Move a file into place durably: its bytes flushed, then renamed (copied when on another file system)."""
    fsync_file(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != 18:  # EXDEV: the scratch directory is on another file system
            raise
        scratch = scratch_name(target)
        try:
            shutil.copyfile(source, scratch)
            fsync_file(scratch)
            os.replace(scratch, target)
        except BaseException:
            scratch.unlink(missing_ok=True)
            raise
        source.unlink()
    fsync_dir(target.parent)


# ---- flock -------------------------------------------------------------------------------------------------------

_owned: set[IO[bytes]] = set()
_guard = threading.Lock()


def _close_in_child() -> None:
    for handle in list(_owned):
        with suppress(OSError):
            handle.close()  # the parent's lock lives on through its own descriptor
    _owned.clear()


os.register_at_fork(after_in_child=_close_in_child)


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


@contextmanager
def flocked(path: Path, timeout: float | None = None) -> Iterator[IO[bytes]]:
    """Hold the flock of ``path`` for the block, waiting up to ``timeout`` seconds for it (None: as long as it
    takes); :class:`LockTimeout` when it is still held elsewhere by then."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.01
    while (handle := try_flock(path)) is None:
        if deadline is not None and time.monotonic() >= deadline:
            raise LockTimeout(f"{path} is locked by another process")
        time.sleep(pause)
        pause = min(pause * 2, 0.2)
    try:
        yield handle
    finally:
        release(handle)

"""The data on local disk: the :class:`~joor_pipeline.storage.store.Store` primitives as files under one directory.

- **write** is atomic and durable: a hidden scratch file beside the target, fsynced, renamed over it, the
  directory fsynced;
- **upload** moves the staged file into place (a rename from the scratch directory, ``data_dir/_work``, which is on
  the same file system; fsynced first, the directory after);
- **create** writes a scratch file and links it to the key (``link`` fails if the key exists: create-if-absent,
  and the object appears whole);
- **swap** holds a flock on the key's directory, compares the current content's digest with the expected version,
  and renames the new content over it; the version of an object is the sha256 of its bytes;
- **lock** is a flock on a lock file that is never deleted, freed by the kernel the moment its holder dies.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO

from joor_pipeline.storage.damaged import set_aside
from joor_pipeline.storage.durable import (
    fsync_dir,
    move_durably,
    release,
    scratch_name,
    try_flock,
    write_atomically,
    write_durably,
)
from joor_pipeline.storage.locks import describe_holder, holder_description
from joor_pipeline.storage.store import Conflict, SnapshotBusy, StoreError, Version

if TYPE_CHECKING:
    import duckdb

log = logging.getLogger(__name__)


def digest(data: bytes) -> Version:
    """The version of an object on local disk: the sha256 of its bytes."""
    return hashlib.sha256(data).hexdigest()


@dataclass
class _Flock:
    """A held flock: freed at release, or by the kernel when this process dies."""

    handle: IO[bytes] | None

    def check(self) -> None:
        """A flock cannot be lost while its descriptor is open."""

    def release(self) -> None:
        if self.handle is not None:
            release(self.handle)
            self.handle = None


class LocalStore:
    """One local directory holding the data (raw/, parquet/, joor.duckdb, _work/)."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self.url = str(self.root)

    def __repr__(self) -> str:
        return f"LocalStore({self.url!r})"

    def local_path(self, key: str) -> Path:
        """The file of ``key`` (checked as every store checks a key)."""
        parts = key.split("/")
        if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise StoreError(
                f"not a key of {self.url}: {key!r} (relative, '/'-separated, no empty, '.' or '..' segment)"
            )
        return self.root.joinpath(*parts)

    def uri(self, key: str) -> str:
        return f"{self.url}/{key}"

    def read(self, key: str) -> tuple[bytes, Version] | None:
        try:
            data = self.local_path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {self.uri(key)}: {exc.strerror or exc}") from None
        return data, digest(data)

    def version(self, key: str) -> Version | None:
        found = self.read(key)
        return None if found is None else found[1]

    def write(self, key: str, data: bytes) -> Version:
        write_atomically(self.local_path(key), data)
        return digest(data)

    def upload(self, key: str, source: Path) -> None:
        move_durably(source, self.local_path(key))

    def create(self, key: str, data: bytes) -> Version:
        target = self.local_path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = scratch_name(target)
        try:
            write_durably(scratch, data)
            try:
                os.link(scratch, target)
            except FileExistsError:
                raise Conflict(f"{self.uri(key)} exists already") from None
        finally:
            scratch.unlink(missing_ok=True)
        fsync_dir(target.parent)
        return digest(data)

    @contextmanager
    def _directory_locked(self, directory: Path) -> Iterator[None]:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # frees the flock

    def swap(self, key: str, data: bytes, expected: Version | None) -> Version:
        target = self.local_path(key)
        with self._directory_locked(target.parent):
            current = self.version(key)
            if current != expected:
                state = "exists" if expected is None else "is gone" if current is None else "changed"
                raise Conflict(f"{self.uri(key)} {state} since its version was read")
            write_atomically(target, data)
        return digest(data)

    def list(self, prefix: str) -> dict[str, int]:
        prefix = prefix.strip("/")
        base = self.local_path(prefix) if prefix else self.root
        found: dict[str, int] = {}
        for directory, _dirs, files in os.walk(base):
            for name in files:
                path = Path(directory, name)
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    continue  # deleted while listed
                found[path.relative_to(self.root).as_posix()] = size
        return dict(sorted(found.items()))

    def delete(self, keys: Iterable[str]) -> None:
        parents = set()
        for key in keys:
            path = self.local_path(key)
            path.unlink(missing_ok=True)
            parents.add(path.parent)
        for parent in parents:
            if parent.is_dir():
                fsync_dir(parent)

    def download(self, key: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = scratch_name(target)
        try:
            shutil.copyfile(self.local_path(key), scratch)
            os.replace(scratch, target)
        except BaseException:
            scratch.unlink(missing_ok=True)
            raise

    def lock(self, key: str, what: str) -> _Flock:
        path = self.local_path(key)
        handle = try_flock(path)
        if handle is None:
            try:
                holder = describe_holder(path.read_bytes())
            except OSError:
                holder = "another process"
            raise SnapshotBusy(f"{what} is busy: {holder} holds its lock {path}; wait for it to finish, then try again")
        try:
            handle.seek(0)
            previous = handle.read()
            if previous.strip() and describe_holder(previous) == "another process":
                set_aside(
                    self, key, previous, "was not a lock record (it does not parse) and was taken over", delete=False
                )
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(holder_description()).encode() + b"\n")
            handle.flush()
        except BaseException:
            release(handle)
            raise
        return _Flock(handle)

    def register(self, con: duckdb.DuckDBPyConnection) -> None:
        """Local paths need nothing."""

    def open(self, key: str) -> BinaryIO:
        return open(self.local_path(key), "rb")

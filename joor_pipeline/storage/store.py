"""The one interface under publication: what a place that keeps the data (a local directory, S3, GCS, Azure Blob
Storage) must do, and nothing more.

The publish mechanism (:mod:`~joor_pipeline.storage.publish`: stage locally, put the new files beside the live
ones under names no one else writes, create the journal, swap each target's manifest, finish, recover) is written
once on these primitives; every reader resolves a partition through its manifest with :meth:`Store.read`. No
module outside ``storage/`` asks which backend it runs on. A backend is opened by
:func:`~joor_pipeline.storage.factory.open_data_dir` (its URL scheme registered in ``factory.BACKENDS``); an object
store's :meth:`Store.lock` is :func:`~joor_pipeline.storage.lease.acquire`, written on these primitives too.

Keys are ``/``-separated paths relative to the data directory's root (built by :mod:`joor_pipeline.layout`),
never absolute, never with ``.`` or ``..`` segments; ``uri(key)`` is always ``f"{url}/{key}"``. A :data:`Version`
is opaque: an ETag (S3, Azure), a generation (GCS), a digest of the content (local disk). Two reads of an
unchanged object give the same version; a write of other bytes changes it.

Errors: :class:`StoreError` names the object's URL and the operation, never a credential. :class:`Conflict` is a
conditional write that lost (the object exists, or changed since its version was read). A missing object is
``None`` from :meth:`Store.read` and :meth:`Store.version`, ``FileNotFoundError`` from :meth:`Store.download`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol, runtime_checkable

from joor_pipeline.joor.errors import JoorError

if TYPE_CHECKING:
    import duckdb

#: An object's version, as the backend spells it (opaque to everything above the store).
Version = str


class StoreError(JoorError):
    """The store refused or failed a request (named, with the object's URL; never a credential)."""


class Conflict(StoreError):
    """A conditional write lost: the object exists already, or changed since its version was read."""


class SnapshotBusy(JoorError):
    """Another live process holds the lock of what this process wanted to write."""


@runtime_checkable
class Held(Protocol):
    """A lock (local disk: a flock) or lease (object stores: an object renewed by its live holder) this process
    holds; released exactly once."""

    def check(self) -> None:
        """Raise :class:`SnapshotBusy` if the lock was lost (a lease taken over after it expired)."""

    def release(self) -> None:
        """Give it up (a lease is deleted only if it is still this holder's)."""


@runtime_checkable
class LocalFiles(Protocol):
    """What a store that keeps its objects as local files offers beside :class:`Store` (the local disk): readers
    that need a local file (DuckDB's warehouse, the flatten's raw pages) use the object's own file, no copy."""

    def local_path(self, key: str) -> Path:
        """The object's file."""


@runtime_checkable
class Store(Protocol):
    """The primitives of one data directory's storage."""

    #: Where the data lives, for messages: an absolute path or ``s3://bucket/prefix`` (``gs://``, ``az://``; never a
    #: credential).
    url: str

    def uri(self, key: str) -> str:
        """The key as DuckDB opens it once :meth:`register` ed: ``f"{url}/{key}"`` (a local path, or ``s3://``,
        ``gs://``, ``az://``...)."""

    def read(self, key: str) -> tuple[bytes, Version] | None:
        """The object's bytes and version; None when there is none."""

    def version(self, key: str) -> Version | None:
        """The object's version without its bytes; None when there is none."""

    def write(self, key: str, data: bytes) -> Version:
        """Write unconditionally and durably (for names no other writer uses: the publication id is in them)."""

    def upload(self, key: str, source: Path) -> None:
        """Put a local file at ``key`` durably. ``source`` is the caller's staged copy and may be consumed (the
        local backend renames it into place)."""

    def create(self, key: str, data: bytes) -> Version:
        """Create the object only if it does not exist (:class:`Conflict` otherwise): a commit point."""

    def swap(self, key: str, data: bytes, expected: Version | None) -> Version:
        """Replace the object only if its version is still ``expected`` (None: only if it does not exist);
        :class:`Conflict` otherwise. Readers see the old bytes or the new ones, never a mix."""

    def list(self, prefix: str) -> dict[str, int]:
        """Every key under ``prefix/`` (recursively) with its size in bytes, in key order. For writers' clean-up,
        for finding manifests and for checking listed files' sizes; readers never take a listing as the list of a
        partition's files."""

    def delete(self, keys: Iterable[str]) -> None:
        """Delete the objects; a key that is already gone is not an error."""

    def download(self, key: str, target: Path) -> None:
        """A local copy of the object at ``target``, written atomically (``FileNotFoundError`` if absent)."""

    def lock(self, key: str, what: str) -> Held:
        """Hold the lock at ``key`` for ``what`` (words for messages), or raise :class:`SnapshotBusy` at once
        naming the live holder. A holder that dies frees it: at once on local disk, once its lease expires on an
        object store (an expired or unreadable lease is taken over, with one warning)."""

    def register(self, con: duckdb.DuckDBPyConnection) -> None:
        """Let a DuckDB connection read this store's :meth:`uri` s (nothing to do on local disk)."""

    def open(self, key: str) -> BinaryIO:
        """A seekable binary file over the object, for pyarrow."""

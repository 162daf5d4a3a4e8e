"""How code above ``storage/`` reaches the store's objects, whatever the backend: DuckDB and pyarrow readers, and
local copies for what must be a local file (the warehouse DuckDB opens, the raw pages the flatten workers read).

A local store's objects already are local files, used in place; another store's are downloaded into the local
work directory, again only when their version changed.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final

from joor_pipeline import layout
from joor_pipeline.storage.factory import store_of, stores
from joor_pipeline.storage.locks import hold_alone
from joor_pipeline.storage.store import LocalFiles, Store

if TYPE_CHECKING:
    import duckdb
    import pyarrow.parquet as pq

#: Downloads in flight at once.
TRANSFER_THREADS: Final = 16


def register(con: duckdb.DuckDBPyConnection, data_dir: Path) -> None:
    """Let a DuckDB connection read the data directory's :func:`uri` s."""
    store_of(data_dir).register(con)


@contextmanager
def exclusive(data_dir: Path, key: str, what: str, *, wait: float | None) -> Iterator[None]:
    """Hold the data directory's lock ``key`` for the block, alone (a second holder in this process waits too),
    waiting up to ``wait`` seconds for it (None: as long as it takes); ``SnapshotBusy`` naming the holder then."""
    with hold_alone(store_of(data_dir), key, what, wait=wait):
        yield


def location(data_dir: Path) -> str:
    """Where the data directory's data lives, for messages: its path, or its store's URL."""
    return store_of(data_dir).url


def uri(data_dir: Path, key: str) -> str:
    """Where a key of the data directory is, as DuckDB opens it and as messages show it."""
    return store_of(data_dir).uri(key)


def open_uri(location: str | Path) -> BinaryIO:
    """A file that one of this process's stores gave the URI of (or a local file: a staged one)."""
    text = str(location)
    for store in stores():
        if text.startswith(store.url + "/"):
            return store.open(text[len(store.url) + 1 :])
    return open(text, "rb")


def parquet_file(location: str | Path) -> pq.ParquetFile:
    """A Parquet file by its URI (see :func:`open_uri`)."""
    import pyarrow.parquet as pq

    text = str(location)
    if "://" not in text:
        return pq.ParquetFile(text)  # a local file: pyarrow opens (and closes) it itself
    return pq.ParquetFile(open_uri(text))


def _own_file(store: Store, key: str) -> Path | None:
    """The object's own file when the store keeps its objects as local files."""
    return store.local_path(key).resolve() if isinstance(store, LocalFiles) else None


def pull(data_dir: Path, key: str, local: Path) -> bool:
    """Make ``local`` hold the object ``key`` (downloaded only when its version changed); False when there is
    none (then ``local`` is removed too: a stale copy must not stand in for a missing object). Nothing to do when
    ``local`` is the object's own file (local disk)."""
    store = store_of(data_dir)
    if _own_file(store, key) == local.resolve():
        return local.is_file()
    tag = local.with_name(local.name + ".version")
    version = store.version(key)
    if version is None:
        local.unlink(missing_ok=True)
        tag.unlink(missing_ok=True)
        return False
    if local.is_file() and tag.is_file() and tag.read_text(encoding="utf-8") == version:
        return True
    local.parent.mkdir(parents=True, exist_ok=True)
    store.download(key, local)
    tag.write_text(version, encoding="utf-8")
    return True


def push(data_dir: Path, local: Path, key: str) -> None:
    """Publish ``local`` as the object ``key`` (readers see the old object or the new one), keeping ``local`` as
    the copy :func:`pull` finds current (unless the store consumed it). Nothing to do when ``local`` is the
    object's own file."""
    store = store_of(data_dir)
    if _own_file(store, key) == local.resolve():
        return
    tag = local.with_name(local.name + ".version")
    tag.unlink(missing_ok=True)
    store.upload(key, local)
    version = store.version(key)
    if version is not None and local.is_file():  # an object store reads the upload's source, never consumes it
        tag.write_text(version, encoding="utf-8")


def local_folder(data_dir: Path, folder: str, sizes: Mapping[str, int | None], publication_id: str) -> Path:
    """A local directory holding the files ``sizes`` names (by name) of the published ``folder``: the folder
    itself on local disk, else a copy downloaded once per publication into ``_work/store-cache/`` (a file missing
    from the store stays missing: the reader names it)."""
    store = store_of(data_dir)
    own = _own_file(store, folder)
    if own is not None:
        return own
    base = data_dir / layout.STORE_CACHE / folder
    target = base / (publication_id or "unknown")
    target.mkdir(parents=True, exist_ok=True)
    for other in base.iterdir():  # other publications of the same folder: superseded
        if other.name != target.name:
            shutil.rmtree(other, ignore_errors=True)
    wanted = [
        name for name, size in sizes.items() if not (target / name).is_file() or (target / name).stat().st_size != size
    ]

    def one(name: str) -> None:
        with suppress(FileNotFoundError):
            store.download(f"{folder}/{name}", target / name)

    if wanted:
        with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
            list(pool.map(one, wanted))
    return target

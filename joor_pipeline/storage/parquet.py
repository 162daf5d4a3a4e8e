"""The published Parquet tables, read through their manifests, the same way on every backend.

Layout (keys of :mod:`joor_pipeline.layout`)::

    parquet/<table>/account=<name>/snapshot_date=YYYY-MM-DD/part-00000-<publication id>.parquet  (one per worker)
                                                            _manifest.json                       (the switch)

``account`` and ``snapshot_date`` are stored in the files as well as in the directory names, so a file read on its
own still says which snapshot it belongs to; DuckDB's ``read_parquet(..., hive_partitioning = true)`` gives one
``account`` and one ``snapshot_date DATE`` column either way.

**Readers go through the manifest.** Each partition's ``_manifest.json`` lists its files (name, rows, bytes,
sha256) and the publication id: :func:`published_files` returns exactly those, each checked against the size it
was published with, so a file copied into the folder by hand is never read, a list is never stale, and the files
of a publication not yet switched in (they sit beside the live ones for the seconds of a publish) are never seen.
A folder without a manifest is never data: it is ignored with one warning (data written before manifests existed
gets its manifests from the one-time migration, :mod:`~joor_pipeline.storage.migrate`). A damaged manifest or a
file that does not match it is reported by name, with the way out: flatten that date again.

The flatten that writes these tables is :mod:`joor_pipeline.flatten.runner`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from joor_pipeline import layout
from joor_pipeline.joor.errors import JoorError
from joor_pipeline.layout import DEFAULT_ACCOUNT, SnapshotKey
from joor_pipeline.storage.access import parquet_file
from joor_pipeline.storage.durable import write_durably
from joor_pipeline.storage.factory import store_of
from joor_pipeline.storage.local import LocalStore
from joor_pipeline.storage.store import Store

log = logging.getLogger(__name__)


class DamagedPartition(JoorError):
    """A published partition's files do not match its manifest (truncated, deleted or unreadable)."""


def way_out(key: SnapshotKey) -> str:
    """How to rewrite a snapshot's tables from its raw snapshot."""
    option = f" --account {key.account}" if key.account != DEFAULT_ACCOUNT else ""
    return f"flatten that date again to rewrite it: joor-pipeline flatten{option} --date {key.snapshot_date}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def partition_manifest(
    directory: Path, names: Sequence[str], table: str, key: SnapshotKey, publication_id: str
) -> bytes:
    """The manifest of a partition whose files (``names``, in row order) are in ``directory``."""
    files = [
        {
            "name": name,
            "rows": pq.ParquetFile(directory / name).metadata.num_rows,
            "bytes": (directory / name).stat().st_size,
            "sha256": _sha256(directory / name),
        }
        for name in names
    ]
    manifest = {
        "table": table,
        "account": key.account,
        "snapshot_date": key.snapshot_date.isoformat(),
        "publication_id": publication_id,
        "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": sum(int(f["rows"]) for f in files),  # type: ignore[call-overload]
        "files": files,
    }
    return json.dumps(manifest, indent=2).encode() + b"\n"


def write_partition_manifest(directory: Path, table: str, key: SnapshotKey, publication_id: str) -> None:
    """List a staged partition's part files, in row order, in its ``_manifest.json``."""
    names = sorted(path.name for path in directory.glob("part-*.parquet"))
    write_durably(directory / layout.MANIFEST, partition_manifest(directory, names, table, key, publication_id))


def _manifest(store: Store, folder: str, key: SnapshotKey) -> dict[str, Any] | None:
    """A partition's manifest; None when there is none (no partition)."""
    found = store.read(layout.manifest(folder))
    if found is None:
        return None
    where = store.uri(layout.manifest(folder))
    try:
        manifest = json.loads(found[0])
    except ValueError as exc:
        raise DamagedPartition(f"cannot read {where}: {exc}; {way_out(key)}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise DamagedPartition(f"{where} has no list of files; {way_out(key)}")
    return manifest


def _files(store: Store, table: str, key: SnapshotKey) -> list[str]:
    """The URIs of a partition's files, in row order, from its manifest, each checked against its size."""
    folder = layout.table_partition(table, key)
    manifest = _manifest(store, folder, key)
    if manifest is None:
        return []
    sizes = store.list(folder)
    files: list[str] = []
    for entry in manifest["files"]:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".parquet"):
            raise DamagedPartition(f"{store.uri(layout.manifest(folder))} lists {name!r}; {way_out(key)}")
        file = f"{folder}/{name}"
        size = sizes.get(file)
        if size is None:
            raise DamagedPartition(f"{store.uri(file)} is missing (its manifest lists it); {way_out(key)}")
        if size != entry.get("bytes"):
            raise DamagedPartition(
                f"{store.uri(file)} is damaged: {size} bytes where {entry.get('bytes')} were published; {way_out(key)}"
            )
        files.append(store.uri(file))
    return files


def published_manifest(data_dir: Path, table: str, key: SnapshotKey) -> dict[str, Any] | None:
    """One published partition's manifest (its files, rows, publication id and ``published_at``); None when the
    partition is not published. :class:`DamagedPartition` when it does not parse."""
    return _manifest(store_of(data_dir), layout.table_partition(table, key), key)


def published_files(data_dir: Path, table: str, key: SnapshotKey) -> list[str]:
    """Exactly the files of one published partition, in row order, as DuckDB and :func:`partition_rows` open them
    (local paths, or ``s3://``... URIs): never a stray file, never a stale list."""
    return _files(store_of(data_dir), table, key)


def staged_files(root: Path, table: str, key: SnapshotKey) -> list[str]:
    """The files of one table's partition staged under a local Parquet root (laid out as published)."""
    return _files(LocalStore(root.parent), table, key)


_warned: set[str] = set()
_warned_guard = threading.Lock()


def _listed_partitions(store: Store, table: str, prefix: str) -> set[tuple[str, date]]:
    """(account, date) of every partition folder of ``table`` under ``prefix`` that holds a manifest; the others
    are warned about."""
    published: set[tuple[str, date]] = set()
    other: set[str] = set()
    for key in store.list(prefix):
        folder, _, name = key.rpartition("/")
        found = layout.partition_of(folder)
        if found is None or folder != layout.table_partition(table, SnapshotKey(*found)):
            continue
        if name == layout.MANIFEST:
            published.add(found)
        else:
            other.add(folder)
    unpublished = sorted(folder for folder in other if layout.partition_of(folder) not in published)
    with _warned_guard:
        new = [folder for folder in unpublished if store.uri(folder) not in _warned]
        _warned.update(store.uri(folder) for folder in new)
    if new:
        log.warning(
            "ignored %d folder(s) without a %s: not published data (files copied by hand, a first publication "
            "still on its way or killed, or data of an older version, which the next fetch, flatten or build "
            "migrates once): %s",
            len(new),
            layout.MANIFEST,
            ", ".join(store.uri(folder) for folder in new[:5]) + (" ..." if len(new) > 5 else ""),
        )
    return published


def published_partitions(data_dir: Path, table: str = "connections") -> list[tuple[str, date]]:
    """Every published (account, snapshot date) of ``table``, sorted."""
    prefix = layout.table_dir(table)
    return sorted(_listed_partitions(store_of(data_dir), table, prefix))


def published_dates(data_dir: Path, table: str = "connections", *, account: str) -> list[date]:
    """Dates with a published partition of ``table`` for ``account``, oldest first."""
    prefix = f"{layout.table_dir(table)}/{layout.account_dir(layout.check_account(account))}"
    return sorted(
        day for found_account, day in _listed_partitions(store_of(data_dir), table, prefix) if found_account == account
    )


def publication_id(data_dir: Path, key: SnapshotKey) -> str | None:
    """An id that changes every time the snapshot's partitions are (re)published; None if unpublished.

    All ten tables of a snapshot are published together and carry the same id; the connections table's is
    returned.
    """
    manifest = _manifest(store_of(data_dir), layout.table_partition("connections", key), key)
    if manifest is None or not manifest.get("publication_id"):
        return None
    return str(manifest["publication_id"])


def partition_rows(files: Sequence[str | Path]) -> int:
    """Rows in some Parquet files (from their footers); a damaged file is named, with the way out."""
    rows = 0
    for path in files:
        try:
            rows += parquet_file(path).metadata.num_rows
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            found = layout.partition_of(str(Path(path).parent))
            hint = way_out(SnapshotKey(*found)) if found else "flatten that date again to rewrite it"
            raise DamagedPartition(f"{path} cannot be read ({exc}); {hint}") from None
    return rows

"""What a data directory holds, snapshot by snapshot: every raw snapshot and every date's Parquet partitions, with
their files and bytes, found by listing the store (for ``joor-pipeline prune``; readers never list).

One listing of ``raw/connections/`` and one of ``parquet/``, whatever the number of dates. A snapshot is
*published* when its manifest is there (the raw snapshot's; for the Parquet, the ``connections`` table's, as
:func:`~joor_pipeline.storage.parquet.published_partitions` says); a folder without one is listed too, unpublished,
so that nothing is counted twice or missed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Final

from joor_pipeline import layout
from joor_pipeline.layout import SnapshotKey
from joor_pipeline.storage.factory import store_of

RAW: Final = "raw"
PARQUET: Final = "parquet"
#: The table whose manifest says a date's Parquet is published (all ten are published together).
MAIN_TABLE: Final = "connections"


@dataclass(frozen=True)
class StoredSnapshot:
    """One account's date of one kind (``raw``: its pages; ``parquet``: the partitions of every table)."""

    key: SnapshotKey
    kind: str
    published: bool
    #: The folders (``layout.raw_snapshot`` or ``layout.table_partition`` keys) that hold it.
    targets: tuple[str, ...]
    files: int
    bytes: int


def stored_snapshots(data_dir: Path, dataset: str = "connections") -> list[StoredSnapshot]:
    """Every raw snapshot and Parquet date of every account in the store, by account, date and kind."""
    store = store_of(data_dir)
    found: dict[tuple[str, date, str], dict[str, dict[str, int]]] = {}
    raw_prefix = f"{layout.RAW}/{dataset}"
    for prefix, kind in ((raw_prefix, RAW), (layout.PARQUET, PARQUET)):
        for name, size in store.list(prefix).items():
            folder = name.rpartition("/")[0]
            partition = layout.partition_of(folder)
            if partition is None:
                continue
            key = SnapshotKey(*partition, dataset)
            expected = (
                layout.raw_snapshot(key)
                if kind == RAW
                else layout.table_partition(folder.split("/")[1] if folder.count("/") == 3 else "", key)
            )
            if folder != expected:
                continue  # not at a partition's exact depth
            found.setdefault((*partition, kind), {}).setdefault(folder, {})[name] = size
    snapshots = []
    for (account, day, kind), folders in sorted(found.items()):
        key = SnapshotKey(account, day, dataset)
        main = layout.raw_snapshot(key) if kind == RAW else layout.table_partition(MAIN_TABLE, key)
        published = layout.manifest(main) in folders.get(main, {})
        sizes = [size for files in folders.values() for size in files.values()]
        snapshots.append(StoredSnapshot(key, kind, published, tuple(sorted(folders)), len(sizes), sum(sizes)))
    return snapshots


def accounts_in(snapshots: Sequence[StoredSnapshot]) -> list[str]:
    """The accounts that have a published snapshot of either kind."""
    return sorted({snapshot.key.account for snapshot in snapshots if snapshot.published})

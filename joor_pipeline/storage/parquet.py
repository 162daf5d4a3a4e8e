"""Flatten one raw snapshot into partitioned Parquet and swap it in all at once.

Layout::

    $JOOR_DATA_DIR/parquet/<table>/snapshot_date=YYYY-MM-DD/part-00000.parquet    (all ten tables, always)
                                                            part-00001.parquet    (one per flatten worker)

``snapshot_date`` is stored in the files as well as in the directory name, so a file read on its own still
says which snapshot it belongs to; DuckDB's ``read_parquet(..., hive_partitioning = true)`` gives one
``snapshot_date DATE`` column either way (the partition value wins when both are present, and they agree).

The pages are written by :mod:`~joor_pipeline.storage.parts` (one part file per table), shared out between
processes by :mod:`~joor_pipeline.storage.workers`. If two workers kept the same connection (pages that
overlap across the cut, which JOOR's offset pagination makes rare), the snapshot is flattened again in one
process, so the first occurrence wins as always. Everything is written to ``parquet/.staging-<uuid>/`` first;
only when all ten tables are complete are the partition directories renamed into place (the old ones renamed
aside first, then deleted). A failure before that leaves the previous partitions untouched and removes the
staging directory. A re-run of the same raw snapshot with the same number of workers writes byte-identical
Parquet.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Final

from joor_pipeline.flatten import TABLES, FlattenStats
from joor_pipeline.storage.atomic import staging_dir
from joor_pipeline.storage.parts import PART_FILE, flatten_part, partition_path
from joor_pipeline.storage.raw import read_raw_snapshot
from joor_pipeline.storage.workers import flatten_parallel, flatten_workers, overlapping, split_pages

PARQUET_DIR: Final = Path("parquet")


FlattenProgress = Callable[[int, int, int], None]
"""Called after each page with (pages done, pages in the snapshot, connections read so far)."""


@dataclass(frozen=True)
class FlattenReport:
    """What one flatten wrote and what it saw."""

    snapshot_date: date
    format: str
    pages: int
    rows: dict[str, int]
    stats: FlattenStats
    #: Each table's partition directory (its ``part-*.parquet`` files, see :func:`partition_parquet_files`).
    paths: dict[str, Path]
    #: Processes that wrote the partition (one file each per table).
    workers: int
    duration_seconds: float

    @property
    def connections(self) -> int:
        """Connections written (after deduplication)."""
        return self.rows["connections"]


def partition_dir(data_dir: Path, table: str, snapshot_date: date) -> Path:
    """The directory of one table's partition for one snapshot."""
    return partition_path(data_dir / PARQUET_DIR, table, snapshot_date)


def parquet_path(data_dir: Path, table: str, snapshot_date: date) -> Path:
    """The first Parquet file of one table's partition (the only one when a single worker wrote it)."""
    return partition_dir(data_dir, table, snapshot_date) / PART_FILE


def partition_parquet_files(data_dir: Path, table: str, snapshot_date: date) -> list[Path]:
    """Every Parquet file of one table's partition, in row order (``part-00000.parquet`` first)."""
    return sorted(partition_dir(data_dir, table, snapshot_date).glob("part-*.parquet"))


def _swap_in(new_root: Path, trash: Path, data_dir: Path, snapshot_date: date) -> None:
    """Rename every new partition into place, or none: a failed rename puts back what was already moved."""
    trash.mkdir(parents=True, exist_ok=True)
    moved_aside: list[tuple[Path, Path]] = []  # (partition, where its previous content went)
    moved_in: list[tuple[str, Path]] = []
    try:
        for table in TABLES:
            target = partition_dir(data_dir, table, snapshot_date)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                old = trash / f"{table}.old"
                os.replace(target, old)
                moved_aside.append((target, old))
            os.replace(partition_path(new_root, table, snapshot_date), target)
            moved_in.append((table, target))
    except BaseException:
        for table, target in reversed(moved_in):
            os.replace(target, trash / f"{table}.new")
        for target, old in reversed(moved_aside):
            os.replace(old, target)
        raise


def flatten_snapshot(
    data_dir: Path,
    snapshot_date: date,
    *,
    progress: FlattenProgress | None = None,
    workers: int | None = None,
) -> FlattenReport:
    """Flatten the raw snapshot of ``snapshot_date`` into the ten Parquet tables, replacing them atomically.

    ``workers`` processes share the pages (see :func:`flatten_workers`; None picks the default, 1 flattens in
    this process). ``progress`` is called in this process after each page, whichever worker flattened it.
    """
    clock = time.monotonic()
    snapshot = read_raw_snapshot(data_dir, snapshot_date)
    total = len(snapshot.pages)
    parts = flatten_workers(workers, total)
    done = connections = 0

    def on_page(count: int) -> None:
        nonlocal done, connections
        done += 1
        connections += count
        if progress is not None:
            progress(done, total, connections)

    with staging_dir(data_dir / PARQUET_DIR) as staging:
        new_root = staging / "new"
        parts_stats: list[FlattenStats] = []
        if parts > 1:
            reports = flatten_parallel(snapshot, split_pages(snapshot.pages, parts), new_root, snapshot_date, on_page)
            if overlapping(reports):
                # A connection repeated across two workers' pages: only one process can keep the first.
                shutil.rmtree(new_root)
                done = connections = 0
            else:
                parts_stats = [report.stats for report in reports]
        if not parts_stats:
            parts_stats = [flatten_part(snapshot, snapshot.pages, new_root, snapshot_date, 0, on_page).stats]
        _swap_in(new_root, staging / "trash", data_dir, snapshot_date)
    stats = FlattenStats()
    for part_stats in parts_stats:
        stats.merge(part_stats)
    return FlattenReport(
        snapshot_date=snapshot_date,
        format=snapshot.format,
        pages=total,
        rows=dict(stats.rows),
        stats=stats,
        paths={table: partition_dir(data_dir, table, snapshot_date) for table in TABLES},
        workers=len(parts_stats),
        duration_seconds=time.monotonic() - clock,
    )


# provisional: replaced by the publish mechanism
_PARTITION_NAME: Final = "snapshot_date="


def published_files(data_dir: Path, table: str, snapshot_date: date) -> list[Path]:
    """Exactly the files of one published partition, in row order (provisional: the part files by name)."""
    return partition_parquet_files(data_dir, table, snapshot_date)


def published_dates(data_dir: Path, table: str = "connections") -> list[date]:
    """Dates with a published partition of ``table``, oldest first (provisional: partition directories)."""
    root = data_dir / PARQUET_DIR / table
    found: list[date] = []
    for directory in root.glob(f"{_PARTITION_NAME}*"):
        try:
            day = date.fromisoformat(directory.name.removeprefix(_PARTITION_NAME))
        except ValueError:
            continue
        if partition_parquet_files(data_dir, table, day):
            found.append(day)
    return sorted(found)


def publication_id(data_dir: Path, snapshot_date: date) -> str | None:
    """An id that changes whenever the snapshot is republished (provisional: the newest file's mtime and inode)."""
    files = [path for table in TABLES for path in partition_parquet_files(data_dir, table, snapshot_date)]
    if not files:
        return None
    stats = [path.stat() for path in files]
    return f"{max(s.st_mtime_ns for s in stats)}-{sum(s.st_ino for s in stats)}"

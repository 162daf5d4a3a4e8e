"""Write one run of raw pages as one ``part-<k>.parquet`` file of every table (one process's share of a flatten).

Memory stays flat with the snapshot's size: each page is checked against the manifest's sha256 and parsed,
pages are flattened together in batches of about :data:`BATCH_CONNECTIONS` connections, and the rows are
buffered only until a row group's worth is ready for each table's ``ParquetWriter``. Nothing time-dependent
goes into the files, so the same pages always give byte-identical Parquet.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.parquet as pq

from joor_pipeline.flatten import TABLES, FlattenStats, arrow_schema, conflicting_repeats, flatten_pages
from joor_pipeline.flatten.flatten import decode_records, is_record
from joor_pipeline.flatten.recount import RawTally
from joor_pipeline.joor.parse import Canonical
from joor_pipeline.layout import account_dir
from joor_pipeline.storage.raw import RawPageEntry, RawSnapshot, read_page

#: Name of worker ``k``'s file in every partition.
PART_FILE_PATTERN: Final = "part-{:05d}.parquet"
#: The first (with one worker, the only) file of a partition.
PART_FILE: Final = PART_FILE_PATTERN.format(0)
#: Rows per Parquet row group: large enough for good compression and pruning, small enough that ten tables'
#: buffers stay small. Each worker buffers up to this many rows per table, so it sets how memory grows with a
#: snapshot: two workers flattening 200,000 connections peak near 300 MB together (PSS), against about 270 MB
#: at 20,000, most of it the libraries loaded. 32,768 rows cost about 35 MB more at 200,000, no faster.
ROW_GROUP_ROWS: Final = 16_384
COMPRESSION: Final = "zstd"
#: No dictionary pages: zstd already folds the repeats they would save, and the files come out smaller and
#: about a fifth faster to write (measured on the sandbox's tables).
USE_DICTIONARY: Final = False
#: Pages are flattened together until they hold this many connections: fewer, larger Arrow conversions are
#: about a fifth faster than one page of 100 at a time, and a batch of 500 parsed connections is still small.
BATCH_CONNECTIONS: Final = 500
#: Pages a worker's typed decoder may decline (they are then decoded again, into dicts) before it stops trying.
MAX_DECLINED: Final = 3
#: Free-text columns get no min/max statistics: nothing prunes on an address's min and max, and computing them
#: is a fifth of the write. Ids, numbers, dates, booleans and the customer_code keep theirs.
STATISTICS_TEXT_COLUMNS: Final = frozenset({"customer_code"})


def _statistics_columns(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema if not pa.types.is_string(f.type) or f.name in STATISTICS_TEXT_COLUMNS]


def partition_path(root: Path, table: str, snapshot_date: date, *, account: str) -> Path:
    """``<root>/<table>/account=<name>/snapshot_date=YYYY-MM-DD``: one table's partition under a Parquet root."""
    return root / table / account_dir(account) / f"snapshot_date={snapshot_date.isoformat()}"


class _TableWriters:
    """One ParquetWriter per table, each fed through a buffer that flushes whole row groups."""

    def __init__(self, root: Path, snapshot_date: date, part: int, account: str) -> None:
        self.paths: dict[str, Path] = {}
        self.writers: dict[str, pq.ParquetWriter] = {}
        self.buffers: dict[str, list[pa.Table]] = {}
        self.buffered: dict[str, int] = {}
        for table in TABLES:
            path = partition_path(root, table, snapshot_date, account=account) / PART_FILE_PATTERN.format(part)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.paths[table] = path
            schema = arrow_schema(table)
            self.writers[table] = pq.ParquetWriter(
                path,
                schema,
                compression=COMPRESSION,
                use_dictionary=USE_DICTIONARY,
                write_statistics=_statistics_columns(schema),
            )
            self.buffers[table] = []
            self.buffered[table] = 0

    def write(self, tables: dict[str, pa.Table]) -> None:
        """Buffer one page's tables; write out every table that has a row group's worth."""
        for name, table in tables.items():
            if table.num_rows:
                self.buffers[name].append(table)
                self.buffered[name] += table.num_rows
                if self.buffered[name] >= ROW_GROUP_ROWS:
                    self._flush(name)

    def _flush(self, name: str) -> None:
        if self.buffers[name]:
            merged = pa.concat_tables(self.buffers[name])
            self.writers[name].write_table(merged, row_group_size=ROW_GROUP_ROWS)
            self.buffers[name] = []
            self.buffered[name] = 0

    def close(self) -> None:
        """Write what is buffered and finish every file (a table with no rows still gets its schema)."""
        for name in TABLES:
            self._flush(name)
            self.writers[name].close()

    def abort(self) -> None:
        """Close every file without caring about its content (staging is deleted next)."""
        for writer in self.writers.values():
            # The error that got us here is the one worth raising, not a second one from a half-written file.
            with contextlib.suppress(Exception):
                writer.close()


@dataclass
class PartResult:
    """What one run of pages (one worker's, or the whole snapshot's) wrote."""

    stats: FlattenStats
    #: The customer_account_ids it kept (its pages' dedup; and the check that no two workers kept the same one).
    kept: set[int] = field(default_factory=set)
    #: The audit's recount of the same pages, counted as they were read, before (and apart from) the flatten;
    #: None when not asked for.
    tally: RawTally | None = None


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: a flatten makes no reference cycles (parsed pages are trees of dicts
    and lists, freed by reference counting as soon as a page is done), yet its millions of allocations would
    set off collection after collection that free nothing: about a tenth of the flatten's time, measured."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def flatten_part(
    snapshot: RawSnapshot,
    entries: Sequence[RawPageEntry],
    root: Path,
    snapshot_date: date,
    part: int,
    on_page: Callable[[int], None],
    *,
    recount: bool = False,
    account: str,
) -> PartResult:
    """Flatten ``entries`` in order into ``part-<part>.parquet`` of every table under ``root``; with ``recount``,
    also tally the raw pages for the audit (:class:`~joor_pipeline.flatten.recount.RawTally`)."""
    result = PartResult(FlattenStats(), tally=RawTally() if recount else None)
    tally = result.tally
    writers = _TableWriters(root, snapshot_date, part, account)
    pending: list[tuple[list[Canonical], int, str | None]] = []
    repeated: set[int] = set()
    declined = 0

    def flush() -> None:
        batch = flatten_pages(pending, snapshot_date=snapshot_date, seen_account_ids=result.kept, account=account)
        sizes = [len(connections) for connections, _, _ in pending]
        pending.clear()  # free the parsed pages before the writers take memory of their own
        writers.write(batch.tables)
        result.stats.merge(batch.stats)
        repeated.update(batch.repeated_ids)
        for size in sizes:
            on_page(size)

    try:
        with _gc_paused():
            for entry in entries:
                # Clean JSON pages are decoded straight into records; after a few pages that are not (a field
                # JOOR added, say), the rest go straight to the dict parser rather than be decoded twice.
                records = decode_records if declined < MAX_DECLINED else None
                connections, log_id = read_page(snapshot.directory, entry, snapshot.format, records=records)
                if records is not None and connections and not is_record(connections[0]):
                    declined += 1
                if tally is not None:
                    tally.add(connections)
                pending.append((connections, entry.page, log_id))
                if sum(len(connections) for connections, _, _ in pending) >= BATCH_CONNECTIONS:
                    flush()
            if pending:
                flush()
        if repeated:
            pages = (read_page(snapshot.directory, entry, snapshot.format)[0] for entry in entries)
            found = conflicting_repeats((c for connections in pages for c in connections), repeated)
            result.stats.conflicting_duplicates = found
    except BaseException:
        writers.abort()
        raise
    writers.close()
    return result

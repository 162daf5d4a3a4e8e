"""Flatten one raw snapshot into partitioned Parquet, a few pages at a time, and swap it in all at once.

Layout::

    $JOOR_DATA_DIR/parquet/<table>/snapshot_date=YYYY-MM-DD/part-00000.parquet    (all ten tables, always)
                                                            part-00001.parquet    (one per flatten worker)

``snapshot_date`` is stored in the files as well as in the directory name, so a file read on its own still
says which snapshot it belongs to; DuckDB's ``read_parquet(..., hive_partitioning = true)`` gives one
``snapshot_date DATE`` column either way (the partition value wins when both are present, and they agree).

Memory stays flat with the snapshot's size: each page is checked against the manifest's sha256 and parsed,
pages are flattened together in batches of about :data:`BATCH_CONNECTIONS` connections, and the rows are
buffered only until a row group's worth is ready for each table's ``ParquetWriter``.

Parallel: a snapshot of many pages is cut into contiguous runs of pages, one per worker process (forked, on
Linux; ``workers`` or ``JOOR_FLATTEN_WORKERS``, by default one per usable core). Worker ``k`` writes
``part-0000k.parquet`` of every table, so reading a partition's files in name order gives the rows in page
order, exactly as one process would have written them. Each worker drops the connections repeated within its
pages; if a connection kept by one worker was also kept by another (pages that overlap across the cut, which
JOOR's offset pagination makes rare), the snapshot is flattened again in one process, so the first occurrence
wins as always. Everything is written to
``parquet/.staging-<uuid>/`` first; only when all ten tables are complete are the partition directories
renamed into place (the old ones renamed aside first, then deleted). A failure before that leaves the previous
partitions untouched and removes the staging directory. Nothing time-dependent goes into the files, so a
re-run of the same raw snapshot with the same number of workers writes byte-identical Parquet.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import multiprocessing
import multiprocessing.queues
import os
import pickle
import queue
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from joor_pipeline.flatten import TABLES, FlattenStats, arrow_schema, flatten_pages
from joor_pipeline.joor.errors import PayloadError
from joor_pipeline.joor.parse import Canonical, parse_page
from joor_pipeline.storage.atomic import staging_dir
from joor_pipeline.storage.raw import SnapshotNotFound, raw_snapshot_dir, read_manifest

PARQUET_DIR: Final = Path("parquet")
#: Name of worker ``k``'s file in every partition.
PART_FILE_PATTERN: Final = "part-{:05d}.parquet"
#: The first (with one worker, the only) file of a partition.
PART_FILE: Final = PART_FILE_PATTERN.format(0)
#: Forking is how workers start (they inherit the loaded libraries, so starting one costs milliseconds); only
#: Linux forks safely, elsewhere the flatten runs in one process.
CAN_FORK: Final = sys.platform == "linux" and "fork" in multiprocessing.get_all_start_methods()
#: The default number of workers is the usable cores, at most this many...
MAX_DEFAULT_WORKERS: Final = 8
#: ...and at most one per this many pages (a small snapshot is not worth a second process).
MIN_PAGES_PER_WORKER: Final = 8
#: A worker reports after every batch of pages (milliseconds of work each); this long without a word from any
#: running worker means one is stuck, and the flatten fails rather than wait forever.
WORKER_SILENCE_SECONDS: Final = 300.0
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
#: Free-text columns get no min/max statistics: nothing prunes on an address's min and max, and computing them
#: is a fifth of the write. Ids, numbers, dates, booleans and the customer_code keep theirs.
STATISTICS_TEXT_COLUMNS: Final = frozenset({"customer_code"})


def _statistics_columns(schema: pa.Schema) -> list[str]:
    return [f.name for f in schema if not pa.types.is_string(f.type) or f.name in STATISTICS_TEXT_COLUMNS]


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


@dataclass(frozen=True)
class RawPageEntry:
    """One page as the raw snapshot's manifest lists it."""

    page: int
    file: str
    log_id: str | None
    sha256: str | None


@dataclass(frozen=True)
class _RawSnapshot:
    directory: Path
    format: str
    pages: list[RawPageEntry]


def _partition(root: Path, table: str, snapshot_date: date) -> Path:
    return root / table / f"snapshot_date={snapshot_date.isoformat()}"


def partition_dir(data_dir: Path, table: str, snapshot_date: date) -> Path:
    """The directory of one table's partition for one snapshot."""
    return _partition(data_dir / PARQUET_DIR, table, snapshot_date)


def parquet_path(data_dir: Path, table: str, snapshot_date: date) -> Path:
    """The first Parquet file of one table's partition (the only one when a single worker wrote it)."""
    return partition_dir(data_dir, table, snapshot_date) / PART_FILE


def partition_parquet_files(data_dir: Path, table: str, snapshot_date: date) -> list[Path]:
    """Every Parquet file of one table's partition, in row order (``part-00000.parquet`` first)."""
    return sorted(partition_dir(data_dir, table, snapshot_date).glob("part-*.parquet"))


def flatten_workers(requested: int | None, pages: int) -> int:
    """How many processes flatten a snapshot of ``pages`` pages.

    ``requested`` None picks the default: the usable cores (at most :data:`MAX_DEFAULT_WORKERS`), and no more
    than one per :data:`MIN_PAGES_PER_WORKER` pages. An explicit number is used as is, capped at one per page.
    Where processes cannot be forked it is always 1.
    """
    if requested is not None and requested < 1:
        raise ValueError(f"flatten workers must be at least 1, got {requested}")
    if not CAN_FORK or pages <= 1:
        return 1
    if requested is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return max(1, min(cores, MAX_DEFAULT_WORKERS, pages // MIN_PAGES_PER_WORKER))
    return min(requested, pages)


def _raw_snapshot(data_dir: Path, snapshot_date: date) -> _RawSnapshot:
    """A complete raw snapshot's format and pages, from its manifest, checked enough to trust names and order."""
    raw_dir = raw_snapshot_dir(data_dir, snapshot_date)
    manifest = read_manifest(data_dir, snapshot_date)

    def broken(reason: str) -> SnapshotNotFound:
        return SnapshotNotFound(f"raw snapshot {raw_dir} has an unusable _manifest.json: {reason}")

    if not isinstance(manifest, dict):
        raise broken("it is not a JSON object")
    if manifest.get("snapshot_date", snapshot_date.isoformat()) != snapshot_date.isoformat():
        raise broken(f"it is for snapshot_date {manifest.get('snapshot_date')!r}")
    fmt = manifest.get("format")
    if fmt not in ("json", "xml"):
        raise broken(f"format is {fmt!r}, expected 'json' or 'xml'")
    pages = manifest.get("pages")
    if not isinstance(pages, list):
        raise broken("'pages' is not a list")
    entries: list[RawPageEntry] = []
    for index, page in enumerate(pages):
        if not isinstance(page, dict):
            raise broken(f"pages[{index}] is not an object")
        number, file, log_id, sha = page.get("page"), page.get("file"), page.get("log_id"), page.get("sha256")
        if type(number) is not int or not isinstance(file, str) or Path(file).name != file or file in ("", ".."):
            raise broken(f"pages[{index}] needs an integer 'page' and a plain file name 'file'")
        entries.append(
            RawPageEntry(
                page=number,
                file=file,
                log_id=log_id if isinstance(log_id, str) and log_id else None,
                sha256=sha if isinstance(sha, str) and sha else None,
            )
        )
    return _RawSnapshot(raw_dir, fmt, entries)


def _read_page(raw_dir: Path, entry: RawPageEntry, fmt: str) -> tuple[list[Canonical], str | None]:
    """One landed page's connections and log_id; a PayloadError names the file and its log_id."""
    path = raw_dir / entry.file
    try:
        body = path.read_bytes()
    except FileNotFoundError:
        raise SnapshotNotFound(
            f"raw snapshot {raw_dir} is incomplete: {entry.file} is in the manifest but not on disk"
        ) from None
    if entry.sha256 is not None and hashlib.sha256(body).hexdigest() != entry.sha256:
        raise PayloadError("page differs from the sha256 in the manifest", source=str(path), log_id=entry.log_id)
    try:
        page = parse_page(body, fmt, source=str(path), canonical=False)
    except PayloadError as exc:
        if exc.log_id is None and entry.log_id is not None:
            # The body carried no log_id (it may not even parse); the fetch recorded one in the manifest.
            raise PayloadError(exc.message, source=exc.source, log_id=entry.log_id) from None
        raise
    log_id = page.response.log_id or entry.log_id
    if page.response.code != 0:
        raise PayloadError(
            f"response.code is {page.response.code} ({page.response.comment!r})", source=str(path), log_id=log_id
        )
    return page.connections, log_id


def _pages(snapshot: _RawSnapshot) -> Iterator[tuple[RawPageEntry, list[Canonical], str | None]]:
    for entry in snapshot.pages:
        connections, log_id = _read_page(snapshot.directory, entry, snapshot.format)
        yield entry, connections, log_id


def iter_raw_pages(data_dir: Path, snapshot_date: date) -> Iterator[tuple[RawPageEntry, list[Canonical], str | None]]:
    """Each page of a complete raw snapshot in manifest order: its entry, connections and log_id.

    JSON connections come as parsed (native leaves, see ``parse_json(canonical=False)``), XML ones canonical.

    One page is read at a time. Errors are those of :func:`flatten_snapshot`: ``SnapshotNotFound`` for a missing
    or unusable manifest or page file, ``PayloadError`` (naming the file and log_id) for a page that is not a
    JOOR envelope or does not match its sha256.
    """
    yield from _pages(_raw_snapshot(data_dir, snapshot_date))


class _TableWriters:
    """One ParquetWriter per table, each fed through a buffer that flushes whole row groups."""

    def __init__(self, root: Path, snapshot_date: date, part: int = 0) -> None:
        self.paths: dict[str, Path] = {}
        self.writers: dict[str, pq.ParquetWriter] = {}
        self.buffers: dict[str, list[pa.Table]] = {}
        self.buffered: dict[str, int] = {}
        for table in TABLES:
            path = _partition(root, table, snapshot_date) / PART_FILE_PATTERN.format(part)
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
            os.replace(_partition(new_root, table, snapshot_date), target)
            moved_in.append((table, target))
    except BaseException:
        for table, target in reversed(moved_in):
            os.replace(target, trash / f"{table}.new")
        for target, old in reversed(moved_aside):
            os.replace(old, target)
        raise


@dataclass
class _PartResult:
    """What one run of pages (one worker's, or the whole snapshot's) wrote."""

    stats: FlattenStats
    #: The customer_account_ids it kept (its pages' dedup; and the check that no two workers kept the same one).
    kept: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class _WorkerReport:
    """What a worker sends home: its stats, and the customer_account_ids it kept as one int64 array (8 bytes
    each, where the set costs a Python int and a slot each: tens of MB in the parent at 200,000)."""

    stats: FlattenStats
    kept_ids: pa.Array


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


def _flatten_part(
    snapshot: _RawSnapshot,
    entries: Sequence[RawPageEntry],
    root: Path,
    snapshot_date: date,
    part: int,
    on_page: Callable[[int], None],
) -> _PartResult:
    """Flatten ``entries`` in order into ``part-<part>.parquet`` of every table under ``root``."""
    result = _PartResult(FlattenStats())
    writers = _TableWriters(root, snapshot_date, part)
    pending: list[tuple[list[Canonical], int, str | None]] = []

    def flush() -> None:
        batch = flatten_pages(pending, snapshot_date=snapshot_date, seen_account_ids=result.kept)
        sizes = [len(connections) for connections, _, _ in pending]
        pending.clear()  # free the parsed pages before the writers take memory of their own
        writers.write(batch.tables)
        result.stats.merge(batch.stats)
        for size in sizes:
            on_page(size)

    try:
        with _gc_paused():
            for entry in entries:
                connections, log_id = _read_page(snapshot.directory, entry, snapshot.format)
                pending.append((connections, entry.page, log_id))
                if sum(len(connections) for connections, _, _ in pending) >= BATCH_CONNECTIONS:
                    flush()
            if pending:
                flush()
    except BaseException:
        writers.abort()
        raise
    writers.close()
    return result


def _split(entries: Sequence[RawPageEntry], parts: int) -> list[Sequence[RawPageEntry]]:
    """``entries`` cut into ``parts`` contiguous runs whose lengths differ by at most one."""
    size, extra = divmod(len(entries), parts)
    runs, start = [], 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        runs.append(entries[start:end])
        start = end
    return runs


def _describe(entries: Sequence[RawPageEntry]) -> str:
    return f"pages {entries[0].page}-{entries[-1].page}" if entries else "no pages"


# Messages from a worker: (worker index, kind, payload).
_PAGE, _DONE, _FAILED = "page", "done", "failed"


def _worker(
    index: int,
    snapshot: _RawSnapshot,
    entries: Sequence[RawPageEntry],
    root: Path,
    snapshot_date: date,
    messages: multiprocessing.queues.Queue[tuple[int, str, object]],
) -> None:
    """A forked worker: flatten its pages, report each page and then the result (or the error)."""
    try:
        result = _flatten_part(
            snapshot, entries, root, snapshot_date, index, lambda count: messages.put((index, _PAGE, count))
        )
        messages.put((index, _DONE, _WorkerReport(result.stats, pa.array(list(result.kept), type=pa.int64()))))
    except BaseException as exc:  # the parent re-raises it; nothing may be lost on the way
        exc.add_note(f"(in flatten worker {index}, {_describe(entries)})")
        try:
            # The queue pickles in a background thread, where a failure would only be printed: try it here.
            pickle.dumps(exc)
            failure: BaseException = exc
        except Exception:
            failure = RuntimeError(f"{type(exc).__name__}: {exc} (in flatten worker {index}, {_describe(entries)})")
        messages.put((index, _FAILED, failure))


def _flatten_parallel(
    snapshot: _RawSnapshot,
    runs: list[Sequence[RawPageEntry]],
    root: Path,
    snapshot_date: date,
    on_page: Callable[[int], None],
) -> list[_WorkerReport]:
    """Flatten each run of pages in its own forked process; the first failure stops them all and is raised."""
    context = multiprocessing.get_context("fork")
    messages: multiprocessing.queues.Queue[tuple[int, str, object]] = context.Queue()
    workers = [
        context.Process(
            target=_worker,
            args=(index, snapshot, run, root, snapshot_date, messages),
            name=f"joor-flatten-{index}",
            daemon=True,
        )
        for index, run in enumerate(runs)
    ]
    results: list[_WorkerReport | None] = [None] * len(workers)
    pending = set(range(len(workers)))
    exited_silently: set[int] = set()
    last_heard = time.monotonic()
    try:
        for worker in workers:
            worker.start()
        while pending:
            try:
                index, kind, payload = messages.get(timeout=0.2)
                last_heard = time.monotonic()
            except queue.Empty:
                if time.monotonic() - last_heard > WORKER_SILENCE_SECONDS:
                    stuck = ", ".join(f"{i} ({_describe(runs[i])})" for i in sorted(pending))
                    raise RuntimeError(
                        f"flatten workers {stuck} sent nothing for {WORKER_SILENCE_SECONDS:.0f} s and were stopped; "
                        "nothing was replaced. JOOR_FLATTEN_WORKERS=1 flattens in one process"
                    ) from None
                # A worker that exited without a last message died (killed, out of memory). Its messages are
                # in the pipe before it exits, so one more empty wait after seeing it gone is proof.
                for index in sorted(pending & exited_silently):
                    raise RuntimeError(
                        f"flatten worker {index} ({_describe(runs[index])}) exited with code "
                        f"{workers[index].exitcode} before finishing; nothing was replaced"
                    ) from None
                exited_silently = {index for index in pending if workers[index].exitcode is not None}
                continue
            if kind == _PAGE:
                assert isinstance(payload, int)
                on_page(payload)
            elif kind == _DONE:
                assert isinstance(payload, _WorkerReport)
                results[index] = payload
                pending.discard(index)
            else:
                assert isinstance(payload, BaseException)
                raise payload
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
        for worker in workers:
            worker.join()
        messages.close()
    return [result for result in results if result is not None]


def _overlapping(reports: list[_WorkerReport]) -> bool:
    """True when two workers kept the same customer_account_id (each worker's own are distinct already)."""
    ids = pa.chunked_array([report.kept_ids for report in reports], type=pa.int64())
    return len(pc.unique(ids)) < len(ids)


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
    snapshot = _raw_snapshot(data_dir, snapshot_date)
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
            reports = _flatten_parallel(snapshot, _split(snapshot.pages, parts), new_root, snapshot_date, on_page)
            if _overlapping(reports):
                # A connection repeated across two workers' pages: only one process can keep the first.
                shutil.rmtree(new_root)
                done = connections = 0
            else:
                parts_stats = [report.stats for report in reports]
        if not parts_stats:
            parts_stats = [_flatten_part(snapshot, snapshot.pages, new_root, snapshot_date, 0, on_page).stats]
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

"""Share a snapshot's pages out between worker processes, each writing its own part file of every table.

A snapshot of many pages is cut into contiguous runs of pages, one per worker (``workers`` or
``JOOR_FLATTEN_WORKERS``, by default one per usable core). Worker ``k`` writes ``part-0000k.parquet`` of every
table, so reading a partition's files in name order gives the rows in page order, exactly as one process would
have written them. Each worker drops the connections repeated within its pages; whether two workers kept the
same connection is for the caller to check (:func:`overlapping`).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.queues
import os
import pickle
import queue
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

from joor_pipeline.flatten import FlattenStats
from joor_pipeline.storage.parts import flatten_part
from joor_pipeline.storage.raw import RawPageEntry, RawSnapshot

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


@dataclass(frozen=True)
class WorkerReport:
    """What a worker sends home: its stats, and the customer_account_ids it kept as one int64 array (8 bytes
    each, where the set costs a Python int and a slot each: tens of MB in the parent at 200,000)."""

    stats: FlattenStats
    kept_ids: pa.Array


def split_pages(entries: Sequence[RawPageEntry], parts: int) -> list[Sequence[RawPageEntry]]:
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
    snapshot: RawSnapshot,
    entries: Sequence[RawPageEntry],
    root: Path,
    snapshot_date: date,
    messages: multiprocessing.queues.Queue[tuple[int, str, object]],
) -> None:
    """A forked worker: flatten its pages, report each page and then the result (or the error)."""
    try:
        result = flatten_part(
            snapshot, entries, root, snapshot_date, index, lambda count: messages.put((index, _PAGE, count))
        )
        messages.put((index, _DONE, WorkerReport(result.stats, pa.array(list(result.kept), type=pa.int64()))))
    except BaseException as exc:  # the parent re-raises it; nothing may be lost on the way
        exc.add_note(f"(in flatten worker {index}, {_describe(entries)})")
        try:
            # The queue pickles in a background thread, where a failure would only be printed: try it here.
            pickle.dumps(exc)
            failure: BaseException = exc
        except Exception:
            failure = RuntimeError(f"{type(exc).__name__}: {exc} (in flatten worker {index}, {_describe(entries)})")
        messages.put((index, _FAILED, failure))


def flatten_parallel(
    snapshot: RawSnapshot,
    runs: list[Sequence[RawPageEntry]],
    root: Path,
    snapshot_date: date,
    on_page: Callable[[int], None],
) -> list[WorkerReport]:
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
    results: list[WorkerReport | None] = [None] * len(workers)
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
                assert isinstance(payload, WorkerReport)
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


def overlapping(reports: list[WorkerReport]) -> bool:
    """True when two workers kept the same customer_account_id (each worker's own are distinct already)."""
    ids = pa.chunked_array([report.kept_ids for report in reports], type=pa.int64())
    return len(pc.unique(ids)) < len(ids)

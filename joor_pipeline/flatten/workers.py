"""Share a snapshot's pages out between worker processes, each writing its own part file of every table.

A snapshot of many pages is cut into contiguous runs of pages, one per worker (``workers`` or
``JOOR_FLATTEN_WORKERS``, by default one per usable core). Worker ``k`` writes ``part-0000k.parquet`` of every
table, so reading a partition's files in name order gives the rows in page order, exactly as one process would
have written them. Each worker drops the connections repeated within its pages; whether two workers kept the
same connection is for the caller to check (:func:`overlapping`).

The workers are a :class:`concurrent.futures.ProcessPoolExecutor` whose processes come from a *forkserver*,
never forked from the caller. The caller may be threaded (Dagster's run process is), and a fork copies only the
forking thread, with every lock other threads held at that moment held forever in the child. The forkserver is
a fresh single-threaded interpreter that imports the flatten's modules once (:mod:`.forkserver`) and forks a
worker from itself on request, so a worker starts in milliseconds with the libraries loaded, inherits no signal
handler of the caller's, and never imports pandas (pyarrow would, on its first ``pa.array``, only to ask
whether the input is a pandas object: about 0.6 s of nothing per process).

A worker that raises fails the flatten with its exception; one that dies (killed, out of memory) or stops
sending word of its pages for ``stall_seconds`` (stopped, or stuck on a read that never returns) fails it with
:class:`FlattenWorkerError`, naming its pages. Either way the workers still running are killed, so the caller
gets one error within a bounded time, and nothing of the flatten is published.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import multiprocessing
import multiprocessing.connection
import multiprocessing.queues
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

from joor_pipeline.flatten import FlattenStats
from joor_pipeline.flatten.forkserver import CAN_PARALLEL, die_with_parent, worker_context
from joor_pipeline.flatten.parts import flatten_part
from joor_pipeline.flatten.recount import SentTally
from joor_pipeline.joor.errors import JoorError
from joor_pipeline.storage.raw import RawPageEntry, RawSnapshot

#: The default number of workers is the usable cores, at most this many...
MAX_DEFAULT_WORKERS: Final = 8
#: ...and at most one per this many pages (a small snapshot is not worth a second process).
MIN_PAGES_PER_WORKER: Final = 8
#: A worker reports every batch of pages it writes, milliseconds of work each. A worker silent this long is
#: stuck (stopped, or blocked on a read that never returns): the flatten fails rather than wait forever.
WORKER_STALL_SECONDS: Final = 120.0
#: A worker reports the pages it has written at most this often.
REPORT_SECONDS: Final = 0.05
#: How often the parent looks at the workers when none has anything to say.
_POLL_SECONDS: Final = 0.1


class FlattenWorkerError(JoorError):
    """A flatten worker process died or stopped answering; nothing of the flatten was published."""


def flatten_workers(requested: int | None, pages: int) -> int:
    """How many processes flatten a snapshot of ``pages`` pages.

    ``requested`` None picks the default: the usable cores (at most :data:`MAX_DEFAULT_WORKERS`), and no more
    than one per :data:`MIN_PAGES_PER_WORKER` pages. An explicit number is used as is, capped at one per page.
    Where there is no forkserver it is always 1.
    """
    if requested is not None and requested < 1:
        raise ValueError(f"flatten workers must be at least 1, got {requested}")
    if not CAN_PARALLEL or pages <= 1:
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
    #: The raw recount of its pages, for the audit (see :mod:`~joor_pipeline.flatten.recount`), if asked for.
    tally: SentTally | None


def split_pages(entries: Sequence[RawPageEntry], parts: int) -> list[Sequence[RawPageEntry]]:
    """``entries`` cut into ``parts`` contiguous runs whose lengths differ by at most one."""
    size, extra = divmod(len(entries), parts)
    runs, start = [], 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        runs.append(entries[start:end])
        start = end
    return runs


def _describe(index: int, entries: Sequence[RawPageEntry]) -> str:
    pages = f"pages {entries[0].page}-{entries[-1].page}" if entries else "no pages"
    return f"flatten worker {index}, {pages}"


# ---- inside a worker ---------------------------------------------------------------------------------------

# Messages from a task to the parent: (task index, kind, payload): its pid, or the connection counts of pages.
_STARTED, _PAGES = "started", "pages"
_Message = tuple[int, str, list[int]]
_messages: multiprocessing.queues.Queue[_Message] | None = None


class _NoPandas(importlib.abc.MetaPathFinder):
    """An import finder that refuses pandas."""

    def find_spec(self, fullname: str, path: object, target: object = None) -> None:
        if fullname.partition(".")[0] == "pandas":
            raise ModuleNotFoundError("a flatten worker does not import pandas", name=fullname)
        return None


def _init_worker(messages: multiprocessing.queues.Queue[_Message]) -> None:
    """Set up a fresh worker process: its channel home, no pandas, and Ctrl-C left to the parent."""
    global _messages
    _messages = messages
    # The flatten never uses pandas, but pyarrow imports it on the first pa.array() of a list just to ask
    # whether the list is a pandas object (its lazy pandas shim). A finder that refuses the import makes it
    # fail at once, which pyarrow takes as "no pandas". Only in this process, which does nothing but flatten.
    if "pandas" not in sys.modules:
        sys.meta_path.insert(0, _NoPandas())
    # A Ctrl-C in a terminal reaches the whole process group: the parent stops the workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Never outlive the flatten (a kill -9 of it reaches no handler): SIGKILLed by the kernel when the forkserver
    # goes (Linux), which goes with the flatten's process; and, wherever the forkserver is, gone as soon as the
    # flatten's process is: the pipe multiprocessing keeps from it to each worker (its parent's sentinel) ends.
    die_with_parent()
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), name="exit-with-flatten", daemon=True).start()


def _exit_with(sentinel: int) -> None:
    """Wait for the flatten's process to end (``sentinel`` readable: its end of the pipe closed), then go at once."""
    multiprocessing.connection.wait([sentinel])
    os.kill(os.getpid(), signal.SIGKILL)


def _flatten_run(
    index: int,
    snapshot: RawSnapshot,
    entries: Sequence[RawPageEntry],
    root: Path,
    snapshot_date: date,
    recount: bool,
    account: str,
) -> WorkerReport:
    """One task: flatten a run of pages into part ``index``, reporting its pages to the parent."""
    messages = _messages
    assert messages is not None, "not in a flatten worker"
    messages.put((index, _STARTED, [os.getpid()]))
    unsent: list[int] = []
    sent = time.monotonic()

    def on_page(count: int) -> None:
        # Reports go out at most every REPORT_SECONDS: each one wakes the queue's feeder thread, which then
        # takes the GIL from the flatten.
        nonlocal sent
        unsent.append(count)
        if time.monotonic() - sent >= REPORT_SECONDS:
            messages.put((index, _PAGES, unsent.copy()))
            unsent.clear()
            sent = time.monotonic()

    try:
        result = flatten_part(snapshot, entries, root, snapshot_date, index, on_page, recount=recount, account=account)
    except BaseException as exc:
        exc.add_note(f"(in {_describe(index, entries)})")
        raise
    if unsent:
        messages.put((index, _PAGES, unsent))
    tally = result.tally.sent() if result.tally is not None else None
    return WorkerReport(result.stats, pa.array(list(result.kept), type=pa.int64()), tally)


# ---- in the parent -----------------------------------------------------------------------------------------


@dataclass
class _Task:
    index: int
    entries: Sequence[RawPageEntry]
    future: Future[WorkerReport]
    #: Pages not yet reported (a task that returned may still have reports on the way).
    pages_left: int
    #: The worker process running it, once it has said so.
    pid: int | None = None
    last_heard: float = 0.0

    @property
    def finished(self) -> bool:
        return self.future.done() and not self.pages_left


def flatten_parallel(
    snapshot: RawSnapshot,
    runs: list[Sequence[RawPageEntry]],
    root: Path,
    snapshot_date: date,
    on_page: Callable[[int], None],
    *,
    stall_seconds: float = WORKER_STALL_SECONDS,
    recount: bool = False,
    account: str,
) -> list[WorkerReport]:
    """Flatten each run of pages in a worker process of its own, into part ``k`` for run ``k`` (``recount``: each
    worker also tallies its raw pages for the audit).

    The first failure stops every worker and is raised: the worker's own exception, or
    :class:`FlattenWorkerError` for a worker that died or was silent for ``stall_seconds``.
    """
    context = worker_context()
    messages: multiprocessing.queues.Queue[_Message] = context.Queue()
    pool = ProcessPoolExecutor(
        max_workers=len(runs), mp_context=context, initializer=_init_worker, initargs=(messages,)
    )
    succeeded = False
    try:
        now = time.monotonic()
        tasks = [
            _Task(
                index,
                run,
                pool.submit(_flatten_run, index, snapshot, run, root, snapshot_date, recount, account),
                len(run),
                None,
                now,
            )
            for index, run in enumerate(runs)
        ]
        last_heard = now
        while True:
            _raise_failure(tasks)
            if all(task.finished for task in tasks):
                break
            if not any(task.pages_left for task in tasks):
                # Every page is reported, so no message will come: what is left are results, which come through
                # the futures. Waiting on those (not on the queue until its next poll) spares up to _POLL_SECONDS.
                running = [task.future for task in tasks if not task.future.done()]
                if not wait(running, timeout=_POLL_SECONDS, return_when=FIRST_COMPLETED).done:
                    _raise_stall(tasks, stall_seconds, last_heard)
                continue
            try:
                index, kind, payload = messages.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                _raise_stall(tasks, stall_seconds, last_heard)
                continue
            task = tasks[index]
            last_heard = task.last_heard = time.monotonic()
            if kind == _STARTED:
                task.pid = payload[0]
            else:
                task.pages_left -= len(payload)
                for count in payload:
                    on_page(count)
        reports = [task.future.result() for task in tasks]
        succeeded = True
        return reports
    finally:
        if not succeeded:
            _kill_workers(pool)
        pool.shutdown(wait=True, cancel_futures=True)
        messages.close()
        messages.join_thread()


def _raise_failure(tasks: list[_Task]) -> None:
    """Raise the failure of the first task that failed, if any."""
    for task in tasks:
        if not task.future.done():
            continue
        error = task.future.exception()
        if isinstance(error, BrokenProcessPool):
            # Every unfinished task of a broken pool gets this error: name the ones that were running.
            running = [t for t in tasks if t.pid is not None and not t.finished] or [task]
            where = "; ".join(_describe(t.index, t.entries) for t in running)
            raise FlattenWorkerError(
                f"a flatten worker process died before finishing ({where}): killed, or out of memory? "
                "Nothing was replaced"
            ) from None
        if error is not None:
            raise error


def _raise_stall(tasks: list[_Task], stall_seconds: float, last_heard: float) -> None:
    """Raise for a running task silent for ``stall_seconds``, or for a pool silent that long as a whole."""
    now = time.monotonic()
    pool_silent = now - last_heard > stall_seconds
    for task in tasks:
        silent = now - task.last_heard
        # A task not started yet may be queued behind another on a busy worker: not a stall on its own.
        if not task.finished and silent > stall_seconds and (task.pid is not None or pool_silent):
            raise FlattenWorkerError(
                f"{_describe(task.index, task.entries)} sent no word for {silent:.0f} s (limit "
                f"{stall_seconds:g} s): stopped, or stuck reading? It was killed and nothing was replaced"
            )


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    """SIGKILL every worker of a failed flatten: a stopped or stuck process answers nothing gentler, and the
    pool's shutdown would wait for it forever."""
    kill_workers = getattr(pool, "kill_workers", None)  # Python 3.14+
    if kill_workers is not None:
        kill_workers()
        return
    # Before 3.14 the pool exposes its processes only as this attribute (a dict pid -> Process since 3.x).
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(ProcessLookupError, ValueError):
            process.kill()


def overlapping(reports: list[WorkerReport]) -> bool:
    """True when two workers kept the same customer_account_id (each worker's own are distinct already)."""
    ids = pa.chunked_array([report.kept_ids for report in reports], type=pa.int64())
    return len(pc.unique(ids)) < len(ids)

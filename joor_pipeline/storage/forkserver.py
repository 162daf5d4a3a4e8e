"""The forkserver that flatten workers come from: a fresh single-threaded interpreter with the flatten loaded.

Kept apart from :mod:`~joor_pipeline.storage.workers` and light to import (no pyarrow), so that a command can
start the forkserver first thing and let its imports run beside its own (:func:`start_forkserver`).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
from typing import Final

#: Workers are forked by a forkserver (POSIX); where there is none, the flatten runs in one process.
CAN_PARALLEL: Final = "forkserver" in multiprocessing.get_all_start_methods()
#: What the forkserver imports once, before it forks any worker.
PRELOAD: Final = ("joor_pipeline.storage.workers",)


def worker_context() -> multiprocessing.context.ForkServerContext:
    """The multiprocessing context of flatten workers, its forkserver set to preload :data:`PRELOAD`."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(PRELOAD))
    return context


def start_forkserver() -> None:
    """Start the forkserver now rather than at the first worker, so its imports overlap the caller's own."""
    if CAN_PARALLEL:
        worker_context()
        from multiprocessing import forkserver

        forkserver.ensure_running()

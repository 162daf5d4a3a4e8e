"""The forkserver that flatten workers come from: a fresh single-threaded interpreter with the flatten loaded.

Kept apart from :mod:`~joor_pipeline.flatten.workers` and light to import (no pyarrow), so that a command can
start the forkserver first thing and let its imports run beside its own (:func:`start_forkserver`).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
from typing import Final

#: Workers are forked by a forkserver (POSIX); where there is none, the flatten runs in one process.
CAN_PARALLEL: Final = "forkserver" in multiprocessing.get_all_start_methods()
#: What the forkserver imports once, before it forks any worker.
PRELOAD: Final = ("joor_pipeline.flatten.workers",)


def worker_context(*preload: str) -> multiprocessing.context.ForkServerContext:
    """The multiprocessing context of flatten workers, its forkserver set to preload :data:`PRELOAD` and
    ``preload`` (which matter only to a forkserver not yet running)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([*PRELOAD, *preload])
    return context


def start_forkserver(*preload: str) -> None:
    """Start the forkserver now rather than at the first worker, so its imports overlap the caller's own.

    ``preload``: modules the caller's main script imports, for the forkserver to import as well. A caller started
    as a script (``joor-pipeline``) has multiprocessing run that script again in every worker as it starts (as
    ``__mp_main__``): with the script's imports already loaded in the forkserver, the workers inherit them and the
    run costs nothing; otherwise each worker imports them anew (about 0.1 s each for the CLI). Preloading
    ``"__main__"`` would say this for any script, but CPython 3.11 to 3.13 never pass the forkserver the script's
    path, so it is ignored there.
    """
    if CAN_PARALLEL:
        worker_context(*preload)
        from multiprocessing import forkserver

        forkserver.ensure_running()

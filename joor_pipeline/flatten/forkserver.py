"""The forkserver that flatten workers come from: a fresh single-threaded interpreter with the flatten loaded.

Kept apart from :mod:`~joor_pipeline.flatten.workers` and light to import (no pyarrow), so that a command can
start the forkserver first thing and let its imports run beside its own (:func:`start_forkserver`).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.context
import signal
import sys
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


#: prctl(2)'s PR_SET_PDEATHSIG: the signal the kernel sends a process when its parent dies.
_PR_SET_PDEATHSIG: Final = 1


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process as soon as the one that started it dies, however it dies (``kill -9``
    included), through ``prctl(PR_SET_PDEATHSIG)``. Linux only; elsewhere nothing happens.

    The forkserver calls it as it starts (its parent: the process running the flatten) and every worker (its
    parent: the forkserver), so that a killed flatten leaves nothing running behind it, a stopped worker
    included. "Parent" is the thread that started the process: a forkserver started by a thread that ends before
    its process goes with that thread, and the next flatten starts another (multiprocessing sees it gone).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - a libc without prctl
        return
    prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def _is_the_forkserver() -> bool:
    """True in the flatten's forkserver itself: multiprocessing runs it as a ``-c`` command of its own, naming the
    modules to preload (:data:`PRELOAD`, which imports this one) before it forks a worker."""
    command = sys.orig_argv[-1] if sys.orig_argv else ""
    return command.startswith("from multiprocessing.forkserver import main") and repr(PRELOAD[0]) in command


if _is_the_forkserver():
    die_with_parent()

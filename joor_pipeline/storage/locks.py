"""Locks above the stores: who holds one (in words), and re-entrancy within a process.

One primitive takes a lock: :meth:`Store.lock <joor_pipeline.storage.store.Store.lock>` (a flock on local disk,
freed at once when its holder dies; a lease object renewed by its live holder on an object store). Above it, one
registry makes :func:`hold` re-entrant within a process: the CLI's ``run`` executes the fetch and the flatten
steps in-process one after the other, and recovery needs to know which dates this process already holds
(:func:`holds`). A forked child forgets the registry (the flatten workers hold nothing).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from joor_pipeline.storage.store import Held, SnapshotBusy, Store

__all__ = ["SnapshotBusy", "describe_holder", "hold", "hold_if_free", "holder_description", "holds"]


def holder_description() -> dict[str, object]:
    """Who this process is, for lock objects (no environment, no argument that could hold a secret)."""
    command = " ".join(os.path.basename(arg) if i == 0 else arg for i, arg in enumerate(sys.argv[:4]))
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def describe_holder(data: bytes) -> str:
    """The holder a lock object records, in words; 'another process' when it cannot be read."""
    try:
        info = json.loads(data)
        return f"pid {info['pid']} on {info['host']} ({info['command']!r}, since {info['since']})"
    except (ValueError, KeyError, TypeError):
        return "another process"


@dataclass
class _Entry:
    held: Held
    depth: int


# (store url, lock key) -> the lock this process holds, and how many blocks hold it.
_held: dict[tuple[str, str], _Entry] = {}
_guard = threading.Lock()


def _forget_in_child() -> None:
    _held.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def holds(store: Store, key: str) -> bool:
    """True when this process holds the lock ``key`` of ``store``."""
    with _guard:
        return (store.url, key) in _held


def held(store: Store, key: str) -> Held | None:
    """The lock ``key`` of ``store`` if this process holds it."""
    with _guard:
        entry = _held.get((store.url, key))
    return None if entry is None else entry.held


@contextmanager
def hold(store: Store, key: str, what: str, *, wait: float | None = 0.0) -> Iterator[Held]:
    """Hold the lock ``key`` for the block; re-entrant within this process.

    When another process holds it, wait up to ``wait`` seconds (None: as long as it takes), then raise
    :class:`SnapshotBusy` naming the holder. ``what`` names the lock in messages (``snapshot 2026-11-23``).
    """
    name = (store.url, key)
    with _guard:
        entry = _held.get(name)
        if entry is not None:
            entry.depth += 1
    if entry is None:
        entry = _Entry(_take(store, key, what, wait), 1)
        with _guard:
            _held[name] = entry
    try:
        yield entry.held
    finally:
        with _guard:
            entry.depth -= 1
            last = entry.depth == 0
            if last:
                del _held[name]
        if last:
            entry.held.release()


def _take(store: Store, key: str, what: str, wait: float | None) -> Held:
    deadline = None if wait is None else time.monotonic() + wait
    pause = 0.05
    while True:
        try:
            return store.lock(key, what)
        except SnapshotBusy:
            if deadline is not None and time.monotonic() >= deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 1.0)


@contextmanager
def hold_alone(store: Store, key: str, what: str, *, wait: float | None = 0.0) -> Iterator[Held]:
    """Like :func:`hold`, but not re-entrant: a second holder in this process waits too (one build at a time)."""
    lock = _take(store, key, what, wait)
    try:
        yield lock
    finally:
        lock.release()


@contextmanager
def hold_if_free(store: Store, key: str, what: str) -> Iterator[bool]:
    """Hold the lock ``key`` for the block if no other process does: True then, False (holding nothing) if busy."""
    if holds(store, key):
        yield True
        return
    with ExitStack() as stack:
        try:
            stack.enter_context(hold(store, key, what))
        except SnapshotBusy:
            yield False
            return
        yield True

"""Objects that do not parse where the pipeline expects a record of its own (a journal, a pending record, a lock)
are set aside under ``_work/damaged/`` with one warning line naming both places, and stop nothing else."""

from __future__ import annotations

import logging
import time
from pathlib import PurePosixPath

from joor_pipeline import layout
from joor_pipeline.storage.store import Store

log = logging.getLogger(__name__)


def set_aside(store: Store, key: str, data: bytes, why: str, *, delete: bool = True) -> str:
    """Copy ``data`` (the object ``key`` as read) under ``_work/damaged/`` and, with ``delete``, delete ``key``;
    one warning line. Returns the copy's key."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{time.time_ns() % 1_000_000_000:09d}"
    copy = layout.damaged(PurePosixPath(key).name, stamp)
    store.write(copy, data)
    if delete:
        store.delete([key])
    log.warning("%s %s; set it aside as %s", store.uri(key), why, store.uri(copy))
    return copy

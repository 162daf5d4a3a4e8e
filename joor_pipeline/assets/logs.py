"""Library log records in Dagster's event log: ``with forward_logs(context):`` around an asset body.

The library logs with ``logging.getLogger("joor_pipeline.<module>")`` and knows nothing of Dagster. Its retry
warnings and rate-limit waits come from the client's worker threads, which Dagster's own ``context.log`` calls
would never see; a handler on the ``joor_pipeline`` logger forwards them, whatever thread logs. Dagster's
``managed_python_loggers`` instance setting would do the same, but only where the instance is configured so;
this works in every run, the UI's, the CLI's and the tests' alike.

While it forwards, the records stop there: they do not also reach the root logger's handlers (the CLI's stderr
line, a worker process's own output), so each line is printed once, by the run's log, in its format.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import dagster as dg

LIBRARY_LOGGER: Final = "joor_pipeline"

# Several asset bodies may forward at once (threads in one run process): the logger's level is lowered while any
# of them forwards, and restored when the last one ends.
_lock = threading.Lock()
_forwarding = 0
_saved_level = logging.NOTSET
_saved_propagate = True


class _ToDagster(logging.Handler):
    """Hands each record to a Dagster log manager, at the record's own level."""

    def __init__(self, log: logging.Logger, level: int) -> None:
        super().__init__(level)
        self._log = log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._log.log(record.levelno, "%s", record.getMessage())
        except Exception:  # a broken log call must not fail the fetch it reports on
            self.handleError(record)


@contextmanager
def forward_logs(
    context: dg.AssetExecutionContext | dg.OpExecutionContext, level: int = logging.INFO
) -> Iterator[None]:
    """Forward ``joor_pipeline`` records at ``level`` and above to ``context.log`` for the block."""
    global _forwarding, _saved_level, _saved_propagate
    logger = logging.getLogger(LIBRARY_LOGGER)
    handler = _ToDagster(context.log, level)
    with _lock:
        if _forwarding == 0:
            _saved_level = logger.level
            _saved_propagate = logger.propagate
            logger.propagate = False
        _forwarding += 1
        if logger.getEffectiveLevel() > level:
            logger.setLevel(level)
        logger.addHandler(handler)
    try:
        yield
    finally:
        with _lock:
            logger.removeHandler(handler)
            _forwarding -= 1
            if _forwarding == 0:
                logger.setLevel(_saved_level)
                logger.propagate = _saved_propagate

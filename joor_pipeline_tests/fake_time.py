"""One fake timeline shared by the client, its pacer and the sandbox, so tests wait out windows without sleeping."""

from __future__ import annotations

import threading


class FakeTime:
    """``clock`` reads it; ``sleep`` advances it at once and records the wait.

    Several threads sleeping "at once" each advance it in turn, so concurrent waits add up: time only ever runs
    ahead, never behind, which keeps a rate limit safe but makes totals an upper bound under concurrency.
    """

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start
        self.start = start
        self.slept: list[float] = []
        self._lock = threading.Lock()

    def clock(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
            self.now += max(0.0, seconds)

    def advance(self, seconds: float) -> None:
        """Time passing outside any sleep (a consumer dawdling, a token ageing)."""
        with self._lock:
            self.now += seconds

    @property
    def elapsed(self) -> float:
        return self.now - self.start

    def pair(self) -> dict[str, object]:
        """``clock=`` and ``sleep=`` keyword arguments, for the client, a pacer or the sandbox."""
        return {"clock": self.clock, "sleep": self.sleep}

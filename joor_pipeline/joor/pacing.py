"""Client-side pacing to JOOR's per-account credit budget.

JOOR meters each account in fixed windows (300 credits per 300 s by default) that start with the first request;
a GET costs 1 credit, a POST 5, and a request past the budget gets HTTP 429. Mirroring that meter on the client
means a long pull spends the whole budget and then waits for the next window instead of collecting 429s. The
server's window starts when *it* sees our first request, a little after we sent it, so we wait a small margin
past our own estimate of the window's end.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class PacerStats:
    """What the pacer did: credits spent, windows opened, time spent waiting."""

    credits_used: int = 0
    windows: int = 0
    waited_seconds: float = 0.0


class CreditPacer:
    """Blocks a request until the current fixed window has the credits it costs."""

    def __init__(
        self,
        credits: int = 300,
        window: float = 300.0,
        *,
        margin: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if credits <= 0 or window <= 0:
            raise ValueError("credits and window must be positive")
        self.credits = credits
        self.window = window
        self.margin = 0.01 * window + 0.05 if margin is None else margin
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._window_end: float | None = None
        self._used = 0
        self.stats = PacerStats()

    def acquire(self, cost: int = 1) -> float:
        """Take ``cost`` credits, waiting for the next window if this one cannot afford them."""
        cost = min(cost, self.credits)
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                if self._window_end is None or now >= self._window_end:
                    self._window_end = now + self.window + self.margin
                    self._used = 0
                    self.stats.windows += 1
                if self._used + cost <= self.credits:
                    self._used += cost
                    self.stats.credits_used += cost
                    self.stats.waited_seconds += waited
                    return waited
                delay = self._window_end - now
            self._sleep(delay)
            waited += delay

    def exhausted(self, retry_after: float | None) -> None:
        """JOOR said 429: treat the window as spent until it resets (Retry-After when given)."""
        with self._lock:
            now = self._clock()
            self._used = self.credits
            if retry_after is not None:
                # JOOR said exactly when the window resets: no margin on top of its own word.
                self._window_end = now + retry_after
            else:
                self._window_end = max(self._window_end or now, now + self.window + self.margin)

"""Client-side pacing to JOOR's per-account credit budget.

JOOR meters each account in fixed windows (300 credits per 300 s by default) that start with the first request;
a GET costs 1 credit, a POST 5, and a request past the budget gets HTTP 429. Mirroring that meter on the client
means a long pull spends the whole budget and then waits for the next window instead of collecting 429s.

The server's clock is not ours: a request reaches JOOR some time after it took its credits here, and with several
requests in flight that delay varies from one to the next. ``margin`` is the allowance for that variation. A
window opens here no earlier than ``margin`` after our estimate of JOOR's window end, so its first request cannot
land in the old window; and no request takes credits in the last ``margin`` before that estimate, so a late one
cannot land in the next window, where it would count against a budget this side believes to be whole. While the
client spends its budget early in a window (the case that matters) neither rule costs it anything but the one
``margin`` per window.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

#: The longest single sleep while a cancellable caller waits, so a cancelled fetch stops waiting promptly.
CANCEL_CHECK_SECONDS = 0.25


class Cancelled(Exception):
    """The caller's cancel event was set while it waited for credits or before it sent a request."""


@dataclass
class PacerStats:
    """What the pacer did: credits spent, windows opened, time spent waiting."""

    credits_used: int = 0
    windows: int = 0
    waited_seconds: float = 0.0


class CreditPacer:
    """Blocks a request until the current fixed window has the credits it costs; safe to share between threads."""

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
        self._last_call = 0.0
        self._used = 0
        self._throttled = False
        self.stats = PacerStats()

    def acquire(self, cost: int = 1, *, cancel: threading.Event | None = None) -> float:
        """Take ``cost`` credits, waiting for the next window if this one cannot afford them.

        Returns the seconds waited. With ``cancel``, the wait ends early with :class:`Cancelled` once it is set.
        """
        cost = min(cost, self.credits)
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                if self._window_end is None or now >= self._window_end:
                    self._window_end = now + self.window + self.margin
                    self._last_call = now + self.window - self.margin
                    self._used = 0
                    self._throttled = False
                    self.stats.windows += 1
                affordable = self._used + cost <= self.credits
                # A window's opening request always goes, however short the window is next to the margin.
                if affordable and (now < self._last_call or self._used == 0):
                    self._used += cost
                    self.stats.credits_used += cost
                    self.stats.waited_seconds += waited
                    return waited
                delay = self._window_end - now
            waited += self._wait(delay, cancel)

    def _wait(self, delay: float, cancel: threading.Event | None) -> float:
        if cancel is None:
            self._sleep(delay)
            return delay
        slept = 0.0
        while slept < delay:
            if cancel.is_set():
                raise Cancelled("cancelled while waiting for rate-limit credits")
            step = min(CANCEL_CHECK_SECONDS, delay - slept)
            self._sleep(step)
            slept += step
        return slept

    def exhausted(self, retry_after: float | None) -> None:
        """JOOR said 429: treat the window as spent until it resets (Retry-After when given).

        Every request in flight may be told at once; the latest reset any of them heard wins.
        """
        with self._lock:
            now = self._clock()
            self._used = self.credits
            if retry_after is not None:
                # JOOR said exactly when the window resets: no margin on top of its own word.
                end = now + retry_after
                if self._throttled and self._window_end is not None:
                    end = max(end, self._window_end)
            else:
                end = max(self._window_end or now, now + self.window + self.margin)
            self._window_end = end
            self._throttled = True

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

The budget belongs to the JOOR account, not to this pipeline: a brand's other integrations (Celigo flows, ERP
syncs, scripts) spend the same credits, so ``credits`` is this pipeline's *share* of the account's budget. When
the others spend more than theirs, JOOR answers 429; :meth:`CreditPacer.exhausted` then takes the whole account as
spent until JOOR's window ends (its Retry-After, never longer than one window), and every request waits for that.
Each wait is announced once through the caller's ``on_wait(reason, seconds)``, so a user sees why the fetch stalls.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

#: The longest single sleep while a cancellable caller waits, so a cancelled fetch stops waiting promptly.
CANCEL_CHECK_SECONDS = 0.25
#: The shortest wait after a 429, whatever Retry-After says: a server answering "Retry-After: 0" to every retry
#: must not turn the retry budget into a busy loop of refused requests.
MIN_THROTTLE_WAIT: Final = 1.0

OnWait = Callable[[str, float], None]
"""Told ``(reason, seconds)`` when a request is about to wait that long for rate-limit credits."""


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
        # The wait last announced through on_wait: requests waiting for the same reset announce it once.
        self._announced: tuple[str, float] | None = None
        #: Counts the windows opened here; a request notes it when it takes its credits (see :meth:`exhausted`).
        self.window_number = 0
        self.stats = PacerStats()

    def acquire(self, cost: int = 1, *, cancel: threading.Event | None = None, on_wait: OnWait | None = None) -> float:
        """Take ``cost`` credits, waiting for the next window if this one cannot afford them.

        Returns the seconds waited. With ``cancel``, the wait ends early with :class:`Cancelled` once it is set.
        ``on_wait`` hears of each wait (once per window reset, however many requests wait for it).
        """
        cost = min(cost, self.credits)
        waited = 0.0
        while True:
            announce: str | None = None
            with self._lock:
                now = self._clock()
                if self._window_end is None or now >= self._window_end:
                    self._window_end = now + self.window + self.margin
                    self._last_call = now + self.window - self.margin
                    self._used = 0
                    self._throttled = False
                    self.stats.windows += 1
                    self.window_number += 1
                affordable = self._used + cost <= self.credits
                # A window's opening request always goes, however short the window is next to the margin.
                if affordable and (now < self._last_call or self._used == 0):
                    self._used += cost
                    self.stats.credits_used += cost
                    self.stats.waited_seconds += waited
                    return waited
                until = self._window_end
                reason = self._reason()
                if on_wait is not None and self._news(reason, until):
                    self._announced = (reason, until)
                    announce = reason
            if announce is not None and on_wait is not None:
                on_wait(announce, until - now)
            waited += self._wait(until, cancel)

    def _news(self, reason: str, until: float) -> bool:
        """Whether a wait until ``until`` is not the one announced last.

        429s answered to requests in flight together each carry JOOR's Retry-After in whole seconds, so their
        resets differ by less than a second: one wait, announced once.
        """
        if self._announced is None:
            return True
        announced_reason, announced_until = self._announced
        return reason != announced_reason or until > announced_until + 1.0

    def _reason(self) -> str:
        if self._throttled:
            return (
                "JOOR's rate limit (HTTP 429): the account's credits, shared with its other integrations, "
                "are spent until JOOR's window resets"
            )
        return (
            f"JOOR's rate limit: this pipeline's share of the account's credits ({self.credits} per "
            f"{self.window:g} s, JOOR_RATE_LIMIT_CREDITS) is spent until the window resets"
        )

    def _wait(self, until: float, cancel: threading.Event | None) -> float:
        """Sleep until the clock reads ``until``; the seconds that took.

        The clock is read again after every sleep rather than trusting the sleep's length: requests waiting for
        the same reset all wake when it comes, however long each of them slept.
        """
        started = now = self._clock()
        while now < until:
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled while waiting for rate-limit credits")
            left = until - now
            self._sleep(left if cancel is None else min(CANCEL_CHECK_SECONDS, left))
            now = self._clock()
        return now - started

    def exhausted(self, retry_after: float | None, window_number: int | None = None) -> float:
        """JOOR said 429: take the whole account as spent until its window resets; the seconds until then.

        Retry-After is honoured up to one window (JOOR's window cannot end later than that, and a bogus header
        must not stall a run for hours), and at least :data:`MIN_THROTTLE_WAIT`. Without it the window may have
        just begun, so a full window is waited. Every request in flight may be told at once; the latest reset
        any of them heard wins. A 429 to a request that took its credits (``window_number``) before the current
        window opened speaks of a window already waited out: it changes nothing, and the request just goes again.
        """
        with self._lock:
            now = self._clock()
            if window_number is not None and window_number < self.window_number:
                return 0.0
            self._used = self.credits
            if retry_after is not None:
                # JOOR said when the window resets: no margin on top of its own word.
                end = now + min(max(retry_after, MIN_THROTTLE_WAIT), self.window)
                if self._throttled and self._window_end is not None:
                    end = max(end, self._window_end)
            else:
                end = max(self._window_end or now, now + self.window + self.margin)
            self._window_end = end
            self._throttled = True
            return end - now

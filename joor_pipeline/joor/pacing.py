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

JOOR's rate-limit page says every response carries headers to help monitor the budget, without naming them. The
client records whatever arrives under the usual families (:func:`rate_limit_headers`); where they tell the credits
left or the time until the window resets (:func:`budget_hint`), :meth:`CreditPacer.observe` follows them instead of
this side's estimate: JOOR's count includes the other integrations' spending, which no estimate here can see.
"""

from __future__ import annotations

import email.utils
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

#: The longest single sleep while a cancellable caller waits, so a cancelled fetch stops waiting promptly.
CANCEL_CHECK_SECONDS = 0.25
#: The shortest wait after a 429, whatever Retry-After says: a server answering "Retry-After: 0" to every retry
#: must not turn the retry budget into a busy loop of refused requests.
MIN_THROTTLE_WAIT: Final = 1.0

OnWait = Callable[[str, float], None]
"""Told ``(reason, seconds)`` when a request is about to wait that long for rate-limit credits."""


#: Lower-cased name prefixes of the rate-limit headers recorded: ``X-RateLimit-*``, ``RateLimit-*`` (and the IETF
#: draft's ``RateLimit`` / ``RateLimit-Policy``), ``X-Throttling-*`` (JOOR's 429 carries ``X-Throttling-Account-Id``).
RATE_LIMIT_PREFIXES: Final = ("x-ratelimit", "ratelimit", "x-throttling-")
#: At most this many rate-limit headers are recorded, each value cut to this length: a hostile server cannot grow
#: the manifest or the Dagster metadata through them.
MAX_RATE_LIMIT_HEADERS: Final = 32
MAX_RATE_LIMIT_VALUE: Final = 200
#: A reset value at least this large is a Unix time (GitHub's style), not seconds from now (the IETF draft's).
EPOCH_THRESHOLD: Final = 1_000_000_000
_NUMBER = re.compile(r"\s*(\d+(?:\.\d+)?)\s*$")
#: ``remaining=12`` / ``r=12`` and ``reset=30`` / ``t=30`` inside a structured ``RateLimit`` header (IETF drafts).
_FIELD_REMAINING = re.compile(r"(?:^|[;,\s])(?:remaining|r)\s*=\s*(\d+)", re.IGNORECASE)
_FIELD_RESET = re.compile(r"(?:^|[;,\s])(?:reset|t)\s*=\s*(\d+)", re.IGNORECASE)


def rate_limit_headers(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """The rate-limit headers among ``pairs`` (names as sent), values cut short; at most
    :data:`MAX_RATE_LIMIT_HEADERS`. The caller masks any secret (the client does)."""
    found: dict[str, str] = {}
    for name, value in pairs:
        if not name.lower().startswith(RATE_LIMIT_PREFIXES):
            continue
        if name not in found and len(found) >= MAX_RATE_LIMIT_HEADERS:
            continue
        value = " ".join(value.split())
        found[name] = value if len(value) <= MAX_RATE_LIMIT_VALUE else value[: MAX_RATE_LIMIT_VALUE - 1] + "…"
    return found


@dataclass(frozen=True)
class BudgetHint:
    """What rate-limit headers say of the account's budget: credits left, seconds until the window resets."""

    remaining: int | None = None
    reset_after: float | None = None


def budget_hint(headers: Mapping[str, str], *, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> BudgetHint:
    """Credits left and seconds to the reset, from recorded rate-limit headers (:func:`rate_limit_headers`).

    A name ending in ``-remaining`` gives the credits left (the smallest, when several windows are told), one
    ending in ``-reset`` the reset: seconds from now, a Unix time, or an HTTP date (the largest, when several).
    A structured ``RateLimit`` header (``remaining=..., reset=...`` or ``r=..;t=..``) counts too. Anything else,
    or a value that does not read as a number, is ignored: names and meanings are not documented by JOOR.
    """
    remaining: list[int] = []
    resets: list[float] = []
    for name, value in headers.items():
        lower = name.lower()
        if lower in ("ratelimit", "x-ratelimit"):
            if match := _FIELD_REMAINING.search(value):
                remaining.append(int(match.group(1)))
            if match := _FIELD_RESET.search(value):
                resets.append(float(match.group(1)))
        elif lower.endswith("-remaining"):
            if match := _NUMBER.match(value):
                remaining.append(int(float(match.group(1))))
        elif lower.endswith("-reset"):
            seconds = _reset_seconds(value, now)
            if seconds is not None:
                resets.append(seconds)
    return BudgetHint(min(remaining) if remaining else None, max(resets) if resets else None)


def _reset_seconds(value: str, now: Callable[[], datetime]) -> float | None:
    match = _NUMBER.match(value)
    if match:
        number = float(match.group(1))
        if number >= EPOCH_THRESHOLD:
            number -= now().timestamp()
        return max(0.0, number) if math.isfinite(number) else None
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now()).total_seconds())


class Cancelled(Exception):
    """The caller's cancel event was set while it waited for credits or before it sent a request."""


@dataclass
class PacerStats:
    """What the pacer did: credits spent, windows opened, time spent waiting."""

    credits_used: int = 0
    windows: int = 0
    waited_seconds: float = 0.0
    #: Answers whose rate-limit headers (credits left, reset time) the pacer followed.
    header_updates: int = 0


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

    def observe(self, hint: BudgetHint, window_number: int | None = None) -> None:
        """JOOR's own word on the budget, from an answer's rate-limit headers: follow it instead of the estimate.

        Credits left lower this pipeline's share when the account has less left than the share (other
        integrations spent the rest); they never raise it, so the share stays the most this pipeline spends. A
        reset time replaces the estimated end of the window (with the margin, as for an estimated end: whole
        seconds of a header are no sharper than that), and is never longer than one window. An answer to a
        request that took its credits (``window_number``) before the current window opened speaks of a window
        already over: ignored. So is everything while a 429's wait is under way: JOOR's Retry-After rules then.
        """
        if hint.remaining is None and hint.reset_after is None:
            return
        with self._lock:
            if self._window_end is None or self._throttled:
                return
            if window_number is not None and window_number < self.window_number:
                return
            now = self._clock()
            if hint.reset_after is not None:
                reset = min(hint.reset_after, self.window)
                self._window_end = now + reset + self.margin
                self._last_call = now + reset - self.margin
            if hint.remaining is not None:
                self._used = min(self.credits, max(self._used, self.credits - max(0, hint.remaining)))
            self.stats.header_updates += 1

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

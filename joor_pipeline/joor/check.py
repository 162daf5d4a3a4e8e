"""The connection test (``joor-pipeline check``, and the Dagster job ``joor_connection_check``): before a fetch
spends an account's credits, a handful of requests say whether it can work and how long it would take.

At most :data:`MAX_REQUESTS` requests, the v4 token request included: the check authenticates (v4: one token
request), asks the list endpoint for one connection (``start_from=0&count=1``), and reads from that answer JOOR's
total (``response.count``), its ``log_id`` and the rate-limit headers it carries. Nothing is retried but the
client's one re-authentication on a v4 401 (token, list, token, list: the four): a 5xx, a 429 or a dropped
connection is reported, not waited out. Each problem is one line saying what to do. Nothing here writes
anything, anywhere.
"""

from __future__ import annotations

import math
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

import httpx

from joor_pipeline.joor.client import ACCEPTED_MEDIA, JoorClient, RetryPolicy, media_type
from joor_pipeline.joor.errors import AuthError, JoorError, PayloadError, RetriesExhausted
from joor_pipeline.joor.parse import Page, parse_page
from joor_pipeline.joor.transport import Reply

#: Requests a check may send, the token request included (4 only when a v4 token is refused once and renewed).
MAX_REQUESTS: Final = 4
#: One try per request: a check reports what goes wrong instead of waiting it out (a 429 never waits).
CHECK_RETRY: Final = RetryPolicy(max_attempts=1, max_elapsed=0.0)
LIST_PATH: Final = "/v2/connection/"
#: Credits of the v4 token request (a POST), spent once per fetch.
TOKEN_CREDITS: Final = 5
_DNS_HINTS: Final = (
    "name or service not known",
    "nodename nor servname",
    "temporary failure in name resolution",
    "no address associated",
    "getaddrinfo",
    "name resolution",
)
_TLS_HINTS: Final = ("ssl", "tls", "certificate")


@dataclass(frozen=True)
class FetchEstimate:
    """How long a full fetch of ``total`` connections takes at this pipeline's credit share."""

    pages: int
    credits: int
    windows: int
    seconds: float
    #: True when the credits, not the round trips, bound the fetch.
    credit_bound: bool


def estimate_fetch(
    total: int,
    *,
    page_size: int,
    credits: int,
    window: float,
    round_trip: float,
    concurrency: int = 1,
    token_request: bool = False,
) -> FetchEstimate:
    """A full fetch's duration: the windows its credits need, or its round trips, whichever is longer.

    The pages of one window go as fast as the round trips allow (``concurrency`` at a time); each window beyond
    the first is waited for whole. ``round_trip`` is a lower bound when measured on a one-connection page.
    """
    pages = max(1, math.ceil(total / page_size))
    token = TOKEN_CREDITS if token_request else 0
    needed = pages + token
    windows = max(1, math.ceil(needed / credits))
    per_page = round_trip / max(1, concurrency)
    by_round_trips = pages * per_page
    if windows == 1:
        return FetchEstimate(pages, needed, 1, by_round_trips, credit_bound=False)
    in_last_window = pages - ((windows - 1) * credits - token)
    by_credits = (windows - 1) * window + in_last_window * per_page
    return FetchEstimate(pages, needed, windows, max(by_credits, by_round_trips), by_credits >= by_round_trips)


def duration(seconds: float) -> str:
    """``12 ms``, ``48 s``, ``7 min 12 s``, ``2 h 5 min``: a duration as a person reads it."""
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, rest = divmod(round(seconds / 60), 60)
    return f"{hours} h {rest} min" if rest else f"{hours} h"


@dataclass
class ConnectionCheck:
    """What the check found for one account: the facts, and at most one problem (the first that stops it)."""

    account: str
    api_version: str
    environment: str
    base_url: str
    format: str
    page_size: int
    problem: str | None = None
    #: Things worth knowing that do not stop a fetch.
    notes: list[str] = field(default_factory=list)
    total: int | None = None
    log_id: str | None = None
    round_trip: float | None = None
    rate_limit_headers: dict[str, str] = field(default_factory=dict)
    requests: int = 0
    token_requests: int = 0
    estimate: FetchEstimate | None = None
    credits: int = 0
    window: float = 0.0
    concurrency: int = 1

    @property
    def ok(self) -> bool:
        return self.problem is None

    def lines(self) -> list[str]:
        """The report, one fact per line (the problem, if any, last)."""
        auth = "v2 API token" if self.api_version == "v2" else "v4 OAuth2 password grant"
        out = [
            f"account {self.account}: {'ok' if self.ok else 'FAILED'}",
            f"  JOOR            {self.base_url} (JOOR_ENVIRONMENT {self.environment}, API {self.api_version}, "
            f"{auth}, format {self.format})",
        ]
        if self.ok:
            total = f"{self.total:,}" if self.total is not None else "not reported"
            trip = f" in {duration(self.round_trip)}" if self.round_trip is not None else ""
            out.append(
                f"  connections     {total} (JOOR's response.count for GET {LIST_PATH}?start_from=0&count=1, "
                f"answered{trip}, log_id {self.log_id or 'none'})"
            )
        if self.rate_limit_headers:
            shown = ", ".join(f"{name}: {value}" for name, value in self.rate_limit_headers.items())
            out.append(f"  rate limit      {shown}")
        elif self.ok:
            out.append("  rate limit      no rate-limit header in JOOR's answer")
        if self.estimate is not None:
            e = self.estimate
            bound = (
                "the credits, not the round trips, bound it"
                if e.credit_bound
                else "the round trips bound it (measured on a one-connection page: a lower bound)"
            )
            windows = "fits one window" if e.windows == 1 else f"{e.windows} windows"
            out.append(
                f"  full fetch      about {duration(e.seconds)}: {e.pages:,} page(s) of {self.page_size}, "
                f"{e.credits:,} credits at {self.credits} per {self.window:g} s (JOOR_RATE_LIMIT_CREDITS), "
                f"{windows}, concurrency {self.concurrency}; {bound}"
            )
        tokens = f", {self.token_requests} token request(s)" if self.token_requests else ""
        out.append(f"  requests        {self.requests} of at most {MAX_REQUESTS}{tokens}")
        out += [f"  note: {note}" for note in self.notes]
        if self.problem:
            out.append(f"  problem: {self.problem}")
        return out


def check_connection(
    client: JoorClient, *, account: str, in_accounts_file: bool = False, clock: Callable[[], float] = time.monotonic
) -> ConnectionCheck:
    """Authenticate and ask for one connection of the list; the facts and the first problem.

    ``client`` should carry :data:`CHECK_RETRY` (one try per request). ``in_accounts_file`` names the accounts
    file's keys rather than the ``JOOR_*`` variables in what to do.
    """
    s = client.settings
    found = ConnectionCheck(
        account=account,
        api_version=s.api_version,
        environment=s.environment,
        base_url=s.base_url,
        format=s.format,
        page_size=s.page_size,
        credits=s.rate_limit_credits,
        window=s.rate_limit_window,
        concurrency=s.concurrency,
    )
    names = _Names(in_accounts_file)
    started = clock()
    try:
        reply = client.get(LIST_PATH, {"start_from": 0, "count": 1})
    except JoorError as exc:
        found.problem = _request_problem(exc, client, names)
    else:
        found.round_trip = clock() - started
        _judge(found, reply, client, names)
    stats = client.stats
    found.requests = stats.requests
    found.token_requests = stats.token_requests
    found.rate_limit_headers = dict(stats.rate_limit_headers)
    if found.ok and found.total is not None:
        found.estimate = estimate_fetch(
            found.total,
            page_size=s.page_size,
            credits=s.rate_limit_credits,
            window=s.rate_limit_window,
            round_trip=found.round_trip or 0.0,
            concurrency=s.concurrency,
            token_request=s.api_version == "v4",
        )
    return found


class _Names:
    """How the check names a setting in what to do: the variable, or the accounts file's key."""

    def __init__(self, in_file: bool) -> None:
        self.in_file = in_file

    def __call__(self, *variables: str) -> str:
        if not self.in_file:
            return ", ".join(variables)
        secret = {"JOOR_API_TOKEN", "JOOR_CLIENT_SECRET", "JOOR_PASSWORD"}
        keys = [v.removeprefix("JOOR_").lower() + ("_env" if v in secret else "") for v in variables]
        return ", ".join(keys) + " (in JOOR_ACCOUNTS_FILE)"


def _judge(found: ConnectionCheck, reply: Reply, client: JoorClient, names: _Names) -> None:
    """Read the list's answer into ``found``: its facts, or the problem it shows."""
    s = client.settings
    status = reply.status_code
    envelope = _envelope(reply, s.format)
    if envelope is not None:
        found.log_id = envelope.response.log_id
    said = _joor_said(envelope)
    if status in (401, 403):
        if s.api_version == "v2":
            found.problem = (
                f"JOOR rejected the API token (HTTP {status}{said}): check {names('JOOR_API_TOKEN')} is the token "
                f"JOOR support issued for this account, and that JOOR_ENVIRONMENT ({s.environment}) is where it "
                "was issued (production and sandbox tokens differ)"
            )
        else:
            found.problem = (
                f"JOOR rejected the v4 token on the list (HTTP {status}{said}): check {names('JOOR_ACCOUNT_ID')} is "
                "this user's JOOR account id, and that the user may read connections"
            )
        return
    if status == 404:
        found.problem = (
            f"the list endpoint GET {LIST_PATH} is not there (HTTP 404 at {reply.url}{said}): this project assumes "
            f"it (JOOR's reference documents the single-connection endpoints only); check {names('JOOR_BASE_URL')} "
            "is JOOR's API root without /v2, and ask JOOR support whether the account can list its connections"
        )
        return
    if status != 200:
        found.problem = f"JOOR answered HTTP {status} to GET {reply.url}{said}: " + (
            "it did not take the call's content type or format; check JOOR_FORMAT (json or xml)"
            if status in (406, 415)
            else "try again later, and give JOOR support the log_id if it persists"
        )
        return
    asked = ACCEPTED_MEDIA[s.format]
    answered = media_type(reply.headers.get("Content-Type"))
    other = "xml" if s.format == "json" else "json"
    if envelope is None:
        if answered in ACCEPTED_MEDIA[other] or _envelope(reply, other) is not None:
            found.problem = (
                f"JOOR answered {other.upper()} ({answered or 'no Content-Type'}) to a request for "
                f"{s.format.upper()}: set {names('JOOR_FORMAT')} to {other}, or ask JOOR support why the account "
                f"does not serve {s.format.upper()}"
            )
        elif answered and answered not in asked:
            found.problem = (
                f"JOOR answered {answered}, not {s.format.upper()}, at {reply.url}: {names('JOOR_BASE_URL')} may "
                "point at a web page or a proxy rather than JOOR's API root"
            )
        else:
            found.problem = (
                f"the answer at {reply.url} is not JOOR's envelope ({_parse_error(reply, s.format)}): check "
                f"{names('JOOR_BASE_URL')} is JOOR's API root, and give JOOR support the answer if it is"
            )
        return
    response = envelope.response
    if response.code != 0:
        found.problem = (
            f"JOOR answered with an error (response.code {response.code}{said}): give JOOR support the log_id"
        )
        return
    found.total = response.count
    served = len(envelope.connections)
    if response.count is None:
        found.notes.append(
            "JOOR reported no total (response.count): a fetch cannot check that its walk of the list is complete"
        )
    elif served == 1 and response.count == 1 and response.next_start:
        found.notes.append(
            "response.count is 1 while next_start points on: JOOR's count may be the page's length, not the "
            "total this project assumes; a fetch then cannot check that its walk is complete"
        )
    if served > 1:
        found.notes.append(f"asked for 1 connection, JOOR served {served}: it may not honour count (the page size)")
    if answered and answered not in asked:
        found.notes.append(f"JOOR labelled its {s.format.upper()} answer {answered}")


def _envelope(reply: Reply, fmt: str) -> Page | None:
    try:
        return parse_page(reply.content, fmt, source=reply.url)
    except PayloadError:
        return None


def _parse_error(reply: Reply, fmt: str) -> str:
    try:
        parse_page(reply.content, fmt, source=reply.url)
    except PayloadError as exc:
        return exc.message
    return "unreadable"


def _joor_said(envelope: Page | None) -> str:
    if envelope is None:
        return ""
    response = envelope.response
    parts = []
    if response.comment:
        comment = " ".join(response.comment.split())
        parts.append(repr(comment if len(comment) <= 120 else comment[:119] + "…"))
    if response.log_id:
        parts.append(f"log_id {response.log_id}")
    return ", " + ", ".join(parts) if parts else ""


def _request_problem(exc: JoorError, client: JoorClient, names: _Names) -> str:
    """What to do about a request that got no usable answer (the token refused, the network, a 5xx or 429)."""
    s = client.settings
    host = urlsplit(s.base_url).netloc or s.base_url
    if isinstance(exc, AuthError):
        return (
            f"JOOR's token endpoint refused the v4 credentials ({_one_line(exc)}): check "
            f"{names('JOOR_CLIENT_ID', 'JOOR_CLIENT_SECRET', 'JOOR_USERNAME', 'JOOR_PASSWORD')}, and that "
            f"JOOR_ENVIRONMENT ({s.environment}) is where they were issued"
        )
    if isinstance(exc, RetriesExhausted):
        cause = exc.__cause__
        text = f"{type(cause).__name__}: {cause}" if cause is not None else ""
        lower = text.lower()
        if isinstance(cause, httpx.TimeoutException):
            return (
                f"{host} did not answer within {s.timeout:g} s (JOOR_TIMEOUT; {text}): check the network path to "
                f"JOOR (proxy, firewall) and {names('JOOR_BASE_URL')}"
            )
        if isinstance(cause, httpx.ConnectError) and any(hint in lower for hint in _DNS_HINTS):
            return (
                f"cannot resolve {host} (DNS: {text}): check {names('JOOR_BASE_URL')} and JOOR_ENVIRONMENT, and "
                "this machine's DNS"
            )
        if _is_tls(cause) or any(hint in lower for hint in _TLS_HINTS):
            return (
                f"the TLS handshake with {host} failed ({text}): check this machine's CA certificates (behind a "
                "proxy that inspects TLS, point SSL_CERT_FILE at its CA bundle) and that "
                f"{names('JOOR_BASE_URL')} is JOOR's https host"
            )
        if isinstance(cause, httpx.TransportError):
            return f"cannot reach {host} ({text}): check {names('JOOR_BASE_URL')} and the network path to JOOR"
        if "HTTP 429" in str(exc):
            return (
                "JOOR answered 429: the account's rate-limit credits are spent, by this pipeline or another "
                f"integration of the account; try again after JOOR's window ({s.rate_limit_window:g} s at most)"
            )
        return f"{_one_line(exc)}: JOOR is failing; try again later, and tell JOOR support if it persists"
    return _one_line(exc)


def _is_tls(error: BaseException | None) -> bool:
    while error is not None:
        if isinstance(error, ssl.SSLError):
            return True
        error = error.__cause__ or error.__context__
    return False


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())

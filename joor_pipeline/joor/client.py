"""The JOOR API client: authentication, formats, retries, pacing and pagination over one connection pool.

It knows nothing of Dagster or of storage: it yields pages (the exact bytes JOOR sent plus their parsed,
canonical form) and leaves landing them to the caller. Several threads may share one client: the pool, the
pacer, the v4 token and the counters are all safe to use concurrently.

Every request is bounded in time and memory whatever the server does (see :mod:`.transport`: ``JOOR_TIMEOUT``
for the whole request, ``JOOR_MAX_RESPONSE_MB`` for its body). A snapshot is bounded too: at most
``JOOR_MAX_PAGES`` pages, and a cursor that skips connections is an error.

JOOR's documented conventions are followed on every request: ``Accept`` and ``Content-Type`` both name the format
asked for, GETs included (JOOR's conventions page: "calls made without the Content MIME Type are not processed");
the v4 token request keeps its multipart form, whose own content type carries the boundary. The rate-limit
headers of every answer are recorded (:attr:`ClientStats.rate_limit_headers`) and handed to the pacer.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Generator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Final
from urllib.parse import quote

import httpx

from joor_pipeline.joor.errors import (
    AuthError,
    JoorApiError,
    NotFoundError,
    PaginationError,
    PayloadError,
    RetriesExhausted,
)
from joor_pipeline.joor.pacing import (
    RATE_LIMIT_PREFIXES,
    BudgetHint,
    Cancelled,
    CreditPacer,
    OnWait,
    budget_hint,
    rate_limit_headers,
)
from joor_pipeline.joor.parse import Canonical, Page, parse_page
from joor_pipeline.joor.settings import JoorSettings, Secret
from joor_pipeline.joor.shapes import MEDIA_TYPES
from joor_pipeline.joor.transport import Reply, deadline_transport, exchange, redact_url

__all__ = ["ClientStats", "FetchedPage", "JoorClient", "Reply", "RetryPolicy", "parse_retry_after", "redact_url"]

log = logging.getLogger(__name__)

RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
GET_COST: Final = 1
POST_COST: Final = 5
#: Seconds of retrying 5xx and transport errors, on top of the rate-limit windows a request may wait out.
ERROR_BUDGET: Final = 120.0
#: Whole rate-limit windows one request may wait out after 429s: another integration may take the window that
#: follows the one that throttled us, and a third refusal in a row is worth reporting rather than waiting out.
THROTTLE_WINDOWS: Final = 2


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: errors and total time are both capped; backoff is exponential with full jitter.

    ``max_attempts`` counts tries that met a 5xx or a transport error. A 429 is not such a failure but JOOR saying
    when to come back, so it costs no attempt; it is bounded by time instead. ``max_elapsed`` (seconds from the
    first send) defaults to a budget derived from the rate-limit window (:meth:`budget`): a 429 may ask for most
    of a window, which no fixed number of seconds fits.
    """

    max_attempts: int = 6
    max_elapsed: float | None = None
    backoff_base: float = 0.5
    backoff_max: float = 30.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before try ``attempt + 1``."""
        return rng.uniform(0, min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1)))

    def budget(self, window: float) -> float:
        """Seconds one request may keep retrying: ``max_elapsed``, else two rate-limit windows and two minutes."""
        if self.max_elapsed is not None:
            return self.max_elapsed
        return ERROR_BUDGET + THROTTLE_WINDOWS * window


@dataclass
class ClientStats:
    """Counters for one client: what was sent, retried and throttled."""

    requests: int = 0
    retries: int = 0
    throttled: int = 0
    server_errors: int = 0
    transport_errors: int = 0
    token_requests: int = 0
    bytes_received: int = 0
    #: The rate-limit headers JOOR sent (``X-RateLimit-*``, ``RateLimit-*``, ``X-Throttling-*``): each name as sent,
    #: with its last value (a value holding a secret of this client is masked).
    rate_limit_headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FetchedPage:
    """One list page: the exact bytes received and their parsed form."""

    index: int
    start_from: int
    body: bytes
    page: Page
    url: str
    content_type: str

    @property
    def log_id(self) -> str | None:
        return self.page.response.log_id


def parse_retry_after(value: str | None, *, now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now()).total_seconds())


class _V4Token:
    """A cached v4 access token, renewed shortly before it expires (JOOR documents no refresh flow)."""

    def __init__(self) -> None:
        self.value: Secret | None = None
        self.renew_at = 0.0
        self.lock = threading.Lock()


class JoorClient:
    """Talks to one JOOR account (or the sandbox) over a shared httpx connection pool."""

    def __init__(
        self,
        settings: JoorSettings,
        *,
        retry: RetryPolicy | None = None,
        pacer: CreditPacer | None = None,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        max_connections: int | None = None,
    ) -> None:
        """``sleep`` and ``clock`` pace, back off and expire tokens (the pacer made here uses them too); tests
        hand in a fake pair. The per-request deadline always runs on the real clock: it bounds real sockets.
        ``transport`` (for tests) replaces httpx's, and with it the deadline.
        """
        self.settings = settings
        self.retry = retry or RetryPolicy(max_attempts=settings.max_attempts)
        self.pacer = pacer or CreditPacer(
            settings.rate_limit_credits, settings.rate_limit_window, clock=clock, sleep=sleep
        )
        self.retry_budget = self.retry.budget(settings.rate_limit_window)
        self.stats = ClientStats()
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._token = _V4Token()
        self._stats_lock = threading.Lock()
        self._media_type = MEDIA_TYPES[settings.format]
        # Room for every request a concurrent fetch keeps in flight, so none waits for a connection after it has
        # taken its rate-limit credits (the pacer's margin assumes credits are spent right before sending).
        self.max_connections = max_connections or max(10, settings.concurrency)
        limits = httpx.Limits(max_connections=self.max_connections, max_keepalive_connections=self.max_connections)
        self._http = httpx.Client(
            base_url=settings.base_url,
            timeout=httpx.Timeout(settings.timeout, connect=min(10.0, settings.timeout)),
            transport=transport or deadline_transport(limits),
            headers={"User-Agent": "joor-pipeline/0.1 (+httpx)"},
            follow_redirects=False,
        )
        self._validate_credentials()

    def _validate_credentials(self) -> None:
        s = self.settings
        if s.api_version == "v2" and not s.api_token:
            raise AuthError("no v2 API token configured (JOOR_API_TOKEN)", url=s.base_url)
        if s.api_version == "v4" and not all((s.account_id, s.client_id, s.client_secret, s.username, s.password)):
            raise AuthError("incomplete v4 credentials (JOOR_ACCOUNT_ID, JOOR_CLIENT_ID, ...)", url=s.auth_url)

    def __repr__(self) -> str:
        return f"JoorClient({self.settings.api_version}, {self.settings.target}, format={self.settings.format})"

    def __enter__(self) -> JoorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # ---- authentication -------------------------------------------------------------------------------------

    def _auth(self) -> tuple[dict[str, str], dict[str, str], Secret | None]:
        """Headers and query parameters that authenticate one API call, and the v4 token they carry."""
        s = self.settings
        if s.api_version == "v2":
            assert s.api_token is not None
            encoded = base64.b64encode(s.api_token.reveal().encode()).decode()
            return {"Authorization": f"OAuth2 {encoded}"}, {}, None
        assert s.account_id is not None
        token = self._access_token()
        return {"Authorization": f"Bearer {token.reveal()}"}, {"account": s.account_id}, token

    def _access_token(self) -> Secret:
        # The lock is held across the token request: threads that need a token meanwhile wait for this one.
        with self._token.lock:
            if self._token.value is None or self._clock() >= self._token.renew_at:
                self._token.value, expires_in = self._request_token()
                # Renew with a tenth of the lifetime (at most five minutes) to spare, so no call races expiry.
                self._token.renew_at = self._clock() + expires_in - min(300.0, expires_in / 10)
            return self._token.value

    def invalidate_token(self, rejected: Secret | None = None) -> None:
        """Forget the cached v4 token; the next call asks for a new one.

        With ``rejected`` (the token JOOR just refused), only that token is forgotten: when several requests in
        flight are refused at once, the first to get here renews it and the others use the new one.
        """
        with self._token.lock:
            if rejected is None or self._token.value == rejected:
                self._token.value = None

    def _request_token(self) -> tuple[Secret, float]:
        s = self.settings
        assert s.client_secret is not None and s.password is not None
        fields = {
            "client_id": s.client_id or "",
            "client_secret": s.client_secret.reveal(),
            "grant_type": "password",
            "username": s.username or "",
            "password": s.password.reveal(),
        }
        # JOOR documents multipart/form-data; (None, value) parts carry no filename.
        files = {name: (None, value) for name, value in fields.items()}
        response = self._send("POST", s.auth_url, files=files, cost=POST_COST, authenticate=False)
        with self._stats_lock:
            self.stats.token_requests += 1
        url = response.url
        if response.status_code != 200:
            detail = _token_error(response)
            raise AuthError(f"JOOR refused the v4 credentials{detail}", url=url, status=response.status_code)
        try:
            answer = response.json()
            token = str(answer["access_token"])
            expires_in = float(answer.get("expires_in") or 36000)
        except (ValueError, KeyError, TypeError):
            raise PayloadError("token endpoint answer has no access_token", source=url) from None
        return Secret(token), expires_in

    # ---- transport ------------------------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, Any] | None = None,
        files: dict[str, Any] | None = None,
        cost: int = GET_COST,
        authenticate: bool = True,
        cancel: threading.Event | None = None,
        on_wait: OnWait | None = None,
    ) -> Reply:
        """Send with pacing and retries (429, 5xx, transport errors); re-authenticate once on a v4 401.

        ``cancel``, once set, stops the retries and any wait for credits with :class:`Cancelled`. ``on_wait``
        hears of every wait for rate-limit credits (see :class:`CreditPacer`).
        """
        started: float | None = None
        last_transport_error: httpx.TransportError | None = None
        reauthenticated = False
        attempt = 0
        throttled = 0
        v4 = authenticate and self.settings.api_version == "v4"
        while True:
            _check(cancel)
            if v4:
                # A token request due now goes first, so it cannot slip in between this call's credits and its send.
                self._access_token()
            self.pacer.acquire(cost, cancel=cancel, on_wait=on_wait)
            window = self.pacer.window_number
            _check(cancel)
            if started is None:
                # The retry budget runs from the first send: waiting for this pipeline's own credits is not retrying.
                started = self._clock()
            headers = {"Accept": self._media_type}
            if files is None:
                # JOOR does not process a call without a content type, GETs included; a multipart body brings its own.
                headers["Content-Type"] = self._media_type
            query = dict(params or {})
            token: Secret | None = None
            if authenticate:
                auth_headers, auth_params, token = self._auth()
                headers.update(auth_headers)
                query.update(auth_params)
            with self._stats_lock:
                self.stats.requests += 1
            refused = False
            try:
                response = exchange(
                    self._http,
                    method,
                    url,
                    params=query or None,
                    headers=headers,
                    files=files,
                    timeout=self.settings.timeout,
                    max_response_mb=self.settings.max_response_mb,
                )
            except httpx.TransportError as exc:
                # A missed deadline lands here too, and is retried like any transport error: a slow network or an
                # overloaded server may well answer in time on the next try, and every try is itself bounded.
                with self._stats_lock:
                    self.stats.transport_errors += 1
                last_transport_error = exc
                attempt += 1
                problem = f"{type(exc).__name__}: {exc}"
                request_url = redact_url(self._http.build_request(method, url, params=query or None).url)
                delay = self.retry.backoff(attempt, self._rng)
            else:
                last_transport_error = None
                with self._stats_lock:
                    self.stats.bytes_received += len(response.content)
                # The API's own headers only: the v4 token endpoint is another host, whose headers may speak of
                # another budget.
                hint = self._record_rate_limit(response) if authenticate else BudgetHint()
                request_url = response.url
                status = response.status_code
                if status != 429:
                    # A 429 is the pacer's business through exhausted() below, with JOOR's Retry-After.
                    self.pacer.observe(hint, window)
                if status == 401 and v4 and not reauthenticated:
                    # The token may have been revoked or expired early: one fresh token, one more try.
                    reauthenticated = True
                    self.invalidate_token(token)
                    log.info("JOOR answered 401 to %s %s; renewing the v4 token once", method, request_url)
                    continue
                if status not in RETRY_STATUSES:
                    return response
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                if retry_after is None and status == 429:
                    # No Retry-After: a reset time among the rate-limit headers says the same.
                    retry_after = hint.reset_after
                if status == 429:
                    with self._stats_lock:
                        self.stats.throttled += 1
                    throttled += 1
                    refused = True
                    # No sleep here: the pacer now holds every request until JOOR's window resets, this one too.
                    delay = self.pacer.exhausted(retry_after, window)
                    problem = "HTTP 429 (JOOR's rate limit, shared with the account's other integrations)"
                else:
                    with self._stats_lock:
                        self.stats.server_errors += 1
                    attempt += 1
                    problem = f"HTTP {status}"
                    delay = retry_after if retry_after is not None else self.retry.backoff(attempt, self._rng)
            elapsed = self._clock() - started
            if attempt >= self.retry.max_attempts or elapsed + delay > self.retry_budget:
                tries = attempt + throttled
                of_which = f" ({throttled} answered 429)" if throttled else ""
                # The transport error behind the last try stays reachable (TLS, DNS), never in the message's place.
                raise RetriesExhausted(
                    f"{method} {request_url} failed after {tries} attempt(s){of_which} in {elapsed:.1f}s "
                    f"(retry budget {self.retry_budget:g}s, {self.retry.max_attempts} tries on errors); "
                    f"last error: {problem}"
                ) from last_transport_error
            with self._stats_lock:
                self.stats.retries += 1
            if refused:
                when = f"when its window resets in {delay:.0f}s" if delay else "now: that window has been waited out"
                log.warning("%s %s: %s; retrying %s", method, request_url, problem, when)
                continue
            log.warning(
                "%s %s: %s; retry %d/%d in %.2fs",
                method,
                request_url,
                problem,
                attempt,
                self.retry.max_attempts - 1,
                delay,
            )
            self._sleep(delay)

    def _record_rate_limit(self, response: Reply) -> BudgetHint:
        """Record the answer's rate-limit headers (secrets masked); what they say of the budget."""
        pairs = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in response.headers.raw
            if name.lower().startswith(RATE_LIMIT_PREFIXES_BYTES)
        ]
        if not pairs:
            return BudgetHint()
        secrets = self._secret_values()

        def masked(value: str) -> str:
            # Before any value is cut short, so no part of a secret survives a cut.
            for secret in secrets:
                value = value.replace(secret, "********")
            return value

        found = rate_limit_headers((name, masked(value)) for name, value in pairs)
        with self._stats_lock:
            self.stats.rate_limit_headers.update(found)
        return budget_hint(found)

    def _secret_values(self) -> list[str]:
        """Every secret this client holds, as it could appear in text (the v2 token base64-encoded too)."""
        s = self.settings
        values = [secret.reveal() for secret in (s.api_token, s.client_secret, s.password) if secret]
        if s.api_token:
            values.append(base64.b64encode(s.api_token.reveal().encode()).decode())
        token = self._token.value
        if token:
            values.append(token.reveal())
        return [v for v in values if len(v) >= 4]

    def get(self, path: str, params: dict[str, Any] | None = None, *, cancel: threading.Event | None = None) -> Reply:
        """One authenticated, paced GET with the retry policy's retries; the answer whatever its status.

        For callers that judge the answer themselves (``joor-pipeline check``); the pages of a fetch go through
        :meth:`iter_connection_pages`.
        """
        return self._send("GET", path, params=params, cancel=cancel)

    def _get_page(
        self,
        path: str,
        params: dict[str, Any] | None = None,
        *,
        cancel: threading.Event | None = None,
        canonical: bool = True,
        on_wait: OnWait | None = None,
    ) -> tuple[Reply, Page]:
        """GET one envelope; turn HTTP errors and non-zero response codes into clear exceptions."""
        response = self._send("GET", path, params=params, cancel=cancel, on_wait=on_wait)
        url = response.url
        status = response.status_code
        if status != 200:
            page = _try_parse(response, self.settings.format, url)
            block = page.response if page else None
            kwargs = {
                "url": url,
                "status": status,
                "code": block.code if block else None,
                "comment": block.comment if block else None,
                "log_id": block.log_id if block else None,
            }
            if status in (401, 403):
                raise AuthError("JOOR refused the credentials", **kwargs)  # type: ignore[arg-type]
            if status == 404:
                raise NotFoundError("not found", **kwargs)  # type: ignore[arg-type]
            raise JoorApiError("JOOR request failed", **kwargs)  # type: ignore[arg-type]
        try:
            page = parse_page(response.content, self.settings.format, source=url, canonical=canonical)
        except PayloadError as exc:
            answered = media_type(response.headers.get("Content-Type"))
            if answered and answered not in ACCEPTED_MEDIA[self.settings.format]:
                raise PayloadError(
                    f"{exc.message}; JOOR answered Content-Type {answered} to a request for {self._media_type} "
                    f"(JOOR_FORMAT={self.settings.format})",
                    source=exc.source,
                    log_id=exc.log_id,
                ) from None
            raise
        if page.response.code != 0:
            raise JoorApiError(
                "JOOR answered with an error",
                url=url,
                status=status,
                code=page.response.code,
                comment=page.response.comment,
                log_id=page.response.log_id,
            )
        return response, page

    # ---- endpoints ------------------------------------------------------------------------------------------

    def iter_connection_pages(
        self,
        *,
        page_size: int | None = None,
        start_from: int = 0,
        concurrency: int | None = None,
        canonical: bool = True,
        on_wait: OnWait | None = None,
    ) -> Generator[FetchedPage, None, None]:
        """Every page of ``GET /v2/connection/``, in order, following ``next_start`` until JOOR says there is no more.

        The first page is fetched alone. When it ends where its ``next_start`` points and its ``response.count``
        (ASSUMED: the number of connections in the account) says more remain, the remaining offsets are known: up
        to ``concurrency`` (default: the settings'; at most the client's ``max_connections``) of them are fetched at
        once, and the pages are still yielded strictly in order, each checked as in a page-by-page walk. Any
        departure from that plan (a page with another ``next_start``, an account that grew meanwhile) is followed
        page by page from there, so the pages are those a page-by-page walk would yield. A page that fails ends
        the walk with its error once the pages before it have been yielded; requests still in flight are abandoned
        and waited for, so no thread outlives the walk.

        ``canonical=False`` leaves JSON connections as parsed (see ``parse_json``): enough to count and land them,
        without the cost of spelling every leaf as text. ``on_wait(reason, seconds)`` hears of every wait for
        rate-limit credits. More than ``JOOR_MAX_PAGES`` pages, or a ``next_start`` that skips connections, ends
        the walk with a :class:`PaginationError`.
        """
        size = page_size or self.settings.page_size
        workers = self.settings.concurrency if concurrency is None else concurrency
        if workers < 1:
            raise ValueError(f"concurrency must be at least 1, got {workers}")
        # More threads than pooled connections would queue for a connection with their credits already taken.
        workers = min(workers, self.max_connections)
        fetch = partial(self._list_page, count=size, canonical=canonical, on_wait=on_wait)
        fetched = fetch(0, start_from)
        yield fetched
        next_start = self._next_start(fetched)
        offsets = _planned_offsets(fetched, next_start) if workers > 1 else range(0)
        if offsets:
            # A count that promises more pages than the cap is refused before a single one is requested.
            self._check_page_cap(fetched, len(offsets))
            fetched, next_start = yield from self._fetch_planned(offsets, fetched.index + 1, fetch, workers)
        while next_start is not None:
            self._check_page_cap(fetched, 1)
            fetched = fetch(fetched.index + 1, next_start)
            yield fetched
            next_start = self._next_start(fetched)

    def _check_page_cap(self, last: FetchedPage, more: int) -> None:
        """A PaginationError if ``more`` pages after ``last`` would pass ``JOOR_MAX_PAGES``."""
        cap = self.settings.max_pages
        if last.index + 1 + more <= cap:
            return
        if more > 1:
            reason = (
                f"JOOR reports {last.page.response.count} connections, {last.index + 1 + more} pages of "
                f"{len(last.page.connections)}"
            )
        else:
            reason = f"page {last.index} (log_id {last.log_id}) points on to next_start {last.page.response.next_start}"
        raise PaginationError(
            f"the snapshot would pass {cap:,} pages (JOOR_MAX_PAGES): {reason}; stopping, nothing is kept"
        )

    def _list_page(
        self,
        index: int,
        start_from: int,
        cancel: threading.Event | None = None,
        *,
        count: int,
        canonical: bool = True,
        on_wait: OnWait | None = None,
    ) -> FetchedPage:
        response, page = self._get_page(
            "/v2/connection/",
            {"start_from": start_from, "count": count},
            cancel=cancel,
            canonical=canonical,
            on_wait=on_wait,
        )
        return FetchedPage(
            index=index,
            start_from=start_from,
            body=response.content,
            page=page,
            url=response.url,
            content_type=response.headers.get("Content-Type", ""),
        )

    def _fetch_planned(
        self, offsets: range, index: int, fetch: Callable[..., FetchedPage], workers: int
    ) -> Generator[FetchedPage, None, tuple[FetchedPage, int | None]]:
        """Yield the pages at ``offsets`` in order, ``workers`` requests at a time.

        Returns the last page yielded and where a page-by-page walk goes on (None: nowhere).
        """
        cancel = threading.Event()
        # Twice as many pages requested as threads: a slow page (a retry) does not idle the others, and no more
        # than this many pages are ever held in memory.
        todo = iter(enumerate(offsets, start=index))
        pending: deque[tuple[int, Future[FetchedPage]]] = deque()
        executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="joor-fetch")

        def submit() -> None:
            planned = next(todo, None)
            if planned is not None:
                i, offset = planned
                pending.append((offset, executor.submit(fetch, i, offset, cancel)))

        try:
            for _ in range(2 * workers):
                submit()
            while pending:
                _, future = pending.popleft()
                fetched = future.result()
                submit()
                yield fetched
                next_start = self._next_start(fetched)
                if next_start is None:
                    return fetched, None
                if not pending or next_start != pending[0][0]:
                    if pending:
                        log.warning(
                            "page %d (log_id %s): next_start %d is not the planned %d; continuing page by page",
                            fetched.index,
                            fetched.log_id,
                            next_start,
                            pending[0][0],
                        )
                    return fetched, next_start
            raise AssertionError("unreachable: the last planned page returns")  # pragma: no cover
        finally:
            cancel.set()
            for _, future in pending:
                future.cancel()
            executor.shutdown(wait=True, cancel_futures=True)

    def _next_start(self, fetched: FetchedPage) -> int | None:
        """Where the walk goes after ``fetched``: None when JOOR says there is no more.

        An error if it would loop (no advance) or lose connections (a jump past the end of this page). A cursor
        that falls short of the page's end repeats connections instead, which the flatten keeps once: a warning.
        """
        page = fetched.page
        next_start = page.response.next_start
        if not next_start or not page.connections:
            return None
        if next_start <= fetched.start_from:
            raise PaginationError(
                f"next_start {next_start} does not advance past start_from {fetched.start_from} "
                f"(page {fetched.index}, log_id {page.response.log_id}); stopping instead of looping"
            )
        expected = fetched.start_from + len(page.connections)
        if next_start > expected:
            raise PaginationError(
                f"next_start {next_start} skips past the end of page {fetched.index} (log_id {page.response.log_id}):"
                f" start_from {fetched.start_from} + {len(page.connections)} connections is {expected}, so the "
                f"{next_start - expected} connection(s) in between would be lost"
            )
        if next_start != expected:
            log.warning(
                "page %d (log_id %s): next_start %d, but start_from %d + %d connections is %d",
                fetched.index,
                page.response.log_id,
                next_start,
                fetched.start_from,
                len(page.connections),
                expected,
            )
        return next_start

    def _one(self, path: str) -> Canonical:
        _, page = self._get_page(path)
        if len(page.connections) != 1:
            raise PayloadError(
                f"expected one connection, got {len(page.connections)}", source=path, log_id=page.response.log_id
            )
        return page.connections[0]

    def get_connection_by_customer_code(self, customer_code: str) -> Canonical:
        """``GET /v2/connection/customer_code/<customer_code>/``."""
        return self._one(f"/v2/connection/customer_code/{quote(customer_code, safe='')}/")

    def get_connection(self, connection_id: int | str) -> Canonical:
        """``GET /v2/connection/<connection_id>/`` (the connection's ``customer_account_id``)."""
        return self._one(f"/v2/connection/{quote(str(connection_id), safe='')}/")


def _planned_offsets(first: FetchedPage, next_start: int | None) -> range:
    """The offsets left after the first page, when it tells them; else an empty range (walk page by page).

    Only a page that ends exactly where ``next_start`` points, below a larger ``response.count``, gives a plan;
    its length is the page size JOOR serves (which may be less than the size asked for).
    """
    step = len(first.page.connections)
    total = first.page.response.count
    if next_start is None or step == 0 or next_start != first.start_from + step or total is None:
        return range(0)
    return range(next_start, total, step)


RATE_LIMIT_PREFIXES_BYTES: Final = tuple(prefix.encode() for prefix in RATE_LIMIT_PREFIXES)
#: The media types that carry each format (JOOR's XML may come as text/xml).
ACCEPTED_MEDIA: Final = {"json": frozenset({"application/json"}), "xml": frozenset({"application/xml", "text/xml"})}


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type header, lower-cased, without parameters ("" when absent)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("the fetch this request belongs to has stopped")


def _try_parse(response: Reply, fmt: str, url: str) -> Page | None:
    """An error answer's envelope when it has one (JOOR may answer errors as JSON whatever was asked)."""
    for candidate in (fmt, "json" if fmt == "xml" else "xml"):
        try:
            return parse_page(response.content, candidate, source=url)
        except PayloadError:
            continue
    return None


def _token_error(response: Reply) -> str:
    try:
        answer = response.json()
    except ValueError:
        return f" (HTTP {response.status_code})"
    if isinstance(answer, dict):
        parts = [str(answer[k]) for k in ("error", "error_description") if answer.get(k)]
        if parts:
            return f": {' - '.join(parts)}"
    return f" (HTTP {response.status_code})"

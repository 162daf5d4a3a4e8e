"""A JOOR API emulator over real HTTP: v2 connection endpoints, the v4 token endpoint, metering and faults.

It answers the way JOOR documents (and, where JOOR is silent, the way the project's notes assume): an envelope
with a ``response`` block on every v2 answer, content negotiation that refuses requests without a supported
``Accept``, and (strict, by default) a v2 call without a ``Content-Type`` naming JSON or XML refused as JOOR's
conventions page says ("calls made without the Content MIME Type are not processed"); OAuth2 (v2 token) or
Bearer + ``account`` (v4) authentication; a per-account fixed window of credits past which it answers 429, and,
when asked, rate-limit headers on every metered answer (``<prefix>-Limit``, ``-Remaining``, ``-Reset``: JOOR's
own names are not documented). The list's ``response.count`` is the account's total. Faults (latency, scripted
or random 5xx/429, dropped and truncated responses, non-advancing or skipping cursors, pages overlapping the
previous one, a list that shifts mid-walk as retailers connect or disconnect, JOOR-level error codes, another
integration spending the account's credits) let clients prove their retry and paging logic against real
sockets. The metering runs on an injectable clock, so a test can wait out a 300 s window without sleeping. The
server is the stdlib's ``ThreadingHTTPServer``; nothing here imports Dagster.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hmac
import math
import random
import re
import secrets
import signal
import socket
import socketserver
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from email.utils import collapse_rfc2231_value
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final
from urllib.parse import parse_qs, unquote, urlsplit

from joor_pipeline.sandbox.data import generate_connections
from joor_pipeline.sandbox.render import JSON_CONTENT_TYPE, XML_CONTENT_TYPE, render, render_json

#: ``wrong_format`` answers in the other format than the one asked; ``other_envelope`` answers 200 with JSON that
#: is not JOOR's v2 envelope (v4's ``{"data": [], "errors": []}``).
SCRIPT_ENTRIES: Final = frozenset(
    {"500", "502", "503", "429", "drop", "truncate", "garbage", "wrong_format", "other_envelope", "ok"}
)
#: Requests remembered by :attr:`Sandbox.recent`.
RECENT_REQUESTS: Final = 1000
RANDOM_ERROR_STATUSES: Final = (503, 500, 502)
GARBAGE_BODY: Final = b"upstream hiccup: <<this is neither JSON nor XML"
MAX_BODY_BYTES: Final = 1 << 20
REFRESH_EXPIRES_IN: Final = 1800

_DIGITS = re.compile(r"\d+")
_SIGNED_DIGITS = re.compile(r"-?\d+")
_STATUS_ENTRY = re.compile(r"[45]\d\d")
#: The media types a v2 call's Content-Type may name (JOOR's XML also goes as text/xml).
CONTENT_TYPES: Final = frozenset({"application/json", "application/xml", "text/xml"})


@dataclass
class Faults:
    """Faults injected into API requests (``/v2`` and ``/auth``); all off by default, mutable while serving."""

    latency_ms: float = 0.0
    error_rate: float = 0.0
    rate_limit_storm: int = 0
    drop_rate: float = 0.0
    truncate_rate: float = 0.0
    script: list[str] = field(default_factory=list)
    stuck_pagination: bool = False
    #: next_start jumps this many connections past the end of every page but the last (a cursor losing data).
    pagination_gap: int = 0
    error_code: int | None = None
    #: Another integration of the same account spending this many credits per second, as far as the window allows.
    competing_rate: float = 0.0
    #: next_start falls this many connections short of the page's end: the next page repeats them, nothing is lost.
    cursor_lag: int = 0
    #: Every list page after the first starts this many connections before its ``start_from`` (next_start and
    #: count unchanged): pages repeat connections of the page before, and as many are never served.
    page_overlap: int = 0
    #: A shifting list: each walk of the list (a request at ``start_from`` 0 begins one) takes the next entry, and
    #: once ``list_shift_after`` pages of that walk are served, that many retailers connect (a positive entry:
    #: new connections at the head of the list) or disconnect (a negative one: removed from its head).
    list_shifts: list[int] = field(default_factory=list)
    list_shift_after: int = 1

    def __post_init__(self) -> None:
        unknown = [entry for entry in self.script if not _valid_script_entry(entry)]
        if unknown:
            raise ValueError(f"unknown fault script entries {unknown}; expected {sorted(SCRIPT_ENTRIES)}")


def _valid_script_entry(entry: str) -> bool:
    # Any 4xx/5xx status is accepted too, beyond the documented ones, so a test can ask for e.g. a 504.
    return entry in SCRIPT_ENTRIES or bool(_STATUS_ENTRY.fullmatch(entry))


@dataclass
class SandboxConfig:
    """How the sandbox behaves: dataset, credentials, metering and faults."""

    connections: int = 250
    seed: int = 7
    host: str = "127.0.0.1"
    port: int = 0
    api_token: str = "sandbox-token"
    account_id: str = "24180"
    client_id: str = "sandbox-client"
    client_secret: str = "sandbox-client-secret"
    username: str = "sandbox-user"
    password: str = "sandbox-password"
    token_ttl: int = 36000
    rate_limit_credits: int = 300
    rate_limit_window: float = 300.0
    retry_after: bool = True
    default_page_size: int = 50
    max_page_size: int = 1000
    faults: Faults = field(default_factory=Faults)
    #: Refuse a v2 call whose Content-Type is not JSON or XML, as JOOR documents; False accepts any.
    require_content_type: bool = True
    #: With metering on, send ``<prefix>-Limit``, ``<prefix>-Remaining`` and ``<prefix>-Reset`` (seconds until
    #: the window resets) on every metered answer, e.g. ``"X-RateLimit"``; None sends none. JOOR says its
    #: answers carry such headers but not their names.
    rate_limit_header_prefix: str | None = None


@dataclass(frozen=True)
class SeenRequest:
    """One request as the sandbox received it: what a test checks a client sends."""

    method: str
    path: str
    accept: str | None
    content_type: str | None


@dataclass
class SandboxStats:
    """Counters of what the sandbox served; read them after the client is done."""

    requests: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    credits_used: int = 0
    throttled: int = 0
    tokens_issued: int = 0
    max_concurrent: int = 0
    dropped: int = 0
    in_flight: int = 0
    #: Credits spent by other integrations of the account (``Sandbox.spend``, ``Faults.competing_rate``).
    competing_credits: int = 0


class Sandbox:
    """A running emulator: binds on construction and serves from a daemon thread until ``close()``.

    ``clock`` and ``sleep`` drive the rate-limit window, token expiry and injected latency; a test hands in the
    same fake pair as the client's, so both sides see one timeline and nothing waits for real.

    ``accounts`` are more JOOR accounts served on the same address, each with its own credentials, data, credit
    budget and stats (``sandbox.accounts[i]``): a request goes to the account whose v2 token, v4 bearer token or
    v4 client id and username it carries, and to this sandbox's own account otherwise.
    """

    def __init__(
        self,
        config: SandboxConfig,
        *,
        connections: list[dict[str, Any]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        accounts: Sequence[SandboxConfig] = (),
        _serve: bool = True,
    ) -> None:
        self.config = config
        self._clock = clock
        self._sleep = sleep
        self.connections: list[dict[str, Any]] = (
            connections if connections is not None else generate_connections(config.connections, config.seed)
        )
        self.stats = SandboxStats()
        #: The last requests received (method, path, Accept, Content-Type), oldest first.
        self.recent: deque[SeenRequest] = deque(maxlen=RECENT_REQUESTS)
        self._lock = threading.Lock()
        self._by_code = {str(c["customer_code"]): c for c in self.connections}
        self._by_id = {_id_key(c["customer_account_id"]): c for c in self.connections}
        self._tokens: dict[str, float] = {}
        self._window_start: float | None = None
        self._window_used = 0
        # Up to when the competing integration's spending has been charged, and its fraction of a credit.
        self._competitor_at: float | None = None
        self._competitor_carry = 0.0
        self._fault_rng = random.Random(config.seed)
        self._log_rng = random.Random(f"log_id:{config.seed}")
        # The shifting-list fault: pages served in the current walk, the shift still due in it, retailers added.
        self._walk_pages = 0
        self._due_shift = 0
        self._connected = 0
        self._closed = False
        self.accounts = [Sandbox(extra, clock=clock, sleep=sleep, _serve=False) for extra in accounts]
        if not _serve:  # another account of a sandbox that serves it
            self.base_url = self.auth_url = ""
            return
        self._server = _Server((config.host, config.port), self)
        self.base_url = f"http://{self._server.server_name}:{self._server.server_port}"
        self.auth_url = f"{self.base_url}/auth/"
        for other in self.accounts:
            other.base_url, other.auth_url = self.base_url, self.auth_url
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="joor-sandbox", daemon=True
        )
        self._thread.start()

    @property
    def faults(self) -> Faults:
        """The live fault settings; mutate them (or assign new ones) while the server runs."""
        return self.config.faults

    @faults.setter
    def faults(self, value: Faults) -> None:
        with self._lock:
            self.config.faults = value

    def spend(self, credits: int) -> int:
        """Another integration of the account spends ``credits`` now, as far as the current window allows.

        Returns the credits it got; the rest of its requests were refused, as JOOR would refuse ours.
        """
        now = self._clock()
        with self._lock:
            self._charge_competitor(now)
            return self._charge_other(now, credits)

    def revoke_tokens(self) -> None:
        """Invalidate every v4 access token issued so far."""
        with self._lock:
            self._tokens.clear()

    def reset_stats(self) -> None:
        """Zero the counters, in place, so references to ``stats`` stay valid."""
        with self._lock:
            in_flight = self.stats.in_flight
            for f in dataclasses.fields(SandboxStats):
                setattr(self.stats, f.name, {} if f.name == "by_status" else 0)
            self.stats.in_flight = in_flight
            self.stats.max_concurrent = in_flight
            self._competitor_at = None

    def reset_window(self) -> None:
        """Forget the account's rate-limit window: the next request opens a fresh one (a benchmark's next run)."""
        with self._lock:
            self._window_start = None
            self._window_used = 0

    def close(self) -> None:
        """Stop serving, hang up on idle keep-alive connections and release the port."""
        if self._closed or not hasattr(self, "_server"):
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._server.hang_up_all()
        self._thread.join()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- bookkeeping used by the handler threads -------------------------------------------------------------

    def _enter(self, seen: SeenRequest | None = None) -> None:
        with self._lock:
            if seen is not None:
                self.recent.append(seen)
            self.stats.requests += 1
            self.stats.in_flight += 1
            self.stats.max_concurrent = max(self.stats.max_concurrent, self.stats.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.stats.in_flight -= 1

    def _record(self, status: int) -> None:
        with self._lock:
            self.stats.by_status[int(status)] = self.stats.by_status.get(int(status), 0) + 1
            if status == HTTPStatus.TOO_MANY_REQUESTS:
                self.stats.throttled += 1

    def _record_drop(self) -> None:
        with self._lock:
            self.stats.dropped += 1

    def _log_id(self) -> str:
        with self._lock:
            return str(uuid.UUID(int=self._log_rng.getrandbits(128), version=4))

    def _next_fault(self, connection_get: bool) -> str | None:
        """The fault for this request, consuming script entries and storm budget; None to serve normally."""
        faults = self.config.faults
        if faults.latency_ms > 0:
            self._sleep(faults.latency_ms / 1000)
        with self._lock:
            if faults.script:
                # A script entry decides the request on its own, "ok" included: scripts must be exact.
                entry = faults.script.pop(0)
                return None if entry == "ok" else entry
            if faults.rate_limit_storm > 0:
                faults.rate_limit_storm -= 1
                return "429"
            rng = self._fault_rng
            if faults.drop_rate > 0 and rng.random() < faults.drop_rate:
                return "drop"
            if faults.truncate_rate > 0 and rng.random() < faults.truncate_rate:
                return "truncate"
            if connection_get and faults.error_rate > 0 and rng.random() < faults.error_rate:
                return str(rng.choice(RANDOM_ERROR_STATUSES))
        return None

    def _tenant(self, authorization: str | None, form: Mapping[str, str] | None) -> Sandbox:
        """The account (this one or one of ``accounts``) a request's credentials belong to; this one if none."""
        for candidate in self.accounts:
            if candidate._claims(authorization, form):
                return candidate
        return self

    def _v2_token_matches(self, credential: str) -> bool:
        """A v2 ``OAuth2 <base64 of the token>`` credential is this account's token (compared in constant time)."""
        try:
            decoded = base64.b64decode(credential, validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(decoded, self.config.api_token.encode("utf-8"))

    def _claims(self, authorization: str | None, form: Mapping[str, str] | None) -> bool:
        if form is not None:
            return _same(form.get("client_id", ""), self.config.client_id) & _same(
                form.get("username", ""), self.config.username
            )
        scheme, _, credential = (authorization or "").strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() == "oauth2":
            return self._v2_token_matches(credential)
        if scheme.lower() == "bearer":
            with self._lock:
                return credential in self._tokens
        return False

    def _authenticate(self, authorization: str | None, account: str | None) -> bool:
        """A v2 token (``OAuth2 <base64>``) or a live v4 token (``Bearer``) with the right ``account``."""
        if not authorization:
            return False
        scheme, _, credential = authorization.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() == "oauth2":
            return self._v2_token_matches(credential)
        if scheme.lower() == "bearer":
            if account is None or not _same(account, self.config.account_id):
                return False
            with self._lock:
                expiry = self._tokens.get(credential)
            return expiry is not None and self._clock() < expiry
        return False

    def _spend(self, cost: int) -> float | None:
        """Charge the account ``cost`` credits; None when allowed, else the seconds until its window resets."""
        config = self.config
        now = self._clock()
        with self._lock:
            if config.rate_limit_credits <= 0:
                self.stats.credits_used += cost
                return None
            self._charge_competitor(now)
            self._open_window(now)
            assert self._window_start is not None
            if self._window_used + cost > config.rate_limit_credits:
                return self._window_start + config.rate_limit_window - now
            self._window_used += cost
            self.stats.credits_used += cost
            return None

    def _budget_headers(self) -> dict[str, str]:
        """The rate-limit headers of a metered answer (none unless ``rate_limit_header_prefix`` is set)."""
        config = self.config
        prefix = config.rate_limit_header_prefix
        if not prefix or config.rate_limit_credits <= 0:
            return {}
        now = self._clock()
        with self._lock:
            self._open_window(now)
            assert self._window_start is not None
            left = max(0, config.rate_limit_credits - self._window_used)
            reset = max(0.0, self._window_start + config.rate_limit_window - now)
        return {
            f"{prefix}-Limit": str(config.rate_limit_credits),
            f"{prefix}-Remaining": str(left),
            f"{prefix}-Reset": str(math.ceil(reset)),
        }

    def _list_slice(self, start_from: int, count: int) -> tuple[list[dict[str, Any]], int]:
        """The connections one list page serves and the account's total, the list faults applied."""
        faults = self.config.faults
        with self._lock:
            if start_from == 0:
                self._walk_pages = 0
                self._due_shift = faults.list_shifts.pop(0) if faults.list_shifts else 0
            if self._due_shift and self._walk_pages >= faults.list_shift_after:
                self._shift(self._due_shift)
                self._due_shift = 0
            self._walk_pages += 1
            first = max(0, start_from - faults.page_overlap) if start_from > 0 else 0
            return self.connections[first : first + count], len(self.connections)

    def _shift(self, delta: int) -> None:
        """Retailers connect (``delta`` > 0, at the head of the list) or disconnect (< 0, from its head)."""
        if delta < 0:
            gone = self.connections[:-delta]
            del self.connections[:-delta]
            for connection in gone:
                self._by_code.pop(str(connection["customer_code"]), None)
                self._by_id.pop(_id_key(connection["customer_account_id"]), None)
            return
        template = self.connections or [generate_connections(1, self.config.seed)[0]]
        joined = []
        for _ in range(delta):
            self._connected += 1
            connection = dict(template[self._connected % len(template)])
            connection["customer_account_id"] = 900_000_000 + self._connected
            connection["customer_code"] = f"JOINED-{self._connected}"
            joined.append(connection)
            self._by_code[connection["customer_code"]] = connection
            self._by_id[_id_key(connection["customer_account_id"])] = connection
        self.connections[:0] = joined

    def _open_window(self, now: float) -> None:
        """JOOR's fixed window: it starts with the first request after the previous one ended."""
        if self._window_start is None or now >= self._window_start + self.config.rate_limit_window:
            self._window_start = now
            self._window_used = 0

    def _charge_other(self, now: float, credits: int) -> int:
        """Charge another integration's ``credits`` to the window open at ``now``; the credits it got."""
        if self.config.rate_limit_credits <= 0 or credits <= 0:
            return 0
        self._open_window(now)
        granted = min(credits, max(0, self.config.rate_limit_credits - self._window_used))
        self._window_used += granted
        self.stats.competing_credits += granted
        return granted

    def _charge_competitor(self, now: float) -> None:
        """Charge what ``Faults.competing_rate`` spent since it was last charged, window by window.

        The competitor is simulated lazily, when the account is next metered, so it needs no thread and follows
        an injected clock. It asks for credits at a steady rate, from its first whole credit on.
        """
        rate = self.config.faults.competing_rate
        since = self._competitor_at
        self._competitor_at = now
        if rate <= 0 or since is None:
            self._competitor_carry = 0.0
            return
        window = self.config.rate_limit_window
        # Past windows only count in the stats; a very long pause is not replayed a window at a time.
        t = max(since, now - 1000 * window)
        while t < now:
            self._open_window(t)
            assert self._window_start is not None
            end = min(now, self._window_start + window)
            wanted = self._competitor_carry + rate * (end - t)
            whole = int(wanted)
            self._competitor_carry = wanted - whole
            self._charge_other(t, whole)
            t = end

    def _issue_token(self) -> dict[str, Any]:
        token = secrets.token_hex(32)
        now = self._clock()
        with self._lock:
            # Forget expired tokens so a long benchmark does not grow the table without bound.
            for stale in [t for t, expiry in self._tokens.items() if expiry <= now]:
                del self._tokens[stale]
            self._tokens[token] = now + self.config.token_ttl
            self.stats.tokens_issued += 1
        return {
            "access_token": token,
            "expires_in": self.config.token_ttl,
            "refresh_token": secrets.token_hex(32),
            "refresh_expires_in": REFRESH_EXPIRES_IN,
            "token_type": "Bearer",
            "scope": "profile email",
            "not-before-policy": 0,
            "session_state": str(uuid.uuid4()),
        }

    def _find_by_code(self, code: str) -> dict[str, Any] | None:
        return self._by_code.get(code)

    def _find_by_id(self, raw: str) -> dict[str, Any] | None:
        if not _SIGNED_DIGITS.fullmatch(raw):
            return None
        return self._by_id.get(str(int(raw)))


def _id_key(value: Any) -> str:
    """Lookup key of a customer_account_id, which may arrive as an int or a numeric string."""
    text = str(value)
    return str(int(text)) if _SIGNED_DIGITS.fullmatch(text) else text


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that knows its sandbox and can hang up on every open connection."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN, a DNS round trip a loopback server does not need.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = host.decode() if isinstance(host, bytes) else str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def hang_up_all(self) -> None:
        """Shut down every open client socket so idle keep-alive handler threads exit now."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-response (timeouts, dropped pools) are normal here, not worth a traceback.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """One request: route, apply faults, negotiate, authenticate, meter, answer."""

    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "JOORSandbox/1.0"
    sys_version = ""
    # Idle keep-alive connections are closed after this many seconds of silence.
    timeout = 60
    # Headers and body leave in one segment, with Nagle off: split small writes cost 40 ms of delayed ACK each.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests and benchmarks read stats, not access logs."""

    def do_GET(self) -> None:
        """Dispatch."""
        self._dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = do_GET

    # --- plumbing --------------------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        primary = self.server.sandbox
        sandbox = primary._tenant(self.headers.get("Authorization"), None) if primary.accounts else primary
        seen = SeenRequest(self.command, self.path, self.headers.get("Accept"), self.headers.get("Content-Type"))
        sandbox._enter(seen)
        try:
            self._truncate = False
            self._format: str | None = None
            self._rate_headers: dict[str, str] = {}
            body = self._read_body()
            if body is None:
                return
            if primary.accounts and urlsplit(self.path).path.rstrip("/") == "/auth":
                # A v4 token request names its account by its client credentials, in the body.
                form = parse_form(self.headers.get("Content-Type", ""), body) or {}
                routed = primary._tenant(None, form)
                if routed is not sandbox:
                    sandbox._leave()
                    sandbox = routed
                    sandbox._enter(seen)
            self._handle(sandbox, body)
        finally:
            sandbox._leave()

    def _read_body(self) -> bytes | None:
        """The request body, or None once a 413/400 has been sent."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length_header = self.headers.get("Content-Length")
        if not length_header:
            return b""
        if not _DIGITS.fullmatch(length_header.strip()):
            self.close_connection = True
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": "invalid_request"})
            return None
        length = int(length_header)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            self._send_json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": "invalid_request"})
            return None
        return self.rfile.read(length)

    def _read_chunked(self) -> bytes | None:
        chunks: list[bytes] = []
        total = 0
        while True:
            size_line = self.rfile.readline(65537).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                size = -1
            if size < 0 or total + size > MAX_BODY_BYTES:
                self.close_connection = True
                self._send_json(HTTPStatus.BAD_REQUEST, {"error": "invalid_request"})
                return None
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            total += size
            self.rfile.readline(65537)

    def _send(self, status: int, body: bytes, content_type: str, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**self._rate_headers, **(headers or {})}.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body[: len(body) // 2] if self._truncate else body)
        self.server.sandbox._record(status)
        if self._truncate:
            self._hang_up()

    def _send_json(self, status: int, document: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> None:
        self._send(status, render_json(document), JSON_CONTENT_TYPE, headers)

    def _send_envelope(
        self, status: int, document: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        body, content_type = render(document, self._format or "json")
        self._send(status, body, content_type, headers)

    def _send_error_envelope(
        self, status: int, code: int, comment: str, headers: Mapping[str, str] | None = None
    ) -> None:
        log_id = self.server.sandbox._log_id()
        self._send_envelope(status, {"response": {"code": code, "comment": comment, "log_id": log_id}}, headers)

    def _hang_up(self) -> None:
        """Close the socket now, whatever has (not) been written."""
        self.close_connection = True
        with suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)

    # --- the API ---------------------------------------------------------------------------------------------

    def _handle(self, sandbox: Sandbox, body: bytes) -> None:
        split = urlsplit(self.path)
        # Split before decoding, so a customer code holding an encoded "/" stays one segment.
        segments = [unquote(s) for s in split.path.split("/") if s]
        query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        if segments == ["auth"]:
            self._handle_auth(sandbox, body)
        elif segments[:1] == ["v2"]:
            self._handle_v2(sandbox, segments[1:], query)
        else:
            self._send_json(HTTPStatus.NOT_FOUND, {"response": {"code": 404, "comment": "Not found"}})

    def _apply_fault(self, sandbox: Sandbox, connection_get: bool, auth_endpoint: bool) -> bool:
        """Act on an injected fault; True when the request has been answered (or hung up on)."""
        fault = sandbox._next_fault(connection_get)
        if fault is None:
            return False
        if fault == "drop":
            sandbox._record_drop()
            self._hang_up()
            return True
        if fault == "truncate":
            self._truncate = True
            return False
        if fault == "wrong_format":
            self._format = "json" if self._format == "xml" else "xml"
            return False
        if fault == "other_envelope":
            self._send_json(HTTPStatus.OK, {"data": [], "errors": []})
            return True
        if fault == "garbage":
            content_type = XML_CONTENT_TYPE if self._format == "xml" and not auth_endpoint else JSON_CONTENT_TYPE
            self._send(HTTPStatus.OK, GARBAGE_BODY, content_type)
            return True
        if not _STATUS_ENTRY.fullmatch(fault):
            self._send_json(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                {"response": {"code": 500, "comment": "Unknown sandbox fault script entry"}},
            )
            return True
        status = int(fault)
        phrase = _phrase(status)
        # Injected 429s ask for a short pause: a real window reset would stall tests for minutes.
        headers = self._throttle_headers(1.0) if status == HTTPStatus.TOO_MANY_REQUESTS else None
        if auth_endpoint:
            self._send_json(status, {"error": "temporarily_unavailable", "error_description": phrase}, headers)
        else:
            self._send_error_envelope(status, status, phrase, headers)
        return True

    def _throttle_headers(self, seconds_left: float) -> dict[str, str]:
        headers = {"X-Throttling-Account-Id": self.server.sandbox.config.account_id}
        if self.server.sandbox.config.retry_after:
            headers["Retry-After"] = str(max(1, math.ceil(seconds_left)))
        return headers

    def _handle_v2(self, sandbox: Sandbox, segments: list[str], query: dict[str, str]) -> None:
        config = sandbox.config
        self._format = negotiate(self.headers.get("Accept"), query.get("return_format"))
        route = _v2_route(segments)
        if self._apply_fault(sandbox, connection_get=route is not None and self.command == "GET", auth_endpoint=False):
            return
        if route is None:
            self._send_error_envelope(HTTPStatus.NOT_FOUND, 404, "Not found")
            return
        if self.command != "GET":
            self._send_error_envelope(HTTPStatus.METHOD_NOT_ALLOWED, 405, "Method not allowed", {"Allow": "GET"})
            return
        if self._format is None:
            self._send_json(
                HTTPStatus.NOT_ACCEPTABLE,
                {
                    "response": {
                        "code": 406,
                        "comment": "Calls made without the content MIME type are not processed",
                        "log_id": sandbox._log_id(),
                    }
                },
            )
            return
        if config.require_content_type and _media(self.headers.get("Content-Type")) not in CONTENT_TYPES:
            # JOOR's conventions page: "Calls made without the Content MIME Type are not processed". The status
            # JOOR uses is not documented; 415 is HTTP's for it.
            self._send_error_envelope(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                415,
                "Calls made without the Content MIME Type are not processed: send Content-Type: application/json "
                "or application/xml",
            )
            return
        if not sandbox._authenticate(self.headers.get("Authorization"), query.get("account")):
            self._send_error_envelope(HTTPStatus.UNAUTHORIZED, 401, "Invalid authentication credentials")
            return
        seconds_left = sandbox._spend(1)
        self._rate_headers = sandbox._budget_headers()
        if seconds_left is not None:
            self._send_error_envelope(
                HTTPStatus.TOO_MANY_REQUESTS,
                429,
                "Rate limit exceeded",
                self._throttle_headers(seconds_left),
            )
            return
        kind, argument = route
        if kind == "list":
            self._list(sandbox, query)
            return
        if config.faults.error_code is not None:
            self._joor_error(sandbox, config.faults.error_code)
            return
        found = sandbox._find_by_code(argument) if kind == "code" else sandbox._find_by_id(argument)
        if found is None:
            self._send_error_envelope(HTTPStatus.NOT_FOUND, 404, "Connection not found")
            return
        self._send_envelope(HTTPStatus.OK, _page_document(0, 0, "1", sandbox._log_id(), [found]))

    def _joor_error(self, sandbox: Sandbox, code: int) -> None:
        """HTTP 200 carrying a JOOR-level failure in ``response.code``."""
        self._send_error_envelope(HTTPStatus.OK, code, f"Sandbox injected JOOR error {code}")

    def _list(self, sandbox: Sandbox, query: dict[str, str]) -> None:
        config = sandbox.config
        start_from = _non_negative(query.get("start_from"), 0)
        count = _non_negative(query.get("count"), config.default_page_size)
        if start_from is None or count is None or count == 0:
            bad = "start_from" if start_from is None else "count"
            self._send_error_envelope(
                HTTPStatus.BAD_REQUEST, 400, f"Invalid {bad}: expected a non-negative integer (count >= 1)"
            )
            return
        if config.faults.error_code is not None:
            self._joor_error(sandbox, config.faults.error_code)
            return
        count = min(count, config.max_page_size)
        page, total = sandbox._list_slice(start_from, count)
        end = start_from + len(page)
        next_start = end if page and end < total else 0
        if config.faults.stuck_pagination and start_from > 0:
            # A cursor echoed back at offset 0 would read as "last page", so the first page still advances.
            next_start = start_from
        elif config.faults.pagination_gap and next_start:
            next_start += config.faults.pagination_gap
        elif config.faults.cursor_lag and next_start:
            next_start = max(start_from + 1, next_start - config.faults.cursor_lag)
        document = _page_document(start_from, next_start, str(total), sandbox._log_id(), page)
        self._send_envelope(HTTPStatus.OK, document)

    def _handle_auth(self, sandbox: Sandbox, body: bytes) -> None:
        config = sandbox.config
        if self._apply_fault(sandbox, connection_get=False, auth_endpoint=True):
            return
        if self.command != "POST":
            self._send_json(
                HTTPStatus.METHOD_NOT_ALLOWED,
                {"error": "invalid_request", "error_description": "HTTP method not allowed"},
                {"Allow": "POST"},
            )
            return
        form = parse_form(self.headers.get("Content-Type", ""), body)
        if form is None:
            self._oauth_error(HTTPStatus.BAD_REQUEST, "invalid_request", "Unsupported content type")
            return
        for name in ("grant_type", "client_id", "client_secret", "username", "password"):
            if not form.get(name):
                self._oauth_error(HTTPStatus.BAD_REQUEST, "invalid_request", f"Missing form parameter: {name}")
                return
        if form["grant_type"] != "password":
            self._oauth_error(HTTPStatus.BAD_REQUEST, "unsupported_grant_type", "Unsupported grant_type")
            return
        if not (_same(form["client_id"], config.client_id) & _same(form["client_secret"], config.client_secret)):
            self._oauth_error(HTTPStatus.UNAUTHORIZED, "invalid_client", "Invalid client credentials")
            return
        if not (_same(form["username"], config.username) & _same(form["password"], config.password)):
            self._oauth_error(HTTPStatus.UNAUTHORIZED, "invalid_grant", "Invalid user credentials")
            return
        seconds_left = sandbox._spend(5)
        self._rate_headers = sandbox._budget_headers()
        if seconds_left is not None:
            self._send_json(
                HTTPStatus.TOO_MANY_REQUESTS,
                {"error": "too_many_requests", "error_description": "Rate limit exceeded"},
                self._throttle_headers(seconds_left),
            )
            return
        self._send_json(HTTPStatus.OK, sandbox._issue_token(), {"Cache-Control": "no-store", "Pragma": "no-cache"})

    def _oauth_error(self, status: int, error: str, description: str) -> None:
        self._send_json(status, {"error": error, "error_description": description})


def _media(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _v2_route(segments: list[str]) -> tuple[str, str] | None:
    """``("list", "")``, ``("code", customer_code)``, ``("id", connection_id)`` or None for an unknown path."""
    if segments == ["connection"]:
        return ("list", "")
    if len(segments) == 3 and segments[:2] == ["connection", "customer_code"]:
        return ("code", segments[2])
    if len(segments) == 2 and segments[0] == "connection":
        return ("id", segments[1])
    return None


def _non_negative(raw: str | None, default: int) -> int | None:
    """A query integer; the default when absent, None when malformed."""
    if raw is None:
        return default
    raw = raw.strip()
    return int(raw) if _DIGITS.fullmatch(raw) else None


def _page_document(
    start_from: int, next_start: int, count: str, log_id: str, connections: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "response": {
            "code": 0,
            "comment": "",
            "start_from": start_from,
            "next_start": next_start,
            "count": count,
            "log_id": log_id,
        },
        "connections": connections,
    }


def negotiate(accept: str | None, return_format: str | None) -> str | None:
    """``"json"``, ``"xml"`` or None (answer 406): ``return_format`` wins, else the best supported Accept."""
    if return_format and return_format.strip().lower() in ("json", "xml"):
        return return_format.strip().lower()
    if not accept:
        return None
    ranked: list[tuple[float, int, str]] = []
    for position, media_range in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in media_range.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            ranked.append((-quality, position, media.lower()))
    for _, _, media in sorted(ranked):
        if media == "application/json":
            return "json"
        if media in ("application/xml", "text/xml"):
            return "xml"
    return None


def parse_form(content_type: str, body: bytes) -> dict[str, str] | None:
    """Fields of a multipart/form-data or url-encoded body (first value wins); None for other types."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/x-www-form-urlencoded":
        text = body.decode("utf-8", "replace")
        return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}
    if media != "multipart/form-data":
        return None
    head = b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\r\n\r\n"
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    fields: dict[str, str] = {}
    if not message.is_multipart():
        return fields
    for part in message.get_payload():
        if not isinstance(part, Message):
            continue
        name = part.get_param("name", header="content-disposition")
        if name is None:
            continue
        key = collapse_rfc2231_value(name)
        payload = part.get_payload(decode=True)
        value = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
        fields.setdefault(key, value)
    return fields


def _configure(config: SandboxConfig | None, overrides: dict[str, Any]) -> SandboxConfig:
    if config is None:
        return SandboxConfig(**overrides)
    return dataclasses.replace(config, **overrides) if overrides else config


def start_sandbox(
    config: SandboxConfig | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    accounts: Sequence[SandboxConfig] = (),
    **overrides: Any,
) -> Sandbox:
    """Start a sandbox in a background thread (``accounts``: more JOOR accounts on the same address, see
    :class:`Sandbox`); the caller must ``close()`` it."""
    return Sandbox(_configure(config, overrides), clock=clock, sleep=sleep, accounts=accounts)


@contextmanager
def run_sandbox(
    config: SandboxConfig | None = None,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    accounts: Sequence[SandboxConfig] = (),
    **overrides: Any,
) -> Iterator[Sandbox]:
    """Serve for the duration of the ``with`` block."""
    sandbox = start_sandbox(config, clock=clock, sleep=sleep, accounts=accounts, **overrides)
    try:
        yield sandbox
    finally:
        sandbox.close()


def serve_forever(config: SandboxConfig | None = None, **overrides: Any) -> None:
    """Serve until Ctrl-C or SIGTERM, for the standalone sandbox process."""
    sandbox = start_sandbox(config, **overrides)
    print(
        f"JOOR sandbox listening on {sandbox.base_url} "
        f"({sandbox.config.connections} connections, seed {sandbox.config.seed})",
        flush=True,
    )
    in_main_thread = threading.current_thread() is threading.main_thread()
    # SIGTERM takes the same clean path as Ctrl-C, so a supervisor's stop releases the port too.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if in_main_thread else None
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)

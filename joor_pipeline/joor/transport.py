"""HTTP exchanges bounded in time and memory whatever the server does, and URLs safe to print.

httpx applies its timeouts to each network operation and has no total timeout, so a body trickled a byte at a
time never ends. Here ``JOOR_TIMEOUT`` is one deadline for the whole exchange (connect, headers and the complete
body), and ``JOOR_MAX_RESPONSE_MB`` caps a body while it streams in (Content-Length first, then a running count
of the decoded bytes), before it is held in memory. Nothing here retries or knows JOOR's envelope: the client does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Final

import httpcore
import httpx

from joor_pipeline.joor.errors import ResponseTooLarge, max_response_bytes

SENSITIVE_PARAMS: Final = frozenset(
    {"token", "api_token", "access_token", "password", "client_secret", "refresh_token", "code"}
)


def redact_url(url: httpx.URL | str) -> str:
    """The URL with any credential-like query value masked."""
    url = httpx.URL(str(url))
    if not url.query:
        return str(url)
    params = [(k, "***" if k.lower() in SENSITIVE_PARAMS else v) for k, v in url.params.multi_items()]
    return str(url.copy_with(params=params))


@dataclass(frozen=True)
class Reply:
    """One HTTP answer, read whole within the request's deadline and the size cap."""

    status_code: int
    headers: httpx.Headers
    content: bytes
    #: The request's URL with credentials masked (see :func:`redact_url`).
    url: str

    def json(self) -> Any:
        return json.loads(self.content)


# ---- one deadline per request ---------------------------------------------------------------------------------
#
# httpx applies its timeouts to each network operation, and has no total timeout. The deadline of the request
# running on this thread is kept here, and the network backend under the connection pool shortens every connect,
# read and write to what is left of it, failing with httpcore's own timeout once nothing is. httpx maps that to
# httpx.ReadTimeout (etc.), a transport error the retry loop already handles. A ContextVar, not an argument: the
# pool calls the backend far below the request API, always on the thread that sent the request.

_DEADLINE: ContextVar[tuple[float, float] | None] = ContextVar("joor_request_deadline", default=None)


def _clamp(timeout: float | None, expired: type[httpcore.TimeoutException]) -> float | None:
    """``timeout`` shortened to what is left of this thread's request deadline (if it has one)."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    _check_deadline(expired)
    left = deadline[0] - time.monotonic()
    return left if timeout is None else min(timeout, left)


def _check_deadline(expired: type[httpcore.TimeoutException]) -> None:
    """Raise ``expired`` naming the deadline if this thread's request has passed it."""
    deadline = _DEADLINE.get()
    if deadline is not None and time.monotonic() >= deadline[0]:
        raise expired(f"the request outlasted its {deadline[1]:g} s deadline (JOOR_TIMEOUT), body included")


@contextmanager
def _deadline_named(expired: type[httpcore.TimeoutException]) -> Iterator[None]:
    """A socket timeout cut short by the deadline says so, rather than the socket's bare "timed out"."""
    try:
        yield
    except httpcore.TimeoutException:
        _check_deadline(expired)
        raise


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose reads and writes end by the request's deadline."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        with _deadline_named(httpcore.ReadTimeout):
            return self._stream.read(max_bytes, _clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        with _deadline_named(httpcore.WriteTimeout):
            self._stream.write(buffer, _clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        with _deadline_named(httpcore.ConnectTimeout):
            tls = self._stream.start_tls(ssl_context, server_hostname, _clamp(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(tls)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """Opens connections whose every operation ends by the deadline of the request using them."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        with _deadline_named(httpcore.ConnectTimeout):
            timeout = _clamp(timeout, httpcore.ConnectTimeout)
            return _DeadlineStream(self._backend.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        with _deadline_named(httpcore.ConnectTimeout):
            timeout = _clamp(timeout, httpcore.ConnectTimeout)
            return _DeadlineStream(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def deadline_transport(limits: httpx.Limits) -> httpx.HTTPTransport:
    """httpx's own transport, its connection pool opening connections through :class:`_DeadlineBackend`."""
    transport = httpx.HTTPTransport(limits=limits)
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    # httpx exposes no network backend option; fail loudly at start if an upgrade moved what is wrapped here.
    if not isinstance(pool, httpcore.ConnectionPool) or not isinstance(backend, httpcore.NetworkBackend):
        raise RuntimeError("this httpx/httpcore version hides its network backend; the request deadline needs it")
    pool._network_backend = _DeadlineBackend(backend)
    return transport


def exchange(
    http: httpx.Client,
    method: str,
    url: str,
    *,
    params: dict[str, Any] | None,
    headers: dict[str, str],
    files: dict[str, Any] | None,
    timeout: float,
    max_response_mb: float,
) -> Reply:
    """One HTTP exchange within ``timeout`` seconds in all, its body capped at ``max_response_mb``.

    A missed deadline raises httpx's own timeout (a transport error, worth a retry: the next try is bounded as
    well). Too large raises :class:`ResponseTooLarge`, final: the same page would come back just as large.
    The deadline needs a client built on :func:`deadline_transport`; on another transport only the cap holds.
    """
    limit = max_response_bytes(max_response_mb)
    token = _DEADLINE.set((time.monotonic() + timeout, timeout))
    try:
        with http.stream(method, url, params=params, headers=headers, files=files) as response:
            request_url = redact_url(response.request.url)
            declared = response.headers.get("Content-Length", "").strip()
            if declared.isdigit() and int(declared) > limit:
                raise ResponseTooLarge(request_url, max_response_mb, declared=int(declared))
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > limit:
                    raise ResponseTooLarge(request_url, max_response_mb)
                chunks.append(chunk)
    finally:
        _DEADLINE.reset(token)
    return Reply(response.status_code, response.headers, b"".join(chunks), request_url)

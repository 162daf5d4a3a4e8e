"""Errors raised by the JOOR client and payload parser.

The hierarchy::

    JoorError
    ├── ConfigError          settings missing or inconsistent (names the environment variable)
    ├── PayloadError         a body that is not a JOOR envelope (names the page / URL and log_id)
    ├── JoorApiError         JOOR answered with a non-zero response.code (carries code, comment, log_id, URL)
    │   └── AuthError        credentials refused (HTTP 401/403 or the token endpoint said no)
    ├── NotFoundError        the connection asked for does not exist (HTTP 404)
    ├── PaginationError      next_start did not advance, skipped ahead, or ran past JOOR_MAX_PAGES
    │   └── IncompleteSnapshot  two walks of the list each landed fewer connections than JOOR reports
    ├── ResponseTooLarge     a body larger than JOOR_MAX_RESPONSE_MB (never retried: the page would be as large)
    └── RetriesExhausted     429 / 5xx / transport errors (the JOOR_TIMEOUT deadline too) outlasted the retry budget

Every message is built from redacted URLs: no token, password or secret ever reaches an exception.
"""

from __future__ import annotations

from typing import Final

#: The most of a payload's own text (a comment, a log_id, a value) that an error quotes. A hostile or broken
#: answer must not make an error line of any size, in the terminal or in Dagster's event log.
MAX_QUOTED_CHARS: Final = 200


def quoted(text: str, limit: int = MAX_QUOTED_CHARS) -> str:
    """Text that came in a payload, as an error quotes it: its repr, cut to ``limit`` characters with its whole
    length said, so one line stays one line (``repr`` also escapes any line break in it)."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text):,} characters)"


def _log_id(log_id: str) -> str:
    """A log_id as errors name it: as is (JOOR's are short ids), unless it is too long to be one."""
    return log_id if len(log_id) <= MAX_QUOTED_CHARS and log_id.isprintable() else quoted(log_id)


class JoorError(Exception):
    """Base class for everything this package raises on purpose."""


class ConfigError(JoorError):
    """Configuration is missing or inconsistent."""


class PayloadError(JoorError):
    """A response body could not be parsed as a JOOR envelope."""

    def __init__(self, message: str, *, source: str, log_id: str | None = None) -> None:
        self.message = message
        self.source = source
        self.log_id = log_id
        where = f"{source}" + (f" (log_id {_log_id(log_id)})" if log_id else "")
        super().__init__(f"{message} in {where}")

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only arguments: pickle (a flatten worker sends its errors home) needs to be told how.
        return (_payload_error, (self.message, self.source, self.log_id), self.__dict__)


def _payload_error(message: str, source: str, log_id: str | None) -> PayloadError:
    return PayloadError(message, source=source, log_id=log_id)


class JoorApiError(JoorError):
    """JOOR answered, but with an error: non-zero response.code or an HTTP error status."""

    def __init__(
        self,
        message: str,
        *,
        url: str,
        status: int | None = None,
        code: int | None = None,
        comment: str | None = None,
        log_id: str | None = None,
    ) -> None:
        self.url = url
        self.status = status
        self.code = code
        self.comment = comment
        self.log_id = log_id
        parts = [message]
        if status is not None:
            parts.append(f"HTTP {status}")
        if code is not None:
            parts.append(f"response.code {code}")
        if comment:
            parts.append(f"comment {quoted(comment)}")
        if log_id:
            parts.append(f"log_id {_log_id(log_id)}")
        parts.append(f"url {url}")
        super().__init__("; ".join(parts))


class AuthError(JoorApiError):
    """JOOR refused the credentials."""


class NotFoundError(JoorApiError):
    """The requested connection does not exist."""


class PaginationError(JoorError):
    """The list endpoint's cursor did not advance, skipped connections, or would not end."""


class IncompleteSnapshot(PaginationError):
    """The list shifted under both walks of a fetch: fewer distinct connections landed than JOOR's total."""


class ResponseTooLarge(JoorError):
    """A response body passed the size cap; it was abandoned while streaming, before it was held in memory."""

    def __init__(self, url: str, limit_mb: float, *, declared: int | None = None) -> None:
        self.url = url
        self.limit_mb = limit_mb
        self.limit_bytes = max_response_bytes(limit_mb)
        self.declared = declared
        size = f"declares {declared:,} bytes" if declared is not None else f"passed {self.limit_bytes:,} bytes"
        super().__init__(
            f"response from {url} {size}, over the {limit_mb:g} MB cap (JOOR_MAX_RESPONSE_MB); "
            "a real page of 100 connections is under 1 MB"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (_response_too_large, (self.url, self.limit_mb, self.declared), self.__dict__)


def max_response_bytes(limit_mb: float) -> int:
    """``JOOR_MAX_RESPONSE_MB`` in bytes (MB of 2**20 bytes)."""
    return int(limit_mb * 2**20)


def _response_too_large(url: str, limit_mb: float, declared: int | None) -> ResponseTooLarge:
    return ResponseTooLarge(url, limit_mb, declared=declared)


class RetriesExhausted(JoorError):
    """A request kept failing with retryable errors until the retry budget ran out."""

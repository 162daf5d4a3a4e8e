"""The settings of one JOOR account, as the client takes them, and the :class:`Secret` type that never prints.

Read and validated from the ``JOOR_*`` variables by :mod:`joor_pipeline.config` (which re-exports these names).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

HOSTS: Final[dict[str, dict[str, str]]] = {
    "production": {
        "base_url": "https://api.jooraccess.com",
        "auth_url": "https://atlas.jooraccess.com/auth/",
    },
    "sandbox": {
        "base_url": "https://apisandbox.jooraccess.com",
        "auth_url": "https://atlas-sandbox.jooraccess.com/auth/",
    },
}


class Secret:
    """A string that does not show itself: repr, str and f-strings print a mask."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself, for the one place that must send it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True)
class JoorSettings:
    """Validated configuration for one JOOR account (or the built-in sandbox).

    Field names and defaults match :data:`SETTINGS` (a test holds them together).
    """

    api_version: str = "v2"
    environment: str = "production"
    base_url: str = HOSTS["production"]["base_url"]
    auth_url: str = HOSTS["production"]["auth_url"]
    api_token: Secret | None = None
    account_id: str | None = None
    client_id: str | None = None
    client_secret: Secret | None = None
    username: str | None = None
    password: Secret | None = None
    format: str = "json"
    page_size: int = 100
    data_dir: Path = field(default_factory=lambda: Path("data"))
    rate_limit_credits: int = 300
    rate_limit_window: float = 300.0
    timeout: float = 30.0
    max_attempts: int = 6
    max_response_mb: float = 64.0
    max_pages: int = 10_000
    #: List pages in flight at once once the first page tells how many connections there are (1: one at a time).
    concurrency: int = 1
    #: True when ``JOOR_ENVIRONMENT=builtin``: the caller starts the built-in sandbox and fills in its URLs.
    builtin_sandbox: bool = False
    sandbox_connections: int = 500
    sandbox_seed: int = 7

    def with_endpoint(self, base_url: str, auth_url: str, **credentials: object) -> JoorSettings:
        """The same settings aimed at another server (the built-in sandbox once it listens)."""
        return replace(self, base_url=base_url.rstrip("/"), auth_url=auth_url, **credentials)  # type: ignore[arg-type]

    @property
    def target(self) -> str:
        """Where the data comes from, for logs and manifests (never a secret)."""
        if self.builtin_sandbox:
            return "built-in sandbox"
        return f"{self.environment} ({self.base_url})"

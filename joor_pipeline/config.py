"""Settings from environment variables, validated once, with secrets that never print.

The same variable names feed the CLI (read here from ``os.environ``) and Dagster resources (through ``EnvVar``),
so one ``.env`` serves both. :func:`load_settings` either returns consistent settings or raises one
:class:`~joor_pipeline.joor.errors.ConfigError` naming every variable that is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final, TypeVar

from joor_pipeline.joor.errors import ConfigError

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

#: Every variable the project reads, with a one-line meaning (shown by ``joor-pipeline --help``).
ENV_VARS: Final[dict[str, str]] = {
    "JOOR_API_VERSION": "v2 (API token) or v4 (OAuth2 password grant); default v2",
    "JOOR_ENVIRONMENT": "production or sandbox: picks JOOR's hosts; default production",
    "JOOR_BASE_URL": "API root without the version segment, e.g. http://127.0.0.1:8765 (overrides the host)",
    "JOOR_AUTH_URL": "v4 token endpoint (overrides the host's /auth/)",
    "JOOR_API_TOKEN": "v2 API token issued by JOOR support (secret)",
    "JOOR_ACCOUNT_ID": "v4 account id",
    "JOOR_CLIENT_ID": "v4 OAuth2 client id",
    "JOOR_CLIENT_SECRET": "v4 OAuth2 client secret (secret)",
    "JOOR_USERNAME": "v4 username",
    "JOOR_PASSWORD": "v4 password (secret)",
    "JOOR_FORMAT": "json or xml: the format asked of JOOR and landed raw; default json",
    "JOOR_PAGE_SIZE": "connections per list page; default 100",
    "JOOR_DATA_DIR": "where raw pages, Parquet and joor.duckdb live; default ./data",
    "JOOR_RATE_LIMIT_CREDITS": "this pipeline's share of the account's credits per window (other integrations "
    "share the account's budget); default 300",
    "JOOR_RATE_LIMIT_WINDOW": "seconds in JOOR's rate-limit window; default 300",
    "JOOR_TIMEOUT": "seconds one HTTP request may take in all (connect, headers, the whole body); default 30",
    "JOOR_MAX_RESPONSE_MB": "largest response body accepted, in MB, checked while it streams in; default 64",
    "JOOR_MAX_PAGES": "most list pages one snapshot may have; default 10000",
    "JOOR_MAX_ATTEMPTS": "tries per request on 429/5xx/transport errors; default 6",
    "JOOR_CONCURRENCY": "list pages in flight at once when JOOR reports the total; 1 walks page by page; default 4",
    "JOOR_FLATTEN_WORKERS": "processes that flatten a snapshot's pages in parallel (Linux); 1 flattens in one process; "
    "default: one per usable core, at most 8, and one per 8 pages",
    "JOOR_SANDBOX_CONNECTIONS": "connections the built-in sandbox serves when no JOOR is configured; default 500",
    "JOOR_SANDBOX_SEED": "seed of the built-in sandbox's generated retailers; default 7",
}

N = TypeVar("N", int, float)

V4_VARS: Final = ("JOOR_ACCOUNT_ID", "JOOR_CLIENT_ID", "JOOR_CLIENT_SECRET", "JOOR_USERNAME", "JOOR_PASSWORD")
SECRET_VARS: Final = frozenset({"JOOR_API_TOKEN", "JOOR_CLIENT_SECRET", "JOOR_PASSWORD"})


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
    """Validated configuration for one JOOR account (or the built-in sandbox)."""

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
    concurrency: int = 4
    #: True when nothing points at a real JOOR: the caller starts the built-in sandbox and fills in its URLs.
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


def _clean(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _positive(env: Mapping[str, str], name: str, default: N, problems: list[str]) -> N:
    """A number greater than 0, of the default's type (whole for int defaults)."""
    raw = _clean(env, name)
    if raw is None:
        return default
    kind = type(default)
    try:
        value = kind(raw)
    except ValueError:
        problems.append(f"{name} must be {'a whole number' if kind is int else 'a number'}, got {raw!r}")
        return default
    if value <= 0:
        problems.append(f"{name} must be greater than 0, got {raw}")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], problems: list[str]) -> str:
    raw = _clean(env, name)
    if raw is None:
        return choices[0]
    value = raw.lower()
    if value not in choices:
        problems.append(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
        return choices[0]
    return value


def _raise_problems(problems: list[str]) -> None:
    """One ConfigError listing every problem found, if there is any."""
    if problems:
        raise ConfigError("invalid JOOR configuration:\n  - " + "\n  - ".join(problems))


def flatten_workers_setting(env: Mapping[str, str]) -> int | None:
    """``JOOR_FLATTEN_WORKERS`` as a number of processes, None when unset (the default); ConfigError if bad."""
    problems: list[str] = []
    if _clean(env, "JOOR_FLATTEN_WORKERS") is None:
        return None
    workers = _positive(env, "JOOR_FLATTEN_WORKERS", 1, problems)
    _raise_problems(problems)
    return workers


def load_settings(env: Mapping[str, str]) -> JoorSettings:
    """Read and validate the ``JOOR_*`` variables; raise one ConfigError listing every problem."""
    problems: list[str] = []
    api_version = _choice(env, "JOOR_API_VERSION", ("v2", "v4"), problems)
    environment = _choice(env, "JOOR_ENVIRONMENT", ("production", "sandbox"), problems)
    fmt = _choice(env, "JOOR_FORMAT", ("json", "xml"), problems)
    page_size = _positive(env, "JOOR_PAGE_SIZE", 100, problems)
    credits = _positive(env, "JOOR_RATE_LIMIT_CREDITS", 300, problems)
    window = _positive(env, "JOOR_RATE_LIMIT_WINDOW", 300.0, problems)
    timeout = _positive(env, "JOOR_TIMEOUT", 30.0, problems)
    max_attempts = _positive(env, "JOOR_MAX_ATTEMPTS", 6, problems)
    max_response_mb = _positive(env, "JOOR_MAX_RESPONSE_MB", 64.0, problems)
    max_pages = _positive(env, "JOOR_MAX_PAGES", 10_000, problems)
    concurrency = _positive(env, "JOOR_CONCURRENCY", 4, problems)
    sandbox_connections = _positive(env, "JOOR_SANDBOX_CONNECTIONS", 500, problems)
    sandbox_seed = _positive(env, "JOOR_SANDBOX_SEED", 7, problems)

    base_url = _clean(env, "JOOR_BASE_URL")
    auth_url = _clean(env, "JOOR_AUTH_URL")
    for name, url in (("JOOR_BASE_URL", base_url), ("JOOR_AUTH_URL", auth_url)):
        if url is not None and not url.startswith(("http://", "https://")):
            problems.append(f"{name} must start with http:// or https://, got {url!r}")
    if base_url is not None and base_url.rstrip("/").endswith(("/v2", "/v4")):
        problems.append(f"JOOR_BASE_URL is the API root without the version segment, got {base_url!r}")

    token = _clean(env, "JOOR_API_TOKEN")
    v4 = {name: _clean(env, name) for name in V4_VARS}
    has_v4 = any(v4.values())
    builtin = token is None and not has_v4 and base_url is None

    if not builtin:
        if api_version == "v2" and token is None:
            hint = " (v4 credentials are set: did you mean JOOR_API_VERSION=v4?)" if has_v4 else ""
            problems.append(f"JOOR_API_TOKEN is required for JOOR_API_VERSION=v2{hint}")
        if api_version == "v4":
            missing = [name for name, value in v4.items() if value is None]
            if missing:
                problems.append(f"JOOR_API_VERSION=v4 needs {', '.join(missing)}")
    _raise_problems(problems)

    hosts = HOSTS[environment]
    return JoorSettings(
        api_version=api_version,
        environment=environment,
        base_url=(base_url or hosts["base_url"]).rstrip("/"),
        # A base URL override (a local or staging server) serves its token endpoint beside the API.
        auth_url=auth_url or (f"{base_url.rstrip('/')}/auth/" if base_url else hosts["auth_url"]),
        api_token=Secret(token) if token else None,
        account_id=v4["JOOR_ACCOUNT_ID"],
        client_id=v4["JOOR_CLIENT_ID"],
        client_secret=Secret(v4["JOOR_CLIENT_SECRET"]) if v4["JOOR_CLIENT_SECRET"] else None,
        username=v4["JOOR_USERNAME"],
        password=Secret(v4["JOOR_PASSWORD"]) if v4["JOOR_PASSWORD"] else None,
        format=fmt,
        page_size=page_size,
        data_dir=Path(_clean(env, "JOOR_DATA_DIR") or "data"),
        rate_limit_credits=credits,
        rate_limit_window=window,
        timeout=timeout,
        max_attempts=max_attempts,
        max_response_mb=max_response_mb,
        max_pages=max_pages,
        concurrency=concurrency,
        builtin_sandbox=builtin,
        sandbox_connections=sandbox_connections,
        sandbox_seed=sandbox_seed,
    )

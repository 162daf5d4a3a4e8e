"""Settings from environment variables: declared once, validated once, with secrets that never print.

:data:`SETTINGS` is the one declaration of every ``JOOR_*`` variable: its name, type, default, meaning, bounds and
whether it is secret. :func:`load_settings` reads through it, the CLI help and the README table are generated from
it, and the Dagster resources take their fields from it (``assets/resources.py``), so a setting is spelled once.

The same variables feed the CLI (read from ``os.environ``) and Dagster (through ``EnvVar``), so one ``.env`` serves
both. :func:`load_settings` either returns consistent settings or raises one
:class:`~joor_pipeline.joor.errors.ConfigError` naming every variable that is wrong, on one line, without ever
echoing a secret (URL user info included).

The built-in sandbox runs only on request (``JOOR_ENVIRONMENT=builtin``, or ``joor-pipeline demo``): with no JOOR
configured at all, loading fails with one line saying what to set, so a deployment whose secrets did not load
never writes synthetic retailers into real data.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import MISSING, dataclass, fields
from datetime import date
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from joor_pipeline.joor.errors import ConfigError
from joor_pipeline.joor.settings import HOSTS as HOSTS
from joor_pipeline.joor.settings import JoorSettings as JoorSettings
from joor_pipeline.joor.settings import Secret as Secret
from joor_pipeline.layout import ACCOUNT_NAME as ACCOUNT_NAME
from joor_pipeline.layout import DEFAULT_ACCOUNT as DEFAULT_ACCOUNT
from joor_pipeline.storage.factory import open_data_dir

#: The value of ``JOOR_ENVIRONMENT`` that asks for the built-in sandbox.
BUILTIN: Final = "builtin"

Kind = Literal["choice", "int", "float", "url", "text", "secret", "path", "date"]
#: Which Dagster resource carries a setting as an ``EnvVar`` field (None: not a resource field).
Resource = Literal["joor", "storage"]


@dataclass(frozen=True)
class Setting:
    """One ``JOOR_*`` environment variable: how it is read, checked and documented."""

    name: str
    #: The attribute on :class:`JoorSettings` and the field on the Dagster resource.
    field: str
    kind: Kind
    #: The value when unset (None: unset means something described in ``default_text``).
    default: Any
    meaning: str
    default_text: str | None = None
    choices: tuple[str, ...] = ()
    #: Inclusive bounds of a number; every number is finite.
    low: float | None = None
    high: float | None = None
    unit: str = ""
    resource: Resource | None = "joor"

    @property
    def secret(self) -> bool:
        return self.kind == "secret"

    @property
    def shown_default(self) -> str:
        """The default as the docs show it."""
        if self.default_text is not None:
            return self.default_text
        if self.default is None:
            return ""
        return (
            f"{_number(self.default)}{self.unit and ' ' + self.unit}"
            if self.kind in ("int", "float")
            else str(self.default)
        )

    @property
    def bounds(self) -> str:
        """The allowed values, as the docs and the errors say them."""
        if self.choices:
            return ", ".join(self.choices)
        if self.low is not None and self.high is not None:
            return f"{_number(self.low)} to {_number(self.high)}{self.unit and ' ' + self.unit}"
        return ""


def _number(value: float) -> str:
    if float(value).is_integer() and abs(value) >= 1:
        return f"{int(value):,}"
    return f"{value:g}"


_V4_MEANING = "v4 (OAuth2 password grant)"

#: Every variable the project reads. Bounds keep a typo (or ``nan``) from hanging or exhausting the machine.
SETTINGS: Final[tuple[Setting, ...]] = (
    Setting(
        "JOOR_ACCOUNTS_FILE",
        "accounts_file",
        "path",
        None,
        "TOML file of several JOOR accounts, one [accounts.<name>] table each (see Several accounts); the JOOR_* "
        "account variables then are not read",
        default_text="none: the JOOR_* variables define the account `default`",
    ),
    Setting(
        "JOOR_ENVIRONMENT",
        "environment",
        "choice",
        "production",
        "production or sandbox picks JOOR's hosts; builtin runs the built-in sandbox (synthetic data, only on request)",
        choices=("production", "sandbox", BUILTIN),
    ),
    Setting(
        "JOOR_API_VERSION",
        "api_version",
        "choice",
        "v2",
        "v2 (API token) or v4 (OAuth2 password grant)",
        choices=("v2", "v4"),
    ),
    Setting(
        "JOOR_BASE_URL",
        "base_url",
        "url",
        None,
        "API root without the version segment, e.g. http://127.0.0.1:8765; no user:password@ in it",
        default_text="JOOR's host for JOOR_ENVIRONMENT",
    ),
    Setting(
        "JOOR_AUTH_URL",
        "auth_url",
        "url",
        None,
        "v4 token endpoint",
        default_text="JOOR's host; $JOOR_BASE_URL/auth/ when a base URL is set",
    ),
    Setting("JOOR_API_TOKEN", "api_token", "secret", None, "v2 API token issued by JOOR support"),
    Setting("JOOR_ACCOUNT_ID", "account_id", "text", None, f"{_V4_MEANING} account id"),
    Setting("JOOR_CLIENT_ID", "client_id", "text", None, f"{_V4_MEANING} client id"),
    Setting("JOOR_CLIENT_SECRET", "client_secret", "secret", None, f"{_V4_MEANING} client secret"),
    Setting("JOOR_USERNAME", "username", "text", None, f"{_V4_MEANING} username"),
    Setting("JOOR_PASSWORD", "password", "secret", None, f"{_V4_MEANING} password"),
    Setting(
        "JOOR_FORMAT",
        "format",
        "choice",
        "json",
        "the format asked of JOOR and landed raw",
        choices=("json", "xml"),
    ),
    Setting("JOOR_PAGE_SIZE", "page_size", "int", 100, "connections per list page", low=1, high=1000),
    Setting(
        "JOOR_RATE_LIMIT_CREDITS",
        "rate_limit_credits",
        "int",
        300,
        "this pipeline's share of the account's credits per window (other integrations spend the rest)",
        low=1,
        high=100_000,
    ),
    Setting(
        "JOOR_RATE_LIMIT_WINDOW",
        "rate_limit_window",
        "float",
        300.0,
        "JOOR's rate-limit window",
        low=0.1,
        high=86_400,
        unit="s",
    ),
    Setting(
        "JOOR_TIMEOUT",
        "timeout",
        "float",
        30.0,
        "time one HTTP request may take in all: connect, headers and the whole body",
        low=0.1,
        high=3600,
        unit="s",
    ),
    Setting(
        "JOOR_MAX_ATTEMPTS",
        "max_attempts",
        "int",
        6,
        "tries per request on 429/5xx/transport errors",
        low=1,
        high=100,
    ),
    Setting(
        "JOOR_CONCURRENCY",
        "concurrency",
        "int",
        1,
        "list pages in flight at once when JOOR reports the total; 1, JOOR's etiquette, waits for each answer "
        "before the next request (see The real JOOR API)",
        low=1,
        high=64,
    ),
    Setting(
        "JOOR_MAX_RESPONSE_MB",
        "max_response_mb",
        "float",
        64.0,
        "cap on one response body, enforced while it streams (a page of 100 connections is under 1 MB)",
        low=0.01,
        high=4096,
        unit="MB",
    ),
    Setting(
        "JOOR_MAX_PAGES",
        "max_pages",
        "int",
        10_000,
        "cap on the pages of one snapshot (stops endless pagination)",
        low=1,
        high=10_000_000,
    ),
    Setting(
        "JOOR_DATA_DIR",
        "data_dir",
        "path",
        Path("data"),
        "where raw pages, Parquet and joor.duckdb live: a writable directory, or s3://, gs:// or az://bucket/prefix",
        default_text="./data",
        resource="storage",
    ),
    Setting(
        "JOOR_WORK_DIR",
        "work_dir",
        "path",
        None,
        "with a URL as JOOR_DATA_DIR: the local scratch directory for staging, the flatten and the dbt build",
        default_text="a folder per URL under ~/.cache/joor-pipeline",
        resource=None,
    ),
    Setting(
        "JOOR_STORE_LEASE_SECONDS",
        "store_lease_seconds",
        "float",
        60.0,
        "with a URL as JOOR_DATA_DIR: life of a date's lock object, renewed every third of it by its live writer",
        low=1,
        high=3600,
        unit="s",
        resource=None,
    ),
    Setting(
        "JOOR_FLATTEN_WORKERS",
        "flatten_workers",
        "int",
        None,
        "processes that flatten a snapshot's pages in parallel; 1 flattens in one process",
        default_text="one per usable core, at most 8, and one per 8 pages",
        low=1,
        high=256,
        resource="storage",
    ),
    Setting(
        "JOOR_FIRST_SNAPSHOT_DATE",
        "first_snapshot_date",
        "date",
        date(2025, 1, 1),
        "first daily partition offered in Dagster (YYYY-MM-DD; read when the definitions load)",
        resource=None,
    ),
    # ---- retention (read by joor_pipeline.prune: `joor-pipeline prune` and the joor_prune job) ----
    Setting(
        "JOOR_RETAIN_RAW_DAYS",
        "retain_raw_days",
        "int",
        None,
        "joor-pipeline prune deletes the raw snapshots older than this many days, but never today's, an account's "
        "latest, one whose Parquet is not published or one in quarantine (see Retention)",
        default_text="none: every raw snapshot is kept",
        low=1,
        high=36_500,
        unit="days",
        resource="storage",
    ),
    Setting(
        "JOOR_RETAIN_PARQUET_DAYS",
        "retain_parquet_days",
        "int",
        None,
        "joor-pipeline prune deletes the Parquet partitions (all ten tables of a date) older than this many days, "
        "but never today's, an account's latest or one in quarantine; at least JOOR_RETAIN_RAW_DAYS (see Retention)",
        default_text="none: every Parquet partition is kept",
        low=1,
        high=36_500,
        unit="days",
        resource="storage",
    ),
    Setting(
        "JOOR_SANDBOX_CONNECTIONS",
        "sandbox_connections",
        "int",
        500,
        "connections the built-in sandbox serves",
        low=1,
        high=10_000_000,
    ),
    Setting(
        "JOOR_SANDBOX_SEED",
        "sandbox_seed",
        "int",
        7,
        "seed of the built-in sandbox's generated retailers",
        low=0,
        high=2**32 - 1,
    ),
    # ---- alerts and freshness (read where they are used: joor_pipeline.alerts, assets/sensors.py) ----
    Setting(
        "JOOR_ALERT_WEBHOOK_URL",
        "alert_webhook_url",
        "secret",
        None,
        "incoming-webhook URL (Slack, Teams, ...) that gets one JSON POST per alert; it holds its own secret",
        default_text="none: no webhook alerts",
        resource=None,
    ),
    Setting(
        "JOOR_ALERT_WEBHOOK_FORMAT",
        "alert_webhook_format",
        "choice",
        "text",
        'the JSON posted: text is {"text": ...} (Slack, Teams incoming webhook); adaptive-card is an Adaptive Card '
        "message (a Teams Workflows webhook)",
        choices=("text", "adaptive-card"),
        resource=None,
    ),
    Setting(
        "JOOR_ALERT_SMTP_HOST",
        "alert_smtp_host",
        "text",
        None,
        "mail server that sends alerts by email (with JOOR_ALERT_SMTP_FROM and JOOR_ALERT_SMTP_TO)",
        default_text="none: no email alerts",
        resource=None,
    ),
    Setting(
        "JOOR_ALERT_SMTP_PORT",
        "alert_smtp_port",
        "int",
        None,
        "the mail server's port",
        default_text="587 (starttls), 465 (ssl), 25 (none)",
        low=1,
        high=65_535,
        resource=None,
    ),
    Setting(
        "JOOR_ALERT_SMTP_SECURITY",
        "alert_smtp_security",
        "choice",
        "starttls",
        "how the mail connection is encrypted: starttls (upgrade a plain connection), ssl (TLS from the start) or "
        "none (an unencrypted relay on a trusted network; no login then)",
        choices=("starttls", "ssl", "none"),
        resource=None,
    ),
    Setting(
        "JOOR_ALERT_SMTP_USER",
        "alert_smtp_user",
        "text",
        None,
        "user name to log in to the mail server",
        default_text="none: no login",
        resource=None,
    ),
    Setting(
        "JOOR_ALERT_SMTP_PASSWORD",
        "alert_smtp_password",
        "secret",
        None,
        "password to log in to the mail server",
        resource=None,
    ),
    Setting(
        "JOOR_ALERT_SMTP_FROM",
        "alert_smtp_from",
        "text",
        None,
        "sender address of alert emails",
        resource=None,
    ),
    Setting(
        "JOOR_ALERT_SMTP_TO",
        "alert_smtp_to",
        "text",
        None,
        "recipients of alert emails, comma-separated",
        resource=None,
    ),
    Setting(
        "JOOR_ALERT_TIMEOUT",
        "alert_timeout",
        "float",
        5.0,
        "time one alert may take to send (channels send at once; one that fails or times out is logged, and never "
        "fails or holds up the run)",
        low=0.1,
        high=60,
        unit="s",
        resource=None,
    ),
    Setting(
        "JOOR_ALERT_WARNINGS",
        "alert_warnings",
        "choice",
        "off",
        "on: a run whose warning checks failed alerts too (a failed run always alerts)",
        choices=("off", "on"),
        resource=None,
    ),
    Setting(
        "JOOR_ALERT_FRESHNESS",
        "alert_freshness",
        "choice",
        "off",
        "on: an account whose tables go stale (see JOOR_FRESHNESS_HOURS) alerts once, until it is fresh again",
        choices=("off", "on"),
        resource=None,
    ),
    Setting(
        "JOOR_UI_URL",
        "ui_url",
        "url",
        None,
        "the Dagster webserver's address as its users open it, e.g. https://dagster.example.com; alerts link to "
        "the run there",
        default_text="none: alerts carry the run id, no link",
        resource=None,
    ),
    Setting(
        "JOOR_FRESHNESS_HOURS",
        "freshness_hours",
        "float",
        26.0,
        "the freshness check fails for an account whose last publication of its tables is older than this",
        low=0.1,
        high=8_760,
        unit="h",
        resource=None,
    ),
)

#: The alert and freshness settings: of the whole deployment, read by :mod:`joor_pipeline.alerts` and the sensors.
ALERT_VARS: Final = tuple(s.name for s in SETTINGS if s.name.startswith(("JOOR_ALERT_", "JOOR_FRESHNESS_")))
#: The retention settings: of the whole deployment, read by :mod:`joor_pipeline.prune`.
RETENTION_VARS: Final = ("JOOR_RETAIN_RAW_DAYS", "JOOR_RETAIN_PARQUET_DAYS")

BY_NAME: Final[dict[str, Setting]] = {s.name: s for s in SETTINGS}
#: Every variable with its one-line meaning.
ENV_VARS: Final[dict[str, str]] = {s.name: s.meaning for s in SETTINGS}
V4_VARS: Final = ("JOOR_ACCOUNT_ID", "JOOR_CLIENT_ID", "JOOR_CLIENT_SECRET", "JOOR_USERNAME", "JOOR_PASSWORD")
SECRET_VARS: Final = frozenset(s.name for s in SETTINGS if s.secret)
#: Variables that point at a JOOR (the demo drops them: it always uses the built-in sandbox).
ENDPOINT_VARS: Final = ("JOOR_BASE_URL", "JOOR_AUTH_URL", "JOOR_API_TOKEN", *V4_VARS)

#: The one line shown when nothing points at a JOOR (CLI, Dagster run and the UI's fetch asset say the same).
NOT_CONFIGURED: Final = (
    "no JOOR account configured: set JOOR_API_TOKEN (v2), or JOOR_API_VERSION=v4 with "
    + ", ".join(V4_VARS)
    + " (and JOOR_ENVIRONMENT=sandbox for JOOR's sandbox); or JOOR_ENVIRONMENT=builtin for the built-in "
    "sandbox's synthetic data"
)


#: Settings read by :func:`load_settings` into :class:`JoorSettings` (the rest are read where they are used).
JOOR_SETTINGS_FIELDS: Final = tuple(
    s
    for s in SETTINGS
    # Read where they are used (check_data_dir reads the two object-store ones).
    if s.name
    not in (
        "JOOR_FLATTEN_WORKERS",
        "JOOR_FIRST_SNAPSHOT_DATE",
        "JOOR_ACCOUNTS_FILE",
        "JOOR_WORK_DIR",
        "JOOR_STORE_LEASE_SECONDS",
        "JOOR_UI_URL",
        *ALERT_VARS,
        *RETENTION_VARS,
    )
)
#: Settings of the whole deployment, never of one account: an accounts file may not set them.
DEPLOYMENT_VARS: Final = (
    "JOOR_ACCOUNTS_FILE",
    "JOOR_DATA_DIR",
    "JOOR_FLATTEN_WORKERS",
    "JOOR_FIRST_SNAPSHOT_DATE",
    "JOOR_WORK_DIR",
    "JOOR_STORE_LEASE_SECONDS",
    "JOOR_UI_URL",
    *ALERT_VARS,
    *RETENTION_VARS,
)
#: The settings an ``[accounts.<name>]`` table may hold, by key (a secret by the name of its variable: ``<key>_env``).
ACCOUNT_SETTINGS: Final = {s.field: s for s in SETTINGS if s.name not in DEPLOYMENT_VARS}


def redact_url_text(text: str) -> str:
    """``text`` with anything between ``//`` and the last ``@`` masked, and a URL's whole query and fragment: user
    info and query strings (where tokens get pasted) never print, even unparsed."""
    text = re.sub(r"(?<=//).*@", "***@", text)
    if "//" in text:
        text = re.sub(r"([?#]).*", r"\1***", text, count=1, flags=re.DOTALL)
    return text


#: The environments whose secrets the configuration errors being built must not show, beside ``os.environ``
#: (set by the functions that read settings or the accounts file: see :func:`_knowing`).
_ENVIRONMENTS: ContextVar[tuple[Mapping[str, str], ...]] = ContextVar("joor_config_environments", default=())
#: A secret shorter than this is masked only where a value is exactly it (one or two characters occur by chance in
#: any text); a value shorter than this is not searched for inside the secrets.
_MIN_SECRET_CHARS: Final = 4
#: The name a variable takes in an accounts file's ``*_env`` key.
_VARIABLE_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@contextmanager
def _knowing(env: Mapping[str, str]) -> Iterator[None]:
    """Within the block, every value an error quotes is masked against ``env``'s secrets too (see :func:`_shown`)."""
    token = _ENVIRONMENTS.set((*_ENVIRONMENTS.get(), env))
    try:
        yield
    finally:
        _ENVIRONMENTS.reset(token)


def _read_accounts_text(path: Path) -> str:
    """An accounts file's text; a UTF-8 byte order mark (Windows editors write one) is not part of it."""
    return path.read_text(encoding="utf-8-sig")


def secret_values(env: Mapping[str, str]) -> dict[str, str]:
    """Every secret ``env`` holds, by value, each with what holds it: the secret settings' values
    (``JOOR_API_TOKEN``, ...); the value of every ``*_env`` key of the accounts file it names (a variable's name,
    or a secret pasted there by mistake); and the value of every variable those keys name. Never raises: a file
    that cannot be read names no secret (its own error says why)."""
    found: dict[str, str] = {}
    for name in sorted(SECRET_VARS):
        value = _clean(env, name)
        if value:
            found.setdefault(value, name)
    path = accounts_file(env)
    if path is None:
        return found
    import tomllib

    try:
        accounts = tomllib.loads(_read_accounts_text(path)).get("accounts")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return found
    tables = [table for table in accounts.values() if isinstance(table, dict)] if isinstance(accounts, dict) else []
    for table in tables:
        for key, named in table.items():
            if not key.endswith("_env") or not isinstance(named, str) or not named.strip():
                continue
            found.setdefault(named.strip(), f"{key} in {path}")
            value = _clean(env, named) if _VARIABLE_NAME.fullmatch(named) else None
            if value:
                found.setdefault(value, f"the variable {key} names in {path}")
    return found


def _secret_holder(raw: str) -> str | None:
    """What holds the secret that ``raw`` contains (or is a piece of), if it holds one this process knows."""
    text = raw.strip()
    if not text:
        return None
    for env in (*_ENVIRONMENTS.get(), os.environ):
        for secret, holder in secret_values(env).items():
            if secret == text or (len(secret) >= _MIN_SECRET_CHARS and secret in text):
                return holder
            if len(text) >= _MIN_SECRET_CHARS and text in secret:
                return holder
    return None


def _shown(raw: str, *, whole: bool = False) -> str:
    """A value as a configuration error quotes it: the one masking rule every quoted value goes through.

    A value that holds a secret this process knows (see :func:`secret_values`: those of the environment being
    read, and of ``os.environ``), or a piece of one, is not shown at all, wherever it was pasted; in a URL the
    user info and the whole query and fragment are masked (:func:`redact_url_text`); the rest is quoted and cut
    short, so one line stays one line (``whole``: a path, shown as it is, unquoted).
    """
    holder = _secret_holder(raw)
    if holder is not None:
        return f"<not shown: it holds a secret, the value of {holder}>"
    text = redact_url_text(raw)
    if whole:
        return text
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _clean(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _parse_url(setting: Setting, raw: str) -> tuple[str | None, str | None]:
    shown = _shown(raw)
    if "@" in raw.split("?", 1)[0].split("#", 1)[0]:
        return None, f"{setting.name} must not carry a user name or password (user:password@), got {shown}"
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError on a port out of range or not a number
    except ValueError:
        return None, f"{setting.name} is not a valid URL, got {shown}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None, f"{setting.name} must be an http:// or https:// URL with a host, got {shown}"
    if parts.query or parts.fragment:
        return None, f"{setting.name} must not have a query or fragment, got {shown}"
    if setting.name == "JOOR_BASE_URL" and raw.rstrip("/").endswith(("/v2", "/v4")):
        return None, f"JOOR_BASE_URL is the API root without the version segment, got {shown}"
    return raw, None


def _parse(setting: Setting, raw: str) -> tuple[Any, str | None]:
    """(value, problem) of one raw value; the problem names the variable and never quotes a secret."""
    kind = setting.kind
    if kind == "choice":
        value = raw.lower()
        if value not in setting.choices:
            return None, f"{setting.name} must be one of {setting.bounds}, got {_shown(raw)}"
        return value, None
    if kind in ("int", "float"):
        what = "a whole number" if kind == "int" else "a number"
        problem = f"{setting.name} must be {what} from {setting.bounds}, got {_shown(raw)}"
        try:
            number: float = int(raw) if kind == "int" else float(raw)
        except ValueError:
            return None, problem
        if not math.isfinite(number):
            return None, problem
        if (setting.low is not None and number < setting.low) or (setting.high is not None and number > setting.high):
            return None, problem
        return number, None
    if kind == "url":
        return _parse_url(setting, raw)
    if kind == "date":
        try:
            return date.fromisoformat(raw), None
        except ValueError:
            return None, f"{setting.name} must be a date in YYYY-MM-DD form, got {_shown(raw)}"
    if kind == "secret":
        return Secret(raw), None
    if kind == "path":
        return Path(raw).expanduser(), None
    return raw, None


def read_setting(env: Mapping[str, str], name: str, problems: list[str]) -> Any:
    """One variable, parsed and checked against its declaration; its default (or None) when unset or wrong."""
    setting = BY_NAME[name]
    raw = _clean(env, name)
    if raw is None:
        return setting.default
    with _knowing(env):
        value, problem = _parse(setting, raw)
    if problem:
        problems.append(problem)
        return setting.default
    return value


def raise_problems(problems: list[str]) -> None:
    """One ConfigError, on one line, listing every problem found, if there is any."""
    if problems == [NOT_CONFIGURED]:
        raise ConfigError(NOT_CONFIGURED)
    if problems:
        raise ConfigError("invalid JOOR configuration: " + "; ".join(problems))


def flatten_workers_setting(env: Mapping[str, str]) -> int | None:
    """``JOOR_FLATTEN_WORKERS`` as a number of processes, None when unset (the default); ConfigError if bad."""
    problems: list[str] = []
    workers = read_setting(env, "JOOR_FLATTEN_WORKERS", problems)
    raise_problems(problems)
    return workers


def first_snapshot_date(env: Mapping[str, str] | None = None) -> date:
    """``JOOR_FIRST_SNAPSHOT_DATE`` (default 2025-01-01); ConfigError if it is not a date."""
    problems: list[str] = []
    value: date = read_setting(os.environ if env is None else env, "JOOR_FIRST_SNAPSHOT_DATE", problems)
    raise_problems(problems)
    return value


def load_settings(env: Mapping[str, str]) -> JoorSettings:
    """Read and validate the ``JOOR_*`` variables; raise one ConfigError listing every problem."""
    problems: list[str] = []
    values = {s.field: read_setting(env, s.name, problems) for s in JOOR_SETTINGS_FIELDS}
    base_url: str | None = values.pop("base_url")
    auth_url: str | None = values.pop("auth_url")
    environment: str = values["environment"]
    builtin = environment == BUILTIN
    has_token = values["api_token"] is not None
    v4_set = [name for name in V4_VARS if values[BY_NAME[name].field] is not None]

    if builtin:
        for name, url in (("JOOR_BASE_URL", base_url), ("JOOR_AUTH_URL", auth_url)):
            if url is not None:
                problems.append(f"{name} points at a server but JOOR_ENVIRONMENT=builtin runs the built-in sandbox")
    elif not has_token and not v4_set and _clean(env, "JOOR_BASE_URL") is None:
        problems.append(NOT_CONFIGURED)
    elif values["api_version"] == "v2" and not has_token:
        hint = " (v4 credentials are set: did you mean JOOR_API_VERSION=v4?)" if v4_set else ""
        problems.append(f"JOOR_API_TOKEN is required for JOOR_API_VERSION=v2{hint}")
    elif values["api_version"] == "v4" and len(v4_set) < len(V4_VARS):
        problems.append(f"JOOR_API_VERSION=v4 needs {', '.join(n for n in V4_VARS if n not in v4_set)}")
    raise_problems(problems)

    if builtin:
        # Filled in by pipeline.connect() once the sandbox listens.
        base_url = auth_url = ""
    else:
        hosts = HOSTS[environment]
        # A base URL override (a local or staging server) serves its token endpoint beside the API.
        auth_url = auth_url or (f"{base_url.rstrip('/')}/auth/" if base_url else hosts["auth_url"])
        base_url = (base_url or hosts["base_url"]).rstrip("/")
    return JoorSettings(base_url=base_url, auth_url=auth_url, builtin_sandbox=builtin, **values)


# ---- several accounts ------------------------------------------------------------------------------------------


def _account_message(message: str, where: str) -> str:
    """A load_settings error of one account, in the file's terms: its keys instead of the variables."""
    message = message.removeprefix("invalid JOOR configuration: ")
    for key, setting in sorted(ACCOUNT_SETTINGS.items(), key=lambda item: -len(item[1].name)):
        message = message.replace(setting.name, key + ("_env" if setting.secret else ""))
    return f"{where}: {message}"


def _account_env(env: Mapping[str, str], path: Path, name: str, table: object) -> dict[str, str]:
    """The ``JOOR_*`` variables one ``[accounts.<name>]`` table stands for, secrets read from their variables."""
    if not ACCOUNT_NAME.fullmatch(name):
        raise ConfigError(
            f"{_shown(str(path), whole=True)}: account name {_shown(name)} must be 1 to 40 lowercase letters, "
            "digits, '_' or '-', starting with a letter or digit"
        )
    if not isinstance(table, dict):
        raise ConfigError(f"{_shown(str(path), whole=True)} [accounts.{name}] must be a table of settings")
    # The deployment-wide settings come from the environment, as without a file.
    account_env = {var: env[var] for var in DEPLOYMENT_VARS if var in env}
    problems: list[str] = []
    for key, value in table.items():
        setting = ACCOUNT_SETTINGS.get(key.removesuffix("_env"))
        if key in ACCOUNT_SETTINGS and ACCOUNT_SETTINGS[key].secret:
            # Never echo the value: it is the secret itself.
            problems.append(
                f"{key} holds a secret, which never goes in the file: name the environment variable that holds it "
                f'with {key}_env = "SOME_VARIABLE"'
            )
        elif key.endswith("_env") and setting is not None and setting.secret:
            # Never echo the value either: the secret itself gets pasted here too, and may look like a name.
            if not isinstance(value, str) or not _VARIABLE_NAME.fullmatch(value):
                problems.append(
                    f"{key} must be the name of an environment variable (letters, digits and '_'); its value is "
                    "not shown, in case it is the secret itself"
                )
            elif not env.get(value, "").strip():
                problems.append(
                    f"{key} names an environment variable that is not set (the name is not shown, in case it is "
                    "the secret itself)"
                )
            else:
                account_env[setting.name] = env[value]
        elif key in ACCOUNT_SETTINGS:
            if isinstance(value, bool) or not isinstance(value, str | int | float):
                problems.append(f"{key} must be a string or a number, got {type(value).__name__}")
            else:
                account_env[ACCOUNT_SETTINGS[key].name] = str(value)
        elif any(BY_NAME[var].field == key for var in DEPLOYMENT_VARS):
            var = next(var for var in DEPLOYMENT_VARS if BY_NAME[var].field == key)
            problems.append(f"{key} is set for the whole deployment, not per account: set {var} instead")
        else:
            allowed = sorted(k + ("_env" if s.secret else "") for k, s in ACCOUNT_SETTINGS.items())
            problems.append(f"unknown key {_shown(key)}; allowed: {', '.join(allowed)}")
    if problems:
        raise ConfigError(f"{_shown(str(path), whole=True)} [accounts.{name}]: " + "; ".join(problems))
    return account_env


def accounts_file(env: Mapping[str, str]) -> Path | None:
    """``JOOR_ACCOUNTS_FILE`` as a path, None when unset."""
    raw = _clean(env, "JOOR_ACCOUNTS_FILE")
    return Path(raw).expanduser() if raw else None


def account_environments(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Each configured account's ``JOOR_*`` variables, by name, in the file's order (not validated yet).

    Without ``JOOR_ACCOUNTS_FILE``: one account, ``default``, the ``JOOR_*`` variables themselves. With it: one per
    ``[accounts.<name>]`` table (ConfigError naming the file, the account and the key for anything wrong in it).
    """
    path = accounts_file(env)
    if path is None:
        return {DEFAULT_ACCOUNT: dict(env)}
    import tomllib

    with _knowing(env):
        try:
            document = tomllib.loads(_read_accounts_text(path))
        except FileNotFoundError:
            raise ConfigError(f"JOOR_ACCOUNTS_FILE {_shown(str(path), whole=True)} does not exist") from None
        except OSError as exc:
            shown = _shown(str(path), whole=True)
            raise ConfigError(f"JOOR_ACCOUNTS_FILE {shown} cannot be read: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:
            shown = _shown(str(path), whole=True)
            raise ConfigError(
                f"JOOR_ACCOUNTS_FILE {shown} is not UTF-8 text (byte {exc.start}): save it as UTF-8"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            shown = _shown(str(path), whole=True)
            raise ConfigError(f"JOOR_ACCOUNTS_FILE {shown} is not valid TOML: {exc}") from None
        unknown = sorted(set(document) - {"accounts"})
        if unknown:
            found = ", ".join(_shown(key) for key in unknown)
            raise ConfigError(
                f"{_shown(str(path), whole=True)}: only [accounts.<name>] tables belong here, found {found}"
            )
        accounts = document.get("accounts")
        if not isinstance(accounts, dict) or not accounts:
            raise ConfigError(
                f"{_shown(str(path), whole=True)} lists no account: add an [accounts.<name>] table for each JOOR "
                "account"
            )
        return {name: _account_env(env, path, name, table) for name, table in accounts.items()}


def load_accounts(env: Mapping[str, str]) -> dict[str, JoorSettings]:
    """Every configured account's validated settings, by name (see :func:`account_environments`)."""
    path = accounts_file(env)
    found: dict[str, JoorSettings] = {}
    # Every account's errors know the whole environment's secrets (another account's token, say), not only its own.
    with _knowing(env):
        for name, account_env in account_environments(env).items():
            if path is None:
                found[name] = load_settings(account_env)
                continue
            try:
                found[name] = load_settings(account_env)
            except ConfigError as exc:
                where = f"{_shown(str(path), whole=True)} [accounts.{name}]"
                raise ConfigError(_account_message(str(exc), where)) from None
    return found


def account_names(env: Mapping[str, str]) -> list[str]:
    """The configured account names (checked, settings not validated): ``['default']`` without a file."""
    return list(account_environments(env))


def load_account(env: Mapping[str, str], account: str) -> JoorSettings:
    """One account's validated settings; a UnknownAccount error listing the configured names."""
    with _knowing(env):
        environments = account_environments(env)
        if account not in environments:
            raise UnknownAccount(account, list(environments))
        path = accounts_file(env)
        try:
            return load_settings(environments[account])
        except ConfigError as exc:
            if path is None:
                raise
            where = f"{_shown(str(path), whole=True)} [accounts.{account}]"
            raise ConfigError(_account_message(str(exc), where)) from None


class UnknownAccount(ConfigError):
    """An account name that is not configured."""

    def __init__(self, account: str, known: list[str]) -> None:
        self.account = account
        self.known = known
        super().__init__(f"unknown account {_shown(account)}; configured: {', '.join(known)}")


def configuration_problem(env: Mapping[str, str]) -> str | None:
    """What is wrong with the JOOR settings in ``env`` (one line), or None: for a UI that must load regardless.

    With an accounts file, every account is checked (and the file itself)."""
    try:
        load_accounts(env)
    except ConfigError as exc:
        return str(exc)
    return None


def check_data_dir(path: Path, name: str = "JOOR_DATA_DIR", env: Mapping[str, str] | None = None) -> Path:
    """The local directory the data at ``path`` is worked on, its store opened (see
    :func:`~joor_pipeline.storage.factory.open_data_dir`): the directory itself made absolute, or for a URL its work
    directory (``JOOR_WORK_DIR``). A ConfigError naming ``name`` if it cannot hold data, or naming the object-store
    settings of ``env`` (default: the process environment) if they are wrong, whatever the data directory."""
    env = os.environ if env is None else env
    problems: list[str] = []
    work_dir = read_setting(env, "JOOR_WORK_DIR", problems)
    lease_seconds = read_setting(env, "JOOR_STORE_LEASE_SECONDS", problems)
    raise_problems(problems)
    return open_data_dir(path, work_dir=work_dir, lease_seconds=lease_seconds, name=name)


# ---- documentation generated from SETTINGS ---------------------------------------------------------------------

README_BEGIN: Final = (
    "<!-- generated from SETTINGS in joor_pipeline/config.py: uv run python -m joor_pipeline.config --write-readme -->"
)
README_END: Final = "<!-- /settings -->"


def help_text() -> str:
    """The variables section of ``joor-pipeline --help``."""
    width = max(len(s.name) for s in SETTINGS)
    lines = []
    for s in SETTINGS:
        extra = [f"default {s.shown_default}"] if s.shown_default else []
        if s.bounds and not s.choices:
            extra.append(s.bounds)
        if s.secret:
            extra.append("secret")
        lines.append(f"  {s.name:<{width}}  {s.meaning}" + (f" ({'; '.join(extra)})" if extra else ""))
    return "configuration (environment variables):\n" + "\n".join(lines)


def readme_table() -> str:
    """The README's configuration table, between its markers."""

    def code(text: str) -> str:
        return f"`{text}`" if text else ""

    rows = [
        "| variable | meaning | default | allowed |",
        "|---|---|---|---|",
    ]
    for s in SETTINGS:
        meaning = s.meaning + (" (secret: never printed)" if s.secret else "")
        default = code(s.shown_default) if s.default_text is None else s.shown_default
        rows.append(f"| `{s.name}` | {meaning} | {default} | {s.bounds} |")
    return "\n".join([README_BEGIN, *rows, README_END])


def replace_readme_table(readme: str) -> str:
    """``readme`` with the text between the markers replaced by :func:`readme_table`."""
    start, end = readme.index(README_BEGIN), readme.index(README_END) + len(README_END)
    return readme[:start] + readme_table() + readme[end:]


def declaration_mismatches() -> list[str]:
    """Where :class:`JoorSettings` disagrees with :data:`SETTINGS` (name or default); empty when they agree."""
    actual = {f.name: f for f in fields(JoorSettings)}
    problems = []
    for s in JOOR_SETTINGS_FIELDS:
        f = actual.get(s.field)
        if f is None:
            problems.append(f"JoorSettings has no field {s.field} for {s.name}")
            continue
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if s.default is not None and default != s.default:
            problems.append(f"JoorSettings.{s.field} defaults to {default!r}, SETTINGS says {s.default!r} ({s.name})")
    return problems


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-readme"]:
        readme = Path("README.md")
        readme.write_text(replace_readme_table(readme.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        print(readme_table())

"""Dagster resources: JOOR settings and the data directory, fed by ``EnvVar`` from the CLI's variables."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from joor_pipeline.config import ENV_VARS, JoorSettings, flatten_workers_setting, load_settings
from joor_pipeline.joor.client import JoorClient
from joor_pipeline.pipeline import connect

#: Resource field -> environment variable, for every JOOR setting a resource carries.
JOOR_FIELDS: dict[str, str] = {
    "api_version": "JOOR_API_VERSION",
    "environment": "JOOR_ENVIRONMENT",
    "base_url": "JOOR_BASE_URL",
    "auth_url": "JOOR_AUTH_URL",
    "api_token": "JOOR_API_TOKEN",
    "account_id": "JOOR_ACCOUNT_ID",
    "client_id": "JOOR_CLIENT_ID",
    "client_secret": "JOOR_CLIENT_SECRET",
    "username": "JOOR_USERNAME",
    "password": "JOOR_PASSWORD",
    "format": "JOOR_FORMAT",
    "page_size": "JOOR_PAGE_SIZE",
    "rate_limit_credits": "JOOR_RATE_LIMIT_CREDITS",
    "rate_limit_window": "JOOR_RATE_LIMIT_WINDOW",
    "timeout": "JOOR_TIMEOUT",
    "max_attempts": "JOOR_MAX_ATTEMPTS",
    "concurrency": "JOOR_CONCURRENCY",
    "sandbox_connections": "JOOR_SANDBOX_CONNECTIONS",
    "sandbox_seed": "JOOR_SANDBOX_SEED",
}
assert set(JOOR_FIELDS.values()) <= set(ENV_VARS)


class JoorApiResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Connection settings for the JOOR API; unset fields fall back to the documented defaults.

    Every field is text, as the environment gives it, and goes through the same validation as the CLI, so a
    mistake reads the same wherever it is made. With no credentials and no base URL the built-in sandbox runs.
    """

    api_version: str | None = None
    environment: str | None = None
    base_url: str | None = None
    auth_url: str | None = None
    api_token: str | None = None
    account_id: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    username: str | None = None
    password: str | None = None
    format: str | None = None
    page_size: str | None = None
    rate_limit_credits: str | None = None
    rate_limit_window: str | None = None
    timeout: str | None = None
    max_attempts: str | None = None
    concurrency: str | None = None
    sandbox_connections: str | None = None
    sandbox_seed: str | None = None

    def settings(self, data_dir: Path | None = None) -> JoorSettings:
        """Validated settings (raises ConfigError naming the variable)."""
        env = {var: str(getattr(self, name)) for name, var in JOOR_FIELDS.items() if getattr(self, name) is not None}
        if data_dir is not None:
            env["JOOR_DATA_DIR"] = str(data_dir)
        return load_settings(env)

    @contextmanager
    def client(self) -> Iterator[JoorClient]:
        """A client for the configured JOOR (or a built-in sandbox for the length of the block)."""
        with connect(self.settings()) as client:
            yield client


class DataDirResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Where raw pages, Parquet tables and ``joor.duckdb`` live (``JOOR_DATA_DIR``, default ``./data``), and how
    many processes flatten a snapshot (``JOOR_FLATTEN_WORKERS``, default one per usable core)."""

    data_dir: str = "data"
    flatten_workers: str | None = None

    @property
    def path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    def workers(self) -> int | None:
        """The flatten's worker processes; None for the default (raises ConfigError naming the variable)."""
        if self.flatten_workers is None:
            return None
        return flatten_workers_setting({"JOOR_FLATTEN_WORKERS": self.flatten_workers})


def resources_from_env(environ: dict[str, str] | None = None) -> dict[str, dg.ConfigurableResource]:  # type: ignore[type-arg]
    """Resources whose set fields are ``EnvVar`` s: resolved at launch, shown as names (not values) in the UI.

    Only variables set when the definitions load are wired, because an ``EnvVar`` of an unset variable is an
    error at launch; an unset one keeps the library default, exactly as on the command line.
    """
    environ = dict(os.environ) if environ is None else environ
    joor = JoorApiResource(
        **{name: dg.EnvVar(var) for name, var in JOOR_FIELDS.items() if environ.get(var, "").strip()}
    )
    data = DataDirResource(
        **{
            name: dg.EnvVar(var)
            for name, var in (("data_dir", "JOOR_DATA_DIR"), ("flatten_workers", "JOOR_FLATTEN_WORKERS"))
            if environ.get(var, "").strip()
        }
    )
    return {"joor": joor, "storage": data}

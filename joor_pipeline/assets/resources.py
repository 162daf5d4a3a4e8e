"""Dagster resources: JOOR settings and the data directory, their fields taken from ``config.SETTINGS``.

Every field is text, as the environment gives it, and goes through the same validation as the CLI
(:func:`~joor_pipeline.config.load_settings`), so a mistake reads the same wherever it is made. In the code
location each set field is an ``EnvVar`` (resolved at launch, shown by name in the UI); ``joor-pipeline run``
instead hands the run resources holding its own values (:func:`resources_from_values`), so it needs no change
to ``os.environ`` and keeps the values out of the run's stored snapshot.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import dagster as dg
from pydantic import Field

from joor_pipeline.config import (
    DEFAULT_ACCOUNT,
    SETTINGS,
    JoorSettings,
    Setting,
    check_data_dir,
    flatten_workers_setting,
    load_account,
)
from joor_pipeline.joor.client import JoorClient
from joor_pipeline.pipeline import connect

#: Resource field -> environment variable, for every setting the JOOR resource carries.
JOOR_FIELDS: Final[dict[str, str]] = {s.field: s.name for s in SETTINGS if s.resource == "joor"}
#: Resource field -> environment variable, for the storage resource.
STORAGE_FIELDS: Final[dict[str, str]] = {s.field: s.name for s in SETTINGS if s.resource == "storage"}


def _description(setting: Setting) -> str:
    extra = [f"default {setting.shown_default}"] if setting.shown_default else []
    if setting.bounds:
        extra.append(setting.bounds)
    secret = " Secret: give it as an EnvVar." if setting.secret else ""
    return f"{setting.name}: {setting.meaning} ({'; '.join(extra)}).{secret}" if extra else setting.name + secret


def _fields(names: Mapping[str, str]) -> dict[str, Any]:
    by_name = {s.name: s for s in SETTINGS}
    return {field: Field(default=None, description=_description(by_name[var])) for field, var in names.items()}


def _environ(resource: dg.ConfigurableResource, names: Mapping[str, str]) -> dict[str, str]:  # type: ignore[type-arg]
    """The resource's set fields as the environment variables they stand for."""
    return {var: str(value) for field, var in names.items() if (value := getattr(resource, field)) is not None}


class JoorApiResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Connection settings for the JOOR API (one ``str | None`` field per ``JOOR_*`` setting it carries)."""

    # The fields come from the one declaration in config.SETTINGS, so they cannot drift from the CLI's.
    __annotations__ = dict.fromkeys(JOOR_FIELDS, str | None)
    vars().update(_fields(JOOR_FIELDS))

    def environ(self) -> dict[str, str]:
        """The set fields as ``JOOR_*`` variables."""
        return _environ(self, JOOR_FIELDS)

    def settings(self, data_dir: Path | None = None, *, account: str = DEFAULT_ACCOUNT) -> JoorSettings:
        """Validated settings of ``account`` (raises ConfigError naming the variable or the file's key, or saying
        what to set).

        Without an accounts file, the fields are the one account ``default``. With one (the ``accounts_file``
        field), the account's table is read now, at run time, and its secrets from the environment variables it
        names: they never pass through Dagster's config or metadata.
        """
        env = self.environ()
        if self.accounts_file is not None:  # type: ignore[attr-defined]
            env = {**os.environ, **env}
        if data_dir is not None:
            env["JOOR_DATA_DIR"] = str(data_dir)
        return load_account(env, account)

    @contextmanager
    def client(self, *, account: str = DEFAULT_ACCOUNT) -> Iterator[JoorClient]:
        """A client for the account's JOOR (or the built-in sandbox, when asked for, for the block)."""
        with connect(self.settings(account=account)) as client:
            yield client


class DataDirResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Where raw pages, Parquet tables and ``joor.duckdb`` live, and how many processes flatten a snapshot."""

    __annotations__ = dict.fromkeys(STORAGE_FIELDS, str | None)
    vars().update(_fields(STORAGE_FIELDS))

    @property
    def path(self) -> Path:
        """The data directory, absolute (ConfigError if it is a file or not writable)."""
        return check_data_dir(Path(getattr(self, "data_dir", None) or "data")).resolve()

    def environ(self) -> dict[str, str]:
        """The set fields as the ``JOOR_*`` variables they stand for."""
        return _environ(self, STORAGE_FIELDS)

    def workers(self) -> int | None:
        """The flatten's worker processes; None for the default (raises ConfigError naming the variable)."""
        return flatten_workers_setting(_environ(self, STORAGE_FIELDS))


Resources = dict[str, Any]


def resources_from_env(environ: Mapping[str, str] | None = None) -> Resources:
    """Resources whose set fields are ``EnvVar`` s: resolved at launch, shown as names (not values) in the UI.

    Only variables set when the definitions load are wired, because an ``EnvVar`` of an unset variable is an
    error at launch; an unset one keeps the library default, exactly as on the command line.
    """
    environ = os.environ if environ is None else environ

    def wired(names: Mapping[str, str]) -> dict[str, dg.EnvVar]:
        return {field: dg.EnvVar(var) for field, var in names.items() if environ.get(var, "").strip()}

    return {"joor": JoorApiResource(**wired(JOOR_FIELDS)), "storage": DataDirResource(**wired(STORAGE_FIELDS))}


def resources_from_values(environ: Mapping[str, str]) -> Resources:
    """Resources holding the values in ``environ``, for one run, without touching ``os.environ``.

    A resource given as plain values would write them (secrets too) into the run's stored job snapshot as
    config defaults; handed over as ready-made objects, nothing of them is stored.
    """

    def given(names: Mapping[str, str]) -> dict[str, str]:
        return {field: environ[var] for field, var in names.items() if environ.get(var, "").strip()}

    joor = JoorApiResource(**given(JOOR_FIELDS))
    storage = DataDirResource(**given(STORAGE_FIELDS))
    return {
        "joor": dg.ResourceDefinition.hardcoded_resource(joor, "JOOR API settings given to this run"),
        "storage": dg.ResourceDefinition.hardcoded_resource(storage, "data directory given to this run"),
    }

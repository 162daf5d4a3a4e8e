"""The Dagster instance of one machine: ``DAGSTER_HOME`` opened (or created) for a run, and its event log storage.

**The event log on one machine.** Dagster's SQLite event log storage opens a database engine, connects, commits
(an fsync) and disconnects (a checkpoint of the write-ahead log: another fsync) for every event, and a run of this
project records a few hundred: measured, half of a daily run's CPU went there (``bench/run_cost.py``).
:class:`PooledSqliteEventLogStorage` is the same storage, on the same files, with one engine and one open
connection per database file (at most :data:`OPEN_SHARDS` kept), and SQLite's ``synchronous=NORMAL``, the setting
SQLite recommends with a write-ahead log (a commit is durable once the log is checkpointed; a crash of the process
loses nothing, a power cut at most the last events). Dagster's webserver follows a run's events by watching its
database file for changes; with the connection kept open, new events go to the write-ahead log beside it, so
each stored event touches the database file's time stamp, which wakes the watcher as a write did before.

It is named in ``dagster_home.example/dagster.sqlite.yaml`` (what ``make ui`` and ``make demo`` use) and in the
``dagster.yaml`` that :func:`open_instance` writes into a ``DAGSTER_HOME`` it creates; a shared deployment keeps
Postgres (``dagster_home.example/dagster.yaml``), which this does not touch.
"""

from __future__ import annotations

import fcntl
import os
import re
import sys
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Final

import dagster as dg
import sqlalchemy as sa
from dagster._check import CheckError
from dagster._config import StringSource
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log import SqliteEventLogStorage
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._serdes import ConfigurableClassData
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

from joor_pipeline.joor.errors import ConfigError, JoorError

#: Database files (one per run, and the index) a process keeps open; the least recently used is closed past it.
OPEN_SHARDS: Final = 8
#: How long a run waits for another process that is creating the same fresh ``DAGSTER_HOME``.
INSTANCE_WAIT_SECONDS: Final = 60.0


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """Dagster's SQLite event log (``$DAGSTER_HOME/history/runs/*.db``) with its connections kept open.

    Configured by the home directory alone (``dagster_home: {env: DAGSTER_HOME}``, or a path), so the files are
    where Dagster's default storage keeps them and a home can switch between the two.
    """

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        super().__init__(base_dir, inst_data=inst_data)

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {"dagster_home": StringSource}

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> PooledSqliteEventLogStorage:
        home = Path(str(config_value["dagster_home"])).expanduser().absolute()
        return cls(str(home / "history" / "runs"), inst_data=inst_data)

    def _engine(self, shard: str) -> Engine:
        """The shard's engine (created, its schema checked, on first use); the caller holds ``_db_lock``."""
        engine = self._engines.get(shard)
        if engine is not None:
            self._engines.move_to_end(shard)
            return engine
        engine = sa.create_engine(
            self.conn_string_for_shard(shard),
            poolclass=StaticPool,  # one connection, reused: the lock around it serialises its users
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
        )

        @sa.event.listens_for(engine, "connect")
        def _synchronous_normal(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        if shard not in self._initialized_dbs:
            self._initdb(engine)
            self._initialized_dbs.add(shard)
        self._engines[shard] = engine
        while len(self._engines) > OPEN_SHARDS:
            _, oldest = self._engines.popitem(last=False)
            oldest.dispose()
        return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        with self._db_lock:
            engine = self._engine(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def store_event(self, event: EventLogEntry) -> None:
        super().store_event(event)
        # The webserver follows a run by watching its file: the event is in the write-ahead log beside it.
        with suppress(OSError):
            os.utime(self.path_for_shard(event.run_id))

    def dispose(self) -> None:
        with self._db_lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()
        super().dispose()


#: Written into a ``DAGSTER_HOME`` that :func:`open_instance` creates (as ``dagster_home.example/
#: dagster.sqlite.yaml``, with this home's path): the pooled event log, the run limits and pools that keep one run
#: per JOOR account and one writer on joor.duckdb, and no telemetry banner in the output.
DAGSTER_YAML: Final = """# Written by joor-pipeline when it created this DAGSTER_HOME (see dagster_home.example/).
event_log_storage:
  module: joor_pipeline.assets.instance
  class: PooledSqliteEventLogStorage
  config:
    dagster_home: {home}
concurrency:
  runs:
    max_concurrent_runs: 4
    tag_concurrency_limits:
      - key: dagster/partition/account
        value:
          applyLimitPerUniqueValue: true
        limit: 1
  pools:
    default_limit: 1
    granularity: op
telemetry:
  enabled: false
"""


class InstanceBusy(JoorError):
    """Another process kept ``DAGSTER_HOME`` locked while creating it for longer than we wait."""


@contextmanager
def _home_lock(home: Path, wait: float) -> Iterator[None]:
    """Hold ``home``'s creation lock: two first runs must not create the same SQLite storage at once."""
    with open(home / ".joor-pipeline-instance.lock", "a+") as lock:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise InstanceBusy(
                        f"DAGSTER_HOME {home} is being set up by another process; try again in a minute"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def open_instance(environ: Mapping[str, str], *, wait: float = INSTANCE_WAIT_SECONDS) -> dg.DagsterInstance:
    """The instance at ``environ['DAGSTER_HOME']`` (so the run shows in the UI), else a throwaway one.

    A missing home is created (with a ``dagster.yaml``); a relative one is taken from the current directory; a
    home that is a file is a ConfigError. The instance's storage is created under a file lock, so two first runs
    at once wait for each other instead of racing on the SQLite schema.
    """
    raw = (environ.get("DAGSTER_HOME") or "").strip()
    if not raw:
        return dg.DagsterInstance.ephemeral()
    home = Path(raw).expanduser().absolute()
    if home.exists() and not home.is_dir():
        raise ConfigError(f"DAGSTER_HOME {home} is not a directory")
    created = not home.exists()
    try:
        home.mkdir(parents=True, exist_ok=True)
        with _home_lock(home, wait):
            config = home / "dagster.yaml"
            if created and not config.exists():
                config.write_text(DAGSTER_YAML.format(home=_yaml_string(str(home))), encoding="utf-8")
            try:
                return dg.DagsterInstance.from_config(str(home))
            except CheckError as exc:  # a module dagster.yaml names is not installed, e.g. dagster_postgres
                missing = _missing_package(exc, config)
                if missing is None:
                    raise
                raise missing from None
    except OSError as exc:
        raise ConfigError(f"DAGSTER_HOME {home} is not usable: {exc.strerror or exc}") from None


#: The extra that installs a module a ``dagster.yaml`` may name (dagster-postgres, and psycopg2 with it).
EXTRA_OF_MODULE: Final = {"dagster_postgres": ("postgres", "dagster-postgres")}
_NOT_IMPORTED: Final = re.compile(r"Couldn't import module (?P<module>[\w.]+) when attempting to load the "
                                  r"configurable class (?P<cls>[\w.]+)")  # fmt: skip


def _missing_package(exc: CheckError, config: Path) -> ConfigError | None:
    """Dagster's "Couldn't import module" as one line naming the extra to install; None for another error."""
    found = _NOT_IMPORTED.search(str(exc))
    if not found:
        return None
    module = found["module"].split(".")[0]
    if module not in EXTRA_OF_MODULE:
        return ConfigError(f"{config} names {found['cls']}, but its module {module} is not installed")
    extra, package = EXTRA_OF_MODULE[module]
    return ConfigError(
        f"{config} names {found['cls']}, which needs the optional package {package}: install the {extra} extra "
        f"(uv sync --frozen --no-dev --all-extras, or --extra {extra} with every other extra this deployment uses; "
        f"or pip install 'joor-pipeline[{extra}]')"
    )


def _yaml_string(text: str) -> str:
    """``text`` as a double-quoted YAML scalar."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ui_environ(environ: Mapping[str, str]) -> tuple[dict[str, str], str | None]:
    """The environment ``make ui`` starts Dagster with: ``environ``, plus ``JOOR_ENVIRONMENT=builtin`` when nothing
    points at a JOOR (so the UI opens on the data ``make demo`` made, not on "NOT CONFIGURED"); and the line that
    says so, or None."""
    from joor_pipeline.config import NOT_CONFIGURED, configuration_problem

    env = dict(environ)
    if (env.get("JOOR_ENVIRONMENT") or "").strip() or configuration_problem(env) != NOT_CONFIGURED:
        return env, None
    env["JOOR_ENVIRONMENT"] = "builtin"
    return env, (
        "make ui: no JOOR is configured, so the UI runs on the built-in sandbox (JOOR_ENVIRONMENT=builtin, "
        "synthetic retailers, as `make demo`); set JOOR_API_TOKEN or JOOR_ACCOUNTS_FILE for a brand's JOOR data"
    )


def main(argv: list[str]) -> int:
    """``python -m joor_pipeline.assets.instance ui COMMAND...``: run COMMAND (``dagster dev ...``) in the
    environment :func:`ui_environ` gives."""
    if len(argv) < 2 or argv[0] != "ui":
        print("usage: python -m joor_pipeline.assets.instance ui COMMAND [ARG ...]", file=sys.stderr)
        return 2
    env, note = ui_environ(os.environ)
    if note:
        print(note, file=sys.stderr, flush=True)
    os.execvpe(argv[1], argv[1:], env)  # noqa: S606 - the command make ui gives, its arguments as they are
    return 0  # not reached: exec replaces this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

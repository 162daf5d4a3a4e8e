"""Run the whole Dagster graph for one date from the command line, and summarise what happened.

The run takes its settings from the mapping it is given (resources built from those values for this run only):
``os.environ`` is never changed. Its console output is one line per event, with an error's first line only, so
the root cause that ends the output is easy to find; ``debug=True`` restores Dagster's own console with every
traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Final

import dagster as dg

from joor_pipeline.alerts import ALERT_TAG, IN_PROCESS
from joor_pipeline.assets.joor import joor_raw_connections, joor_tables
from joor_pipeline.assets.models import joor_models
from joor_pipeline.assets.partitions import partition_key as multi_key
from joor_pipeline.assets.resources import resources_from_values
from joor_pipeline.config import DEFAULT_ACCOUNT, raise_problems, read_setting
from joor_pipeline.definitions import JOB_NAME, build_defs
from joor_pipeline.joor.errors import ConfigError, JoorError
from joor_pipeline.layout import SnapshotKey
from joor_pipeline.storage.durable import LockTimeout, flocked
from joor_pipeline.storage.raw import raw_snapshot_exists

#: How long a run waits for another process that is creating the same fresh ``DAGSTER_HOME``.
INSTANCE_WAIT_SECONDS: Final = 60.0
#: Written into a ``DAGSTER_HOME`` this module creates (as ``dagster_home.example/dagster.yaml``): the pools
#: that keep one process on JOOR and one writer on joor.duckdb, and no telemetry banner in the output.
DAGSTER_YAML: Final = """# Written by joor-pipeline when it created this DAGSTER_HOME (as dagster_home.example/).
concurrency:
  runs:
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
#: The longest root-cause line printed (the whole error is in the run's event log).
MAX_CAUSE_CHARS: Final = 2000

#: Dagster's run tags of a multi-dimensional partition: ``dagster/partition/<dimension>``.
PARTITION_TAG: Final = "dagster/partition"
#: Tag on every run of ``joor-pipeline run --from D1 --to D2``.
RANGE_TAG: Final = "joor/range"


@dataclass
class CheckOutcome:
    """One asset check's result in a run."""

    asset: str
    check: str
    passed: bool
    severity: str
    failures: int | None


@dataclass
class RunSummary:
    """What a run of the graph did: success, rows per asset, every check, and the root cause of a failure."""

    run_id: str
    success: bool
    rows: dict[str, int] = field(default_factory=dict)
    checks: list[CheckOutcome] = field(default_factory=list)
    failure: str | None = None
    #: The failed step's whole error, tracebacks included (printed under ``--debug``).
    failure_detail: str | None = None
    #: The failed step and its root-cause line apart (``failure`` is "step: cause"), and the run's partition: what
    #: an alert names (``alerts.alert_for_failed_run``).
    step: str | None = None
    cause: str | None = None
    account: str | None = None
    snapshot_date: str | None = None

    @property
    def failed_checks(self) -> list[CheckOutcome]:
        return [c for c in self.checks if not c.passed]


class InstanceBusy(JoorError):
    """Another process kept ``DAGSTER_HOME`` locked while creating it for longer than we wait."""


@contextmanager
def _home_lock(home: Path, wait: float) -> Iterator[None]:
    """Hold ``home``'s creation lock: two first runs must not create the same SQLite storage at once."""
    try:
        with flocked(home / ".joor-pipeline-instance.lock", wait):
            yield
    except LockTimeout:
        raise InstanceBusy(f"DAGSTER_HOME {home} is being set up by another process; try again in a minute") from None


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
                config.write_text(DAGSTER_YAML, encoding="utf-8")
            return dg.DagsterInstance.from_config(str(home))
    except OSError as exc:
        raise ConfigError(f"DAGSTER_HOME {home} is not usable: {exc.strerror or exc}") from None


class _FirstLine(logging.Formatter):
    """One short line per event: time, level, step and the first line of the message (tracebacks stay in the
    run's event log, and the root cause is printed last)."""

    def format(self, record: logging.LogRecord) -> str:
        meta = getattr(record, "dagster_meta", None) or {}
        message = str(meta.get("orig_message") or record.getMessage()).strip()
        first = message.splitlines()[0] if message else ""
        step = meta.get("step_key")
        return f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {step + ': ' if step else ''}{first}"


@dg.logger(
    config_schema={},
    description="One line per event, an error's first line only (the CLI's default; --debug shows all).",
)
def quiet_console(init_context: dg.InitLoggerContext) -> logging.Logger:
    # A logger of our own, not registered globally: the run's output, nobody else's.
    logger = logging.Logger("joor_pipeline.run", level=logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_FirstLine())
    logger.addHandler(handler)
    return logger


def _error_line(error: Any) -> str:
    """The user-code error in a step failure's cause chain, as one line (Dagster's wrappers skipped)."""
    chain = []
    while error is not None:
        chain.append(error)
        error = error.cause or error.context
    ours = [e for e in chain if not e.cls_name.startswith("Dagster")] or chain
    cause = ours[0]
    text = " ".join(cause.message.split())
    # format_exception_only() prefixes the qualified class name; our own errors read well without it.
    prefix, _, rest = text.partition(": ")
    if prefix.startswith("joor_pipeline."):
        text = rest
    elif "." in prefix and " " not in prefix:
        text = f"{cause.cls_name}: {rest}"
    return text if len(text) <= MAX_CAUSE_CHARS else text[: MAX_CAUSE_CHARS - 1] + "…"


def _failure(event: dg.DagsterEvent) -> tuple[str, str]:
    """(one line, whole error) of a step failure."""
    data = event.event_specific_data
    user = getattr(data, "user_failure_data", None)
    error = getattr(data, "error", None)
    detail = error.to_string() if error is not None else (event.message or "")
    if user is not None and user.description:
        return " ".join(user.description.split()), detail
    if error is None:
        return event.message or "failed", detail
    return _error_line(error), detail


def run_graph(
    snapshot_date: date,
    environ: Mapping[str, str],
    *,
    allow_backdated: bool = False,
    debug: bool = False,
    account: str = DEFAULT_ACCOUNT,
    refetch: bool = False,
) -> RunSummary:
    """Materialize every asset (and run every check) for ``account``'s ``snapshot_date`` through Dagster, with
    ``environ``'s settings, leaving ``os.environ`` as it is (``refetch``: fetch again over a kept raw snapshot)."""
    defs = build_defs(
        environ,
        resources=resources_from_values(environ),
        loggers=None if debug else {"console": quiet_console},
    )
    job = defs.resolve_job_def(JOB_NAME)
    run_config: dict[str, Any] = {
        "ops": {"joor_raw_connections": {"config": {"allow_backdated": allow_backdated, "refetch": refetch}}},
        "loggers": {"console": {"config": {"log_level": "DEBUG"} if debug else {}}},
    }
    with open_instance(environ) as instance:
        result = job.execute_in_process(
            partition_key=str(multi_key(account, snapshot_date)),
            instance=instance,
            run_config=run_config,
            raise_on_error=False,
            tags={ALERT_TAG: IN_PROCESS},  # the CLI alerts its failure; the daemon's sensor skips it
        )
    return _summarize(result)


def _summarize(result: dg.ExecuteInProcessResult) -> RunSummary:
    """Rows per asset, every check and the first failure of one in-process run."""
    summary = RunSummary(run_id=result.run_id, success=result.success)
    tags = result.dagster_run.tags
    summary.account, summary.snapshot_date = tags.get(f"{PARTITION_TAG}/account"), tags.get(f"{PARTITION_TAG}/date")
    for event in result.all_events:
        if event.event_type_value == "ASSET_MATERIALIZATION":
            materialization = event.event_specific_data.materialization  # type: ignore[union-attr]
            rows = materialization.metadata.get("dagster/row_count")
            if rows is not None:
                summary.rows[materialization.asset_key.to_user_string()] = int(rows.value)  # type: ignore[arg-type]
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            failures = evaluation.metadata.get("failures")  # type: ignore[union-attr]
            summary.checks.append(
                CheckOutcome(
                    asset=evaluation.asset_key.to_user_string(),  # type: ignore[union-attr]
                    check=evaluation.check_name,  # type: ignore[union-attr]
                    passed=evaluation.passed,  # type: ignore[union-attr]
                    severity=evaluation.severity.value,  # type: ignore[union-attr]
                    failures=int(failures.value) if failures is not None else None,  # type: ignore[arg-type]
                )
            )
        elif event.event_type_value == "STEP_FAILURE" and summary.failure is None:
            line, detail = _failure(event)
            summary.failure = f"{event.step_key}: {line}"
            summary.failure_detail = detail
            summary.step, summary.cause = event.step_key, line
    if not summary.success and summary.failure is None:
        blocking = [f"{c.asset}.{c.check}" for c in summary.failed_checks if c.severity == "ERROR"]
        summary.failure = "run failed" + (f": blocking checks failed: {', '.join(blocking)}" if blocking else "")
    return summary


class RangeRefused(JoorError):
    """A date range asked for a date without a kept raw snapshot (a range is never back-dated)."""


def run_range(
    start: date,
    end: date,
    environ: Mapping[str, str],
    *,
    debug: bool = False,
    accounts: tuple[str, ...] = (DEFAULT_ACCOUNT,),
) -> RunSummary:
    """Re-flatten and check the raw snapshot kept for each date from ``start`` to ``end``, then build the models once.

    Refused (:class:`RangeRefused`, naming the dates) when a date of the range has no raw snapshot: JOOR serves
    only the current state, so a range never fetches. Stops at the first date whose run fails; the models are
    built only when every date succeeded.
    """
    if end < start:
        raise RangeRefused(f"--to {end} is before --from {start}")
    problems: list[str] = []
    data_dir = read_setting(environ, "JOOR_DATA_DIR", problems)  # a range never fetches: no JOOR account needed
    raise_problems(problems)
    days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
    missing = [
        f"{d.isoformat()} (account {account})" if len(accounts) > 1 else d.isoformat()
        for account in accounts
        for d in days
        if not raw_snapshot_exists(data_dir, SnapshotKey(account, d))
    ]
    if missing:
        raise RangeRefused(
            f"no raw snapshot kept for {', '.join(missing)} in {data_dir}: a range only re-flattens kept snapshots "
            "(JOOR serves only the current state; fetch one past date alone with `run --date D --allow-backdated`)"
        )
    resources = resources_from_values(environ)
    assets = [joor_raw_connections, joor_tables, joor_models]
    table_keys = list(joor_tables.keys)
    combined = RunSummary(run_id="", success=True)
    run_ids: list[str] = []
    run_config: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "DEBUG"} if debug else {}}}}
    with open_instance(environ) as instance:
        steps: list[tuple[str | None, list[dg.AssetKey]]] = [
            (str(multi_key(account, day)), table_keys) for account in accounts for day in days
        ]
        steps.append((None, list(joor_models.keys)))
        for partition_key, selection in steps:
            result = dg.materialize(
                assets,
                selection=selection,
                partition_key=partition_key,
                instance=instance,
                resources=resources,
                raise_on_error=False,
                tags={RANGE_TAG: f"{start.isoformat()}..{end.isoformat()}", ALERT_TAG: IN_PROCESS},
                run_config=run_config,
            )
            summary = _summarize(result)
            run_ids.append(summary.run_id)
            combined.rows.update(summary.rows)
            combined.checks += summary.checks
            if not summary.success:
                combined.success = False
                combined.failure = f"{partition_key or 'models'}: {summary.failure}"
                combined.step, combined.cause = summary.step, summary.cause
                combined.account, combined.snapshot_date = summary.account, summary.snapshot_date
                break
    combined.run_id = ", ".join(run_ids)
    return combined

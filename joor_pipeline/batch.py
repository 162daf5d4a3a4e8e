"""Run a batch through Dagster from the command line: each account's day landed, then the models built once.

``joor-pipeline run`` (one date, every account), ``run --from/--to`` (kept snapshots re-flattened) and ``demo`` all
come here. A batch is a list of partitions (account, date): each is one run of the landing job (``joor_daily``:
fetch, flatten, check, publish), one after the other, as the instance's run limit would run one account's runs;
then, whatever became of them, one run of the model build (``joor_models``) if any of them published, over exactly
the partitions published since the last build. A failed partition is reported and does not hold the others back.
It is the sequence the daemon follows for a schedule tick or a backfill (``assets/automation.py``).

The runs take their settings from the mapping they are given (resources built from those values for these runs
only): ``os.environ`` is never changed. Their console output is one line per event, with an error's first line
only, so the root cause that ends the output is easy to find; ``debug=True`` restores Dagster's own console with
every traceback. Each finished run is handed, as a :class:`RunSummary`, to the caller's ``on_finished``.
"""

from __future__ import annotations

import importlib.abc
import logging
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Final

import dagster as dg
import pyarrow as pa

from joor_pipeline.alerts import ALERT_TAG, IN_PROCESS
from joor_pipeline.assets.automation import JOB_NAME, MODELS_JOB_NAME, synthetic_accounts, synthetic_tags
from joor_pipeline.assets.failures import CheckOutcome, check_outcome, step_failure
from joor_pipeline.assets.instance import InstanceBusy, open_instance
from joor_pipeline.assets.joor import RAW_ASSET, joor_tables
from joor_pipeline.assets.partitions import partition_key as multi_key
from joor_pipeline.assets.resources import resources_from_values
from joor_pipeline.config import DEFAULT_ACCOUNT
from joor_pipeline.definitions import build_defs
from joor_pipeline.joor.errors import JoorError
from joor_pipeline.layout import SnapshotKey
from joor_pipeline.storage.raw import raw_snapshot_exists

__all__ = [
    "BatchSummary",
    "CheckOutcome",
    "InstanceBusy",
    "RangeRefused",
    "RunSummary",
    "open_instance",
    "range_partitions",
    "run_batch",
]

#: Tag on every run of one ``joor-pipeline run`` (or demo): the batch they belong to.
BATCH_TAG: Final = "joor/batch"
#: Tag on every run of ``joor-pipeline run --from D1 --to D2``.
RANGE_TAG: Final = "joor/range"


@dataclass
class RunSummary:
    """What one Dagster run did: success, rows per asset, every check, and the root cause of a failure."""

    run_id: str
    success: bool
    #: What the run was for: ``account A, YYYY-MM-DD`` for a landing run, ``models`` for the model build.
    label: str = ""
    account: str | None = None
    snapshot_date: date | None = None
    rows: dict[str, int] = field(default_factory=dict)
    checks: list[CheckOutcome] = field(default_factory=list)
    failure: str | None = None
    #: The failed step's whole error, tracebacks included (printed under ``--debug``).
    failure_detail: str | None = None
    #: The failed step and its root-cause line apart (``failure`` is "step: cause"): what an alert names
    #: (``alerts.alert_for_failed_run``).
    step: str | None = None
    cause: str | None = None
    #: The run's tags (its partition, ``joor/batch``, ``joor/synthetic``).
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def failed_checks(self) -> list[CheckOutcome]:
        return [c for c in self.checks if not c.passed]

    @property
    def is_models(self) -> bool:
        return self.account is None


@dataclass
class BatchSummary:
    """Every run of one batch, in order: the landing runs, then the model build (absent when nothing published)."""

    runs: list[RunSummary] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return bool(self.runs) and all(run.success for run in self.runs)

    @property
    def failed(self) -> list[RunSummary]:
        return [run for run in self.runs if not run.success]

    @property
    def models(self) -> RunSummary | None:
        return next((run for run in self.runs if run.is_models), None)


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


def summarize(result: dg.ExecuteInProcessResult, summary: RunSummary) -> RunSummary:
    """``summary`` filled in from one in-process run: rows per asset, every check and the first failure."""
    summary.run_id, summary.success = result.run_id, result.success
    summary.tags = dict(result.dagster_run.tags)
    for event in result.all_events:
        if event.event_type_value == "ASSET_MATERIALIZATION":
            materialization = event.event_specific_data.materialization  # type: ignore[union-attr]
            rows = materialization.metadata.get("dagster/row_count")
            if rows is not None:
                summary.rows[materialization.asset_key.to_user_string()] = int(rows.value)  # type: ignore[arg-type]
        elif event.event_type_value == "ASSET_CHECK_EVALUATION":
            summary.checks.append(check_outcome(event.event_specific_data))
        elif event.event_type_value == "STEP_FAILURE" and summary.failure is None:
            line, detail = step_failure(event)
            summary.failure = f"{event.step_key}: {line}"
            summary.failure_detail = detail
            summary.step, summary.cause = event.step_key, line
    if not summary.success and summary.failure is None:
        blocking = [f"{c.asset}.{c.check}" for c in summary.failed_checks if c.severity == "ERROR"]
        summary.failure = "run failed" + (f": blocking checks failed: {', '.join(blocking)}" if blocking else "")
    return summary


def partition_label(account: str, snapshot_date: date) -> str:
    """How a landing run is named in the output: its date, and its account unless it is the only, default one."""
    return snapshot_date.isoformat() if account == DEFAULT_ACCOUNT else f"account {account}, {snapshot_date}"


class _RefusePandas(importlib.abc.MetaPathFinder):
    """An import finder that refuses pandas (while pyarrow looks for it once, see :func:`_pyarrow_without_pandas`)."""

    def find_spec(self, fullname: str, path: object, target: object = None) -> None:
        if fullname.partition(".")[0] == "pandas":
            raise ModuleNotFoundError("pandas is not imported for pyarrow's look", name=fullname)
        return None


def _pyarrow_without_pandas() -> None:
    """Tell pyarrow once that pandas is not here, unless something imported it already.

    pyarrow's first ``pa.array()`` of a Python list (the flatten's, in the landing run) imports pandas only to ask
    whether the list is a pandas object: 0.5 s of a daily run, for a library this process never uses (the flatten's
    worker processes refuse it the same way, ``flatten/workers.py``). Here pyarrow looks once while pandas is
    refused, and remembers "no pandas" for those checks; a later call that needs pandas for real (``to_pandas``)
    still imports it (pyarrow tries again when pandas is required), and the finder is gone by then.
    """
    if "pandas" in sys.modules:
        return
    finder = _RefusePandas()
    sys.meta_path.insert(0, finder)
    try:
        pa.array([])
    finally:
        sys.meta_path.remove(finder)


def run_batch(
    partitions: Sequence[tuple[str, date]],
    environ: Mapping[str, str],
    *,
    fetch: bool = True,
    allow_backdated: bool = False,
    refetch: bool = False,
    debug: bool = False,
    tags: Mapping[str, str] | None = None,
    on_finished: Callable[[RunSummary], None] | None = None,
) -> BatchSummary:
    """Land each (account, date) of ``partitions`` (fetching it, or with ``fetch=False`` re-flattening its kept raw
    snapshot; ``refetch``: fetch again over a kept raw snapshot), then build the models once if any of them
    published; every run recorded in ``environ``'s ``DAGSTER_HOME`` (or a throwaway instance), with ``environ``'s
    settings, ``os.environ`` left as it is."""
    _pyarrow_without_pandas()
    defs = build_defs(
        environ,
        resources=resources_from_values(environ),
        loggers=None if debug else {"console": quiet_console},
    )
    landing, models = defs.resolve_job_def(JOB_NAME), defs.resolve_job_def(MODELS_JOB_NAME)
    loggers: dict[str, Any] = {"console": {"config": {"log_level": "DEBUG"} if debug else {}}}
    # ALERT_TAG: the CLI alerts each failed run itself; the daemon's alert sensor skips these runs.
    batch_tags = {BATCH_TAG: uuid.uuid4().hex[:12], ALERT_TAG: IN_PROCESS, **(tags or {})}
    synthetic = set(synthetic_accounts(environ, {account for account, _day in partitions}))
    selection = None if fetch else list(joor_tables.keys)
    run_config: dict[str, Any] = {"loggers": loggers}
    if fetch:
        run_config["ops"] = {RAW_ASSET: {"config": {"allow_backdated": allow_backdated, "refetch": refetch}}}
    batch = BatchSummary()
    with open_instance(environ) as instance:
        for account, day in partitions:
            result = landing.execute_in_process(
                partition_key=str(multi_key(account, day)),
                instance=instance,
                run_config=run_config,
                tags={**batch_tags, **({"joor/synthetic": "true"} if account in synthetic else {})},
                asset_selection=selection,
                raise_on_error=False,
            )
            summary = summarize(result, RunSummary("", False, partition_label(account, day), account, day))
            _finished(batch, summary, on_finished)
        if any(run.success for run in batch.runs):
            result = models.execute_in_process(
                instance=instance,
                run_config={"loggers": loggers},
                tags={**batch_tags, **synthetic_tags(environ, synthetic)},
                raise_on_error=False,
            )
            _finished(batch, summarize(result, RunSummary("", False, "models")), on_finished)
    return batch


def _finished(batch: BatchSummary, summary: RunSummary, on_finished: Callable[[RunSummary], None] | None) -> None:
    batch.runs.append(summary)
    if on_finished is not None:
        on_finished(summary)


class RangeRefused(JoorError):
    """A date range asked for a date without a kept raw snapshot (a range is never back-dated)."""


def range_partitions(
    start: date, end: date, data_dir: Path, accounts: Sequence[str] = (DEFAULT_ACCOUNT,)
) -> list[tuple[str, date]]:
    """Every (account, date) from ``start`` to ``end``, each with a kept raw snapshot, or :class:`RangeRefused`
    naming the dates without one: JOOR serves only the current state, so a range never fetches."""
    if end < start:
        raise RangeRefused(f"--to {end} is before --from {start}")
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
    return [(account, day) for account in accounts for day in days]

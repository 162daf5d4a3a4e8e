"""Run the whole Dagster graph for one date from the command line, and summarise what happened."""

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import dagster as dg

from joor_pipeline.assets.joor import joor_raw_connections, joor_tables
from joor_pipeline.assets.models import joor_models
from joor_pipeline.config import load_settings
from joor_pipeline.definitions import JOB_NAME, build_defs
from joor_pipeline.joor.errors import JoorError
from joor_pipeline.storage.raw import MANIFEST_NAME, raw_snapshot_dir

#: Tag on every run of ``joor-pipeline run --from D1 --to D2``.
RANGE_TAG = "joor/range"


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
    """What a run of the graph did: success, rows per asset, every check."""

    run_id: str
    success: bool
    rows: dict[str, int] = field(default_factory=dict)
    checks: list[CheckOutcome] = field(default_factory=list)
    failure: str | None = None

    @property
    def failed_checks(self) -> list[CheckOutcome]:
        return [c for c in self.checks if not c.passed]


def _instance() -> dg.DagsterInstance:
    """The instance at ``$DAGSTER_HOME`` (so the run shows in the UI; created if missing), else a throwaway one."""
    home = os.environ.get("DAGSTER_HOME")
    if home:
        # Dagster refuses a DAGSTER_HOME that does not exist yet; a first run should not have to make it by hand.
        Path(home).expanduser().mkdir(parents=True, exist_ok=True)
        return dg.DagsterInstance.get()
    return dg.DagsterInstance.ephemeral()


@contextmanager
def _environment(environ: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` as ``environ`` for the block: ``EnvVar`` s resolve from the process environment at launch."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_graph(snapshot_date: date, environ: Mapping[str, str], *, allow_backdated: bool = False) -> RunSummary:
    """Materialize every asset (and run every check) for ``snapshot_date`` through Dagster."""
    defs = build_defs(environ)
    job = defs.resolve_job_def(JOB_NAME)
    run_config = {
        "ops": {"joor_raw_connections": {"config": {"allow_backdated": allow_backdated}}},
        "loggers": {"console": {"config": {"log_level": "INFO"}}},
    }
    with _environment(environ), _instance() as instance:
        result = job.execute_in_process(
            partition_key=snapshot_date.isoformat(),
            instance=instance,
            run_config=run_config,
            raise_on_error=False,
        )
    return _summarize(result)


def _summarize(result: dg.ExecuteInProcessResult) -> RunSummary:
    """Rows per asset, every check and the first failure of one in-process run."""
    summary = RunSummary(run_id=result.run_id, success=result.success)
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
            error = event.event_specific_data.error  # type: ignore[union-attr]
            summary.failure = f"{event.step_key}: {error.message.strip() if error else event.message}"
    return summary


class RangeRefused(JoorError):
    """A date range asked for a date without a kept raw snapshot (a range is never back-dated)."""


def run_range(start: date, end: date, environ: Mapping[str, str]) -> RunSummary:
    """Re-flatten and check the raw snapshot kept for each date from ``start`` to ``end``, then build the models once.

    Refused (:class:`RangeRefused`, naming the dates) when a date of the range has no raw snapshot: JOOR serves
    only the current state, so a range never fetches. Stops at the first date whose run fails; the models are
    built only when every date succeeded.
    """
    if end < start:
        raise RangeRefused(f"--to {end} is before --from {start}")
    data_dir = load_settings(environ).data_dir
    days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
    missing = [d.isoformat() for d in days if not (raw_snapshot_dir(data_dir, d) / MANIFEST_NAME).is_file()]
    if missing:
        raise RangeRefused(
            f"no raw snapshot kept for {', '.join(missing)} in {data_dir}: a range only re-flattens kept snapshots "
            "(JOOR serves only the current state; fetch one past date alone with `run --date D --allow-backdated`)"
        )
    defs = build_defs(environ)
    resources = defs.resources or {}
    assets = [joor_raw_connections, joor_tables, joor_models]
    table_keys = [key for key in joor_tables.keys]
    combined = RunSummary(run_id="", success=True)
    run_ids: list[str] = []
    with _environment(environ), _instance() as instance:
        steps: list[tuple[str | None, list[dg.AssetKey]]] = [(day.isoformat(), table_keys) for day in days]
        steps.append((None, list(joor_models.keys)))
        for partition_key, selection in steps:
            result = dg.materialize(
                assets,
                selection=selection,
                partition_key=partition_key,
                instance=instance,
                resources=resources,
                raise_on_error=False,
                tags={RANGE_TAG: f"{start.isoformat()}..{end.isoformat()}"},
            )
            summary = _summarize(result)
            run_ids.append(summary.run_id)
            combined.rows.update(summary.rows)
            combined.checks += summary.checks
            if not summary.success:
                combined.success = False
                combined.failure = f"{partition_key or 'models'}: {summary.failure}"
                break
    combined.run_id = ", ".join(run_ids)
    return combined

"""Run the whole Dagster graph for one date from the command line, and summarise what happened."""

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import dagster as dg

from joor_pipeline.definitions import JOB_NAME, build_defs


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

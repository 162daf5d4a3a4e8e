"""Retention as a Dagster job an operator switches on (wiring only: the work is :func:`joor_pipeline.prune.prune`,
as for ``joor-pipeline prune``).

``joor_prune`` is a job of one op, not an asset: it deletes, it materializes nothing, and no selection of the daily
graph picks it up. Its schedule, ``joor_prune_schedule`` (05:00 UTC, an hour before the daily run, so that the
morning's build withdraws the pruned Parquet from the models), is stopped by default; and with neither
``JOOR_RETAIN_RAW_DAYS`` nor ``JOOR_RETAIN_PARQUET_DAYS`` set a run deletes nothing. Deleting data takes both: a
retention setting and the schedule switched on (or a run launched). Run config: ``dry_run`` (list, delete nothing)
and ``account``.
"""

import os
from datetime import UTC, datetime
from typing import Any, Final

import dagster as dg

from joor_pipeline.assets.resources import DataDirResource, JoorApiResource
from joor_pipeline.config import account_names
from joor_pipeline.joor.errors import ConfigError
from joor_pipeline.prune import (
    PruneReport,
    failure_line,
    kept_line,
    load_retention,
    prune,
    removal_line,
    size_text,
    total_line,
)

PRUNE_JOB: Final = "joor_prune"
#: Rows of the metadata's tables of what went and what stayed (the log has every line).
METADATA_ROWS: Final = 200


class PruneConfig(dg.Config):
    """Run configuration of the prune."""

    dry_run: bool = False
    """List what would be deleted (in the log and the metadata), and delete nothing."""
    account: str = ""
    """One account, configured or found in the data; empty prunes every one."""


def _configured(joor: JoorApiResource) -> list[str]:
    env = {**os.environ, **joor.environ()} if joor.accounts_file is not None else joor.environ()  # type: ignore[attr-defined]
    return account_names(env)


def _table(header: str, rows: list[str]) -> str:
    shown = rows[:METADATA_ROWS]
    more = [f"| ... {len(rows) - len(shown)} more (see the run's log) |"] if len(rows) > len(shown) else []
    return "\n".join([header, "|" + "---|" * header.count("|", 1), *shown, *more])


def _metadata(report: PruneReport) -> dict[str, Any]:
    plan = report.plan
    removed = [
        f"| {r.key.account} | {r.key.snapshot_date} | {r.kind} | {r.files} | {r.bytes} |" for r in report.removed
    ]
    kept = [f"| {k.key.account} | {k.key.snapshot_date} | {k.kind} | {k.reason} |" for k in plan.kept]
    return {
        "dry_run": report.dry_run,
        "today": str(plan.today),
        "retention": str(plan.retention),
        "accounts": ", ".join(plan.accounts),
        "accounts_not_configured": ", ".join(plan.unconfigured),
        "snapshots_deleted" if not report.dry_run else "snapshots_to_delete": len(report.removed),
        "raw_snapshots": sum(r.kind == "raw" for r in report.removed),
        "parquet_dates": sum(r.kind == "parquet" for r in report.removed),
        "files": report.files,
        "bytes": report.bytes,
        "size": size_text(report.bytes),
        "deleted" if not report.dry_run else "would_delete": dg.MetadataValue.md(
            _table("| account | date | kind | files | bytes |", removed)
        ),
        "kept_past_retention": dg.MetadataValue.md(_table("| account | date | kind | why |", kept)),
        "failed": "; ".join(report.failed),
    }


@dg.op(
    out=dg.Out(dg.Nothing),
    description="Delete the raw snapshots and Parquet partitions past JOOR_RETAIN_RAW_DAYS / JOOR_RETAIN_PARQUET_DAYS, "
    "never what a build still needs (see Retention in the README); dry_run lists them instead.",
)
def prune_snapshots(
    context: dg.OpExecutionContext, config: PruneConfig, storage: DataDirResource, joor: JoorApiResource
) -> dg.Output[None]:
    """The same prune as ``joor-pipeline prune``; fails with its one error line when a date could not be pruned."""
    try:
        retention = load_retention(storage.environ())
        configured = _configured(joor)
        data_dir = storage.path
    except ConfigError as exc:
        raise dg.Failure(description=str(exc)) from None
    report = prune(
        data_dir,
        retention,
        today=datetime.now(UTC).date(),
        configured=configured,
        account=config.account.strip() or None,
        dry_run=config.dry_run,
        on_removed=lambda removal, plan: context.log.info(
            removal_line(removal, dry_run=config.dry_run, width=plan.account_width)
        ),
    )
    for kept in report.plan.kept:
        context.log.info(kept_line(kept))
    context.log.info(total_line(report))
    metadata = _metadata(report)
    if report.failed:
        raise dg.Failure(description=failure_line(report), metadata=metadata)
    return dg.Output(None, metadata=metadata)


@dg.job(
    name=PRUNE_JOB,
    description="Retention: delete the raw snapshots older than JOOR_RETAIN_RAW_DAYS and the Parquet partitions "
    "older than JOOR_RETAIN_PARQUET_DAYS (unset: nothing is deleted), never today's, an account's latest, a raw "
    "snapshot whose Parquet is not published or a date in quarantine. Run config: "
    "ops.prune_snapshots.config.dry_run (list only) and .account. Not part of the daily graph.",
)
def joor_prune_job() -> None:
    prune_snapshots()


joor_prune_schedule = dg.ScheduleDefinition(
    name="joor_prune_schedule",
    job=joor_prune_job,
    cron_schedule="0 5 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Every morning (05:00 UTC, before the daily run), the prune of joor_prune: stopped by default, "
    "and deleting nothing while no JOOR_RETAIN_* variable is set.",
)

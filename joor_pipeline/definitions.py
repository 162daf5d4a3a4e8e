"""The Dagster code location: the only place assets, checks, resources, jobs and schedules are wired."""

import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from joor_pipeline.assets.check import joor_connection_check_job
from joor_pipeline.assets.joor import joor_raw_connections, joor_tables
from joor_pipeline.assets.models import joor_models
from joor_pipeline.assets.partitions import ACCOUNTS, partition_key
from joor_pipeline.assets.prune import joor_prune_job, joor_prune_schedule
from joor_pipeline.assets.resources import resources_from_env
from joor_pipeline.assets.sensors import (
    FRESHNESS_CHECK_KEYS,
    build_alert_sensors,
    build_freshness_checks,
    build_freshness_sensor,
)
from joor_pipeline.config import configuration_problem

JOB_NAME = "joor_daily"

#: Fetch, flatten, check and model one day's snapshot.
joor_daily_job = dg.define_asset_job(
    JOB_NAME,
    # The freshness checks are the joor_freshness sensor's, not a run's.
    selection=dg.AssetSelection.all() - dg.AssetSelection.checks(*FRESHNESS_CHECK_KEYS),
    description="Fetch today's JOOR connections, flatten them to Parquet, check them and rebuild the models.",
)


@dg.schedule(
    job=joor_daily_job,
    cron_schedule="0 6 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
)
def joor_daily_schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    """Every morning (UTC), the current day's snapshot of every account, one run each (JOOR serves only the present
    state; the instance runs one account's runs one at a time, different accounts side by side)."""
    day = (context.scheduled_execution_time or datetime.now(UTC)).astimezone(UTC).date()
    return [
        dg.RunRequest(run_key=f"{account}|{day.isoformat()}", partition_key=partition_key(account, day))
        for account in ACCOUNTS
    ]


def _fetch_asset(problem: str | None) -> dg.AssetsDefinition:
    """The fetch asset; when JOOR is not (or wrongly) configured, saying so where an operator looks first."""
    if problem is None:
        return joor_raw_connections

    def flag(spec: dg.AssetSpec) -> dg.AssetSpec:
        return spec.replace_attributes(
            description=f"NOT CONFIGURED, runs will fail: {problem}. {spec.description or ''}",
            metadata={**spec.metadata, "configuration_problem": problem},
        )

    return joor_raw_connections.map_asset_specs(flag)


def build_defs(
    environ: Mapping[str, str] | None = None,
    *,
    resources: Mapping[str, Any] | None = None,
    loggers: Mapping[str, dg.LoggerDefinition] | None = None,
) -> dg.Definitions:
    """The definitions, with resources wired to the ``JOOR_*`` variables set in ``environ`` (default: os.environ).

    They load whatever the configuration: a problem with it is shown on the fetch asset (its description and
    metadata) and fails a run at the fetch, with the same one line the CLI prints.
    """
    environ = os.environ if environ is None else environ
    return dg.Definitions(
        assets=[_fetch_asset(configuration_problem(environ)), joor_tables, joor_models],
        asset_checks=[build_freshness_checks(environ=environ)],
        jobs=[joor_daily_job, joor_connection_check_job, joor_prune_job],
        schedules=[joor_daily_schedule, joor_prune_schedule],
        sensors=[*build_alert_sensors(environ), build_freshness_sensor(environ=environ)],
        resources=dict(resources) if resources is not None else resources_from_env(environ),
        loggers=dict(loggers) if loggers is not None else None,
    )


defs = build_defs()

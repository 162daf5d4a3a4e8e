"""The Dagster code location: the only place assets, checks, resources, jobs and schedules are wired."""

from collections.abc import Mapping
from datetime import UTC, datetime

import dagster as dg

from joor_pipeline.assets.joor import joor_raw_connections, joor_tables
from joor_pipeline.assets.models import joor_models
from joor_pipeline.assets.resources import resources_from_env

JOB_NAME = "joor_daily"

#: Fetch, flatten, check and model one day's snapshot.
joor_daily_job = dg.define_asset_job(
    JOB_NAME,
    selection=dg.AssetSelection.all(),
    description="Fetch today's JOOR connections, flatten them to Parquet, check them and rebuild the models.",
)


@dg.schedule(
    job=joor_daily_job,
    cron_schedule="0 6 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.STOPPED,
)
def joor_daily_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """Every morning (UTC), the current day's snapshot: JOOR serves only the present state."""
    day = (context.scheduled_execution_time or datetime.now(UTC)).astimezone(UTC).date().isoformat()
    return dg.RunRequest(run_key=day, partition_key=day)


def build_defs(environ: Mapping[str, str] | None = None) -> dg.Definitions:
    """The definitions, with resources wired to the ``JOOR_*`` variables set in ``environ`` (default: os.environ)."""
    return dg.Definitions(
        assets=[joor_raw_connections, joor_tables, joor_models],
        jobs=[joor_daily_job],
        schedules=[joor_daily_schedule],
        resources=resources_from_env(None if environ is None else dict(environ)),
    )


defs = build_defs()

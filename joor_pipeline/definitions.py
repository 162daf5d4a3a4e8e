"""The Dagster code location: the only place assets, checks, resources, jobs, schedules and sensors are wired."""

import os
from collections.abc import Mapping
from typing import Any

import dagster as dg

from joor_pipeline.assets.automation import (
    JOB_NAME,
    MODELS_JOB_NAME,
    SYNTHETIC_TAG,
    build_daily_schedule,
    build_models_sensor,
    synthetic_accounts,
)
from joor_pipeline.assets.check import joor_connection_check_job
from joor_pipeline.assets.joor import joor_raw_connections, joor_tables
from joor_pipeline.assets.models import joor_models
from joor_pipeline.assets.partitions import ACCOUNTS
from joor_pipeline.assets.prune import joor_prune_job, joor_prune_schedule
from joor_pipeline.assets.resources import resources_from_env
from joor_pipeline.assets.sensors import (
    FRESHNESS_CHECK_KEYS,
    build_alert_sensors,
    build_freshness_checks,
    build_freshness_sensor,
)
from joor_pipeline.config import configuration_problem

__all__ = ["JOB_NAME", "MODELS_JOB_NAME", "build_defs", "defs"]

#: The freshness checks are the joor_freshness sensor's, never a run's.
_NOT_IN_RUNS = dg.AssetSelection.checks(*FRESHNESS_CHECK_KEYS)


def _jobs(tags: Mapping[str, str]) -> list[Any]:
    """The landing job (one account's day) and the model build (once per batch, see assets/automation.py)."""
    return [
        dg.define_asset_job(
            JOB_NAME,
            selection=dg.AssetSelection.assets(joor_raw_connections, joor_tables) - _NOT_IN_RUNS,
            description=(
                "Fetch one account's JOOR connections of the day, flatten them to Parquet, check them and publish "
                "them. The models are built once the batch's runs have all finished (sensor "
                "joor_models_after_landing), not in each run."
            ),
            tags=dict(tags),
        ),
        dg.define_asset_job(
            MODELS_JOB_NAME,
            selection=dg.AssetSelection.assets(joor_models) - _NOT_IN_RUNS,
            description=(
                "Build every dbt model on the partitions published since the last build, then publish joor.duckdb "
                "(launched once per batch by the sensor joor_models_after_landing, or by hand)."
            ),
            tags=dict(tags),
        ),
    ]


def _fetch_asset(problem: str | None, synthetic: bool) -> dg.AssetsDefinition:
    """The fetch asset; when JOOR is not (or wrongly) configured, or is the built-in sandbox, saying so where an
    operator looks first."""
    if problem is None and not synthetic:
        return joor_raw_connections

    def flag(spec: dg.AssetSpec) -> dg.AssetSpec:
        if problem is not None:
            note = f"NOT CONFIGURED, runs will fail: {problem}. "
            extra: dict[str, Any] = {"configuration_problem": problem}
        else:
            note = (
                "BUILT-IN SANDBOX: JOOR_ENVIRONMENT=builtin, so every fetch serves the built-in sandbox's synthetic "
                "retailers, not a brand's (set JOOR_API_TOKEN, or JOOR_ACCOUNTS_FILE, for real JOOR data). "
            )
            extra = {"synthetic": True}
        return spec.replace_attributes(description=note + (spec.description or ""), metadata={**spec.metadata, **extra})

    return joor_raw_connections.map_asset_specs(flag)


def build_defs(
    environ: Mapping[str, str] | None = None,
    *,
    resources: Mapping[str, Any] | None = None,
    loggers: Mapping[str, dg.LoggerDefinition] | None = None,
) -> dg.Definitions:
    """The definitions, with resources wired to the ``JOOR_*`` variables set in ``environ`` (default: os.environ).

    They load whatever the configuration: a problem with it is shown on the fetch asset (its description and
    metadata) and fails a run at the fetch, with the same one line the CLI prints. When every account is the
    built-in sandbox's, the fetch asset and the jobs' runs say the data is synthetic.
    """
    environ = os.environ if environ is None else environ
    problem = configuration_problem(environ)
    all_synthetic = problem is None and len(synthetic_accounts(environ, ACCOUNTS)) == len(ACCOUNTS)
    models_sensor = build_models_sensor([*joor_raw_connections.keys, *joor_tables.keys], joor_models.keys, environ)
    return dg.Definitions(
        assets=[_fetch_asset(problem, all_synthetic), joor_tables, joor_models],
        asset_checks=[build_freshness_checks(environ=environ)],
        jobs=[*_jobs({SYNTHETIC_TAG: "true"} if all_synthetic else {}), joor_connection_check_job, joor_prune_job],
        schedules=[build_daily_schedule(environ), joor_prune_schedule],
        sensors=[models_sensor, *build_alert_sensors(environ), build_freshness_sensor(environ=environ)],
        resources=dict(resources) if resources is not None else resources_from_env(environ),
        loggers=dict(loggers) if loggers is not None else None,
    )


defs = build_defs()

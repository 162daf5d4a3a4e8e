"""When things run without anyone at the keyboard: the daily schedule, and one model build per batch.

**The daily schedule** requests one run of ``joor_daily`` (fetch, flatten, check, publish) per account, for the day
it runs on. JOOR serves only the current state, so a tick never fails for lack of a raw snapshot: a tick evaluated
late on its own day (the daemon back at 10:00) fetches that day; a tick evaluated on a later day (after longer
downtime, a replay, or a past tick previewed in the UI, whose default is the last tick) is skipped, saying why, as
that day can no longer be fetched. Its run key is ``account|day``, and accounts whose run of the day this schedule
already requested are left out (a tick with none left is skipped, saying so), so each day is fetched once.

**One model build per batch.** The landing runs (one per account and date: the schedule's, a backfill's, the UI's)
never build the models; :func:`models_sensor` does, once nothing is landing any more: no run of the landing assets
queued or in progress, no backfill of them under way, and a table published since the last build began. The build
then covers exactly the partitions published since (``warehouse.warehouse_build`` compares publication ids), so a
schedule tick over N accounts, or a backfill of N accounts by M dates, builds the models once. A failed account
does not hold the others back: its run ends, and the build goes ahead with what was published. Its run key is the
newest publication's storage id, so a failed build is not retried in a loop: the next publication asks again.

Why a sensor (README "Dagster"): declarative automation (``AutomationCondition.eager()``-like conditions on the
dbt assets) would ask for the models once the upstream partitions settle, but when a partition lands on the tick
right after the models were requested, ``since_last_handled`` resets on the request and loses that update (tried
in Dagster 1.13 with ``evaluate_automation_conditions``); a single-run backfill policy or one run per tick would
put every account in one run, losing the per-account run limit (one process per account's JOOR credits) and
letting one account's failure fail the others'.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Final

import dagster as dg
from dagster._core.execution.backfill import BulkActionsFilter, BulkActionStatus
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus, RunsFilter
from dagster._core.storage.tags import RUN_KEY_TAG, SCHEDULE_NAME_TAG

from joor_pipeline.assets.partitions import ACCOUNT_TAG, ACCOUNTS, daily_partitions, partition_key
from joor_pipeline.config import load_account
from joor_pipeline.joor.errors import ConfigError

#: The landing job: fetch, flatten, check and publish one account's day.
JOB_NAME: Final = "joor_daily"
#: The model build: every dbt model, on the partitions published since the last build.
MODELS_JOB_NAME: Final = "joor_warehouse"
SCHEDULE_NAME: Final = "joor_daily_schedule"
SENSOR_NAME: Final = "joor_models_after_landing"
#: Seconds between two evaluations of the model-build sensor (Dagster's default minimum).
SENSOR_INTERVAL_SECONDS: Final = 30
#: On a run of built-in sandbox data (the CLI's, the schedule's, the model build's): its retailers are synthetic.
SYNTHETIC_TAG: Final = "joor/synthetic"
#: Asset whose materializations mark a publication (the ten tables of a partition are published together).
PUBLISHED_MARKER: Final = dg.AssetKey("connections")
#: In-progress runs looked at, at most (a deployment runs a handful at a time).
RUNS_LOOKED_AT: Final = 500
#: A run the build waits for: created, queued (behind the per-account limit) or running. Not a suspended one
#: (it holds no worker and may stay so: the build would wait for it forever).
PENDING: Final = [
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]


def synthetic_accounts(environ: Mapping[str, str], accounts: Iterable[str]) -> list[str]:
    """The accounts among ``accounts`` configured for the built-in sandbox (synthetic data); a misconfigured one
    is not (its run fails at the fetch, saying why)."""
    found = []
    for account in accounts:
        try:
            if load_account(environ, account).builtin_sandbox:
                found.append(account)
        except ConfigError:
            continue
    return found


def synthetic_tags(environ: Mapping[str, str], accounts: Iterable[str]) -> dict[str, str]:
    """``{SYNTHETIC_TAG: "true"}`` when any of ``accounts`` is the built-in sandbox's."""
    return {SYNTHETIC_TAG: "true"} if synthetic_accounts(environ, accounts) else {}


# ---- the daily schedule -----------------------------------------------------------------------------------------


def daily_requests(
    scheduled: datetime,
    now: datetime,
    *,
    accounts: Sequence[str] = ACCOUNTS,
    requested: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
) -> list[dg.RunRequest] | dg.SkipReason:
    """The runs a tick scheduled at ``scheduled`` and evaluated at ``now`` asks for: one per account, for that day
    (UTC), except the accounts in ``requested`` (their run of the day exists already); or why it asks for none.

    A tick evaluated on another day than its own is skipped: JOOR serves only the current state, so its day can
    no longer be fetched (a run of it would fail for lack of a raw snapshot, or store today's data under it), and
    Dagster checks a tick's partitions as of the tick's own time, when today's did not exist yet.
    """
    environ = os.environ if environ is None else environ
    day = now.astimezone(UTC).date()
    tick = scheduled.astimezone(UTC)
    if tick.date() < day:
        return dg.SkipReason(
            f"the tick of {tick:%Y-%m-%d %H:%M} UTC is evaluated on {day} (late, replayed, or a past tick previewed): "
            f"JOOR serves only the current state, so {tick.date()} can no longer be fetched. Nothing was launched; "
            f"today's tick fetches {day}, or run `joor-pipeline run` (or materialize today's partitions) now"
        )
    if tick.date() > day:
        return dg.SkipReason(
            f"the tick of {tick:%Y-%m-%d %H:%M} UTC is still to come (today is {day}): it fetches {tick.date()} then"
        )
    first = daily_partitions.get_first_partition_key()
    if first is None or day < date.fromisoformat(first):
        return dg.SkipReason(f"{day} is before the first snapshot date {first} (JOOR_FIRST_SNAPSHOT_DATE)")
    done = set(requested)
    wanted = [account for account in accounts if account not in done]
    if not wanted:
        return dg.SkipReason(f"every account's run of {day} was already requested ({', '.join(sorted(done))})")
    synthetic = set(synthetic_accounts(environ, wanted))
    return [
        dg.RunRequest(
            run_key=f"{account}|{day.isoformat()}",
            partition_key=partition_key(account, day),
            tags={SYNTHETIC_TAG: "true"} if account in synthetic else {},
        )
        for account in wanted
    ]


def _requested_today(instance: dg.DagsterInstance | None, day: date) -> list[str]:
    """Accounts whose run of ``day`` this schedule already requested (its run key is ``account|day``)."""
    if instance is None:
        return []
    found = []
    for account in ACCOUNTS:
        key = f"{account}|{day.isoformat()}"
        if instance.get_run_records(RunsFilter(tags={SCHEDULE_NAME_TAG: SCHEDULE_NAME, RUN_KEY_TAG: key}), limit=1):
            found.append(account)
    return found


def _instance(context: dg.ScheduleEvaluationContext) -> dg.DagsterInstance | None:
    """The context's instance; None for a context built without one (a unit test's)."""
    try:
        return context.instance
    except dg.DagsterInvariantViolationError:
        return None


def build_daily_schedule(environ: Mapping[str, str] | None = None) -> dg.ScheduleDefinition:
    """The daily schedule, its runs tagged synthetic for the accounts ``environ`` configures for the built-in
    sandbox (default: ``os.environ`` when it ticks)."""

    @dg.schedule(
        name=SCHEDULE_NAME,
        job_name=JOB_NAME,
        cron_schedule="0 6 * * *",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.STOPPED,
    )
    def joor_daily_schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest] | dg.SkipReason:
        """Every morning (UTC), the current day's snapshot of every account, one run each (one run per account at
        a time, accounts side by side); a tick evaluated on a later day is skipped, saying why. The models are
        built once, after the accounts' runs, by the sensor joor_models_after_landing."""
        now = datetime.now(UTC)
        scheduled = context.scheduled_execution_time or now
        requested = _requested_today(_instance(context), now.date())
        return daily_requests(scheduled, now, requested=requested, environ=environ)

    return joor_daily_schedule


# ---- one model build per batch ----------------------------------------------------------------------------------


def _touches(run: DagsterRun, job_name: str, keys: frozenset[dg.AssetKey]) -> bool:
    """Whether ``run`` (of ``job_name``, or any run whose asset selection meets ``keys``) materializes ``keys``."""
    if run.job_name == job_name:
        return True
    if run.asset_selection is not None:
        return bool(run.asset_selection & keys)
    return run.job_name.startswith("__ASSET_JOB")  # an ad hoc run of the whole asset graph


def models_request(
    instance: dg.DagsterInstance,
    landing_keys: frozenset[dg.AssetKey],
    model_keys: frozenset[dg.AssetKey],
    tags: Mapping[str, str] | None = None,
) -> dg.RunRequest | dg.SkipReason:
    """One run of the model build, once nothing is landing and a table was published since the last build
    began; otherwise why not (see the module docstring)."""
    runs = instance.get_runs(RunsFilter(statuses=PENDING), limit=RUNS_LOOKED_AT)
    landing = [run for run in runs if _touches(run, JOB_NAME, landing_keys)]
    if landing:
        accounts = sorted({run.tags.get(ACCOUNT_TAG, "?") for run in landing})
        return dg.SkipReason(
            f"waiting for {len(landing)} run(s) landing data to finish (account(s) {', '.join(accounts)}): the "
            "models are built once, after all of them"
        )
    building = [run for run in runs if _touches(run, MODELS_JOB_NAME, model_keys)]
    if building:
        return dg.SkipReason(f"the models are being built by run {building[0].run_id}")
    for backfill in instance.get_backfills(
        filters=BulkActionsFilter(statuses=[BulkActionStatus.REQUESTED, BulkActionStatus.CANCELING])
    ):
        if backfill.job_name == JOB_NAME or set(backfill.asset_selection or ()) & landing_keys:
            return dg.SkipReason(
                f"waiting for backfill {backfill.backfill_id} to finish: the models are built after it"
            )
    published = instance.fetch_materializations(PUBLISHED_MARKER, limit=1).records
    if not published:
        return dg.SkipReason("no table is published yet")
    newest = published[0]
    built = [event for event in instance.get_latest_materialization_events(model_keys).values() if event is not None]
    if built:
        last = max(built, key=lambda event: event.timestamp)
        started = _step_started(instance, last)
        if started is not None and started >= newest.timestamp:
            return dg.SkipReason(f"the models were built after the last publication (run {last.run_id})")
    partition = newest.partition_key or "?"  # the newest publication's account|date
    return dg.RunRequest(
        run_key=f"published-{newest.storage_id}",
        tags={**(tags or {}), "joor/after_publication": partition},
    )


def _step_started(instance: dg.DagsterInstance, event: dg.EventLogEntry) -> float | None:
    """When the step that materialized ``event`` started: the build planned then, on what was published by then
    (a run that landed tables and then built the models started before its own publications)."""
    records = instance.get_records_for_run(event.run_id, of_type=dg.DagsterEventType.STEP_START).records
    starts = [r.timestamp for r in records if r.event_log_entry.step_key == event.step_key]
    return max(starts) if starts else None


def build_models_sensor(
    landing_keys: Iterable[dg.AssetKey], model_keys: Iterable[dg.AssetKey], environ: Mapping[str, str] | None = None
) -> dg.SensorDefinition:
    """The sensor that builds the models once per batch (see the module docstring)."""
    landing, models = frozenset(landing_keys), frozenset(model_keys)

    @dg.sensor(
        name=SENSOR_NAME,
        job_name=MODELS_JOB_NAME,
        minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Builds every dbt model once per batch: after the runs of the day's accounts (or of a backfill) have "
            "all finished, whether they succeeded or failed, on the partitions published since the last build."
        ),
    )
    def joor_models_after_landing(context: dg.SensorEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        tags = synthetic_tags(os.environ if environ is None else environ, ACCOUNTS)
        return models_request(context.instance, landing, models, tags)

    return joor_models_after_landing

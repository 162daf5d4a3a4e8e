"""Alerts and freshness in Dagster: the sensors the daemon runs, and the tables' freshness check.

- ``joor_run_failure_alerts`` (a run-failure sensor): one alert per failed run launched through this code location
  (the schedule, a backfill, the UI, a sensor). It skips a run executed in-process by ``joor-pipeline run``
  (tagged ``joor/alert=in-process`` and without a code location origin: the CLI alerts it itself) and a run
  already tagged ``joor/alerted``, and tags every run it alerts ``joor/alerted`` (which channels took it).
- ``joor_check_warning_alerts`` (a run-status sensor on success, opt-in with ``JOOR_ALERT_WARNINGS=on``): one alert
  per successful run whose warning checks failed. A failed blocking check fails its run, so the failure alert
  already names it.
- ``joor_freshness`` (a sensor) and the ``freshness`` check of each of the ten tables: evaluated per account from
  the published manifests (:mod:`joor_pipeline.freshness`); the sensor records a check result whenever an account's
  last publication or state changes (runless, as the daemon does for a sensor's asset events), and, with
  ``JOOR_ALERT_FRESHNESS=on``, alerts once per account going stale.

Why not Dagster's own freshness machinery: ``build_last_update_freshness_checks`` and the ``FreshnessPolicy``
daemon judge an asset by its latest materialization of any partition, so with the account x date partitions one
fresh account would hide a stale one; and they only know materializations recorded in this instance, while
``joor-pipeline flatten`` (and ``run`` on a throwaway instance) publish without it. The check keeps Dagster's
freshness metadata (``dagster/freshness_params``, ``dagster/last_updated_timestamp``,
``dagster/fresh_until_timestamp``) so it reads like theirs.
"""

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import dagster as dg

from joor_pipeline.alerts import (
    ALERT_TAG,
    ALERTED_TAG,
    IN_PROCESS,
    Alert,
    check_lines,
    delivered,
    load_alert_settings,
    secret_values,
    send_alert,
)
from joor_pipeline.assets.failures import CheckOutcome, check_outcome, step_failure
from joor_pipeline.assets.partitions import ACCOUNTS
from joor_pipeline.assets.resources import DataDirResource
from joor_pipeline.config import BY_NAME
from joor_pipeline.flatten import TABLES
from joor_pipeline.freshness import FreshnessReport, evaluate, freshness_limit
from joor_pipeline.joor.errors import ConfigError

FRESHNESS_CHECK: Final = "freshness"
#: The freshness check of each table (left out of the daily job: the sensor evaluates it).
FRESHNESS_CHECK_KEYS: Final = tuple(dg.AssetCheckKey(dg.AssetKey(table), FRESHNESS_CHECK) for table in TABLES)
#: How often the daemon evaluates freshness.
FRESHNESS_INTERVAL_SECONDS: Final = 300
ALERT_INTERVAL_SECONDS: Final = 30

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


# ---- a Dagster run, told as an alert ----------------------------------------------------------------------------


def _failed_checks(instance: dg.DagsterInstance, run_id: str) -> list[CheckOutcome]:
    entries = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    evaluations = [entry.dagster_event.event_specific_data for entry in entries if entry.dagster_event]
    return [check_outcome(e) for e in evaluations if not e.passed]  # type: ignore[union-attr]


def launched_by(run: dg.DagsterRun) -> str:
    """Who started a run, from its tags."""
    tags = run.tags
    for tag, what in (
        ("dagster/schedule_name", "schedule"),
        ("dagster/backfill", "backfill"),
        ("dagster/sensor_name", "sensor"),
    ):
        if tags.get(tag):
            return f"{what} {tags[tag]}"
    if run.parent_run_id:
        return f"re-execution of run {run.parent_run_id}"
    return "the UI or the GraphQL API" if run.remote_job_origin is not None else "an in-process execution"


def _partition(run: dg.DagsterRun) -> tuple[str | None, str | None]:
    """(account, date) of a run: its partition's, or its range's ("D1..D2") for a ranged backfill run."""
    tags = run.tags
    account, day = tags.get("dagster/partition/account"), tags.get("dagster/partition/date")
    start, end = tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")
    if day is None and start and end:
        day = f"{start}..{end}"
    return account, day


def failed_run_alert(instance: dg.DagsterInstance, run: dg.DagsterRun, message: str | None = None) -> Alert:
    """The alert of a failed run: its first failed step and that step's root-cause line, found as
    ``joor-pipeline run`` finds it (``batch.py``), or the run's own failure message when no step failed."""
    step = None
    steps = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
    if steps and steps[0].dagster_event is not None:
        event = steps[0].dagster_event
        step, (cause, _detail) = event.step_key, step_failure(event)
    else:
        lines = (message or "").strip().splitlines()
        cause = lines[0] if lines else "run failed"
    account, day = _partition(run)
    return Alert(
        what="run failed",
        cause=cause,
        account=account,
        snapshot_date=day,
        step=step,
        run_id=run.run_id,
        launched_by=launched_by(run),
        details=check_lines(_failed_checks(instance, run.run_id)),
    )


def _skip(run: dg.DagsterRun) -> str | None:
    """Why a sensor does not alert a run, if it does not."""
    if run.tags.get(ALERTED_TAG):
        return f"already alerted ({ALERTED_TAG}: {run.tags[ALERTED_TAG]})"
    if run.tags.get(ALERT_TAG) == IN_PROCESS and run.remote_job_origin is None:
        return "executed in-process by joor-pipeline run, which alerts it itself"
    return None


def _alert_run(
    context: dg.RunStatusSensorContext, environ: Mapping[str, str], build: Callable[[], Alert | None]
) -> None:
    """Send the alert ``build`` makes for the context's run, unless the run is skipped, and tag the run."""
    run = context.dagster_run
    reason = _skip(run)
    if reason is not None:
        context.log.info(f"run {run.run_id}: not alerted: {reason}")
        return
    settings = load_alert_settings(environ)
    if not settings.channels:
        context.log.info(f"run {run.run_id}: no alert channel configured (JOOR_ALERT_WEBHOOK_URL, JOOR_ALERT_SMTP_*)")
        return
    alert = build()
    if alert is None:
        return
    deliveries = send_alert(alert, settings, secrets=secret_values(environ), logger=context.log)
    context.instance.add_run_tags(run.run_id, {ALERTED_TAG: delivered(deliveries)})


def build_alert_sensors(environ: Mapping[str, str] | None = None) -> list[dg.SensorDefinition]:
    """The run-failure sensor and the warning-check sensor, reading the ``JOOR_ALERT_*`` settings from ``environ``
    (default: the code location's environment) each time they run."""

    def env() -> Mapping[str, str]:
        return os.environ if environ is None else environ

    @dg.run_failure_sensor(
        name="joor_run_failure_alerts",
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=ALERT_INTERVAL_SECONDS,
        description=(
            "One alert per failed run (webhook: JOOR_ALERT_WEBHOOK_URL; email: JOOR_ALERT_SMTP_*), naming the "
            "account, the date, the failed step and its root cause. Skips runs joor-pipeline run executed "
            f"in-process ({ALERT_TAG}={IN_PROCESS}: the CLI alerts them) and runs tagged {ALERTED_TAG}."
        ),
    )
    def joor_run_failure_alerts(context: dg.RunFailureSensorContext) -> None:
        message = context.failure_event.message if context.failure_event else None
        _alert_run(context, env(), lambda: failed_run_alert(context.instance, context.dagster_run, message))

    @dg.run_status_sensor(
        run_status=dg.DagsterRunStatus.SUCCESS,
        name="joor_check_warning_alerts",
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=ALERT_INTERVAL_SECONDS,
        description=(
            "With JOOR_ALERT_WARNINGS=on: one alert per successful run whose warning checks failed (a failed "
            "blocking check fails its run, and the failure alert names it)."
        ),
    )
    def joor_check_warning_alerts(context: dg.RunStatusSensorContext) -> None:
        settings = load_alert_settings(env())
        if not settings.warnings:
            return

        def build() -> Alert | None:
            run = context.dagster_run
            warned = [c for c in _failed_checks(context.instance, run.run_id) if c.severity == "WARN"]
            if not warned:
                return None
            account, day = _partition(run)
            return Alert(
                what="warning checks failed",
                cause=f"{len(warned)} warning check(s) failed; the run succeeded and its data is published",
                account=account,
                snapshot_date=day,
                run_id=run.run_id,
                launched_by=launched_by(run),
                details=check_lines(warned),
            )

        _alert_run(context, env(), build)

    return [joor_run_failure_alerts, joor_check_warning_alerts]


# ---- freshness ------------------------------------------------------------------------------------------------------


def _params(limit_seconds: float) -> dict[str, Any]:
    return {"lower_bound_delta_seconds": limit_seconds, "timezone": "UTC"}


def _limit_shown(environ: Mapping[str, str]) -> float:
    """The limit in seconds for the checks' declared metadata (the default when the setting is wrong: the sensor's
    ticks then fail naming the variable)."""
    try:
        return freshness_limit(environ).total_seconds()
    except ConfigError:
        return float(BY_NAME["JOOR_FRESHNESS_HOURS"].default) * 3600


def _table(report: FreshnessReport) -> str:
    lines = ["| account | last date | published at (UTC) | age | fresh |", "|---|---|---|---|---|"]
    for a in report.accounts:
        if a.last is None:
            lines.append(f"| {a.account} | none | | | no |")
        else:
            age = f"{(a.age.total_seconds() if a.age else 0) / 3600:.1f} h"
            published, fresh = a.last.published_at.isoformat(timespec="minutes"), "yes" if a.fresh else "no"
            lines.append(f"| {a.account} | {a.last.snapshot_date} | {published} | {age} | {fresh} |")
    return "\n".join(lines)


def freshness_result(report: FreshnessReport) -> dict[str, Any]:
    """The fields of a table's freshness check result (the same for the ten tables: they publish together)."""
    metadata: dict[str, Any] = {
        "dagster/freshness_params": dg.MetadataValue.json(_params(report.limit.total_seconds())),
        "dagster/freshness_lower_bound_timestamp": dg.MetadataValue.timestamp(report.now - report.limit),
        "accounts": dg.MetadataValue.md(_table(report)),
        "stale_accounts": dg.MetadataValue.json([a.account for a in report.stale]),
    }
    published = [a.last.published_at for a in report.accounts if a.last is not None]
    if published and len(published) == len(report.accounts):
        metadata["dagster/last_updated_timestamp"] = dg.MetadataValue.timestamp(min(published))
    until = [a.fresh_until for a in report.accounts if a.fresh_until is not None]
    if report.passed and until:
        metadata["dagster/fresh_until_timestamp"] = dg.MetadataValue.timestamp(min(until))
    return {
        "passed": report.passed,
        "severity": dg.AssetCheckSeverity.WARN,
        "description": report.describe(),
        "metadata": metadata,
    }


def build_freshness_checks(
    accounts: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> dg.AssetChecksDefinition:
    """The ``freshness`` check of each of the ten tables, over every account; executable from the UI too."""
    accounts = list(ACCOUNTS if accounts is None else accounts)
    shown = _limit_shown(os.environ if environ is None else environ)

    @dg.multi_asset_check(
        name="joor_freshness_checks",
        specs=[
            dg.AssetCheckSpec(
                FRESHNESS_CHECK,
                asset=table,
                description=(
                    "Every account's last publication of its tables is at most JOOR_FRESHNESS_HOURS old "
                    "(evaluated by the joor_freshness sensor)."
                ),
                metadata={"dagster/freshness_params": dg.MetadataValue.json(_params(shown))},
            )
            for table in TABLES
        ],
        can_subset=True,
    )
    def joor_freshness_checks(
        context: dg.AssetCheckExecutionContext, storage: DataDirResource
    ) -> Iterator[dg.AssetCheckResult]:
        limit = freshness_limit(os.environ if environ is None else environ)
        report = evaluate(storage.path, accounts, now=_utc_now(), limit=limit)
        for key in context.selected_asset_check_keys:
            yield dg.AssetCheckResult(asset_key=key.asset_key, check_name=key.name, **freshness_result(report))

    return joor_freshness_checks


def _cursor(text: str | None) -> dict[str, Any]:
    try:
        found = json.loads(text) if text else {}
    except ValueError:
        found = {}
    return found if isinstance(found, dict) else {}


def build_freshness_sensor(
    accounts: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    clock: Clock = _utc_now,
) -> dg.SensorDefinition:
    """The ``joor_freshness`` sensor: evaluate every account's freshness at ``clock()``, record the ten tables'
    check results when anything changed, and alert (opt-in) once per account that went stale."""
    accounts = list(ACCOUNTS if accounts is None else accounts)

    @dg.sensor(
        name="joor_freshness",
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=FRESHNESS_INTERVAL_SECONDS,
        description=(
            "Evaluates every account's freshness (its last publication at most JOOR_FRESHNESS_HOURS old) from the "
            "published manifests, records the tables' freshness check results when it changes, and with "
            "JOOR_ALERT_FRESHNESS=on alerts once per account going stale."
        ),
    )
    def joor_freshness(context: dg.SensorEvaluationContext, storage: DataDirResource) -> dg.SensorResult:
        env = os.environ if environ is None else environ
        limit = freshness_limit(env)
        report = evaluate(storage.path, accounts, now=clock(), limit=limit)
        previous = _cursor(context.cursor)
        state = {
            a.account: [f"{a.last.publication_id}@{a.last.published_at.isoformat()}" if a.last else None, a.fresh]
            for a in report.accounts
        }
        changed = previous.get("limit") != limit.total_seconds() or previous.get("accounts") != state
        events = []
        if changed:
            fields = freshness_result(report)
            events = [
                dg.AssetCheckEvaluation(asset_key=key.asset_key, check_name=key.name, **fields)
                for key in FRESHNESS_CHECK_KEYS
            ]
        stale = {a.account for a in report.stale}
        alerted = set(previous.get("alerted", [])) & stale  # an account fresh again may alert again later
        said = [report.describe()]
        newly = [a for a in report.stale if a.account not in alerted]
        if newly:
            settings = load_alert_settings(env)
            if settings.freshness and settings.channels:
                names = ", ".join(a.account for a in newly)
                alert = Alert(
                    what="tables stale",
                    cause="; ".join(a.describe(limit) for a in newly),
                    account=names,
                    launched_by="the joor_freshness sensor (the freshness check of the ten tables)",
                )
                deliveries = send_alert(alert, settings, secrets=secret_values(env), logger=context.log)
                alerted |= {a.account for a in newly}
                said.append(f"alerted: {names} ({delivered(deliveries)})")
        cursor = json.dumps({"limit": limit.total_seconds(), "accounts": state, "alerted": sorted(alerted)})
        said.append("check results recorded" if changed else "unchanged since the last evaluation")
        return dg.SensorResult(asset_events=events, cursor=cursor, skip_reason="; ".join(said))

    return joor_freshness

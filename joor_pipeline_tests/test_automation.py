"""The daily schedule (never a run that fails for lack of a snapshot) and the sensor that builds the models once."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.tags import RUN_KEY_TAG, SCHEDULE_NAME_TAG

from joor_pipeline.assets.automation import SCHEDULE_NAME, SENSOR_NAME, daily_requests
from joor_pipeline.assets.joor import joor_raw_connections, joor_tables
from joor_pipeline.assets.models import joor_models
from joor_pipeline.assets.resources import DataDirResource, JoorApiResource
from joor_pipeline.definitions import JOB_NAME, MODELS_JOB_NAME, build_defs
from joor_pipeline.sandbox import generate_connections
from joor_pipeline_tests.raw_fixtures import land

NOW = datetime.now(UTC)
TODAY = NOW.date()


def _tick(
    defs: dg.Definitions, scheduled: datetime, instance: dg.DagsterInstance | None = None
) -> dg.ScheduleExecutionData:
    schedule = defs.resolve_schedule_def(SCHEDULE_NAME)
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=scheduled, repository_def=defs.get_repository_def()
    )
    return schedule.evaluate_tick(context)


@pytest.mark.parametrize("days_late", [1, 12])
def test_a_tick_evaluated_on_a_later_day_is_skipped_saying_why(days_late: int) -> None:
    """After downtime, a replay, or the UI's preview of a past tick: no run that would fail, and the reason."""
    defs = build_defs({"JOOR_ENVIRONMENT": "builtin"})
    past = datetime.combine(TODAY - timedelta(days=days_late), datetime.min.time(), UTC).replace(hour=6)
    data = _tick(defs, past)
    assert not data.run_requests
    assert data.skip_message is not None
    assert f"is evaluated on {TODAY}" in data.skip_message
    assert "JOOR serves only the current state" in data.skip_message and "today's tick fetches" in data.skip_message


def test_a_tick_of_today_fetches_today_once_per_account(tmp_path: Path) -> None:
    """On time or late the same day: today's partition of each account, under a run key the day keeps; a replay
    of the tick once the runs exist asks for nothing again, and says so."""
    resources = {"joor": JoorApiResource(), "storage": DataDirResource(data_dir=str(tmp_path / "data"))}
    defs = build_defs({"JOOR_ENVIRONMENT": "builtin"}, resources=resources)
    this_morning = datetime.combine(TODAY, datetime.min.time(), UTC).replace(hour=6)
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        [request] = _tick(defs, this_morning, instance).run_requests or []
        assert request.partition_key == f"default|{TODAY}" and request.run_key == f"default|{TODAY}"
        assert request.tags["joor/synthetic"] == "true"  # the built-in sandbox's retailers
        instance.create_run_for_job(
            defs.resolve_job_def(JOB_NAME),
            tags={SCHEDULE_NAME_TAG: SCHEDULE_NAME, RUN_KEY_TAG: request.run_key or ""},
        )
        replay = _tick(defs, this_morning, instance)
    assert not replay.run_requests
    assert replay.skip_message == f"every account's run of {TODAY} was already requested (default)"


def test_the_schedule_leaves_out_only_the_accounts_already_requested() -> None:
    tick = NOW.replace(hour=6, minute=0)
    requests = daily_requests(tick, NOW, accounts=["a", "b", "c"], requested=["b"], environ={})
    assert isinstance(requests, list)
    assert [r.run_key for r in requests] == [f"a|{TODAY}", f"c|{TODAY}"]
    assert all("joor/synthetic" not in r.tags for r in requests)  # JOOR itself, not the built-in sandbox
    later = daily_requests(NOW + timedelta(days=1), NOW, accounts=["a"], environ={})
    assert isinstance(later, dg.SkipReason) and "is still to come" in (later.skip_message or "")


def _sensor(defs: dg.Definitions, instance: dg.DagsterInstance) -> dg.SensorExecutionData:
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    return sensor.evaluate_tick(dg.build_sensor_context(instance=instance, repository_def=defs.get_repository_def()))


def test_the_models_are_built_once_nothing_is_landing_and_only_when_something_was_published(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    day, next_day = date(2026, 3, 2), date(2026, 3, 3)
    for snapshot_date in (day, next_day):
        land(data_dir, snapshot_date, generate_connections(8, seed=5))
    resources = {"joor": JoorApiResource(), "storage": DataDirResource(data_dir=str(data_dir))}
    defs = build_defs({}, resources=resources)
    landing = defs.resolve_job_def(JOB_NAME)
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        assert _sensor(defs, instance).skip_message == "no table is published yet"

        assert landing.execute_in_process(partition_key=f"default|{day}", instance=instance).success
        # Another account's run of the batch is still queued: the build waits for it.
        queued = instance.create_run_for_job(landing, tags={"dagster/partition/account": "brand_b"})
        waiting = _sensor(defs, instance)
        assert not waiting.run_requests and "waiting for 1 run(s) landing data" in (waiting.skip_message or "")
        assert "brand_b" in (waiting.skip_message or "")
        instance.report_run_failed(queued)  # a failed account holds nothing back

        [request] = _sensor(defs, instance).run_requests or []
        assert request.job_name in (None, MODELS_JOB_NAME) and request.run_key
        assert request.tags["joor/after_publication"] == f"default|{day}"
        # Built, here by a run that also landed the day again first (the UI's "materialize all"): the build
        # started after that publication, so nothing is left to build.
        everything = dg.materialize(
            [joor_raw_connections, joor_tables, joor_models],
            partition_key=f"default|{day}",
            instance=instance,
            resources=resources,
        )
        assert everything.success
        built = _sensor(defs, instance)
        assert not built.run_requests and "built after the last publication" in (built.skip_message or "")

        # The next publication asks for another build, under another run key.
        assert landing.execute_in_process(partition_key=f"default|{next_day}", instance=instance).success
        [again] = _sensor(defs, instance).run_requests or []
        assert again.run_key != request.run_key

"""The one-machine Dagster instance: its pooled SQLite event log followed live, and make demo and make ui meeting."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.utils import make_new_run_id

from joor_pipeline.assets.instance import PooledSqliteEventLogStorage, open_instance, ui_environ
from joor_pipeline.assets.joor import RAW_ASSET
from joor_pipeline.config import NOT_CONFIGURED
from joor_pipeline.definitions import JOB_NAME, build_defs

REPO = Path(__file__).resolve().parents[1]
#: A bound on waiting for the watcher, so a broken one fails the test rather than hanging it.
WATCH_TIMEOUT = 60.0


#: Set by the watcher of the test below when it hears the op's first line; the op waits for it (bounded).
HEARD_FIRST_LINE = threading.Event()
#: What the op saw: whether the watcher heard its first line while the op was still running.
HEARD_WHILE_RUNNING: list[bool] = []


@dg.op
def log_and_wait_to_be_heard(context) -> None:  # type: ignore[no-untyped-def]
    context.log.info("line 0")
    HEARD_WHILE_RUNNING.append(HEARD_FIRST_LINE.wait(WATCH_TIMEOUT))
    context.log.info("line 1")


@dg.job(executor_def=dg.in_process_executor)
def small_job() -> None:
    log_and_wait_to_be_heard()


def test_the_pooled_event_log_is_followed_live_as_the_ui_follows_a_run(tmp_path: Path, monkeypatch) -> None:
    """Another process's view of a run (the webserver's) hears of each event as it is stored, while the run goes
    on, although the writer keeps its connection open and writes into the write-ahead log."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster_home.example" / "dagster.sqlite.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    HEARD_FIRST_LINE.clear()
    HEARD_WHILE_RUNNING.clear()
    with dg.DagsterInstance.from_config(str(home)) as writer, dg.DagsterInstance.from_config(str(home)) as reader:
        assert isinstance(writer.event_log_storage, PooledSqliteEventLogStorage)
        run_id = make_new_run_id()
        heard: list[str] = []
        done = threading.Event()

        def hear(entry: dg.EventLogEntry, _cursor: str) -> None:
            heard.append(entry.user_message)
            if entry.user_message == "line 0":
                HEARD_FIRST_LINE.set()
            if entry.dagster_event is not None and entry.dagster_event.event_type_value == "PIPELINE_SUCCESS":
                done.set()

        reader.watch_event_logs(run_id, None, hear)
        assert small_job.execute_in_process(instance=writer, run_id=run_id).success
        assert HEARD_WHILE_RUNNING == [True], "the watcher did not hear the run's first line while it ran"
        assert done.wait(WATCH_TIMEOUT), f"the watcher heard {len(heard)} events, then nothing"
        assert len(heard) == len(reader.all_logs(run_id))
        assert [m for m in heard if m.startswith("line ")] == ["line 0", "line 1"]


def test_a_dagster_home_the_cli_creates_uses_the_pooled_event_log(tmp_path: Path) -> None:
    home = tmp_path / "made"
    with open_instance({"DAGSTER_HOME": str(home)}) as instance:
        assert isinstance(instance.event_log_storage, PooledSqliteEventLogStorage)
        assert instance.event_log_storage._base_dir == str(home / "history" / "runs")
    assert "PooledSqliteEventLogStorage" in (home / "dagster.yaml").read_text()


def test_make_ui_opens_on_the_builtin_sandbox_when_nothing_else_is_configured() -> None:
    # What `make ui` runs, with `env` (which prints its environment) in place of `dagster dev`.
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("JOOR_", "DAGSTER_"))}
    done = subprocess.run(
        [sys.executable, "-m", "joor_pipeline.assets.instance", "ui", "env"],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean,
    )
    assert done.returncode == 0, done.stderr
    assert "JOOR_ENVIRONMENT=builtin" in done.stdout.splitlines()
    assert "no JOOR is configured, so the UI runs on the built-in sandbox" in done.stderr
    env, note = ui_environ({"PATH": "/usr/bin"})
    assert env["JOOR_ENVIRONMENT"] == "builtin" and note is not None and "synthetic" in note
    for configured in ({"JOOR_API_TOKEN": "t"}, {"JOOR_ENVIRONMENT": "sandbox"}, {"JOOR_ACCOUNTS_FILE": "/nope"}):
        assert ui_environ(configured) == (configured, None)
    # The UI then says so, on the fetch asset and on every run its jobs launch.
    defs = build_defs(env)
    fetch = defs.resolve_asset_graph().get(dg.AssetKey(RAW_ASSET))
    assert (fetch.description or "").startswith("BUILT-IN SANDBOX: ") and fetch.metadata["synthetic"] is True
    assert defs.resolve_job_def(JOB_NAME).tags["joor/synthetic"] == "true"
    nothing = build_defs({})
    assert NOT_CONFIGURED in (nothing.resolve_asset_graph().get(dg.AssetKey(RAW_ASSET)).description or "")
    assert "joor/synthetic" not in nothing.resolve_job_def(JOB_NAME).tags


@pytest.mark.parametrize("target", ["demo", "ui"])
def test_make_demo_and_make_ui_share_one_dagster_home(target: str) -> None:
    done = subprocess.run(
        ["make", "-n", target],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MAKEFLAGS": ""},
    )
    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stdout.splitlines() if "DAGSTER_HOME=" in line]
    assert f'DAGSTER_HOME="{REPO}/dagster_home"' in line
    assert ("joor-pipeline demo" if target == "demo" else "joor_pipeline.assets.instance ui dagster dev") in line

"""Real processes killed at every rename of a fetch and a flatten (strace fault injection), SIGKILL mid-fetch,
SIGTERM and a second run of the same date: afterwards the data is exactly the old or exactly the new, and the
recovery leaves no staging behind."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from joor_pipeline.sandbox import generate_connections, run_sandbox
from joor_pipeline.storage.locks import snapshot_lock
from joor_pipeline.storage.parquet import flatten_snapshot, publication_id, published_dates
from joor_pipeline.storage.publish import STAGING_DIR, recover
from joor_pipeline.storage.raw import iter_raw_pages, raw_snapshot_dir, read_manifest
from joor_pipeline_tests.raw_fixtures import land, partition_bytes, staging_leftovers

DAY = date(2026, 11, 2)
STRACE = shutil.which("strace")


def cli(data_dir: Path, command: str) -> list[str]:
    # DAY is in the past: a fetch stores today's connections under it only when asked to.
    backdated = ["--allow-backdated"] if command == "fetch" else []
    return [
        sys.executable,
        "-m",
        "joor_pipeline.cli",
        command,
        "--date",
        DAY.isoformat(),
        *backdated,
        "--data-dir",
        str(data_dir),
    ]


def killed_at_rename(command: list[str], when: int, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``command``, SIGKILLing it (children included) as it makes its ``when``-th rename call (``rename``,
    or ``renameat``/``renameat2`` where the C library uses those)."""
    assert STRACE is not None, "the crash tests need strace: apt-get install strace (.ci/run installs it)"
    renames = "/^rename(at2?)?$"
    traced = [STRACE, "-f", "-qq", "-o", "/dev/null", "-e", f"trace={renames}"]
    traced += ["-e", f"inject={renames}:signal=KILL:when={when}", *command]
    return subprocess.run(traced, env=env, capture_output=True, text=True, timeout=120)


def rename_count(command: list[str], env: dict[str, str]) -> int:
    """How many rename calls ``command`` makes when left alone."""
    assert STRACE is not None, "the crash tests need strace: apt-get install strace (.ci/run installs it)"
    with tempfile.TemporaryDirectory() as scratch:
        trace = Path(scratch) / "trace"
        traced = [STRACE, "-f", "-qq", "-o", str(trace), "-e", "trace=/^rename(at2?)?$", *command]
        done = subprocess.run(traced, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return sum("resumed>" not in line for line in trace.read_text().splitlines())


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOOR_")}
    env.update(JOOR_FLATTEN_WORKERS="1", **extra)
    return env


def raw_state(data_dir: Path) -> dict[str, bytes]:
    directory = raw_snapshot_dir(data_dir, DAY)
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())} if directory.is_dir() else {}


# --- flatten ---------------------------------------------------------------------------------------------------


def test_a_flatten_killed_at_every_rename_is_recovered_to_exactly_old_or_new(tmp_path: Path) -> None:
    # References: the old and the new snapshot flattened undisturbed, in one process (byte-identical reruns).
    old_connections, new_connections = generate_connections(150, seed=1), generate_connections(230, seed=2)
    references = {}
    for name, connections in (("old", old_connections), ("new", new_connections)):
        land(tmp_path / name, DAY, connections)
        flatten_snapshot(tmp_path / name, DAY, workers=1)
        references[name] = partition_bytes(tmp_path / name, DAY)
    assert references["old"] != references["new"]

    outcomes = []
    for when in range(1, 60):
        data = tmp_path / f"run-{when}"
        land(data, DAY, old_connections)
        flatten_snapshot(data, DAY, workers=1)
        land(data, DAY, new_connections)
        done = killed_at_rename(cli(data, "flatten"), when, base_env())
        if done.returncode == 0:
            assert partition_bytes(data, DAY) == references["new"]
            break
        assert done.returncode == -signal.SIGKILL, done.stderr
        recover(data)
        state = partition_bytes(data, DAY)
        outcome = "old" if state == references["old"] else "new" if state == references["new"] else "mixed"
        outcomes.append(outcome)
        assert staging_leftovers(data) == [], when
        assert published_dates(data) == [DAY]
        shutil.rmtree(data)
    # Renames before the commit point (the audit's scratch files, then the journal's own) leave the old data;
    # every later one is a partition's switch (the old one aside, the new one in, for each of the ten tables)
    # and is finished by the recovery.
    assert outcomes[-20:] == ["new"] * 20
    assert outcomes[:-20] and set(outcomes[:-20]) == {"old"}


def test_a_flatten_killed_mid_switch_is_completed_by_the_next_flatten(tmp_path: Path) -> None:
    land(tmp_path, DAY, generate_connections(100, seed=1))
    flatten_snapshot(tmp_path, DAY, workers=1)
    first_id = publication_id(tmp_path, DAY)
    land(tmp_path, DAY, generate_connections(120, seed=2))
    # Count the renames of the same flatten on a copy, then kill the real one halfway through its 20 switches.
    shutil.copytree(tmp_path, tmp_path.with_name(tmp_path.name + "-copy"))
    total = rename_count(cli(tmp_path.with_name(tmp_path.name + "-copy"), "flatten"), base_env())
    assert killed_at_rename(cli(tmp_path, "flatten"), total - 10, base_env()).returncode == -signal.SIGKILL
    assert list((tmp_path / STAGING_DIR).iterdir())  # the killed run's journal and old copies
    # The next run (here a flatten of the same date) rolls the interrupted one forward before its own work.
    done = subprocess.run(cli(tmp_path, "flatten"), env=base_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "recovered the interrupted publication" in done.stderr
    assert publication_id(tmp_path, DAY) not in (None, first_id)
    assert staging_leftovers(tmp_path) == []


# --- fetch -----------------------------------------------------------------------------------------------------


@pytest.fixture
def sandbox_env() -> Iterator[tuple[object, dict[str, str]]]:
    with run_sandbox(connections=95, seed=9, rate_limit_credits=0) as sb:
        yield sb, base_env(JOOR_BASE_URL=sb.base_url, JOOR_API_TOKEN=sb.config.api_token, JOOR_PAGE_SIZE="20")


def test_a_fetch_killed_at_every_rename_is_recovered_to_exactly_old_or_new(tmp_path: Path, sandbox_env) -> None:
    sb, env = sandbox_env
    outcomes = []
    for when in range(1, 10):
        data = tmp_path / f"run-{when}"
        sb.connections[:] = generate_connections(95, seed=9)  # type: ignore[attr-defined]
        first = subprocess.run(cli(data, "fetch"), env=env, capture_output=True, text=True, timeout=120)
        assert first.returncode == 0, first.stderr
        old = raw_state(data)
        del sb.connections[-15:]  # type: ignore[attr-defined]
        done = killed_at_rename(cli(data, "fetch"), when, env)
        if done.returncode == 0:
            assert read_manifest(data, DAY)["connections"] == 80
            break
        assert done.returncode == -signal.SIGKILL, done.stderr
        recover(data)
        assert staging_leftovers(data) == []
        if raw_state(data) == old:
            outcomes.append("old")
        else:
            # Exactly the new snapshot: its manifest's 80 connections, every page matching its sha256.
            assert read_manifest(data, DAY)["connections"] == 80
            assert sum(len(connections) for _e, connections, _l in iter_raw_pages(data, DAY)) == 80
            outcomes.append("new")
        shutil.rmtree(data)
    assert outcomes == ["old", "new", "new"]  # journal; old snapshot aside; new one in


def _wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def _staged_pages(data_dir: Path) -> list[Path]:
    return list((data_dir / STAGING_DIR).glob("*/new/**/page-*"))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_fetch_stopped_midway_leaves_the_old_snapshot_and_no_staging(tmp_path: Path, sandbox_env, sig) -> None:
    sb, env = sandbox_env
    first = subprocess.run(cli(tmp_path, "fetch"), env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    old = raw_state(tmp_path)
    # One page at a time, half a second each: the signal lands seconds before the fetch could finish.
    sb.faults.latency_ms = 500  # type: ignore[attr-defined]
    slow = {**env, "JOOR_CONCURRENCY": "1"}
    with subprocess.Popen(cli(tmp_path, "fetch"), env=slow, stderr=subprocess.PIPE, text=True) as proc:
        try:
            _wait_for(lambda: len(_staged_pages(tmp_path)) >= 1)
            proc.send_signal(sig)
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert raw_state(tmp_path) == old
    if sig == signal.SIGTERM:
        # SIGTERM unwinds through the finally blocks: the staging is gone without any recovery.
        assert code == 128 + signal.SIGTERM
        assert staging_leftovers(tmp_path) == []
    else:
        assert code == -signal.SIGKILL
        assert _staged_pages(tmp_path)  # what a killed fetch leaves: its owner is gone, so...
        assert recover(tmp_path)  # ...the next run's recovery deletes it
        assert staging_leftovers(tmp_path) == []
    assert raw_state(tmp_path) == old


def test_a_live_owners_staging_is_left_alone(tmp_path: Path) -> None:
    from joor_pipeline.storage.publish import publication

    with publication(tmp_path, DAY, "raw") as pub:
        (pub.staged(Path("raw/connections/x")) / "page").parent.mkdir(parents=True)
        assert recover(tmp_path) == []
        assert pub.root.is_dir()
    assert staging_leftovers(tmp_path) == []


# --- one run per date ------------------------------------------------------------------------------------------


def test_a_second_run_of_the_same_date_gets_one_clear_line(tmp_path: Path) -> None:
    land(tmp_path, DAY, generate_connections(10, seed=1))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from datetime import date; from pathlib import Path\n"
            "from joor_pipeline.storage.locks import snapshot_lock\n"
            f"with snapshot_lock(Path({str(tmp_path)!r}), date({DAY.year}, {DAY.month}, {DAY.day})):\n"
            "    print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        for command in ("flatten", "fetch"):
            env = base_env(JOOR_ENVIRONMENT="builtin")
            done = subprocess.run(cli(tmp_path, command), env=env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 1
            errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
            assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
            assert errors[0].startswith(f"error: snapshot {DAY} is busy: pid {holder.pid} on ")
        # Another date is not held up.
        land(tmp_path, date(2026, 11, 3), generate_connections(5, seed=1))
        flatten_snapshot(tmp_path, date(2026, 11, 3))
    finally:
        holder.kill()
        holder.communicate()
    with snapshot_lock(tmp_path, DAY):  # freed by the holder's death
        pass

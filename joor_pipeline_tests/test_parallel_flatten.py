"""The flatten shared out between worker processes: the same rows, the same stats, the same failures, bounded."""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from joor_pipeline.assets.joor import joor_tables
from joor_pipeline.assets.resources import DataDirResource, resources_from_env
from joor_pipeline.config import flatten_workers_setting
from joor_pipeline.flatten import TABLES, workers
from joor_pipeline.flatten.runner import FlattenReport, flatten_snapshot, stage_snapshot
from joor_pipeline.flatten.workers import MIN_PAGES_PER_WORKER, FlattenWorkerError, flatten_workers
from joor_pipeline.joor.errors import ConfigError, PayloadError
from joor_pipeline.quality import BLOCKING_CHECKS, blocking_failures, check_partition, partition_issues, raw_recount
from joor_pipeline.sandbox.data import generate_connections
from joor_pipeline.storage.parquet import published_files, write_partition_manifest
from joor_pipeline_tests.raw_fixtures import land, partition_bytes, raw_pages, snap, staging_leftovers

DAY = date(2024, 5, 1)

pytestmark = pytest.mark.skipif(not workers.CAN_PARALLEL, reason="worker processes come from a forkserver (POSIX)")


def drifted_connections(n: int) -> list[dict[str, Any]]:
    """Generated connections with some of everything the flatten records: unknown fields, bad values, nulls."""
    connections = generate_connections(n, seed=17)
    connections[3]["surprise"] = {"nested": "x"}
    connections[250]["doors"] = [{"door_id": "not a number", "door_code": "D", "door_name": "N", "extra": 1}]
    connections[520]["customer_account_id"] = ""
    connections[777]["billing"]["payment_methods"] = "cash"
    return connections


def read_partition(data_dir: Path, table: str) -> pa.Table:
    """One table's partition, its files read in name order (which is page order)."""
    return pa.concat_tables(pq.read_table(path) for path in published_files(data_dir, table, snap(DAY)))


@contextlib.contextmanager
def held_page(data_dir: Path, page: int) -> Iterator[Path]:
    """Swap a landed page for a named pipe that gives no data and no end: the worker that reads it blocks there,
    alive, with the pipe open, until the test does something to it (a read stuck on a dead network disk)."""
    path = raw_pages(data_dir, DAY)[page]
    path.unlink()
    os.mkfifo(path)
    # Held open for writing here, so the worker's open succeeds and its read waits for data that never comes.
    fd = os.open(path, os.O_RDWR)
    try:
        yield path
    finally:
        os.close(fd)


def worker_holding(path: Path, timeout: float = 60.0) -> int:
    """The pid of the process that has ``path`` open (the worker blocked on it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for fd_dir in Path("/proc").glob("[0-9]*/fd"):
            if fd_dir.parent.name == str(os.getpid()):
                continue
            with contextlib.suppress(OSError):
                if any(os.readlink(fd) == str(path) for fd in fd_dir.iterdir()):
                    return int(fd_dir.parent.name)
        time.sleep(0.05)
    raise AssertionError(f"no process opened {path} within {timeout} s")


def signal_worker_holding(path: Path, signum: int) -> threading.Thread:
    """In the background: wait for the worker blocked on ``path`` and send it ``signum``."""
    thread = threading.Thread(target=lambda: os.kill(worker_holding(path), signum), daemon=True)
    thread.start()
    return thread


def flatten_children() -> set[int]:
    """Processes descended from this one (the forkserver and its workers, the resource tracker)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: set[int] = set()
    stack = [os.getpid()]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def assert_same_flatten(one: FlattenReport, many: FlattenReport, one_dir: Path, many_dir: Path) -> None:
    for table in TABLES:
        expected = read_partition(one_dir, table)
        assert expected.num_rows > 0, table
        assert read_partition(many_dir, table).equals(expected), table
    assert many.rows == one.rows
    assert many.stats == one.stats


@pytest.mark.parametrize(("fmt", "workers"), [("json", 2), ("json", 3), ("xml", 2)])
def test_workers_write_exactly_the_rows_and_stats_of_one_process(tmp_path: Path, fmt: str, workers: int) -> None:
    connections = drifted_connections(1000)
    land(tmp_path / "one", DAY, connections, fmt)
    land(tmp_path / "many", DAY, connections, fmt)
    one = flatten_snapshot(tmp_path / "one", snap(DAY), workers=1)
    many = flatten_snapshot(tmp_path / "many", snap(DAY), workers=workers)

    assert one.workers == 1 and many.workers == workers
    assert_same_flatten(one, many, tmp_path / "one", tmp_path / "many")
    assert many.stats.unknown_fields and many.stats.coercion_problems and many.stats.missing_customer_account_id == 1
    for table in TABLES:
        names = [Path(path).name for path in published_files(tmp_path / "many", table, snap(DAY))]
        assert names == [f"part-{k:05d}-{many.publication_id}.parquet" for k in range(workers)], table
    # The pages are cut in contiguous runs: worker k's file holds its pages, in order.
    pages = [
        pq.read_table(path)["source_page"].to_pylist()
        for path in published_files(tmp_path / "many", "connections", snap(DAY))
    ]
    assert [page for run in pages for page in run] == sorted(page for run in pages for page in run)
    assert staging_leftovers(tmp_path / "many") == []


def test_a_connection_repeated_across_two_workers_is_kept_once_like_one_process_keeps_it(tmp_path: Path) -> None:
    connections = generate_connections(400, seed=5)
    connections.append(copy.deepcopy(connections[5]))  # the last page (the second worker's) repeats page 0's
    land(tmp_path / "one", DAY, connections)
    land(tmp_path / "many", DAY, connections)
    one = flatten_snapshot(tmp_path / "one", snap(DAY), workers=1)
    many = flatten_snapshot(tmp_path / "many", snap(DAY), workers=2)

    assert many.stats.duplicate_connections == 1 and many.connections == 400
    assert many.workers == 1  # flattened again in one process, so the first occurrence wins
    assert_same_flatten(one, many, tmp_path / "one", tmp_path / "many")
    assert staging_leftovers(tmp_path / "many") == []


def test_progress_comes_after_every_page_whichever_worker_read_it(tmp_path: Path) -> None:
    land(tmp_path, DAY, generate_connections(950, seed=4))
    calls: list[tuple[int, int, int]] = []
    flatten_snapshot(tmp_path, snap(DAY), progress=lambda *args: calls.append(args), workers=3)
    assert [done for done, _, _ in calls] == list(range(1, 11))
    assert {total for _, total, _ in calls} == {10}
    connections = [count for _, _, count in calls]
    assert connections == sorted(connections) and connections[-1] == 950


def test_a_bad_page_in_one_worker_fails_the_flatten_and_keeps_the_previous_partition(tmp_path: Path) -> None:
    land(tmp_path, DAY, generate_connections(300, seed=1))
    flatten_snapshot(tmp_path, snap(DAY), workers=1)
    before = partition_bytes(tmp_path, DAY)

    land(tmp_path, DAY, generate_connections(1000, seed=2), body_of=lambda i, b: b[:100] if i == 7 else b)
    with pytest.raises(PayloadError) as caught:
        flatten_snapshot(tmp_path, snap(DAY), workers=2)
    assert "invalid JSON" in str(caught.value)
    assert "page-00007-" in str(caught.value) and caught.value.log_id == "log-7"
    assert any("flatten worker 1, pages 5-9" in note for note in caught.value.__notes__)
    assert partition_bytes(tmp_path, DAY) == before
    assert staging_leftovers(tmp_path) == []


def test_a_worker_that_dies_fails_the_flatten_and_keeps_the_previous_partition(tmp_path: Path) -> None:
    land(tmp_path, DAY, generate_connections(1000, seed=2))
    flatten_snapshot(tmp_path, snap(DAY), workers=1)
    before = partition_bytes(tmp_path, DAY)

    # What the kernel's OOM killer leaves behind: no message, no exception. The worker of pages 5-9 is held on
    # page 6 so that it is surely alive when the test kills it.
    with held_page(tmp_path, 6) as held:
        killer = signal_worker_holding(held, signal.SIGKILL)
        with pytest.raises(FlattenWorkerError, match=r"died before finishing \(.*flatten worker 1, pages 5-9"):
            flatten_snapshot(tmp_path, snap(DAY), workers=2)
        killer.join()
    assert partition_bytes(tmp_path, DAY) == before
    assert staging_leftovers(tmp_path) == []


def test_a_rerun_with_the_same_workers_writes_byte_identical_files(tmp_path: Path) -> None:
    land(tmp_path, DAY, drifted_connections(1000), "xml")
    flatten_snapshot(tmp_path, snap(DAY), workers=2)
    before = partition_bytes(tmp_path, DAY)
    flatten_snapshot(tmp_path, snap(DAY), workers=2)
    assert partition_bytes(tmp_path, DAY) == before


def test_the_parent_hears_of_a_finished_worker_at_once_not_at_its_next_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last worker's result reaches the parent through its future, not its queue of page reports: the pool
    wakes the parent when a future is done. With the parent's poll stretched to 10 minutes, a flatten that waited
    for its next poll would take that long."""
    land(tmp_path, DAY, generate_connections(1000, seed=2))
    monkeypatch.setattr(workers, "_POLL_SECONDS", 600.0)
    clock = time.monotonic()
    report = flatten_snapshot(tmp_path, snap(DAY), workers=2)
    assert report.workers == 2 and report.connections == 1000
    assert time.monotonic() - clock < 120


def test_the_default_uses_the_cores_but_not_for_a_small_snapshot() -> None:
    cores = len(os.sched_getaffinity(0))
    assert flatten_workers(None, 1) == 1
    assert flatten_workers(None, MIN_PAGES_PER_WORKER * 2 - 1) == 1
    assert flatten_workers(None, 10_000) == min(cores, workers.MAX_DEFAULT_WORKERS)
    assert flatten_workers(4, 3) == 3  # never more workers than pages
    assert flatten_workers(1, 10_000) == 1
    with pytest.raises(ValueError, match="at least 1"):
        flatten_workers(0, 10)


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_bad_flatten_workers_setting_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="JOOR_FLATTEN_WORKERS"):
        flatten_workers_setting({"JOOR_FLATTEN_WORKERS": value})
    with pytest.raises(ConfigError, match="JOOR_FLATTEN_WORKERS"):
        DataDirResource(data_dir="x", flatten_workers=value).workers()
    assert flatten_workers_setting({}) is None
    assert flatten_workers_setting({"JOOR_FLATTEN_WORKERS": " 3 "}) == 3


def test_the_dagster_asset_flattens_with_the_configured_workers_and_its_checks_pass(tmp_path: Path) -> None:
    day = date(2026, 3, 2)  # inside the daily partitions
    land(tmp_path, day, generate_connections(1000, seed=17))
    storage_resource = resources_from_env({"JOOR_DATA_DIR": str(tmp_path), "JOOR_FLATTEN_WORKERS": "3"})["storage"]
    assert isinstance(storage_resource, DataDirResource)
    assert storage_resource.flatten_workers == "JOOR_FLATTEN_WORKERS"  # an EnvVar, resolved at launch
    with pytest.MonkeyPatch.context() as env:
        env.setenv("JOOR_DATA_DIR", str(tmp_path))
        env.setenv("JOOR_FLATTEN_WORKERS", "3")
        result = dg.materialize(
            [joor_tables], partition_key=f"default|{day.isoformat()}", resources={"storage": storage_resource}
        )
    assert result.success
    for table in TABLES:
        assert len(published_files(tmp_path, table, snap(day))) == 3, table
    reconciled = {
        e.asset_key.to_user_string(): e.metadata["reconciles_with_raw"].value["passed"]
        for e in result.get_asset_check_evaluations()
        if e.check_name == "blocking_rules"
    }
    assert reconciled == dict.fromkeys(TABLES, True)
    connections = next(
        m.metadata
        for m in (e.event_specific_data.materialization for e in result.get_asset_materialization_events())
        if m.asset_key.to_user_string() == "connections"
    )
    assert connections["dagster/row_count"].value == 1000


def test_a_stopped_worker_is_killed_within_the_stall_limit_and_the_previous_partition_kept(tmp_path: Path) -> None:
    land(tmp_path, DAY, generate_connections(1000, seed=2))
    flatten_snapshot(tmp_path, snap(DAY), workers=1)
    before = partition_bytes(tmp_path, DAY)

    pids: list[int] = []
    with held_page(tmp_path, 6) as held:

        def stop_it() -> None:
            pids.append(worker_holding(held))
            os.kill(pids[0], signal.SIGSTOP)

        stopper = threading.Thread(target=stop_it, daemon=True)
        stopper.start()
        clock = time.monotonic()
        with pytest.raises(
            FlattenWorkerError, match=r"flatten worker 1, pages 5-9 sent no word for \d+ s \(limit 5 s\)"
        ):
            flatten_snapshot(tmp_path, snap(DAY), workers=2, worker_stall_seconds=5.0)
        stopper.join()
        assert pids, "the worker was not found"
    # Bounded: the limit plus the time to start the workers, far from the hour a real hang would take.
    assert 5.0 <= time.monotonic() - clock < 60
    assert partition_bytes(tmp_path, DAY) == before
    assert staging_leftovers(tmp_path) == []
    # The stopped worker was killed, not left stopped behind us.
    deadline = time.monotonic() + 30
    while pids[0] in flatten_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pids[0] not in flatten_children()


def test_a_worker_failure_stops_the_other_workers_at_once(tmp_path: Path) -> None:
    """A bad page fails the flatten while another worker is still blocked: no waiting for the stall limit."""
    connections = generate_connections(1000, seed=2)
    land(tmp_path, DAY, connections, body_of=lambda i, b: b[:100] if i == 7 else b)
    with held_page(tmp_path, 2):  # worker 0 blocks on page 2 for good; worker 1 meets the broken page 7
        clock = time.monotonic()
        with pytest.raises(PayloadError, match="invalid JSON"):
            flatten_snapshot(tmp_path, snap(DAY), workers=2, worker_stall_seconds=600.0)
        assert time.monotonic() - clock < 60
    assert staging_leftovers(tmp_path) == []


def process_tree(root: int) -> dict[int, str]:
    """``root``'s descendants, each with its start time (so that a reused pid is not taken for it)."""
    children: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid = int(stat.parent.name)
            children.setdefault(int(fields[1]), []).append(pid)
            started[pid] = fields[19]
    found: dict[int, str] = {}
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found[child] = started[child]
            stack.append(child)
    return found


def still_running(processes: dict[int, str]) -> list[int]:
    """Those of ``processes`` still alive (a zombie is dead: only its exit status is left)."""
    running = []
    for pid, started in processes.items():
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and fields[19] == started:
                running.append(pid)
    return running


@pytest.mark.parametrize("hold", ["blocked", "stopped"])
def test_a_kill_9_of_the_flatten_takes_its_forkserver_workers_and_resource_tracker_with_it(
    tmp_path: Path, hold: str
) -> None:
    """kill -9 of `joor-pipeline flatten` while its workers are held, one blocked on a read that never returns or
    stopped: nothing of it is left running under PID 1 (issue 19)."""
    land(tmp_path, DAY, generate_connections(1000, seed=2))
    command = [str(Path(sys.executable).parent / "joor-pipeline"), "flatten", "--date", DAY.isoformat()]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "JOOR_FLATTEN_WORKERS": "2"}
    tree: dict[int, str] = {}
    with held_page(tmp_path, 6) as held:
        flatten = subprocess.Popen(
            [*command, "--data-dir", str(tmp_path)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            worker = worker_holding(held)  # the workers exist, and one is held: nothing races the kill
            if hold == "stopped":
                os.kill(worker, signal.SIGSTOP)
            tree = process_tree(flatten.pid)
            assert worker in tree and len(tree) >= 3  # the forkserver, its workers, the resource tracker
            os.kill(flatten.pid, signal.SIGKILL)
            flatten.wait(timeout=60)
            deadline = time.monotonic() + 60
            while still_running(tree) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert still_running(tree) == []
        finally:
            for pid in [flatten.pid, *still_running(tree)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            flatten.wait(timeout=60)


@pytest.mark.parametrize(("fmt", "workers"), [("json", 1), ("json", 2), ("xml", 3)])
def test_the_recount_the_workers_send_home_is_the_one_a_second_pass_makes(
    tmp_path: Path, fmt: str, workers: int
) -> None:
    land(tmp_path, DAY, drifted_connections(1000), fmt)
    with stage_snapshot(tmp_path, snap(DAY), workers=workers) as staged:
        assert staged.report.workers == workers
        assert staged.raw_recount == raw_recount(tmp_path, snap(DAY))
        # The drift breaks other rules (a connection without an id), never the reconciliation.
        assert not [failure for failure in blocking_failures(tmp_path, staged) if "reconciles_with_raw" in failure]


def test_a_repeated_id_leaves_the_recount_to_a_second_pass_over_the_pages(tmp_path: Path) -> None:
    connections = generate_connections(400, seed=5)
    connections.append(copy.deepcopy(connections[5]) | {"customer_alias": "someone else"})  # same id, differs
    land(tmp_path, DAY, connections)
    with stage_snapshot(tmp_path, snap(DAY), workers=2) as staged:
        assert staged.raw_recount is None
        failures = blocking_failures(tmp_path, staged)
    assert any(
        "connections.reconciles_with_raw" in failure and str(connections[5]["customer_account_id"]) in failure
        for failure in failures
    )


def test_the_audit_counts_the_raw_pages_not_what_the_flatten_wrote(tmp_path: Path) -> None:
    land(tmp_path, DAY, generate_connections(400, seed=6))
    with stage_snapshot(tmp_path, snap(DAY), workers=2) as staged:
        # A flatten that lost a door: its files and manifest agree with each other, but not with the raw pages.
        path = Path(staged.files("doors")[-1])
        pq.write_table(pq.read_table(path).slice(1), path)
        write_partition_manifest(path.parent, "doors", snap(DAY), staged.publication.id)
        assert staged.raw_recount is not None
        assert staged.raw_recount.counts["doors"] == staged.report.rows["doors"]
        failures = blocking_failures(tmp_path, staged)
    assert len(failures) == 1 and failures[0].startswith("doors.reconciles_with_raw")


def test_the_audit_evaluates_the_blocking_rules_exactly_as_the_full_evaluation_finds_them(tmp_path: Path) -> None:
    land(tmp_path, DAY, drifted_connections(1000))
    with stage_snapshot(tmp_path, snap(DAY), workers=2) as staged:
        files = {t: staged.files(t) for t in TABLES}
        everything = partition_issues(tmp_path, files, DAY)
        blocking_rules = {rule for _table, check in BLOCKING_CHECKS for rule in check.rules}
        blocking = partition_issues(tmp_path, files, DAY, blocking_rules)
        all_outcomes = check_partition(tmp_path, files, snap(DAY))
        failures = blocking_failures(tmp_path, staged)
    assert blocking == [issue for issue in everything if issue.rule in blocking_rules]
    assert blocking and len(blocking) < len(everything)  # the drift breaks warning rules too
    assert failures == [outcome.describe() for outcome in all_outcomes if outcome.blocks]

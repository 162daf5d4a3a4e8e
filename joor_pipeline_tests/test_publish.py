"""Publishing: partition manifests (exact files, never stale, never stray), publication ids, damaged files named
with the way out, the switch rolled forward from any point, and the layout (nothing unpublished in the folders)."""

from __future__ import annotations

import json
import os
import shutil
from datetime import date
from pathlib import Path

import duckdb
import pytest

from joor_pipeline.flatten import TABLES
from joor_pipeline.sandbox.data import generate_connections
from joor_pipeline.storage.locks import SnapshotBusy, snapshot_lock
from joor_pipeline.storage.parquet import (
    PARTITION_MANIFEST,
    DamagedPartition,
    flatten_snapshot,
    parquet_path,
    partition_dir,
    partition_rows,
    publication_id,
    published_dates,
    published_files,
    stage_snapshot,
)
from joor_pipeline.storage.publish import JOURNAL_FILE, STAGING_DIR, quarantine_dir, recover
from joor_pipeline.warehouse import build_warehouse
from joor_pipeline_tests.model_fixtures import query
from joor_pipeline_tests.raw_fixtures import land, partition_bytes, staging_leftovers

DAY = date(2024, 5, 1)
NEXT_DAY = date(2024, 5, 2)


def test_each_partition_lists_its_files_rows_sizes_and_hashes(tmp_path: Path) -> None:
    land(tmp_path, DAY, generate_connections(300, seed=3))
    report = flatten_snapshot(tmp_path, DAY, workers=2)
    for table in TABLES:
        manifest = json.loads((partition_dir(tmp_path, table, DAY) / PARTITION_MANIFEST).read_text())
        assert manifest["publication_id"] == report.publication_id
        assert [f["name"] for f in manifest["files"]] == ["part-00000.parquet", "part-00001.parquet"]
        files = published_files(tmp_path, table, DAY)
        assert [f["bytes"] for f in manifest["files"]] == [path.stat().st_size for path in files]
        assert manifest["rows"] == report.rows[table] == partition_rows(files)
    assert publication_id(tmp_path, DAY) == report.publication_id


def test_a_republish_changes_the_publication_id(tmp_path: Path) -> None:
    assert publication_id(tmp_path, DAY) is None
    land(tmp_path, DAY, generate_connections(20, seed=3))
    first = flatten_snapshot(tmp_path, DAY).publication_id
    second = flatten_snapshot(tmp_path, DAY).publication_id
    assert first != second and publication_id(tmp_path, DAY) == second


@pytest.mark.parametrize(("before", "after"), [(3, 1), (1, 3)])
def test_a_reflatten_with_another_worker_count_is_read_exactly(tmp_path: Path, before: int, after: int) -> None:
    land(tmp_path, DAY, generate_connections(2_000, seed=5))
    flatten_snapshot(tmp_path, DAY, workers=before)
    build_warehouse(tmp_path)
    flatten_snapshot(tmp_path, DAY, workers=after)
    assert len(published_files(tmp_path, "connections", DAY)) == after
    build_warehouse(tmp_path)
    assert query(tmp_path, "select count(*) from dim_retailers") == [(2_000,)]


def test_a_stray_file_in_a_partition_folder_is_never_read(tmp_path: Path) -> None:
    land(tmp_path, DAY, generate_connections(500, seed=5))
    land(tmp_path, NEXT_DAY, generate_connections(300, seed=6))
    flatten_snapshot(tmp_path, DAY)
    flatten_snapshot(tmp_path, NEXT_DAY)
    # Someone copies the next day's file into this day's folder, under a name a flatten could have used.
    stray = partition_dir(tmp_path, "connections", DAY) / "part-00007.parquet"
    shutil.copy(parquet_path(tmp_path, "connections", NEXT_DAY), stray)
    assert stray not in published_files(tmp_path, "connections", DAY)
    build_warehouse(tmp_path)
    per_day = "select snapshot_date, count(*) from int_retailer_fingerprints group by 1 order by 1"
    with_stray = query(tmp_path, per_day), query(tmp_path, "select count(*) from data_quality_issues")
    stray.unlink()
    build_warehouse(tmp_path, full_refresh=True)
    assert (query(tmp_path, per_day), query(tmp_path, "select count(*) from data_quality_issues")) == with_stray
    assert [day for day, _ in with_stray[0]] == [DAY, NEXT_DAY]


def test_a_truncated_file_in_a_past_partition_is_named_with_the_way_out(tmp_path: Path) -> None:
    land(tmp_path, DAY, generate_connections(50, seed=5))
    flatten_snapshot(tmp_path, DAY)
    path = parquet_path(tmp_path, "addresses", DAY)
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)
    for attempt in (
        lambda: build_warehouse(tmp_path),
        lambda: published_files(tmp_path, "addresses", DAY),
    ):
        with pytest.raises(DamagedPartition) as caught:
            attempt()
        message = str(caught.value)
        assert str(path) in message and "is damaged" in message
        assert "joor-pipeline flatten --date 2024-05-01" in message
    # A file damaged without changing size (bit rot, a copy over it) is named too when it is read.
    damaged = r"addresses/account=default/snapshot_date=2024-05-01/part-00000\.parquet cannot"
    with pytest.raises(DamagedPartition, match=damaged):
        partition_rows([path])
    flatten_snapshot(tmp_path, DAY)  # the way out
    assert partition_rows(published_files(tmp_path, "addresses", DAY)) > 0


def test_partitions_written_before_manifests_still_read(tmp_path: Path) -> None:
    land(tmp_path, DAY, generate_connections(30, seed=5))
    report = flatten_snapshot(tmp_path, DAY)
    for table in TABLES:
        (partition_dir(tmp_path, table, DAY) / PARTITION_MANIFEST).unlink()
    assert published_dates(tmp_path) == [DAY]
    assert published_files(tmp_path, "connections", DAY) == [parquet_path(tmp_path, "connections", DAY)]
    assert (publication_id(tmp_path, DAY) or "").startswith("legacy-")
    assert report.rows["connections"] == partition_rows(published_files(tmp_path, "connections", DAY))


def test_published_dates_are_the_dates_with_a_published_partition(tmp_path: Path) -> None:
    for day in (NEXT_DAY, DAY):
        land(tmp_path, day, generate_connections(5, seed=1))
        flatten_snapshot(tmp_path, day)
    (tmp_path / "parquet" / "connections" / "snapshot_date=2024-05-09").mkdir()  # empty: not published
    assert published_dates(tmp_path) == [DAY, NEXT_DAY]
    assert published_dates(tmp_path, "doors") == [DAY, NEXT_DAY]


def test_staging_and_quarantine_stay_out_of_the_data_folders(tmp_path: Path) -> None:
    land(tmp_path, DAY, generate_connections(40, seed=1))
    flatten_snapshot(tmp_path, DAY)
    before = partition_bytes(tmp_path, DAY)
    land(tmp_path, DAY, generate_connections(60, seed=2))
    with stage_snapshot(tmp_path, DAY) as staged:
        assert staged.root.is_relative_to(tmp_path / STAGING_DIR)
        # The staged partition reads like a published one, from its own manifest.
        assert partition_rows(staged.files("connections")) == 60
        kept = staged.quarantine({"failed_checks": ["connections.example"]})
    assert kept == quarantine_dir(tmp_path, DAY)
    assert json.loads((kept / "reason.json").read_text())["failed_checks"] == ["connections.example"]
    assert partition_rows(published_files(tmp_path, "connections", DAY)) == 40
    assert partition_bytes(tmp_path, DAY) == before
    assert staging_leftovers(tmp_path) == []
    hive = duckdb.connect().execute(
        "select count(*) from read_parquet(?, hive_partitioning = true)",
        [str(tmp_path / "parquet" / "connections" / "**" / "*.parquet")],
    )
    assert hive.fetchone() == (40,)  # a hive reader of parquet/ sees only the published day
    flatten_snapshot(tmp_path, DAY)  # the next successful flatten of the date cleans the quarantine
    assert not kept.exists()


def test_an_interrupted_switch_is_rolled_forward_from_the_journal(tmp_path: Path, monkeypatch) -> None:
    """What a SIGKILL between two renames leaves (the test_crash_recovery tests make it for real): recovered."""
    land(tmp_path, DAY, generate_connections(40, seed=1))
    flatten_snapshot(tmp_path, DAY)
    land(tmp_path, DAY, generate_connections(60, seed=2))
    real_replace = os.replace
    calls = 0

    def dying_replace(src: object, dst: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 6:  # journal, then connections aside/in, addresses aside/in, then buyers aside: stop here
            raise KeyboardInterrupt  # not an Exception: nothing in the process puts anything back
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        flatten_snapshot(tmp_path, DAY)
    monkeypatch.undo()
    staging = list((tmp_path / STAGING_DIR).glob(f"*/{JOURNAL_FILE}"))
    assert len(staging) == 1  # the journal survives for the recovery
    assert recover(tmp_path) == [staging[0].parent.name]
    for table in TABLES:
        assert published_files(tmp_path, table, DAY), table
    assert partition_rows(published_files(tmp_path, "connections", DAY)) == 60
    assert staging_leftovers(tmp_path) == []


def test_the_snapshot_lock_is_exclusive_between_processes_and_reentrant_within_one(tmp_path: Path) -> None:
    import subprocess
    import sys

    with snapshot_lock(tmp_path, DAY), snapshot_lock(tmp_path, DAY):
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "from datetime import date; from pathlib import Path\n"
                "from joor_pipeline.storage.locks import snapshot_lock, SnapshotBusy\n"
                "try:\n"
                f"    with snapshot_lock(Path({str(tmp_path)!r}), date(2024, 5, 1)): print('got it')\n"
                "except SnapshotBusy as exc: print(exc)",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert f"snapshot 2024-05-01 is busy: pid {os.getpid()} on " in probe.stdout
        with snapshot_lock(tmp_path, NEXT_DAY):
            pass
    with snapshot_lock(tmp_path, DAY):
        pass
    assert issubclass(SnapshotBusy, Exception)


def test_a_forked_child_does_not_keep_the_lock(tmp_path: Path) -> None:
    import multiprocessing

    ready, release = multiprocessing.get_context("fork").Event(), multiprocessing.get_context("fork").Event()

    def child() -> None:
        ready.set()
        release.wait(30)

    with snapshot_lock(tmp_path, DAY):
        process = multiprocessing.get_context("fork").Process(target=child)
        process.start()
        ready.wait(30)
    try:
        with snapshot_lock(tmp_path, DAY):  # the child still runs, yet the lock is free
            pass
    finally:
        release.set()
        process.join(30)


def test_the_cli_flatten_publishes_only_what_passes_its_blocking_checks(tmp_path: Path, capsys) -> None:
    from joor_pipeline.cli import main
    from joor_pipeline.sandbox import load_seed_connection

    land(tmp_path, DAY, [load_seed_connection()])
    assert main(["flatten", "--date", DAY.isoformat(), "--data-dir", str(tmp_path)]) == 0
    before = partition_bytes(tmp_path, DAY)
    bad = load_seed_connection()
    bad["customer_account_id"] = 777
    bad["customer_code"] = "NOSTATE"
    bad["billing"]["billing_addresses"][0]["billing_state"] = ""
    land(tmp_path, DAY, [load_seed_connection(), bad])
    capsys.readouterr()
    assert main(["flatten", "--date", DAY.isoformat(), "--data-dir", str(tmp_path)]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: blocking check(s) failed on the flatten of 2024-05-01: addresses.state_for_us")
    assert "customer_account_id 777 (NOSTATE)" in error and str(quarantine_dir(tmp_path, DAY)) in error
    assert partition_bytes(tmp_path, DAY) == before
    assert staging_leftovers(tmp_path) == []

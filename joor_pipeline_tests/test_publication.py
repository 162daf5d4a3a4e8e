"""The publication on every backend: manifests as the only way in, a kill at every write recovered to exactly old or
new, a compare-and-swap refused, locks and leases, and the damaged states that recover without a manual delete."""

from __future__ import annotations

import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from joor_pipeline import layout
from joor_pipeline.cli import main
from joor_pipeline.flatten import TABLES
from joor_pipeline.flatten.runner import flatten_snapshot, stage_snapshot
from joor_pipeline.layout import SnapshotKey
from joor_pipeline.sandbox import generate_connections, load_seed_connection, run_sandbox
from joor_pipeline.storage.parquet import (
    DamagedPartition,
    partition_rows,
    publication_id,
    published_dates,
    published_files,
    published_partitions,
)
from joor_pipeline.storage.publish import PublishError, publication, quarantine_dir, recover, snapshot_lock, sweep
from joor_pipeline.storage.raw import iter_raw_pages, read_manifest
from joor_pipeline.storage.store import SnapshotBusy
from joor_pipeline.warehouse import build_warehouse, read
from joor_pipeline_tests.backends import DEAD_WRITER_LEASE, Backend, held_elsewhere
from joor_pipeline_tests.model_fixtures import query
from joor_pipeline_tests.raw_fixtures import land, partition_bytes, snap, staging_leftovers

DAY = date(2026, 11, 2)
KEY = SnapshotKey("default", DAY)
TARGETS = [layout.raw_snapshot(KEY), *(layout.table_partition(table, KEY) for table in TABLES)]


def referenced_only(backend: Backend, key: SnapshotKey = KEY) -> None:
    """Each folder of the snapshot holds its manifest and the files it lists, nothing else."""
    for target in [layout.raw_snapshot(key), *(layout.table_partition(table, key) for table in TABLES)]:
        found = backend.store.read(layout.manifest(target))
        manifest = json.loads(found[0]) if found else {}
        listed = [entry.get("file") or entry.get("name") for entry in manifest.get("pages", manifest.get("files", []))]
        present = {key.rsplit("/", 1)[1] for key in backend.store.list(target) if key.rsplit("/", 1)[0] == target}
        assert present == ({layout.MANIFEST, *listed} if found else set()), target


def records(backend: Backend) -> list[str]:
    """The journals and pending records in the store."""
    return list(backend.store.list(layout.JOURNALS))


def table_ids(backend: Backend) -> dict[str, str | None]:
    """Each table's published publication id, every file it lists read whole (never half a partition)."""
    ids: dict[str, str | None] = {}
    for table in TABLES:
        partition_rows(published_files(backend.data_dir, table, KEY))
        found = backend.store.read(layout.manifest(layout.table_partition(table, KEY)))
        ids[table] = json.loads(found[0])["publication_id"] if found else None
    return ids


def next_run_starts(backend: Backend, key: SnapshotKey = KEY, targets: list[str] = TARGETS) -> None:
    """What the next run of the date does first: take its lock (once a dead writer's lease expired), recover, and
    delete what the date's folders hold beyond their manifests."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with snapshot_lock(backend.data_dir, key):
                recover(backend.data_dir)
                sweep(backend.data_dir, targets)
            return
        except SnapshotBusy:
            assert time.monotonic() < deadline, "the dead writer's lock was never freed"
            time.sleep(0.2)


# ---- publishing and reading through manifests ---------------------------------------------------------------------


def test_raw_and_parquet_are_published_under_unique_names_and_read_through_their_manifests(backend: Backend) -> None:
    land(backend.data_dir, DAY, generate_connections(300, seed=1))
    first = read_manifest(backend.data_dir, KEY)
    assert all(page["file"].endswith(f"-{first['publication_id']}.json") for page in first["pages"])
    assert sum(len(c) for _entry, c, _log in iter_raw_pages(backend.data_dir, KEY)) == 300

    report = flatten_snapshot(backend.data_dir, KEY, workers=2)
    assert published_dates(backend.data_dir, account="default") == [DAY]
    assert published_partitions(backend.data_dir) == [("default", DAY)]
    for table in TABLES:
        files = published_files(backend.data_dir, table, KEY)
        assert [Path(f).name for f in files] == [f"part-{k:05d}-{report.publication_id}.parquet" for k in range(2)]
        assert all(f.startswith(backend.store.uri(layout.table_partition(table, KEY))) for f in files)
        manifest = json.loads(backend.store.read(layout.manifest(layout.table_partition(table, KEY)))[0])
        assert manifest["publication_id"] == report.publication_id
        assert manifest["rows"] == report.rows[table] == partition_rows(files)
        sizes = backend.store.list(layout.table_partition(table, KEY))
        folder = layout.table_partition(table, KEY)
        assert [entry["bytes"] for entry in manifest["files"]] == [sizes[f"{folder}/{Path(f).name}"] for f in files]
    assert publication_id(backend.data_dir, KEY) == report.publication_id
    referenced_only(backend)

    # Re-land and re-flatten with one worker: new ids, and the old files are gone once the manifests are swapped.
    land(backend.data_dir, DAY, generate_connections(230, seed=2))
    second = flatten_snapshot(backend.data_dir, KEY, workers=1)
    assert second.publication_id != report.publication_id
    assert publication_id(backend.data_dir, KEY) == second.publication_id
    assert partition_rows(published_files(backend.data_dir, "connections", KEY)) == 230
    referenced_only(backend)
    assert records(backend) == [] and staging_leftovers(backend.data_dir) == []


def test_a_stray_parquet_file_or_folder_changes_no_model_and_no_read(backend: Backend, caplog) -> None:
    """Issue 19: one Parquet file copied into a folder with no manifest (or beside a published partition's files)
    is never data: not for the models, not for ``read``."""
    land(backend.data_dir, DAY, generate_connections(80, seed=1))
    flatten_snapshot(backend.data_dir, KEY)
    build_warehouse(backend.data_dir)
    models = "select count(*), min(customer_account_id) from dim_retailers"
    history = "select count(*) filter (where is_current) from retailer_history"
    before = (
        query(backend.data_dir, models),
        query(backend.data_dir, history),
        len(read("connections", backend.data_dir)),
    )

    one = published_files(backend.data_dir, "connections", KEY)[0]
    with backend.store.open(one[len(backend.store.url) + 1 :]) as handle:
        data = handle.read()
    backend.store.write("parquet/connections/account=default/snapshot_date=2099-01-01/part-00000.parquet", data)
    backend.store.write(f"{layout.table_partition('connections', KEY)}/part-00007.parquet", data)
    with caplog.at_level(logging.WARNING, logger="joor_pipeline.storage.parquet"):
        assert published_partitions(backend.data_dir) == [("default", DAY)]
        report = build_warehouse(backend.data_dir)
    assert report.refresh_partitions == []  # nothing new was published: no model sees the stray rows
    after = (
        query(backend.data_dir, models),
        query(backend.data_dir, history),
        len(read("connections", backend.data_dir)),
    )
    assert after == before
    warnings = [r.getMessage() for r in caplog.records if "snapshot_date=2099-01-01" in r.getMessage()]
    assert len(warnings) == 1 and "without a _manifest.json" in warnings[0]


def test_a_truncated_file_is_named_with_the_way_out_which_repairs_it(backend: Backend) -> None:
    land(backend.data_dir, DAY, generate_connections(50, seed=5))
    flatten_snapshot(backend.data_dir, KEY)
    file = published_files(backend.data_dir, "addresses", KEY)[0]
    key = file[len(backend.store.url) + 1 :]
    backend.store.write(key, backend.store.read(key)[0][:100])
    for attempt in (
        lambda: build_warehouse(backend.data_dir),
        lambda: published_files(backend.data_dir, "addresses", KEY),
    ):
        with pytest.raises(DamagedPartition) as caught:
            attempt()
        assert f"{file} is damaged" in str(caught.value)
        assert "joor-pipeline flatten --date 2026-11-02" in str(caught.value)
    flatten_snapshot(backend.data_dir, KEY)  # the way out
    assert partition_rows(published_files(backend.data_dir, "addresses", KEY)) > 0
    referenced_only(backend)


def test_a_damaged_table_manifest_is_repaired_by_flattening_the_date_again(backend: Backend, capsys) -> None:
    land(backend.data_dir, DAY, generate_connections(40, seed=5))
    flatten_snapshot(backend.data_dir, KEY)
    manifest = layout.manifest(layout.table_partition("doors", KEY))
    backend.store.write(manifest, backend.store.read(manifest)[0][:20])  # truncated by hand
    with pytest.raises(DamagedPartition, match=r"cannot read .*joor-pipeline flatten --date 2026-11-02"):
        published_files(backend.data_dir, "doors", KEY)
    command = ["flatten", "--date", DAY.isoformat(), "--data-dir", backend.location]
    assert main(command) == 0, capsys.readouterr().err
    assert partition_rows(published_files(backend.data_dir, "doors", KEY)) > 0
    assert len({*table_ids(backend).values()}) == 1
    # The files the damaged manifest listed could not be named then; the next publication of the date sweeps them.
    assert main(command) == 0, capsys.readouterr().err
    referenced_only(backend)


def test_staging_and_quarantine_stay_in_local_scratch_and_a_publication_clears_its_own(backend: Backend) -> None:
    for account in ("default", "brand_b"):
        land(backend.data_dir, DAY, generate_connections(40, seed=1), account=account)
        flatten_snapshot(backend.data_dir, snap(DAY, account))
        land(backend.data_dir, DAY, generate_connections(60, seed=2), account=account)
        with stage_snapshot(backend.data_dir, snap(DAY, account)) as staged:
            assert staged.root.is_relative_to(backend.data_dir / layout.STAGING)
            assert partition_rows(staged.files("connections")) == 60  # a staged partition reads like a published one
            kept = staged.quarantine({"failed_checks": ["connections.example"]})
        assert kept == quarantine_dir(backend.data_dir, snap(DAY, account))
        assert json.loads((kept / "reason.json").read_text())["failed_checks"] == ["connections.example"]
        assert partition_rows(published_files(backend.data_dir, "connections", snap(DAY, account))) == 40
    assert staging_leftovers(backend.data_dir) == []
    assert not [key for key in backend.objects() if "quarantine" in key or "staging" in key]
    # The next successful flatten of an account's date clears that account's quarantine, and only that one.
    flatten_snapshot(backend.data_dir, snap(DAY, "brand_b"))
    assert not quarantine_dir(backend.data_dir, snap(DAY, "brand_b")).exists()
    assert quarantine_dir(backend.data_dir, KEY).is_dir()


def test_the_cli_flatten_publishes_only_what_passes_its_blocking_checks(backend: Backend, capsys) -> None:
    land(backend.data_dir, DAY, [load_seed_connection()])
    command = ["flatten", "--date", DAY.isoformat(), "--data-dir", backend.location]
    assert main(command) == 0
    before = partition_bytes(backend.data_dir, DAY)
    bad = load_seed_connection()
    bad["customer_account_id"] = 777
    bad["customer_code"] = "NOSTATE"
    bad["billing"]["billing_addresses"][0]["billing_state"] = ""
    land(backend.data_dir, DAY, [load_seed_connection(), bad])
    capsys.readouterr()
    assert main(command) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: blocking check(s) failed on the flatten of 2026-11-02: addresses.state_for_us")
    assert "customer_account_id 777 (NOSTATE)" in error and str(quarantine_dir(backend.data_dir, KEY)) in error
    assert "the models are unchanged" in error
    assert partition_bytes(backend.data_dir, DAY) == before
    assert staging_leftovers(backend.data_dir) == [] and records(backend) == []


# ---- compare-and-swap, locks and leases ---------------------------------------------------------------------------


def test_a_manifest_changed_since_staging_began_is_refused(backend: Backend) -> None:
    land(backend.data_dir, DAY, generate_connections(100, seed=1))
    flatten_snapshot(backend.data_dir, KEY)
    before = {t: published_files(backend.data_dir, t, KEY) for t in TABLES}

    def meddle(staged) -> list[str]:
        # Another writer (one ignoring the lock) replaces a manifest while this flatten is staged.
        key = layout.manifest(layout.table_partition("doors", KEY))
        manifest = json.loads(backend.store.read(key)[0])
        backend.store.write(key, json.dumps({**manifest, "meddled": True}).encode())
        return []

    with pytest.raises(PublishError, match="changed since this publication began staging"):
        flatten_snapshot(backend.data_dir, KEY, audit=meddle)
    assert {t: published_files(backend.data_dir, t, KEY) for t in TABLES} == before
    assert records(backend) == []


@pytest.fixture
def holder(backend: Backend) -> Iterator[subprocess.Popen[str]]:
    """Another process holding the date's lock."""
    with held_elsewhere(backend, KEY) as process:
        yield process


def test_a_second_writer_of_the_date_gets_one_line_and_a_dead_holders_lock_is_taken(backend: Backend, holder) -> None:
    land(backend.data_dir, date(2026, 11, 3), generate_connections(5, seed=1))
    with pytest.raises(SnapshotBusy, match=rf"^snapshot 2026-11-02 is busy: pid {holder.pid} on "):
        with snapshot_lock(backend.data_dir, KEY):
            pass
    for command in ("flatten", "fetch"):
        argv = [sys.executable, "-m", "joor_pipeline.cli", command, "--date", DAY.isoformat()]
        argv += ["--data-dir", backend.location, *(["--allow-backdated"] if command == "fetch" else [])]
        done = subprocess.run(
            argv,
            env={**backend.env, "JOOR_ENVIRONMENT": "builtin"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert done.returncode == 1 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
        assert errors[0].startswith(f"error: snapshot {DAY} is busy: pid {holder.pid} on ")
        assert backend.secret not in done.stderr
    flatten_snapshot(backend.data_dir, snap(date(2026, 11, 3)))  # another date is not held up
    holder.kill()
    holder.wait()
    backend.expire_dead_leases()  # its life passed: on local disk the kernel freed the flock at the kill
    next_run_starts(backend)  # taken over (an object store's lease: by compare-and-swap, with one warning)


def test_the_lock_is_reentrant_within_a_process_and_not_kept_by_a_forked_child(backend: Backend) -> None:
    import multiprocessing

    context = multiprocessing.get_context("fork")
    ready, release = context.Event(), context.Event()

    def child() -> None:
        ready.set()
        release.wait(30)

    with snapshot_lock(backend.data_dir, KEY), snapshot_lock(backend.data_dir, KEY):
        process = context.Process(target=child)
        process.start()
        ready.wait(30)
    try:
        with snapshot_lock(backend.data_dir, KEY):  # the child still runs, yet the lock is free
            pass
    finally:
        release.set()
        process.join(30)
    if backend.lease_seconds is not None:
        assert backend.objects(layout.LOCKS) == []  # a released lease is deleted


def test_a_junk_lock_object_is_taken_over_with_one_warning(backend: Backend, caplog) -> None:
    land(backend.data_dir, DAY, generate_connections(10, seed=1))
    backend.store.write(layout.lock(KEY), b"\x00 not a lock record")
    with caplog.at_level(logging.WARNING, logger="joor_pipeline.storage"):
        flatten_snapshot(backend.data_dir, KEY)
    warnings = [r.getMessage() for r in caplog.records if "not a lock record" in r.getMessage()]
    assert len(warnings) == 1 and backend.store.uri(layout.lock(KEY)) in warnings[0]
    damaged = backend.objects(layout.DAMAGED)
    assert len(damaged) == 1 and backend.store.read(damaged[0])[0] == b"\x00 not a lock record"


def test_junk_in_the_journals_is_set_aside_with_one_warning_each_and_blocks_nothing(backend: Backend, caplog) -> None:
    land(backend.data_dir, DAY, generate_connections(10, seed=1))
    junk = {
        f"{layout.JOURNALS}/notes.txt": b"hello",
        layout.journal("0" * 32): b'{"publication_id": "truncated',
        layout.pending("1" * 32): b'{"publication_id": "' + b"1" * 32 + b'", "account": "default"}',
    }
    for key, data in junk.items():
        backend.store.write(key, data)
    with caplog.at_level(logging.WARNING, logger="joor_pipeline.storage"):
        flatten_snapshot(backend.data_dir, KEY)
    warnings = [r.getMessage() for r in caplog.records if "set it aside" in r.getMessage()]
    assert len(warnings) == 3 and all(any(backend.store.uri(key) in w for w in warnings) for key in junk)
    assert records(backend) == []
    assert sorted(backend.store.read(key)[0] for key in backend.objects(layout.DAMAGED)) == sorted(junk.values())
    assert publication_id(backend.data_dir, KEY) is not None


# ---- a kill at every write ----------------------------------------------------------------------------------------

#: Runs the CLI on a store that SIGKILLs the process as it starts its KILL_AT_PUT-th write (locks' own writes not
#: counted); KILL_AT_PUT=0 never kills and prints how many writes there were.
KILLER = r"""
import atexit, os, signal, sys, threading
from pathlib import Path
from joor_pipeline.config import check_data_dir
from joor_pipeline.storage import factory

limit, count, guard = int(os.environ["KILL_AT_PUT"]), 0, threading.Lock()
WRITES = ("write", "upload", "create", "swap", "delete")


class KillingStore:
    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if name not in WRITES:
            return attr

        def write(first, *rest):
            global count
            keys = list(first) if name == "delete" else [first]
            if [key for key in keys if not key.startswith(("_work/locks/", "_work/damaged/"))]:
                with guard:
                    count += 1
                    if count == limit:
                        os.kill(os.getpid(), signal.SIGKILL)
            return attr(keys if name == "delete" else first, *rest)

        return write


data_dir = check_data_dir(Path(sys.argv[sys.argv.index("--data-dir") + 1]))
factory.use_store(data_dir, KillingStore(factory.store_of(data_dir)))
atexit.register(lambda: print(f"puts={count}", file=sys.stderr))
from joor_pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


def killed_at(backend: Backend, command: list[str], put: int, **env: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-c", KILLER, *command, "--date", DAY.isoformat(), "--data-dir", backend.location]
    # A long lease, which the writer never loses before its kill however loaded the machine; once it is dead, the
    # test expires it (backend.expire_dead_leases) where the next run would wait for its life to pass.
    environment = {**backend.env, **env, "KILL_AT_PUT": str(put), "JOOR_STORE_LEASE_SECONDS": DEAD_WRITER_LEASE}
    return subprocess.run(argv, env=environment, capture_output=True, text=True, timeout=300)


def writes_of(done: subprocess.CompletedProcess[str]) -> int:
    assert done.returncode == 0, done.stderr
    return int(done.stderr.rsplit("puts=", 1)[1].split()[0])


def test_a_flatten_killed_at_every_write_is_recovered_to_exactly_old_or_new(backend: Backend) -> None:
    """Killed at each write (on an emulator, the first and the last of each step): every table is whole, all the
    old ones or, from the commit point on, the new ones once the next run recovered; nothing else is left."""
    land(backend.data_dir, DAY, generate_connections(150, seed=1))
    flatten_snapshot(backend.data_dir, KEY)
    land(backend.data_dir, DAY, generate_connections(230, seed=2))
    total = writes_of(killed_at(backend, ["flatten"], 0))
    # The pending record, each table's new file and new manifest, the journal (the commit point), a swap per
    # table, then the pending record, the journal and the old files deleted.
    tables = len(TABLES)
    commit = 1 + 2 * tables + 1
    assert total == commit + tables + 3
    every = range(1, total + 1)
    steps = {1, 2, 1 + tables, 2 + tables, commit - 1, commit, commit + 1, commit + tables // 2, commit + tables}
    for put in sorted(steps | {total - 2, total - 1, total}) if backend.emulated else every:
        baseline = publication_id(backend.data_dir, KEY)
        killed = killed_at(backend, ["flatten"], put)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        backend.expire_dead_leases()
        ids = table_ids(backend)  # every table whole, old or new
        switched = sum(value != baseline for value in ids.values())
        assert switched == (0 if put <= commit else min(put - commit - 1, tables)), put
        next_run_starts(backend)
        after = set(table_ids(backend).values())
        assert len(after) == 1 and (after == {baseline}) == (put <= commit), put
        referenced_only(backend)
        assert records(backend) == [] and staging_leftovers(backend.data_dir) == [], put
    assert flatten_snapshot(backend.data_dir, KEY).rows["connections"] == 230  # the next ordinary run goes through


def test_a_fetch_killed_at_every_write_is_recovered_to_exactly_old_or_new(backend: Backend) -> None:
    land(backend.data_dir, DAY, generate_connections(150, seed=1))
    sandbox = {"JOOR_ENVIRONMENT": "builtin", "JOOR_SANDBOX_CONNECTIONS": "250"}
    command = ["fetch", "--allow-backdated"]
    counted = killed_at(backend, command, 0, **sandbox)
    total = writes_of(counted)
    assert backend.secret not in counted.stdout + counted.stderr
    pages = read_manifest(backend.data_dir, KEY)["page_count"]
    commit = 1 + pages + 1 + 1  # pending record, every page, the staged manifest, the journal
    assert total == commit + 1 + 3
    for put in range(1, total + 1):
        baseline = read_manifest(backend.data_dir, KEY)["publication_id"]
        killed = killed_at(backend, command, put, **sandbox)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        backend.expire_dead_leases()
        # Until the swap, readers see the previous snapshot, whole; after it, the new one, whole.
        assert sum(len(c) for _entry, c, _log in iter_raw_pages(backend.data_dir, KEY)) == 250
        next_run_starts(backend)
        assert (read_manifest(backend.data_dir, KEY)["publication_id"] == baseline) == (put <= commit), put
        referenced_only(backend)
        assert records(backend) == [] and staging_leftovers(backend.data_dir) == [], put


def test_a_flatten_killed_after_its_commit_point_is_completed_by_the_next_flatten(backend: Backend) -> None:
    land(backend.data_dir, DAY, generate_connections(100, seed=1))
    first = flatten_snapshot(backend.data_dir, KEY).publication_id
    killed = killed_at(backend, ["flatten"], 1 + 2 * len(TABLES) + 1 + 5)  # four tables swapped, then killed
    assert killed.returncode == -signal.SIGKILL
    assert len(records(backend)) == 2  # its pending record and its journal
    backend.expire_dead_leases()
    deadline = time.monotonic() + 60
    while True:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "joor_pipeline.cli",
                "flatten",
                "--date",
                DAY.isoformat(),
                "--data-dir",
                backend.location,
            ],
            env=backend.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if "is busy" not in done.stderr or time.monotonic() > deadline:  # a lease lives on after its holder
            break
        time.sleep(0.5)
    assert done.returncode == 0, done.stderr
    assert "recovered the interrupted publication" in done.stderr
    assert publication_id(backend.data_dir, KEY) not in (None, first)
    referenced_only(backend)
    assert records(backend) == [] and staging_leftovers(backend.data_dir) == []


@pytest.fixture
def slow_sandbox_env(backend: Backend) -> Iterator[tuple[object, dict[str, str]]]:
    with run_sandbox(connections=95, seed=9, rate_limit_credits=0) as sb:
        env = {**backend.env, "JOOR_BASE_URL": sb.base_url, "JOOR_API_TOKEN": sb.config.api_token}
        yield sb, {**env, "JOOR_PAGE_SIZE": "20"}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_fetch_stopped_midway_leaves_the_old_snapshot_and_no_staging(backend: Backend, slow_sandbox_env, sig) -> None:
    sb, env = slow_sandbox_env
    command = [sys.executable, "-m", "joor_pipeline.cli", "fetch", "--date", DAY.isoformat(), "--allow-backdated"]
    command += ["--data-dir", backend.location]
    first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    old = read_manifest(backend.data_dir, KEY)
    # One page at a time, half a second each: the signal lands seconds before the fetch could finish.
    sb.faults.latency_ms = 500  # type: ignore[attr-defined]
    with subprocess.Popen(command, env={**env, "JOOR_CONCURRENCY": "1"}, stderr=subprocess.PIPE, text=True) as proc:
        try:
            deadline = time.monotonic() + 30
            while not list((backend.data_dir / layout.STAGING).glob("*/new/**/page-*")):
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
            proc.send_signal(sig)
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert read_manifest(backend.data_dir, KEY) == old
    if sig == signal.SIGTERM:  # SIGTERM unwinds through the finally blocks: nothing is left at all
        assert code == 128 + signal.SIGTERM
        assert staging_leftovers(backend.data_dir) == []
    else:  # what a killed fetch leaves in its local staging (its owner is gone) the next run's recovery deletes
        assert code == -signal.SIGKILL
        assert staging_leftovers(backend.data_dir)
        assert recover(backend.data_dir)
        assert staging_leftovers(backend.data_dir) == []
    assert read_manifest(backend.data_dir, KEY) == old and records(backend) == []


def test_a_live_owners_staging_is_left_alone(backend: Backend) -> None:
    with publication(backend.data_dir, KEY, "raw", [layout.raw_snapshot(KEY)]) as pub:
        pub.staged("raw/connections/x").mkdir(parents=True)
        assert recover(backend.data_dir) == []
        assert pub.root.is_dir()
    assert staging_leftovers(backend.data_dir) == []


# ---- local disk: what only a directory can have --------------------------------------------------------------------


def test_legacy_partitions_get_their_manifests_once_and_a_manifest_less_folder_later_is_ignored(
    local_backend: Backend, caplog
) -> None:
    data_dir = local_backend.data_dir
    land(data_dir, DAY, generate_connections(30, seed=5))
    report = flatten_snapshot(data_dir, KEY)
    for table in TABLES:  # as a version before manifests wrote it: part-00000.parquet, no manifest, no marker
        folder = data_dir / layout.table_partition(table, KEY)
        (folder / f"part-00000-{report.publication_id}.parquet").rename(folder / "part-00000.parquet")
        (folder / layout.MANIFEST).unlink()
    (data_dir / layout.LAYOUT_MARKER).unlink()
    assert published_dates(data_dir, account="default") == []  # not data until migrated
    build_warehouse(data_dir)  # a build migrates first
    assert published_dates(data_dir, account="default") == [DAY]
    assert [Path(f).name for f in published_files(data_dir, "connections", KEY)] == ["part-00000.parquet"]
    assert (publication_id(data_dir, KEY) or "").startswith("legacy-")
    assert query(data_dir, "select count(*) from dim_retailers") == [(30,)]
    # From now on a folder without a manifest is a stray: ignored (with one warning), never migrated into data.
    later = data_dir / "parquet" / "connections" / "account=default" / "snapshot_date=2026-11-09"
    later.mkdir()
    shutil.copy(data_dir / layout.table_partition("connections", KEY) / "part-00000.parquet", later)
    build_warehouse(data_dir)
    assert published_partitions(data_dir) == [("default", DAY)]
    assert not (later / layout.MANIFEST).exists()


def test_a_hive_glob_reader_sees_only_published_folders(local_backend: Backend) -> None:
    import duckdb

    data_dir = local_backend.data_dir
    land(data_dir, DAY, generate_connections(40, seed=1))
    flatten_snapshot(data_dir, KEY)
    land(data_dir, DAY, generate_connections(60, seed=2))
    with stage_snapshot(data_dir, KEY) as staged:
        staged.quarantine({"failed_checks": ["connections.example"]})
    glob = str(data_dir / "parquet" / "connections" / "**" / "*.parquet")
    con = duckdb.connect()
    assert con.execute("select count(*) from read_parquet(?, hive_partitioning = true)", [glob]).fetchone() == (40,)
    con.close()


def test_the_data_folders_hold_nothing_unpublished_after_a_kill(local_backend: Backend) -> None:
    """Files of a killed publication sit beside the live ones until the next run; readers never list folders."""
    land(local_backend.data_dir, DAY, generate_connections(60, seed=1))
    flatten_snapshot(local_backend.data_dir, KEY)
    killed = killed_at(local_backend, ["flatten"], 1 + len(TABLES) + 1)  # every new file uploaded, no manifest yet
    assert killed.returncode == -signal.SIGKILL
    folder = local_backend.data_dir / layout.table_partition("connections", KEY)
    assert len(list(folder.glob("part-*.parquet"))) == 2  # the live file and the killed run's
    assert partition_rows(published_files(local_backend.data_dir, "connections", KEY)) == 60
    next_run_starts(local_backend)
    assert len(list(folder.glob("part-*.parquet"))) == 1


# ---- the store's configuration ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "0", "1e308"])
def test_an_absurd_lease_life_is_a_configuration_error_on_every_data_dir(
    backend: Backend, value: str, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("JOOR_STORE_LEASE_SECONDS", value)
    assert main(["flatten", "--date", DAY.isoformat(), "--data-dir", backend.location]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: invalid JOOR configuration: JOOR_STORE_LEASE_SECONDS must be")
    assert len(error.splitlines()) == 1


def test_a_data_dir_that_cannot_be_made_is_a_configuration_error(capsys) -> None:
    for location in ("/proc/nope", "/proc/self/nope/data"):
        assert main(["flatten", "--date", DAY.isoformat(), "--data-dir", location]) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith(f"error: --data-dir {location} ") and len(error.splitlines()) == 1, error

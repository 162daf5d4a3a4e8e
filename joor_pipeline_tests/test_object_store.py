"""``JOOR_DATA_DIR=s3://bucket/prefix`` against a real S3-compatible HTTP server on 127.0.0.1.

The server is moto's (``moto[server]``, a dev dependency): an S3 *emulator*, run here as a separate process that
the tests talk to over HTTP through botocore and s3fs exactly as they would to S3. It enforces conditional
writes (``If-Match`` / ``If-None-Match``), which the publication's compare-and-swap relies on.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path, PurePosixPath

import duckdb
import pytest

from joor_pipeline.config import SETTINGS, check_data_dir
from joor_pipeline.flatten import TABLES
from joor_pipeline.sandbox import generate_connections
from joor_pipeline.storage import objectstore
from joor_pipeline.storage.locks import SnapshotBusy, snapshot_lock
from joor_pipeline.storage.parquet import (
    flatten_snapshot,
    partition_rows,
    publication_id,
    published_dates,
    published_files,
)
from joor_pipeline.storage.publish import PublishError, recover
from joor_pipeline.storage.raw import iter_raw_pages, raw_snapshot_exists, read_manifest
from joor_pipeline_tests.raw_fixtures import land, staging_leftovers
from joor_pipeline_tests.s3_emulator import EmulatorDidNotStart, moto_s3_server

DAY = date(2026, 11, 2)
SECRET = "s3cr3t-value-never-shown"


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 emulator as a real HTTP server on loopback, for the module."""
    try:
        with moto_s3_server(tmp_path_factory.mktemp("moto") / "server.log") as endpoint:
            yield endpoint
    except EmulatorDidNotStart as exc:
        pytest.fail(str(exc))


@dataclass
class Bucket:
    url: str
    data_dir: Path
    store: objectstore.ObjectStore
    env: dict[str, str]

    def objects(self) -> list[str]:
        return sorted(self.store.list(""))


@pytest.fixture
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Bucket:
    """A fresh bucket, the AWS variables aimed at the emulator, and the work directory bound to the URL."""
    for setting in SETTINGS:
        monkeypatch.delenv(setting.name, raising=False)
    env = {
        "AWS_ACCESS_KEY_ID": "test-key-id",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_endpoint,
        "JOOR_WORK_DIR": str(tmp_path / "work"),
        "JOOR_STORE_LEASE_SECONDS": "3",
        "JOOR_FLATTEN_WORKERS": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bucket = f"joor-{uuid.uuid4().hex[:12]}"
    url = f"s3://{bucket}/data"
    store = objectstore.ObjectStore(url)
    store.client.create_bucket(Bucket=bucket)
    data_dir = check_data_dir(Path(url))
    assert data_dir == (tmp_path / "work").absolute()
    return Bucket(url, data_dir, store, {**os.environ, **env})


def _referenced_only(bucket: Bucket, day: date) -> None:
    """Every object under the date's targets is its manifest or listed by it: nothing stray, nothing missing."""
    for target in objectstore.date_targets(day):
        manifest = objectstore.read_manifest(bucket.store, target)
        listed = set(objectstore._listed(manifest or {}))
        present = {PurePosixPath(key).name for key in bucket.store.list(target)}
        expected = {objectstore.MANIFEST, *listed} if manifest else set()
        assert present == expected, target


def test_other_schemes_and_bad_urls_are_one_clear_error(tmp_path: Path) -> None:
    from joor_pipeline.config import ConfigError

    for url, said in (("gs://bucket/x", "only s3:// object stores"), ("s3://B_ad/x", "not a valid s3://")):
        with pytest.raises(ConfigError, match=f"JOOR_DATA_DIR: .*{said}"):
            check_data_dir(Path(url))
    assert objectstore.parse_store_url("s3://bucket/a/b/") == "s3://bucket/a/b"
    assert objectstore.parse_store_url(str(tmp_path)) is None


# ---- the store, the compare-and-swap publication, the readers ----------------------------------------------------


def test_raw_and_parquet_are_published_by_manifest_swap_and_read_back(s3: Bucket) -> None:
    land(s3.data_dir, DAY, generate_connections(150, seed=1))
    first = read_manifest(s3.data_dir, DAY)
    assert raw_snapshot_exists(s3.data_dir, DAY)
    # The pages carry the publication id in their names; the manifest is in the bucket, nothing published locally.
    assert all(page["file"].endswith(f"-{first['publication_id']}.json") for page in first["pages"])
    assert not (s3.data_dir / "raw").exists()
    assert sum(len(c) for _entry, c, _log in iter_raw_pages(s3.data_dir, DAY)) == 150

    report = flatten_snapshot(s3.data_dir, DAY, workers=1)
    assert not (s3.data_dir / "parquet").exists()
    assert published_dates(s3.data_dir) == [DAY]
    files = published_files(s3.data_dir, "connections", DAY)
    assert files and all(isinstance(f, str) and f.startswith(f"{s3.url}/parquet/connections/") for f in files)
    assert partition_rows(files) == report.rows["connections"] == 150
    assert publication_id(s3.data_dir, DAY) == report.publication_id
    _referenced_only(s3, DAY)

    # A file dropped into the partition by hand is never read: readers go through the manifest.
    s3.store.put(
        PurePosixPath("parquet/connections/account=default/snapshot_date=2026-11-02/part-00009.parquet"), b"junk"
    )
    assert partition_rows(published_files(s3.data_dir, "connections", DAY)) == 150

    # Re-land and re-flatten: new ids, the old objects deleted after the swap.
    land(s3.data_dir, DAY, generate_connections(230, seed=2))
    assert read_manifest(s3.data_dir, DAY)["publication_id"] != first["publication_id"]
    second = flatten_snapshot(s3.data_dir, DAY, workers=1)
    assert partition_rows(published_files(s3.data_dir, "connections", DAY)) == 230
    assert publication_id(s3.data_dir, DAY) == second.publication_id != report.publication_id
    _referenced_only(s3, DAY)  # the old files and the stray one are gone
    assert not [key for key in s3.objects() if key.startswith("_work/journals/")]


def test_a_manifest_changed_since_staging_began_is_refused(s3: Bucket) -> None:
    land(s3.data_dir, DAY, generate_connections(100, seed=1))
    flatten_snapshot(s3.data_dir, DAY, workers=1)
    before = {t: published_files(s3.data_dir, t, DAY) for t in TABLES}

    def meddle(staged) -> list[str]:
        # Another writer (one ignoring the lease) replaces a manifest while this flatten is staged.
        target = Path(f"parquet/doors/account=default/snapshot_date={DAY}")
        manifest = objectstore.read_manifest(s3.store, target)
        assert manifest is not None
        s3.store.put(PurePosixPath(target) / "_manifest.json", json.dumps({**manifest, "meddled": True}).encode())
        return []

    with pytest.raises(PublishError, match="changed since this publication began staging"):
        flatten_snapshot(s3.data_dir, DAY, workers=1, audit=meddle)
    assert {t: published_files(s3.data_dir, t, DAY) for t in TABLES} == before
    assert not [key for key in s3.objects() if key.startswith("_work/journals/")]


def test_the_date_lease_is_exclusive_and_taken_over_once_expired(s3: Bucket) -> None:
    rel = "_work/locks/account=default/snapshot_date=2026-11-02.lock"
    s3.store.put(
        rel, json.dumps({"pid": 4242, "host": "elsewhere", "command": "x", "expires_at": time.time() + 600}).encode()
    )
    with pytest.raises(SnapshotBusy, match=r"pid 4242 on elsewhere .* holds the lease s3://"):
        with snapshot_lock(s3.data_dir, DAY):
            pass
    s3.store.put(rel, json.dumps({"pid": 4242, "host": "elsewhere", "expires_at": time.time() - 1}).encode())
    with snapshot_lock(s3.data_dir, DAY):
        held = s3.store.read_json(rel)
        assert held is not None and held[0]["pid"] == os.getpid()
    assert s3.store.read_json(rel) is None  # released


# ---- the whole pipeline: fetch -> flatten -> checks -> models, through the CLI and Dagster -----------------------


def test_run_fetches_flattens_checks_and_builds_on_the_bucket(s3: Bucket, monkeypatch, capsys, tmp_path) -> None:
    from joor_pipeline.cli import main
    from joor_pipeline.warehouse import read

    monkeypatch.setenv("JOOR_ENVIRONMENT", "builtin")
    monkeypatch.setenv("JOOR_SANDBOX_CONNECTIONS", "140")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--data-dir", s3.url]) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err

    keys = s3.objects()
    assert "joor.duckdb" in keys
    today = published_dates(s3.data_dir)[-1]
    assert all(f"parquet/{table}/account=default/snapshot_date={today}/_manifest.json" in keys for table in TABLES)
    assert not [key for key in keys if key.startswith("_work/journals/") or key.startswith("_work/locks/")]
    _referenced_only(s3, today)
    for key in keys:  # no credential in any object written (lease holders, manifests, the warehouse)
        got = s3.store.get(key)
        assert got is not None and SECRET.encode() not in got[0], key
    # Nothing published on the worker's disk: the data is in the bucket.
    assert not (s3.data_dir / "raw").exists() and not (s3.data_dir / "parquet").exists()

    # Another machine (a fresh work directory) reads the tables and the models straight from the bucket.
    monkeypatch.setenv("JOOR_WORK_DIR", str(tmp_path / "other-work"))
    other = check_data_dir(Path(s3.url))
    assert other != s3.data_dir
    assert len(read("connections", other)) == 140
    retailers = read("dim_retailers", other)
    assert len(retailers) == 140

    # An analyst attaches the published object over httpfs, which this machine cannot install (DuckDB 2.0 offline):
    # the same bytes, fetched here through s3fs, are a complete warehouse whose models answer.
    copy = tmp_path / "analyst.duckdb"
    copy.write_bytes(s3.store.fs.cat_file(f"{s3.url.removeprefix('s3://')}/joor.duckdb"))
    con = duckdb.connect()
    con.register_filesystem(s3.store.fs)  # the raw-table views read the bucket's Parquet
    con.execute(f"attach '{copy}' as joor (read_only)")
    assert con.execute("select count(*) from joor.main.dim_retailers").fetchone() == (140,)
    files = published_files(other, "connections", today)
    assert con.execute("select count(*) from read_parquet($1)", [files]).fetchone() == (140,)
    con.close()

    # The other machine adds a date: its build starts from the bucket's warehouse (incremental, one date) and
    # publishes it back; the first machine's next read gets the new object.
    from joor_pipeline.warehouse import DATABASE_FILE, build_warehouse, database_path

    earlier = date(2026, 1, 5)
    land(other, earlier, generate_connections(60, seed=3))
    flatten_snapshot(other, earlier, workers=1)
    report = build_warehouse(other)
    assert (report.full_refresh, report.refresh_dates) == (False, [earlier])
    assert objectstore.pull(s3.store, DATABASE_FILE, database_path(s3.data_dir))
    con = duckdb.connect(str(database_path(s3.data_dir)), read_only=True)
    assert con.execute("select count(*) from joor_meta.publications").fetchone() == (2,)
    con.close()


# ---- killed mid-write ----------------------------------------------------------------------------------------------

#: Runs the CLI, SIGKILLing itself as it starts its KILL_AT_PUT-th write of data to the store (lease renewals not
#: counted); KILL_AT_PUT=0 never kills and prints how many writes there were.
KILLER = """
import atexit, os, signal, sys, threading
from joor_pipeline.storage import objectstore
limit, count, guard = int(os.environ["KILL_AT_PUT"]), 0, threading.Lock()
original = objectstore.ObjectStore._call
def _call(self, operation, rel, **kwargs):
    global count
    if operation == "put_object" and "_work/locks/" not in str(rel):
        with guard:
            count += 1
            if count == limit:
                os.kill(os.getpid(), signal.SIGKILL)
    return original(self, operation, rel, **kwargs)
objectstore.ObjectStore._call = _call
atexit.register(lambda: print(f"puts={count}", file=sys.stderr))
from joor_pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _flatten_killed_at(s3: Bucket, put: int) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", KILLER, "flatten", "--date", DAY.isoformat(), "--data-dir", s3.url]
    env = {**s3.env, "KILL_AT_PUT": str(put)}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _state(s3: Bucket) -> dict[str, str | None]:
    """Each table's published publication id, every listed file checked readable (never half a partition)."""
    state = {}
    for table in TABLES:
        files = published_files(s3.data_dir, table, DAY)
        partition_rows(files)  # every file the manifest lists exists and is whole
        manifest = objectstore.read_manifest(s3.store, Path(f"parquet/{table}/account=default/snapshot_date={DAY}"))
        state[table] = None if manifest is None else manifest["publication_id"]
    return state


def _recover(s3: Bucket) -> None:
    """What the next run does first: take the date (once the dead writer's lease expired) and recover."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with snapshot_lock(s3.data_dir, DAY):
                recover(s3.data_dir)
                objectstore.recover(s3.store, s3.data_dir, DAY)
            return
        except SnapshotBusy:
            assert time.monotonic() < deadline, "the killed writer's lease never expired"
            time.sleep(0.2)


def test_a_flatten_killed_mid_upload_or_mid_swap_is_exactly_old_or_new_and_recovered(s3: Bucket) -> None:
    land(s3.data_dir, DAY, generate_connections(150, seed=1))
    old_id = flatten_snapshot(s3.data_dir, DAY, workers=1).publication_id
    land(s3.data_dir, DAY, generate_connections(230, seed=2))

    counted = _flatten_killed_at(s3, 0)
    assert counted.returncode == 0, counted.stderr
    total = int(counted.stderr.rsplit("puts=", 1)[1].split()[0])
    new_id = publication_id(s3.data_dir, DAY)
    assert new_id != old_id
    # Per table: one upload and one staged manifest, then the journal, then one swap each.
    journal = 2 * len(TABLES) + 1
    assert total == journal + len(TABLES)

    for put in (1, len(TABLES) + 1, journal, journal + 1, journal + 5, total):
        baseline = publication_id(s3.data_dir, DAY)
        killed = _flatten_killed_at(s3, put)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        state = _state(s3)
        if put <= journal:  # before the commit point: exactly the old partitions
            assert set(state.values()) == {baseline}, put
        else:  # after it: each table whole, the ones swapped so far new, until the recovery finishes the switch
            assert len(set(state.values())) <= 2, put
            assert sum(value != baseline for value in state.values()) == put - journal - 1, put
        _recover(s3)
        after = set(_state(s3).values())
        assert len(after) == 1, put
        assert (after == {baseline}) == (put <= journal), put
        _referenced_only(s3, DAY)
        assert not [key for key in s3.objects() if key.startswith("_work/journals/")]
        assert staging_leftovers(s3.data_dir) == []

    # The next ordinary run goes through.
    assert flatten_snapshot(s3.data_dir, DAY, workers=1).rows["connections"] == 230


def test_a_fetch_killed_before_or_after_its_commit_point_leaves_the_old_pages_or_is_completed(s3: Bucket) -> None:
    land(s3.data_dir, DAY, generate_connections(150, seed=1))
    env = {**s3.env, "JOOR_ENVIRONMENT": "builtin", "JOOR_SANDBOX_CONNECTIONS": "250"}
    command = [sys.executable, "-c", KILLER, "fetch", "--date", DAY.isoformat(), "--allow-backdated"]
    command += ["--data-dir", s3.url]

    def fetch(put: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, env={**env, "KILL_AT_PUT": str(put)}, capture_output=True, text=True, timeout=300
        )

    counted = fetch(0)
    assert counted.returncode == 0, counted.stderr
    assert SECRET not in counted.stdout + counted.stderr
    pages = read_manifest(s3.data_dir, DAY)["page_count"]
    total = int(counted.stderr.rsplit("puts=", 1)[1].split()[0])
    # Every page, the staged manifest, the journal (the commit point), then the manifest swap: written last.
    journal = pages + 2
    assert total == journal + 1

    for put in (1, journal, total):
        baseline = read_manifest(s3.data_dir, DAY)["publication_id"]
        killed = fetch(put)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        # Until the swap, readers see the previous snapshot, whole (every page it lists is there and matches).
        assert read_manifest(s3.data_dir, DAY)["publication_id"] == baseline
        assert sum(len(c) for _entry, c, _log in iter_raw_pages(s3.data_dir, DAY)) == 250
        _recover(s3)
        after = read_manifest(s3.data_dir, DAY)["publication_id"]
        assert (after == baseline) == (put <= journal), put
        _referenced_only(s3, DAY)
        assert staging_leftovers(s3.data_dir) == []


def test_a_missing_bucket_is_one_line_naming_it_and_no_secret(s3: Bucket, monkeypatch, capsys, tmp_path) -> None:
    from joor_pipeline.cli import main

    monkeypatch.setenv("JOOR_ENVIRONMENT", "builtin")
    monkeypatch.setenv("JOOR_SANDBOX_CONNECTIONS", "5")
    monkeypatch.setenv("JOOR_WORK_DIR", str(tmp_path / "elsewhere"))
    missing = f"s3://no-such-{uuid.uuid4().hex[:8]}/data"
    assert main(["fetch", "--data-dir", missing]) == 1
    captured = capsys.readouterr()
    error = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and missing.split("/")[2] in error[0] and "NoSuchBucket" in error[0], captured.err
    assert SECRET not in captured.out + captured.err

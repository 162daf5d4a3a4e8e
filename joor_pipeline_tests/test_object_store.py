"""``JOOR_DATA_DIR=s3://bucket/prefix`` against moto's S3 emulator on 127.0.0.1: what only an object store has (its
URL, its work directory, the whole run through Dagster and an analyst reading the bucket). The publication itself is
tested on every backend alike in ``test_publication``."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import pytest

from joor_pipeline import layout
from joor_pipeline.config import check_data_dir
from joor_pipeline.flatten import TABLES
from joor_pipeline.flatten.runner import flatten_snapshot
from joor_pipeline.joor.errors import ConfigError
from joor_pipeline.layout import SnapshotKey
from joor_pipeline.sandbox import generate_connections
from joor_pipeline.storage.access import pull
from joor_pipeline.storage.factory import parse_location
from joor_pipeline.storage.parquet import partition_rows, published_dates, published_files
from joor_pipeline.storage.raw import raw_snapshot_exists
from joor_pipeline_tests.backends import SECRET, Backend
from joor_pipeline_tests.raw_fixtures import land


def test_other_schemes_and_bad_urls_are_one_clear_error(tmp_path: Path) -> None:
    for url, said in (
        ("gs2://bucket/x", "not gs2://"),
        ("s3://B_ad/x", "not a valid s3://"),
        ("s3://bucket/a/../c", "'..'"),
    ):
        with pytest.raises(ConfigError, match=f"^JOOR_DATA_DIR: .*{said}"):
            check_data_dir(Path(url))
    assert parse_location("s3://bucket/a/b/") == "s3://bucket/a/b"
    assert parse_location(str(tmp_path)) is None and parse_location("C:/data") is None


def test_run_fetches_flattens_checks_and_builds_on_the_bucket(
    s3_backend: Backend, monkeypatch, capsys, tmp_path
) -> None:
    from joor_pipeline.cli import main
    from joor_pipeline.warehouse import DATABASE_FILE, build_warehouse, database_path, read

    s3 = s3_backend
    monkeypatch.setenv("JOOR_ENVIRONMENT", "builtin")
    monkeypatch.setenv("JOOR_SANDBOX_CONNECTIONS", "140")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--data-dir", s3.location]) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err

    keys = s3.objects()
    assert "joor.duckdb" in keys
    today = published_dates(s3.data_dir, account="default")[-1]
    key = SnapshotKey("default", today)
    assert all(layout.manifest(layout.table_partition(table, key)) in keys for table in TABLES)
    assert not [k for k in keys if k.startswith((layout.JOURNALS, layout.LOCKS))]
    for k in keys:  # no credential in any object written (lease holders, manifests, the warehouse)
        found = s3.store.read(k)
        assert found is not None and SECRET.encode() not in found[0], k
    # Nothing published on the worker's disk: the data is in the bucket.
    assert not (s3.data_dir / "raw").exists() and not (s3.data_dir / "parquet").exists()

    # A table manifest truncated by hand: `run` of that date rewrites it (the swap never needs to parse it).
    manifest = layout.manifest(layout.table_partition("doors", key))
    s3.store.write(manifest, s3.store.read(manifest)[0][:30])
    assert main(["run", "--data-dir", s3.location]) == 0, capsys.readouterr().err
    assert partition_rows(published_files(s3.data_dir, "doors", key)) > 0

    # Another machine (a fresh work directory) reads the tables and the models straight from the bucket.
    monkeypatch.setenv("JOOR_WORK_DIR", str(tmp_path / "other-work"))
    other = check_data_dir(Path(s3.location))
    assert other != s3.data_dir
    assert len(read("connections", other)) == 140
    assert len(read("dim_retailers", other)) == 140

    # An analyst attaches the published object over httpfs, which this machine cannot install (DuckDB offline):
    # the same bytes, fetched here, are a complete warehouse whose models answer.
    copy = tmp_path / "analyst.duckdb"
    copy.write_bytes(s3.store.read("joor.duckdb")[0])  # type: ignore[index]
    con = duckdb.connect()
    s3.store.register(con)  # the raw-table views read the bucket's Parquet
    con.execute(f"attach '{copy}' as joor (read_only)")
    assert con.execute("select count(*) from joor.main.dim_retailers").fetchone() == (140,)
    files = published_files(other, "connections", key)
    assert con.execute("select count(*) from read_parquet($1)", [files]).fetchone() == (140,)
    con.close()

    # The other machine adds a date: its build starts from the bucket's warehouse (incremental, one date) and
    # publishes it back; the first machine's next read gets the new object.
    earlier = date(2026, 1, 5)
    land(other, earlier, generate_connections(60, seed=3))
    flatten_snapshot(other, SnapshotKey("default", earlier), workers=1)
    report = build_warehouse(other)
    assert (report.full_refresh, report.refresh_dates) == (False, [earlier])
    assert pull(s3.data_dir, DATABASE_FILE, database_path(s3.data_dir))
    con = duckdb.connect(str(database_path(s3.data_dir)), read_only=True)
    assert con.execute("select count(*) from joor_meta.publications").fetchone() == (2,)
    con.close()


def test_a_mistyped_bucket_is_one_line_and_binds_nothing(s3_backend: Backend, monkeypatch, capsys, tmp_path) -> None:
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
    # The URL fixed, the same work directory serves the right bucket: the failed one never bound it.
    assert main(["fetch", "--data-dir", s3_backend.location]) == 0, capsys.readouterr().err
    fixed = check_data_dir(Path(s3_backend.location))
    assert fixed == (tmp_path / "elsewhere").absolute()
    assert raw_snapshot_exists(fixed, SnapshotKey("default", datetime.now(UTC).date()))
    # A work directory that serves a bucket is refused to another one (their scratch must not mix).
    monkeypatch.setenv("JOOR_WORK_DIR", str(s3_backend.data_dir))
    with pytest.raises(ConfigError, match="belongs to s3://"):
        check_data_dir(Path(f"s3://other-{uuid.uuid4().hex[:8]}"))

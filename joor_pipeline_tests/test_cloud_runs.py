"""The whole pipeline on every backend (local disk, S3 on moto, Azure on Azurite, GCS on a fake): `joor-pipeline run`
over two accounts through Dagster, then what an analyst reads; and what only a URL has (its work directory, a
mistyped bucket, a missing optional package)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
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
from joor_pipeline_tests.backends import Backend
from joor_pipeline_tests.raw_fixtures import land

CLI = str(Path(sys.executable).parent / "joor-pipeline")
ACCOUNTS = """
[accounts.brand_a]
environment = "builtin"
sandbox_connections = 30
sandbox_seed = 1

[accounts.brand_b]
environment = "builtin"
sandbox_connections = 12
sandbox_seed = 2
"""


def cli(backend: Backend, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The installed ``joor-pipeline`` in a process of its own, as an operator runs it, on ``backend``."""
    return subprocess.run(
        [CLI, *args, "--data-dir", backend.location],
        env={**backend.env, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def quiet(done: subprocess.CompletedProcess[str], backend: Backend) -> str:
    """What the process printed, checked: no credential, and none of the DuckDB module's 'nanobind: leaked' lines
    at exit."""
    output = done.stdout + done.stderr
    assert backend.secret not in output
    assert "nanobind" not in output and "leaked" not in output, done.stderr[-3000:]
    return output


def test_run_over_two_accounts_then_every_reader_on_each_backend(backend: Backend, tmp_path: Path, monkeypatch) -> None:
    from joor_pipeline.warehouse import DATABASE_FILE, build_warehouse, database_path, read

    accounts = tmp_path / "accounts.toml"
    accounts.write_text(ACCOUNTS, encoding="utf-8")
    env = {"JOOR_ACCOUNTS_FILE": str(accounts), "DAGSTER_HOME": str(tmp_path / "dagster")}
    monkeypatch.setenv("JOOR_ACCOUNTS_FILE", str(accounts))
    done = cli(backend, "run", **env)
    assert done.returncode == 0, done.stdout + done.stderr
    output = quiet(done, backend)
    assert "account brand_a, " in output and "account brand_b, " in output and "models: Dagster run" in output

    keys = backend.objects()
    assert "joor.duckdb" in keys
    today = published_dates(backend.data_dir, account="brand_a")[-1]
    for account in ("brand_a", "brand_b"):
        key = SnapshotKey(account, today)
        assert all(layout.manifest(layout.table_partition(table, key)) in keys for table in TABLES)
    assert not [k for k in keys if k.startswith((layout.JOURNALS, layout.DAMAGED))]
    assert not [k for k in keys if k.startswith(layout.LOCKS) and backend.emulated]  # a lease is deleted
    for k in keys:  # no credential in any object written (leases, manifests, records, the warehouse)
        found = backend.store.read(k)
        assert found is not None and backend.secret.encode() not in found[0], k
    if backend.emulated:  # nothing published on the worker's disk: the data is in the bucket
        assert not (backend.data_dir / "raw").exists() and not (backend.data_dir / "parquet").exists()

    # A table manifest truncated by hand: `run` of that date rewrites it (the swap never needs to parse it).
    key = SnapshotKey("brand_b", today)
    manifest = layout.manifest(layout.table_partition("doors", key))
    backend.store.write(manifest, backend.store.read(manifest)[0][:30])  # type: ignore[index]
    done = cli(backend, "run", "--account", "brand_b", **env)
    assert done.returncode == 0, done.stdout + done.stderr
    quiet(done, backend)
    assert partition_rows(published_files(backend.data_dir, "doors", key)) > 0

    # Another machine (a fresh work directory) reads the tables and the models by the location alone.
    monkeypatch.setenv("JOOR_WORK_DIR", str(tmp_path / "other-work"))
    other = check_data_dir(Path(backend.location))
    assert (other != backend.data_dir) == backend.emulated
    retailers = read("dim_retailers", backend.location)
    assert retailers.groupby("account").size().to_dict() == {"brand_a": 30, "brand_b": 12}
    assert len(read("connections", backend.location)) == 42
    # `joor-pipeline sql --data-dir URL`, in a process of its own, on a third machine.
    analyst = {"JOOR_WORK_DIR": str(tmp_path / "analyst"), "DAGSTER_HOME": str(tmp_path / "dagster")}
    query = "select account, count(*) as n from dim_retailers group by 1 order by 1; "
    query += "select count(*) as n from tables.connections"
    done = cli(backend, "sql", "--format", "csv", query, **analyst)
    assert done.returncode == 0, done.stderr
    assert quiet(done, backend) == "account,n\nbrand_a,30\nbrand_b,12\nn\n42\n"

    # DuckDB alone: a downloaded copy of the warehouse, whose staging views read the store's Parquet once the
    # store is registered (DuckDB cannot install its httpfs or azure extension here, offline).
    copy = tmp_path / "analyst.duckdb"
    copy.write_bytes(backend.store.read("joor.duckdb")[0])  # type: ignore[index]
    con = duckdb.connect()
    backend.store.register(con)
    con.execute(f"attach '{copy}' as joor (read_only)")
    assert con.execute("select count(*) from joor.main.dim_retailers").fetchone() == (42,)
    files = published_files(other, "connections", SnapshotKey("brand_a", today))
    assert con.execute("select count(*) from read_parquet($1)", [files]).fetchone() == (30,)
    con.close()

    # The other machine adds a date: its dbt build (reading the store through the dbt plugin) starts from the
    # store's warehouse (incremental, one date) and publishes it back; the first machine's next read gets it.
    earlier = date(2026, 1, 5)
    land(other, earlier, generate_connections(6, seed=3), account="brand_a")
    flatten_snapshot(other, SnapshotKey("brand_a", earlier), workers=1)
    report = build_warehouse(other)
    assert (report.full_refresh, report.refresh_dates) == (False, [earlier])
    assert pull(backend.data_dir, DATABASE_FILE, database_path(backend.data_dir))
    con = duckdb.connect(str(database_path(backend.data_dir)), read_only=True)
    assert con.execute("select count(*) from joor_meta.publications").fetchone() == (3,)  # (account, date)s
    con.close()


def test_other_schemes_and_bad_urls_are_one_clear_error(tmp_path: Path) -> None:
    for url, said in (
        ("gs2://bucket/x", "not gs2://"),
        ("abfs://container@account.dfs.core.windows.net/x", "write az://container/prefix, not abfs://"),
        ("s3://B_ad/x", "'B_ad' is not a valid S3 bucket name"),
        ("az://under_score/x", "not a valid Azure Blob Storage container name"),
        ("s3://bucket/a/../c", "'..'"),
    ):
        with pytest.raises(ConfigError, match=f"^JOOR_DATA_DIR: .*{said}"):
            check_data_dir(Path(url))
    assert parse_location("s3://bucket/a/b/") == "s3://bucket/a/b"
    assert parse_location("gs:/bucket/a") == "gs://bucket/a"  # what pathlib leaves of a URL
    assert parse_location(str(tmp_path)) is None and parse_location("C:/data") is None


@pytest.mark.parametrize("name", ["s3", "azure"])  # the GCS fake has every bucket
def test_a_mistyped_bucket_is_one_line_and_binds_nothing(name: str, request, monkeypatch, capsys, tmp_path) -> None:
    from joor_pipeline.cli import main
    from joor_pipeline_tests.backends import make_backend

    backend = make_backend(request, name, tmp_path / "right", monkeypatch)
    monkeypatch.setenv("JOOR_ENVIRONMENT", "builtin")
    monkeypatch.setenv("JOOR_SANDBOX_CONNECTIONS", "5")
    monkeypatch.setenv("JOOR_WORK_DIR", str(tmp_path / "elsewhere"))
    bucket = f"no-such-{uuid.uuid4().hex[:8]}"
    missing = backend.location.replace(backend.location.split("/")[2], bucket)
    assert main(["fetch", "--data-dir", missing]) == 1
    captured = capsys.readouterr()
    error = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and f"'{bucket}' does not exist" in error[0], captured.err
    assert backend.secret not in captured.out + captured.err
    # The URL fixed, the same work directory serves the right bucket: the failed one never bound it.
    assert main(["fetch", "--data-dir", backend.location]) == 0, capsys.readouterr().err
    fixed = check_data_dir(Path(backend.location))
    assert fixed == (tmp_path / "elsewhere").absolute()
    assert raw_snapshot_exists(fixed, SnapshotKey("default", datetime.now(UTC).date()))
    # A work directory that serves a bucket is refused to another one (their scratch must not mix).
    monkeypatch.setenv("JOOR_WORK_DIR", str(backend.data_dir))
    with pytest.raises(ConfigError, match="belongs to "):
        check_data_dir(Path(backend.location.replace(backend.location.split("/")[2], bucket)))


# ---- a missing optional package ------------------------------------------------------------------------------------

#: Python started with this directory first on its path cannot import obstore, as in an install without the extra.
BLOCKER = "raise ImportError('obstore is not installed (blocked by the test)', name='obstore')\n"


@pytest.mark.parametrize(("scheme", "extra"), [("s3", "s3"), ("gs", "gcs"), ("az", "azure")])
def test_every_command_on_a_cloud_url_without_its_extra_is_one_line_naming_it(
    scheme: str, extra: str, tmp_path: Path
) -> None:
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "obstore.py").write_text(BLOCKER, encoding="utf-8")
    url = f"{scheme}://bucket/data"
    env = {
        **os.environ,
        "PYTHONPATH": str(blocker),
        "JOOR_ENVIRONMENT": "builtin",
        "JOOR_WORK_DIR": str(tmp_path / "work"),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
        "AZURE_STORAGE_ACCOUNT_NAME": "account",
    }
    reader = f"import joor_pipeline; joor_pipeline.read('dim_retailers', {url!r})"
    commands = {
        "fetch": [CLI, "fetch", "--data-dir", url],
        "flatten": [CLI, "flatten", "--data-dir", url],
        "run": [CLI, "run", "--data-dir", url],
        "sql": [CLI, "sql", "--data-dir", url, "select 1"],
        "read()": [sys.executable, "-c", reader],
    }
    for name, command in commands.items():
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        if name == "read()":  # a Python call: the exception, whose message is the one line
            assert done.returncode == 1 and done.stderr.rstrip().splitlines()[-1].startswith(
                "joor_pipeline.storage.cloud.MissingExtra: "
            ), done.stderr
            line = done.stderr.rstrip().splitlines()[-1].partition(": ")[2]
        else:
            assert (done.returncode, done.stdout) == (2, ""), (name, done.stdout, done.stderr)
            assert len(done.stderr.splitlines()) == 1, (name, done.stderr)
            line = done.stderr.strip().removeprefix("error: ")
        assert line.startswith(f"{url} needs the optional package obstore: install the {extra} extra"), (name, line)
        assert f"uv sync --extra {extra}" in line and f"joor-pipeline[{extra}]" in line, (name, line)


def test_the_missing_extra_spares_local_data(tmp_path: Path) -> None:
    """Without any cloud extra, a local data directory works as ever (nothing imports obstore for it)."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "obstore.py").write_text(BLOCKER, encoding="utf-8")
    script = textwrap.dedent(
        f"""
        from datetime import date
        from pathlib import Path
        from joor_pipeline.config import check_data_dir
        from joor_pipeline.flatten.runner import flatten_snapshot
        from joor_pipeline.layout import SnapshotKey
        from joor_pipeline.sandbox import generate_connections
        from joor_pipeline_tests.raw_fixtures import land
        data = check_data_dir(Path({str(tmp_path / "data")!r}))
        land(data, date(2026, 1, 5), generate_connections(5, seed=1))
        print(flatten_snapshot(data, SnapshotKey("default", date(2026, 1, 5)), workers=1).rows["connections"])
        """
    )
    env = {**os.environ, "PYTHONPATH": f"{blocker}{os.pathsep}{Path(__file__).resolve().parent.parent}"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, "5"), done.stderr

"""The warehouse against what happens around it: analysts' read-write sessions, a full disk, a directory in its way."""

from __future__ import annotations

import resource
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path

import duckdb
import pytest

from joor_pipeline.warehouse import (
    WarehouseError,
    WarehouseInUse,
    build_warehouse,
    database_path,
    run_dbt,
    warehouse_build,
    work_dir,
)
from joor_pipeline_tests.model_fixtures import clean_retailer, parquet_root, write_snapshot

D1, D2, D3 = (date(2025, 3, 1) + timedelta(days=n) for n in range(3))
CLI = str(Path(sys.executable).parent / "joor-pipeline")

#: An analyst's read-write session in a process of its own: it writes (so DuckDB keeps a WAL beside the file),
#: says so, then waits for a line: "close" closes the connection as `duckdb` does on exit (a checkpoint, which
#: removes the WAL).
ANALYST = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])
con.execute("create table scratch as select 42 as answer")
con.execute("insert into scratch values (43)")
print("writing", flush=True)
if sys.stdin.readline().strip() == "close":
    con.close()
    print("closed", flush=True)
"""


class Analyst:
    """A running read-write session of a warehouse file."""

    def __init__(self, database: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", ANALYST, str(database)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None and self.process.stdout.readline() == "writing\n"
        self.pid = self.process.pid

    def close(self) -> None:
        out, _ = self.process.communicate("close\n", timeout=60)
        assert out == "closed\n" and self.process.returncode == 0

    def kill(self) -> None:
        self.process.kill()
        self.process.communicate(timeout=60)


@contextmanager
def analyst_session(database: Path) -> Iterator[Analyst]:
    analyst = Analyst(database)
    try:
        yield analyst
    finally:
        if analyst.process.poll() is None:
            analyst.kill()


def retailers(n: int) -> list:
    return [clean_retailer(1000 + i, f"R{i}") for i in range(n)]


def read_only_count(database: Path, sql: str = "select count(*) from dim_retailers") -> int:
    """What a new read-only reader sees (it fails with DuckDB's IO error if a WAL does not match the file)."""
    con = duckdb.connect(str(database), read_only=True)
    try:
        row = con.execute(sql).fetchone()
    finally:
        con.close()
    assert row is not None
    return int(row[0])


def wal(database: Path) -> Path:
    return database.with_name(database.name + ".wal")


# ---- analysts' read-write sessions ---------------------------------------------------------------------------------


def test_a_read_write_session_fails_a_build_at_once_naming_it_and_the_build_after_it_works(tmp_path: Path) -> None:
    root, database = parquet_root(tmp_path), database_path(tmp_path)
    write_snapshot(root, D1, retailers(3))
    build_warehouse(tmp_path)
    before = database.read_bytes()
    write_snapshot(root, D2, retailers(4))
    with analyst_session(database) as analyst:
        assert wal(database).exists()
        with pytest.raises(WarehouseInUse) as info:
            build_warehouse(tmp_path)
        message = str(info.value)
        assert f"the warehouse {database} is in use by PID {analyst.pid} (" in message
        assert "a read-write session: nothing was published" in message and "\n" not in message
        assert not (work_dir(tmp_path) / "build").exists()  # refused before any work
        assert database.read_bytes() == before and wal(database).exists()  # the analyst's file, left to the analyst
        analyst.close()
    assert not wal(database).exists()
    assert read_only_count(database) == 3  # no IO error once the analyst has closed
    assert read_only_count(database, "select count(*) from scratch") == 2  # the analyst's work is theirs to keep
    assert build_warehouse(tmp_path).refresh_dates == [D2]  # no manual step
    assert read_only_count(database) == 4


def test_a_read_write_session_that_starts_during_a_build_stops_its_publication(tmp_path: Path) -> None:
    """The session opens the published file while dbt runs on the copy: the build is not published beside it."""
    root, database = parquet_root(tmp_path), database_path(tmp_path)
    write_snapshot(root, D1, retailers(3))
    build_warehouse(tmp_path)
    before = database.read_bytes()
    write_snapshot(root, D2, retailers(4))
    analysts: list[Analyst] = []
    try:
        with pytest.raises(WarehouseInUse) as info:
            with warehouse_build(tmp_path) as plan:
                for _batch in plan.batches():
                    run_dbt(plan.dbt_args(), plan.target_dir)
                analysts.append(Analyst(database))
        assert f"is in use by PID {analysts[0].pid} (" in str(info.value)
        assert database.read_bytes() == before and wal(database).exists()
        assert not (work_dir(tmp_path) / "build").exists()
        analysts[0].close()
    finally:
        for analyst in analysts:
            if analyst.process.poll() is None:
                analyst.kill()
    assert read_only_count(database) == 3
    assert build_warehouse(tmp_path).refresh_dates == [D2]
    assert read_only_count(database) == 4


def test_a_killed_sessions_wal_is_set_aside_with_its_warehouse_and_never_paired_with_a_new_build(
    tmp_path: Path,
) -> None:
    root, database = parquet_root(tmp_path), database_path(tmp_path)
    write_snapshot(root, D1, retailers(3))
    build_warehouse(tmp_path)
    with analyst_session(database) as analyst:
        analyst.kill()  # kill -9: its WAL stays, and belongs to the published file
    assert wal(database).exists()
    assert read_only_count(database) == 3  # DuckDB replays a WAL that matches its file

    write_snapshot(root, D2, retailers(4))
    assert build_warehouse(tmp_path).refresh_dates == [D2]
    assert not wal(database).exists()
    assert read_only_count(database) == 4  # no "checkpoint iteration does not match"
    (aside,) = (work_dir(tmp_path) / "set-aside").iterdir()
    assert sorted(p.name for p in aside.iterdir()) == ["joor.duckdb", "joor.duckdb.wal"]
    assert read_only_count(aside / "joor.duckdb", "select count(*) from scratch") == 2  # nothing lost
    assert read_only_count(aside / "joor.duckdb") == 3

    write_snapshot(root, D3, retailers(5))
    assert build_warehouse(tmp_path).refresh_dates == [D3]
    assert read_only_count(database) == 5


# ---- what stands in the warehouse's place, a full disk ---------------------------------------------------------------


def test_a_directory_where_the_warehouse_belongs_is_refused_at_once_leaving_nothing(tmp_path: Path) -> None:
    write_snapshot(parquet_root(tmp_path), D1, retailers(3))
    database_path(tmp_path).mkdir()
    with pytest.raises(WarehouseError) as info:
        build_warehouse(tmp_path)
    assert str(info.value) == (
        f"{database_path(tmp_path)} is a directory, where the warehouse file belongs: move it away and run again "
        "(nothing was built)"
    )
    assert not (work_dir(tmp_path) / "build").exists()
    database_path(tmp_path).rmdir()
    assert build_warehouse(tmp_path).refresh_dates == [D1]


def run_cli(data_dir: Path, *, connections: int, fsize: int | None = None) -> subprocess.CompletedProcess[str]:
    """`joor-pipeline run` for today on the built-in sandbox; ``fsize`` caps the size of any file it writes
    (RLIMIT_FSIZE, SIGXFSZ ignored): a write past it fails with EFBIG, as on a full disk."""

    def limit() -> None:
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(data_dir.parent),
        "JOOR_ENVIRONMENT": "builtin",
        "JOOR_SANDBOX_CONNECTIONS": str(connections),
        "JOOR_DATA_DIR": str(data_dir),
    }
    return subprocess.run(
        [CLI, "run"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        preexec_fn=limit,
    )


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The one `error:` line a failed command ends with; no traceback anywhere."""
    assert "Traceback" not in done.stdout + done.stderr and "Stack Trace" not in done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and done.stderr.strip().splitlines()[-1] == errors[0], done.stderr
    return errors[0]


def test_the_command_ends_in_one_line_for_a_directory_in_the_warehouses_place(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "joor.duckdb").mkdir(parents=True)
    done = run_cli(data, connections=20)
    assert done.returncode == 1
    assert error_line(done) == (
        f"error: joor_models: {data / 'joor.duckdb'} is a directory, where the warehouse file belongs: move it away "
        "and run again (nothing was built)"
    )
    assert not (work_dir(data) / "build").exists()


def test_a_full_disk_during_the_build_keeps_the_published_warehouse_and_leaves_no_partial_file(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    assert run_cli(data, connections=50).returncode == 0
    published = database_path(data).read_bytes()
    # Room for a copy of the published warehouse and every other file of the run, not for the larger build.
    done = run_cli(data, connections=1000, fsize=len(published) + 256 * 1024)
    assert done.returncode == 1
    line = error_line(done)
    assert line.startswith("error: joor_models: the warehouse build ran out of disk space ")
    assert "(File too large, in " in line and "the published warehouse is unchanged" in line
    assert database_path(data).read_bytes() == published
    assert not (work_dir(data) / "build").exists()


def test_the_command_names_an_analysts_read_write_session_in_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run_cli(data, connections=20).returncode == 0
    database = database_path(data)
    published = database.read_bytes()
    with analyst_session(database) as analyst:
        done = run_cli(data, connections=30)
        assert done.returncode == 1
        line = error_line(done)
        assert line.startswith(f"error: joor_models: the warehouse {database} is in use by PID {analyst.pid} (")
        assert database.read_bytes() == published
        analyst.close()
    assert read_only_count(database) == 20  # the next run works: see the tests above

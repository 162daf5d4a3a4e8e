"""Reading the warehouse and the tables: `joor-pipeline sql`, `read()`, `connect()`; always the newest build."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import select
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import duckdb
import pytest

import joor_pipeline
from joor_pipeline.sql import complete, referenced_tables
from joor_pipeline.warehouse import WarehouseError, build_warehouse, database_path, read
from joor_pipeline_tests.backends import Backend
from joor_pipeline_tests.model_fixtures import clean_retailer, parquet_root, write_snapshot
from joor_pipeline_tests.raw_fixtures import snap

CLI = str(Path(sys.executable).parent / "joor-pipeline")
D1, D2 = date(2026, 2, 1), date(2026, 2, 2)


def publish(data_dir: Path, day: date, retailers: int) -> None:
    """Publish one snapshot of ``retailers`` clean retailers, and build and publish the warehouse on it."""
    write_snapshot(parquet_root(data_dir), day, [clean_retailer(1000 + i, f"R{i}") for i in range(retailers)])
    build_warehouse(data_dir)


@pytest.fixture
def built(tmp_path: Path) -> Path:
    """A data directory with one snapshot of two retailers, built."""
    publish(tmp_path, D1, 2)
    return tmp_path


def sql(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The installed `joor-pipeline sql`, as an analyst runs it."""
    base = {"PATH": "/usr/bin:/bin", "HOME": str(Path.cwd())}
    return subprocess.run(
        [CLI, "sql", *args], input=stdin, capture_output=True, text=True, timeout=120, env={**base, **(env or {})}
    )


# ---- why a new connection to the path saw the old build --------------------------------------------------------


def test_duckdb_reuses_the_open_instance_of_a_path_so_a_new_connection_there_sees_the_old_build(built: Path) -> None:
    """DuckDB's instance cache, in the installed version: while any connection to a file is open in a process,
    ``duckdb.connect(path)`` returns another connection to that same instance, which still reads the file it
    opened before a build renamed a new one over it; a different ``config`` is refused, not a way round it. What
    the README tells analysts, and why the readers attach the file to an in-memory database instead."""
    path = str(database_path(built))
    held = duckdb.connect(path, read_only=True)
    try:
        publish(built, D2, 3)
        again = duckdb.connect(path, read_only=True)
        assert again.execute("select count(*) from dim_retailers").fetchone() == (2,)  # the old build
        with pytest.raises(duckdb.ConnectionException, match="different configuration"):
            duckdb.connect(path, read_only=True, config={"threads": 1})
        fresh = duckdb.connect()  # the README's way: its own instance, the file attached as it is now
        fresh.execute(f"attach '{path}' as joor (read_only)")
        assert fresh.execute("select count(*) from joor.dim_retailers").fetchone() == (3,)
        fresh.close()
        again.close()
    finally:
        held.close()
    with duckdb.connect(path, read_only=True) as reopened:  # every connection closed: the next one opens anew
        assert reopened.execute("select count(*) from dim_retailers").fetchone() == (3,)


def test_every_documented_read_sees_the_newest_build_in_a_long_lived_process(built: Path) -> None:
    """One process reads, a build publishes, the same process reads again through read(), connect(), an open
    `sql` session and the README's attach: each sees the new build, although a connection to the file's path
    (as a notebook keeps one) holds the old instance open all along."""
    path = database_path(built)
    notebook = duckdb.connect(str(path), read_only=True)
    session_out = io.StringIO()
    try:
        from joor_pipeline.sql import Runner, Session

        session = Session(built)
        runner = Runner(session, "csv", session_out, io.StringIO())

        def readme_attach() -> int:
            con = duckdb.connect()
            con.execute(f"attach '{path}' as joor (read_only); use joor")
            try:
                return int(con.execute("select count(*) from dim_retailers").fetchone()[0])  # type: ignore[index]
            finally:
                con.close()

        def connected() -> tuple[int, int]:
            with joor_pipeline.connect(built) as con:
                models = con.execute("select count(*) from dim_retailers").fetchone()
                tables = con.execute("select count(distinct snapshot_date) from tables.connections").fetchone()
                return int(models[0]), int(tables[0])  # type: ignore[index]

        def in_session() -> str:
            runner.run("select count(*) as n from dim_retailers; select count(*) as n from tables.connections;")
            text = session_out.getvalue()
            session_out.seek(0)
            session_out.truncate()
            return text

        assert len(read("dim_retailers", built)) == 2
        assert len(read("connections", built)) == 2
        assert connected() == (2, 1)
        assert readme_attach() == 2
        assert in_session() == "n\n2\nn\n2\n"

        publish(built, D2, 3)

        assert notebook.execute("select count(*) from dim_retailers").fetchone() == (2,)  # still its own build
        assert len(read("dim_retailers", built)) == 3
        assert len(read("connections", built)) == 2 + 3
        assert connected() == (3, 2)
        assert readme_attach() == 3
        assert in_session() == "n\n3\nn\n5\n"
        session.close()
    finally:
        notebook.close()


# ---- joor-pipeline sql -------------------------------------------------------------------------------------------


def test_sql_held_open_never_blocks_a_build_and_sees_it_at_its_next_statement(built: Path) -> None:
    """A `sql` session reading statements from a pipe stays open while a build publishes: the build succeeds,
    and the session's next statement reads the new build and the new partition."""
    session = subprocess.Popen(
        [CLI, "sql", "--format", "csv", "--data-dir", str(built)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(built)},
    )
    assert session.stdin is not None and session.stdout is not None
    query = "select count(*) as retailers, max(snapshot_date) as latest from dim_retailers;\n"
    try:
        session.stdin.write(query)
        session.stdin.flush()
        assert [session.stdout.readline(), session.stdout.readline()] == ["retailers,latest\n", f"2,{D1}\n"]

        publish(built, D2, 3)  # while the session holds the published file open

        session.stdin.write(query + "select count(*) as rows\nfrom tables.connections;\n")
        session.stdin.flush()
        out, err = session.communicate(timeout=60)
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
    assert (out, err, session.returncode) == (f"retailers,latest\n3,{D2}\nrows\n5\n", "", 0)


def test_sql_prints_a_query_as_a_table_csv_or_json(built: Path) -> None:
    query = "select customer_account_id, customer_code, default_payment_method_name from dim_retailers order by 1"
    table = sql("--data-dir", str(built), query)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines() == [
        "customer_account_id | customer_code | default_payment_method_name",
        "--------------------+---------------+----------------------------",
        "               1000 | R0            | Net 30",
        "               1001 | R1            | Net 30",
        "(2 rows)",
    ]
    as_csv = sql("--data-dir", str(built), "--format", "csv", query)
    assert list(csv.reader(io.StringIO(as_csv.stdout))) == [
        ["customer_account_id", "customer_code", "default_payment_method_name"],
        ["1000", "R0", "Net 30"],
        ["1001", "R1", "Net 30"],
    ]
    as_json = sql(
        "--data-dir",
        str(built),
        "--format",
        "json",
        "select snapshot_date, customer_code, connection_modified, extra from tables.connections order by 2",
    )
    assert json.loads(as_json.stdout) == [
        {"snapshot_date": str(D1), "customer_code": "R0", "connection_modified": None, "extra": None},
        {"snapshot_date": str(D1), "customer_code": "R1", "connection_modified": None, "extra": None},
    ]
    staging = sql("--data-dir", str(built), "--format", "csv", "select count(*) as n from staging.stg_addresses")
    assert staging.stdout == "n\n4\n"


def test_sql_failures_are_one_error_line_exit_1_and_usage_exit_2(built: Path, tmp_path: Path) -> None:
    unknown = sql("--data-dir", str(built), "select * from dim_retailer")
    assert unknown.returncode == 1 and unknown.stdout == ""
    [line] = unknown.stderr.splitlines()
    assert line.startswith("error: Catalog Error: Table with name dim_retailer does not exist!"), line
    assert "dim_retailer" in line and "Traceback" not in unknown.stderr

    syntax = sql("--data-dir", str(built), "selec 1")
    assert syntax.returncode == 1
    assert syntax.stderr.splitlines() == ['error: Parser Error: syntax error at or near "selec" LINE 1: selec 1']

    read_only = sql("--data-dir", str(built), "delete from dim_retailers")
    assert read_only.returncode == 1 and "read-only" in read_only.stderr.lower()
    assert len(read("dim_retailers", built)) == 2

    missing = sql("--data-dir", str(tmp_path / "nowhere"), "select 1")
    assert missing.returncode == 2
    assert missing.stderr.splitlines() == [
        f"error: --data-dir {tmp_path / 'nowhere'} is not a directory (nothing has been written there yet?)"
    ]
    bad_format = sql("--data-dir", str(built), "--format", "xml", "select 1")
    assert bad_format.returncode == 2 and "invalid choice: 'xml'" in bad_format.stderr


def test_sql_reads_statements_from_stdin_and_stops_at_the_first_failure(built: Path) -> None:
    script = (
        "-- a report; statements end with ';'\n"
        ".format csv\n"
        "select count(*) as retailers\n  from dim_retailers;\n"
        "select 'a;b' as text; select $$x;y$$ as dollars;\n"
        ".tables\n"
        "select * from nope;\n"
        "select 'never run';\n"
    )
    ran = sql("--data-dir", str(built), stdin=script)
    assert ran.returncode == 1
    rows = list(csv.reader(io.StringIO(ran.stdout)))
    assert rows[:6] == [["retailers"], ["2"], ["text"], ["a;b"], ["dollars"], ["x;y"]]
    listed = {row[0]: row[2] for row in rows[7:]}
    assert listed["dim_retailers"].startswith("every retailer (connection) of each account's latest snapshot")
    assert listed["staging.stg_connections"].startswith("every connection")
    assert (
        listed["tables.addresses"]
        == "Billing addresses, shipping addresses and customer locations of each connection, in one table."
    )
    assert "never run" not in ran.stdout
    [error] = ran.stderr.splitlines()
    assert error.startswith("error: Catalog Error: Table with name nope does not exist!"), error

    last = sql("--data-dir", str(built), "--format", "csv", stdin="select 1 as one")  # no ';' at the very end
    assert (last.returncode, last.stdout) == (0, "one\n1\n")


def test_sql_schema_shows_every_column_with_its_description(built: Path) -> None:
    ran = sql("--data-dir", str(built), stdin=".format json\n.schema tables.doors\n.schema retailer_history\n")
    assert ran.returncode == 0, ran.stderr
    decoder = json.JSONDecoder()
    doors, end = decoder.raw_decode(ran.stdout)
    history, _ = decoder.raw_decode(ran.stdout[end:].lstrip())
    assert [c["column"] for c in doors][:5] == [
        "account",
        "snapshot_date",
        "customer_account_id",
        "customer_code",
        "ordinal",
    ]
    assert all(c["description"] for c in doors + history)
    by_name = {c["column"]: c for c in history}
    assert by_name["change_hash"]["type"] == "VARCHAR"
    assert by_name["change_hash"]["description"].startswith("The version's fingerprint")
    assert by_name["customer_name"]["description"] == "The retailer's name on JOOR. (JOOR: customer_name)"


def test_sql_names_a_damaged_partition_and_the_way_out(built: Path) -> None:
    from joor_pipeline.storage.parquet import write_partition_manifest

    part = parquet_root(built) / "doors" / "account=default" / f"snapshot_date={D1}" / "part-00000.parquet"
    write_partition_manifest(part.parent, "doors", snap(D1), "p1")
    part.write_bytes(part.read_bytes()[:100])  # truncated after it was published
    ran = sql("--data-dir", str(built), "--format", "csv", "select 1 as ok; select count(*) from tables.doors")
    assert ran.returncode == 1 and ran.stdout == "ok\n1\n"
    [error] = ran.stderr.splitlines()
    assert error.startswith(f"error: {part} is damaged: 100 bytes where "), error
    assert error.endswith(f"joor-pipeline flatten --date {D1}"), error
    fine = sql("--data-dir", str(built), "--format", "csv", "select count(*) as n from tables.buyers")
    assert (fine.returncode, fine.stdout) == (0, "n\n2\n")


def test_sql_without_a_warehouse_still_reads_the_tables(tmp_path: Path) -> None:
    write_snapshot(parquet_root(tmp_path), D1, [clean_retailer(1, "ONE")])
    tables = sql("--data-dir", str(tmp_path), "--format", "csv", "select customer_code from tables.connections")
    assert (tables.returncode, tables.stdout) == (0, "customer_code\nONE\n")
    model = sql("--data-dir", str(tmp_path), "select * from dim_retailers")
    assert model.returncode == 1
    assert f"(no warehouse at {database_path(tmp_path)} yet: only the tables.* are here" in model.stderr


def test_sql_prompt_edits_lines_and_keeps_a_history(built: Path, tmp_path: Path) -> None:
    """At a terminal (a pseudo-terminal here): the prompt, a statement over two lines, a dot command, the history
    written for the next session."""
    state = tmp_path / "state"
    pid, terminal = pty.fork()
    if pid == 0:  # the child: the command at a terminal
        os.execve(  # noqa: S606
            CLI,
            [CLI, "sql", "--data-dir", str(built)],
            {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_STATE_HOME": str(state), "TERM": "dumb"},
        )
    output = b""

    def until(text: bytes) -> None:
        nonlocal output
        deadline = time.monotonic() + 60
        while text not in output:
            assert time.monotonic() < deadline, output.decode(errors="replace")
            ready, _, _ = select.select([terminal], [], [], 1)
            if ready:
                output += os.read(terminal, 65536)

    try:
        until(b"joor> ")
        os.write(terminal, b"select count(*) as retailers\n")
        until(b"...> ")
        os.write(terminal, b"from dim_retailers;\n")
        until(b"(1 row)")
        os.write(terminal, b".quit\n")
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(terminal)
    assert os.waitstatus_to_exitcode(status) == 0
    assert b"read-only. .help for help" in output and b"retailers\r\n---------\r\n        2" in output
    history = (state / "joor-pipeline" / "sql_history").read_text()
    assert "from dim_retailers;" in history and ".quit" in history


def test_statements_end_at_a_semicolon_outside_quotes_and_comments() -> None:
    assert complete("select 1;")
    assert complete("select 1; -- done\n")
    assert not complete("select ';'")
    assert not complete("select 1 -- ;")
    assert not complete("select /* ; */ 1")
    assert complete("select $$;$$;")
    assert not complete("select $tag$ ; $tag$")
    assert complete("select 'it''s';")
    assert not complete("select 'open;")
    assert referenced_tables("select * from tables.addresses a join \"doors\" using (x) where y = 'buyers'") == {
        "addresses",
        "doors",
    }


# ---- read() --------------------------------------------------------------------------------------------------------


def test_read_says_when_nothing_is_published_there(tmp_path: Path) -> None:
    with pytest.raises(WarehouseError, match=r"nothing is published for addresses under .*: run the pipeline"):
        read("addresses", tmp_path)
    with pytest.raises(WarehouseError, match="no warehouse at"):
        read("dim_retailers", str(tmp_path))


# ---- on an object store ----------------------------------------------------------------------------------------


def test_read_connect_and_sql_on_an_object_store(cloud_backend: Backend, tmp_path: Path, monkeypatch) -> None:
    """A writer publishes to the bucket; an analyst's machine (another work directory) reads it by URL."""
    from joor_pipeline.flatten.runner import flatten_snapshot
    from joor_pipeline.sandbox import generate_connections
    from joor_pipeline_tests.raw_fixtures import land

    url, writer = cloud_backend.location, cloud_backend.data_dir
    assert cloud_backend.emulator is not None
    land(writer, D1, generate_connections(30, seed=5))
    flatten_snapshot(writer, snap(D1), workers=1)
    build_warehouse(writer)

    monkeypatch.setenv("JOOR_WORK_DIR", str(tmp_path / "analyst"))
    assert len(read("dim_retailers", url)) == 30
    assert len(read("connections", url)) == 30
    with joor_pipeline.connect(url) as con:
        assert (
            con.execute(
                "select count(*) from tables.addresses a join dim_retailers d using (account, customer_account_id)"
            ).fetchone()[0]
            > 0
        )  # type: ignore[index]

    analyst = {**cloud_backend.emulator.env, "JOOR_WORK_DIR": str(tmp_path / "analyst-cli"), "JOOR_DATA_DIR": url}
    ran = sql(
        "--format",
        "csv",
        "select count(*) as n from dim_retailers; select count(*) as n from tables.connections",
        env=analyst,
    )
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "n\n30\nn\n30\n", "")

    # The writer adds a date and publishes a new build: the analyst's next read gets it.
    land(writer, D2, generate_connections(40, seed=6))
    flatten_snapshot(writer, snap(D2), workers=1)
    build_warehouse(writer)
    assert len(read("dim_retailers", url)) == 40
    assert len(read("connections", url)) == 70

"""The warehouse build: incremental equals full refresh in any order, published by rename beside open readers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from joor_pipeline.flatten.schema import TABLES
from joor_pipeline.storage.parquet import published_dates
from joor_pipeline.warehouse import (
    ANALYST_MODELS,
    DBT_PROJECT_DIR,
    WarehouseError,
    build_warehouse,
    database_path,
    generate_docs,
    manifest_path,
    read,
    run_dbt,
    view_models,
    warehouse_build,
)
from joor_pipeline_tests.model_fixtures import (
    Retailer,
    clean_retailer,
    parquet_root,
    partition_path,
    publish_partition,
    query,
    snapshot_rows,
    table_of,
    write_snapshot,
)

D1, D2, D3, D4 = (date(2025, 3, 1) + timedelta(days=n) for n in range(4))
#: The tables a build produces from the snapshots (int_retailer_contents may keep unreferenced contents).
COMPARED = (*ANALYST_MODELS, "int_snapshots", "int_retailer_fingerprints")


def retailers(day: int, size: int = 4) -> list[Retailer]:
    """``size`` retailers as of day ``day``: retailer i changes its alias every i-th day; 1002 leaves on day 2."""
    found = []
    for i in range(size):
        r = clean_retailer(1000 + i, f"R{i}")
        r.connection["customer_alias"] = f"alias {day // (i + 1)}"
        if not (i == 2 and day == 2):
            found.append(r)
    return found


def tables(data_dir: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every compared table of the published warehouse, rows sorted."""
    return {name: sorted(query(data_dir, f"select * from {name}"), key=repr) for name in COMPARED}


def test_out_of_order_dates_and_a_republished_date_give_the_full_refresh_tables(tmp_path: Path) -> None:
    root = parquet_root(tmp_path)
    for day, snapshot_date in ((3, D3), (1, D1)):
        write_snapshot(root, snapshot_date, retailers(day))
        assert build_warehouse(tmp_path).refresh_dates == [snapshot_date]
    write_snapshot(root, D2, retailers(2))
    write_snapshot(root, D4, retailers(4))
    assert build_warehouse(tmp_path).refresh_dates == [D2, D4]  # a backfill of two dates builds once
    write_snapshot(root, D1, retailers(9))  # republished with other content
    assert build_warehouse(tmp_path).refresh_dates == [D1]
    assert build_warehouse(tmp_path).refresh_dates == []  # nothing changed: nothing to process
    incremental = tables(tmp_path)

    report = build_warehouse(tmp_path, full_refresh=True)
    assert report.full_refresh and report.refresh_dates == [D1, D2, D3, D4]
    assert tables(tmp_path) == incremental
    history = query(tmp_path, "select valid_from, valid_to from retailer_history where customer_account_id = 1002")
    assert sorted(history) == [(D1, D2), (D3, None)]  # gone on D2, back on D3: a new version


def withdraw(data_dir: Path, snapshot_date: date) -> None:
    """Remove every table's partition of one date, as if it had never been published."""
    for table in TABLES:
        shutil.rmtree(partition_path(parquet_root(data_dir), table, snapshot_date).parent, ignore_errors=True)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    plan=st.lists(st.tuples(st.integers(0, 4), st.integers(-1, 5)), min_size=1, max_size=5),
)
def test_any_order_of_incremental_builds_gives_the_tables_of_a_full_refresh(
    tmp_path_factory: pytest.TempPathFactory, plan: list[tuple[int, int]]
) -> None:
    """Each step (re)publishes one date with some content (-1: withdraws it), then builds; the end state equals a
    full refresh. Dates come in any order, a past date may be re-flattened or withdrawn, retailer 1002 is missing
    from content 2 (it disappears and comes back), and a retailer's content may go back to an earlier one."""
    data_dir = tmp_path_factory.mktemp("incremental")
    dates = [D1, D2, D3, D4, D4 + timedelta(days=1)]
    for index, content in plan:
        if content < 0:
            withdraw(data_dir, dates[index])
        else:
            write_snapshot(parquet_root(data_dir), dates[index], retailers(content, size=3))
        if published_dates(data_dir, account="default"):  # (with nothing published, a build is refused)
            build_warehouse(data_dir)
    if not published_dates(data_dir, account="default"):
        return
    incremental = tables(data_dir)
    build_warehouse(data_dir, full_refresh=True)
    assert tables(data_dir) == incremental


def test_a_daily_build_keeps_closed_versions_and_an_earlier_date_reopens_them(tmp_path: Path) -> None:
    """retailer_history is incremental: a build of a new latest date recomputes only the open versions, one of an
    earlier date (out of order) every version open at that date; both end as a full refresh would."""
    root = parquet_root(tmp_path)
    for day, snapshot_date in ((1, D1), (2, D2), (3, D3)):
        write_snapshot(root, snapshot_date, retailers(day))
        build_warehouse(tmp_path)
    # Mark the closed versions in place: a build that recomputed them would write their real name back.
    with duckdb.connect(str(database_path(tmp_path))) as con:
        con.execute("update retailer_history set customer_name = 'kept as built' where valid_to is not null")
    closed = query(tmp_path, "select count(*) from retailer_history where customer_name = 'kept as built'")[0][0]
    assert closed == 4  # 1000 on D1 and D2, 1001 on D1, 1002 on D1 (missing on D2)

    write_snapshot(root, D4, retailers(4))
    assert build_warehouse(tmp_path).refresh_dates == [D4]
    kept = query(tmp_path, "select count(*) from retailer_history where customer_name = 'kept as built'")[0][0]
    assert kept == closed  # the daily build left every closed version as it was

    write_snapshot(root, D2, retailers(4))  # D2 re-flattened, earlier than the latest: 1002 is back in it
    assert build_warehouse(tmp_path).refresh_dates == [D2]
    assert query(tmp_path, "select count(*) from retailer_history where customer_name = 'kept as built'") == [(0,)]
    history = query(tmp_path, "select valid_from, valid_to from retailer_history where customer_account_id = 1002")
    assert sorted(history, key=repr) == [(D1, D2), (D2, None)]  # D2 now holds 1002, with D3's content
    incremental = tables(tmp_path)
    build_warehouse(tmp_path, full_refresh=True)
    assert tables(tmp_path) == incremental


def test_a_reader_holding_the_warehouse_open_never_fails_a_build_and_keeps_its_view(tmp_path: Path) -> None:
    write_snapshot(parquet_root(tmp_path), D1, retailers(1)[:2])
    build_warehouse(tmp_path)
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys\n"
            "con = duckdb.connect(sys.argv[1], read_only=True)\n"
            "count = lambda: con.execute('select count(*) from dim_retailers').fetchone()[0]\n"
            "print(count(), flush=True)\n"
            "sys.stdin.readline()\n"
            "print(count(), flush=True)\n",
            str(database_path(tmp_path)),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout is not None and reader.stdout.readline() == "2\n"
        write_snapshot(parquet_root(tmp_path), D2, retailers(2))
        assert build_warehouse(tmp_path).refresh_dates == [D2]
        out, _ = reader.communicate("go\n", timeout=60)
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    assert out == "2\n"  # the held connection still reads the build it opened, whole
    assert query(tmp_path, "select count(*) from dim_retailers") == [(3,)]  # a new connection sees the new one
    assert reader.returncode == 0


def test_a_failed_build_leaves_the_published_warehouse_exactly_as_it_was(tmp_path: Path) -> None:
    root = parquet_root(tmp_path)
    write_snapshot(root, D1, retailers(1))
    build_warehouse(tmp_path)
    before = database_path(tmp_path).read_bytes()
    write_snapshot(root, D2, retailers(2))
    damaged = partition_path(root, "warehouses", D2)  # bit rot: the size its manifest lists, none of the bytes
    damaged.write_bytes(b"x" * damaged.stat().st_size)

    with pytest.raises(WarehouseError, match=r"published Parquet could not be read: .*No magic bytes"):
        build_warehouse(tmp_path)

    assert database_path(tmp_path).read_bytes() == before
    write_snapshot(root, D2, retailers(2))
    assert build_warehouse(tmp_path).refresh_dates == [D2]  # the failed date is still pending, nothing else


def test_a_failing_dbt_test_stops_the_publication(tmp_path: Path) -> None:
    """address_type is fixed by JOOR (billing, shipping, location): another value fails an accepted_values test."""
    root = parquet_root(tmp_path)
    write_snapshot(root, D1, retailers(1))
    build_warehouse(tmp_path)
    odd = clean_retailer(1009, "ODD")
    odd.children["addresses"][0]["address_type"] = "warehouse"
    write_snapshot(root, D2, [*retailers(2), odd])

    with pytest.raises(WarehouseError, match="accepted_values_stg_addresses_address_type"):
        build_warehouse(tmp_path)
    assert query(tmp_path, "select max(snapshot_date) from dim_retailers") == [(D1,)]


def test_a_daily_build_keeps_the_views_runs_their_tests_and_a_missing_view_has_them_made_again(
    tmp_path: Path,
) -> None:
    """The views (stg_*, int_addresses) are the project's queries: a full refresh creates them, an incremental
    build leaves them in place and runs their tests on the new data; a view missing from the warehouse has the
    next build create them all."""
    root = parquet_root(tmp_path)
    views = view_models()
    manifest = json.loads(manifest_path().read_text())
    view_tests = {
        unique_id
        for unique_id, node in manifest["nodes"].items()
        if node["resource_type"] == "test" and set(node["depends_on"]["nodes"]) & views.keys()
    }
    assert {"model.joor.stg_connections", "model.joor.int_addresses"} <= views.keys() and view_tests

    def build(snapshot_date: date, day: int) -> tuple[list[str], set[str]]:
        write_snapshot(root, snapshot_date, retailers(day))
        with warehouse_build(tmp_path) as plan:
            for _batch in plan.batches():
                results = run_dbt(plan.dbt_args(), plan.target_dir)
        assert all(r["status"] in ("success", "pass") for r in results["results"])
        return plan.kept_views, {r["unique_id"] for r in results["results"]}

    kept, ran = build(D1, 1)
    assert kept == [] and views.keys() | view_tests <= ran
    kept, ran = build(D2, 2)
    assert kept == list(views) and not ran & views.keys() and view_tests <= ran
    assert query(tmp_path, "select distinct snapshot_date from stg_connections") == [(D2,)]
    assert query(tmp_path, "select count(*) from stg_connections") == [(3,)]  # 1002 is not in D2

    with duckdb.connect(str(database_path(tmp_path))) as con:
        con.execute("drop view staging.int_addresses")
    kept, ran = build(D3, 3)
    assert kept == [] and views.keys() | view_tests <= ran
    assert query(tmp_path, "select count(*) from int_addresses") == query(
        tmp_path, "select count(*) from stg_addresses"
    )
    incremental = tables(tmp_path)
    build_warehouse(tmp_path, full_refresh=True)
    assert tables(tmp_path) == incremental


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated"])
def test_a_missing_or_corrupt_warehouse_is_rebuilt_from_the_parquet(tmp_path: Path, damage: str) -> None:
    root = parquet_root(tmp_path)
    write_snapshot(root, D1, retailers(1))
    write_snapshot(root, D2, retailers(2))
    build_warehouse(tmp_path)
    expected = tables(tmp_path)
    path = database_path(tmp_path)
    if damage == "missing":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"\0garbage" * 1000)
    else:
        path.write_bytes(path.read_bytes()[:5000])

    report = build_warehouse(tmp_path)

    assert report.full_refresh and report.refresh_dates == [D1, D2]
    assert tables(tmp_path) == expected


def test_staging_reads_exactly_the_published_files_after_a_reflatten_with_other_workers(tmp_path: Path) -> None:
    root = parquet_root(tmp_path)
    everyone = retailers(1, size=6)
    rows = snapshot_rows(everyone, D1)
    for table in TABLES:  # as two flatten workers write it: two part files per table
        first = partition_path(root, table, D1)
        first.parent.mkdir(parents=True, exist_ok=True)
        half = len(rows[table]) // 2
        pq.write_table(table_of(table, rows[table][:half]), first)
        pq.write_table(table_of(table, rows[table][half:]), first.with_name("part-00001.parquet"))
        publish_partition(root, table, D1)
    build_warehouse(tmp_path)
    assert query(tmp_path, "select count(*) from dim_retailers") == [(6,)]

    for table in TABLES:  # flattened again by one worker: the directory is replaced whole
        shutil.rmtree(partition_path(root, table, D1).parent)
    write_snapshot(root, D1, everyone[:4])
    assert build_warehouse(tmp_path).refresh_dates == [D1]
    assert query(tmp_path, "select count(*) from dim_retailers") == [(4,)]
    assert query(tmp_path, "select count(*) from int_retailer_fingerprints") == [(4,)]


def test_read_returns_models_and_tables_as_arrow_backed_frames(tmp_path: Path) -> None:
    write_snapshot(parquet_root(tmp_path), D1, retailers(1))
    write_snapshot(parquet_root(tmp_path), D2, retailers(2))
    build_warehouse(tmp_path)

    dim = read("dim_retailers", tmp_path)
    assert list(dim["customer_account_id"]) == [1000, 1001, 1003]
    assert all(isinstance(dtype, pd.ArrowDtype) for dtype in dim.dtypes)
    connections = read("connections", tmp_path)  # a Parquet table: every published snapshot
    assert sorted(connections["snapshot_date"].astype(str).unique()) == [str(D1), str(D2)]
    assert len(connections) == 7
    assert read("stg_connections", tmp_path)["snapshot_date"].astype(str).unique().tolist() == [str(D2)]
    with pytest.raises(WarehouseError, match="no model or table named 'nope'"):
        read("nope", tmp_path)
    with pytest.raises(WarehouseError, match="no warehouse at"):
        read("dim_retailers", tmp_path / "elsewhere")


def test_a_second_build_waits_for_the_first(tmp_path: Path) -> None:
    write_snapshot(parquet_root(tmp_path), D1, retailers(1))
    with warehouse_build(tmp_path), pytest.raises(WarehouseError, match="another warehouse build held"):
        build_warehouse(tmp_path, lock_timeout=0.3)


def test_dbt_docs_generate_offline_one_page_that_opens_from_disk(tmp_path: Path) -> None:
    """`make docs`: dbt's static page, with the manifest and the catalog inlined (a browser opening the file from
    disk may not fetch manifest.json beside it), every column's description in it."""
    write_snapshot(parquet_root(tmp_path), D1, retailers(1))
    build_warehouse(tmp_path)
    page = generate_docs(tmp_path)
    assert page.name == "static_index.html"
    text = page.read_text(encoding="utf-8")
    assert "MANIFEST.JSON INLINE DATA" not in text and "CATALOG.JSON INLINE DATA" not in text
    assert "https://schemas.getdbt.com/dbt/manifest/" in text and "https://schemas.getdbt.com/dbt/catalog/" in text
    assert '"model.joor.dim_retailers"' in text
    assert "The retailer's name on JOOR." in text  # a column description, from the data contract
    assert (page.parent / "catalog.json").is_file()  # the served index.html's data, beside it
    assert not (DBT_PROJECT_DIR / "target").exists()


def test_the_package_offers_read_for_notebooks(tmp_path: Path) -> None:
    import joor_pipeline

    write_snapshot(parquet_root(tmp_path), D1, retailers(1, size=2))
    build_warehouse(tmp_path)
    frame = joor_pipeline.read("payment_terms", tmp_path)
    assert frame["retailers"].tolist() == [2] and isinstance(frame.dtypes["retailers"], pd.ArrowDtype)


def test_a_full_refresh_in_batches_of_dates_gives_the_same_tables(tmp_path: Path) -> None:
    for day, snapshot_date in enumerate((D1, D2, D3, D4), start=1):
        write_snapshot(parquet_root(tmp_path), snapshot_date, retailers(day))
    build_warehouse(tmp_path)
    whole = tables(tmp_path)
    report = build_warehouse(tmp_path, full_refresh=True, batch_dates=3)  # dbt runs twice: 3 dates, then 1
    assert report.refresh_dates == [D1, D2, D3, D4]
    assert tables(tmp_path) == whole

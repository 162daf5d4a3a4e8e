"""Raw snapshot -> partitioned Parquet: reconciliation with the raw pages, atomic swaps, errors and DuckDB reads."""

from __future__ import annotations

import copy
import os
import re
from collections import Counter
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq
import pytest

from joor_pipeline.flatten import TABLES, arrow_schema, parts
from joor_pipeline.flatten.runner import flatten_snapshot
from joor_pipeline.joor.errors import PayloadError
from joor_pipeline.joor.parse import parse_page
from joor_pipeline.layout import MANIFEST as MANIFEST_NAME
from joor_pipeline.layout import PARQUET as PARQUET_DIR
from joor_pipeline.sandbox.data import generate_connections
from joor_pipeline.storage.raw import SnapshotNotFound, iter_raw_pages, read_manifest
from joor_pipeline_tests.raw_fixtures import (
    PAGE_SIZE,
    land,
    parquet_path,
    partition_bytes,
    partition_dir,
    raw_pages,
    raw_snapshot_dir,
    snap,
    staging_leftovers,
)

DAY = date(2024, 5, 1)
NEXT_DAY = date(2024, 5, 2)


# --- reconciliation ---------------------------------------------------------------------------------------


def raw_keys(data_dir: Path, snapshot_date: date, fmt: str) -> dict[str, Counter[tuple[Any, ...]]]:
    """Every connection and list item of the landed pages, keyed as the tables key them, plus page and log_id."""
    keys: dict[str, Counter[tuple[Any, ...]]] = {name: Counter() for name in TABLES}
    for path in raw_pages(data_dir, snapshot_date):
        page = parse_page(path.read_bytes(), fmt)
        number, log_id = int(path.stem.split("-")[1]), page.response.log_id
        for connection in page.connections:
            account_id = int(connection["customer_account_id"])
            keys["connections"][(number, log_id, account_id)] += 1
            for name, spec in TABLES.items():
                for source in spec.lists:
                    container = connection if len(source.path) == 1 else connection[source.path[0]]
                    for ordinal, _ in enumerate(container[source.key]):
                        kind = (source.address_type,) if source.address_type else ()
                        keys[name][(number, log_id, account_id, *kind, ordinal)] += 1
    return keys


def parquet_keys(data_dir: Path, snapshot_date: date) -> dict[str, Counter[tuple[Any, ...]]]:
    keys: dict[str, Counter[tuple[Any, ...]]] = {}
    for name, spec in TABLES.items():
        table = pq.read_table(parquet_path(data_dir, name, snapshot_date))
        assert table.schema.equals(arrow_schema(name)), name
        columns = ["source_page", "log_id", *[k for k in spec.key if k not in ("snapshot_date", "account")]]
        keys[name] = Counter(zip(*(table[c].to_pylist() for c in columns), strict=True))
        assert set(table["snapshot_date"].to_pylist()) <= {snapshot_date}
        assert set(table["account"].to_pylist()) <= {"default"}
    return keys


@pytest.mark.parametrize("fmt", ["json", "xml"])
@pytest.mark.parametrize("n", [0, 1, 99, 100, 101, 1000])
def test_every_raw_connection_and_item_lands_exactly_once(tmp_path: Path, n: int, fmt: str) -> None:
    land(tmp_path, DAY, generate_connections(n, seed=21), fmt)
    report = flatten_snapshot(tmp_path, snap(DAY))

    expected = raw_keys(tmp_path, DAY, fmt)
    written = parquet_keys(tmp_path, DAY)
    assert sum(expected["connections"].values()) == n
    for name in TABLES:
        assert written[name] == expected[name], name
        assert set(written[name].values()) <= {1}, name
        assert report.rows[name] == sum(expected[name].values()), name
    assert report.pages == -(-n // PAGE_SIZE) and report.format == fmt
    assert report.connections == n
    assert not report.stats.coercion_problems and not report.stats.unknown_fields
    assert staging_leftovers(tmp_path) == []


def test_json_and_xml_snapshots_of_the_same_data_write_identical_tables(tmp_path: Path) -> None:
    connections = generate_connections(250, seed=8)
    tables = {}
    for fmt in ("json", "xml"):
        land(tmp_path / fmt, DAY, connections, fmt)
        flatten_snapshot(tmp_path / fmt, snap(DAY))
        tables[fmt] = {name: pq.read_table(parquet_path(tmp_path / fmt, name, DAY)) for name in TABLES}
    for name in TABLES:
        assert tables["json"][name].num_rows > 0, name
        assert tables["json"][name].equals(tables["xml"][name]), name


def test_duplicates_across_pages_are_written_once(tmp_path: Path) -> None:
    connections = generate_connections(150, seed=3)
    connections.append(copy.deepcopy(connections[5]))  # page 1 repeats a connection of page 0
    land(tmp_path, DAY, connections)
    report = flatten_snapshot(tmp_path, snap(DAY))
    ids = pq.read_table(parquet_path(tmp_path, "connections", DAY))["customer_account_id"].to_pylist()
    assert len(ids) == len(set(ids)) == 150
    assert report.stats.duplicate_connections == 1 and report.stats.connections == 151


def test_raw_pages_are_read_back_in_manifest_order(tmp_path: Path) -> None:
    land(tmp_path, DAY, generate_connections(250, seed=4), "xml")
    pages = [
        (entry.page, entry.file, len(connections), log_id)
        for entry, connections, log_id in iter_raw_pages(tmp_path, snap(DAY))
    ]
    publication = read_manifest(tmp_path, snap(DAY))["publication_id"]
    assert pages == [
        (0, f"page-00000-{publication}.xml", 100, "log-0"),
        (1, f"page-00001-{publication}.xml", 100, "log-1"),
        (2, f"page-00002-{publication}.xml", 50, "log-2"),
    ]


def test_progress_is_reported_after_every_page(tmp_path: Path) -> None:
    land(tmp_path, DAY, generate_connections(250, seed=4))
    calls: list[tuple[int, int, int]] = []
    flatten_snapshot(tmp_path, snap(DAY), progress=lambda *args: calls.append(args))
    assert calls == [(1, 3, 100), (2, 3, 200), (3, 3, 250)]


# --- idempotence and atomic replacement -------------------------------------------------------------------


def test_a_rerun_writes_byte_identical_files(tmp_path: Path) -> None:
    land(tmp_path, DAY, generate_connections(230, seed=8), "xml")
    first = flatten_snapshot(tmp_path, snap(DAY))
    before = partition_bytes(tmp_path, DAY)
    second = flatten_snapshot(tmp_path, snap(DAY))
    assert partition_bytes(tmp_path, DAY) == before
    assert first.rows == second.rows and first.paths == second.paths
    assert all((Path(path) / f"part-00000-{second.publication_id}.parquet").is_file() for path in second.paths.values())
    assert staging_leftovers(tmp_path) == []


def _counting_decoder(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Count the pages the typed decoder is asked to decode, and whether it took each (True) or declined."""
    calls: list[bool] = []
    real = parts.decode_records

    def counting(body: bytes) -> Any:
        decoded = real(body)
        calls.append(decoded is not None)
        return decoded

    monkeypatch.setattr(parts, "decode_records", counting)
    return calls


def test_clean_pages_are_decoded_into_records_and_write_what_dicts_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flatten's fast path (a clean JSON page decoded straight into records) changes no byte of the output,
    nor the stats: the same snapshot flattened with it and without it, a page that is not clean among them."""
    connections = generate_connections(450, seed=5)
    connections[150]["zz_field_joor_added"] = "x"  # page 1 is parsed into dicts: the field goes to extra
    for data_dir in (tmp_path / "records", tmp_path / "dicts"):
        land(data_dir, DAY, connections)
    calls = _counting_decoder(monkeypatch)
    with_records = flatten_snapshot(tmp_path / "records", snap(DAY), workers=1)
    assert calls == [True, False, True, True, True]
    monkeypatch.setattr(parts, "MAX_DECLINED", 0)  # never tried: every page parsed into dicts
    without = flatten_snapshot(tmp_path / "dicts", snap(DAY), workers=1)
    assert len(calls) == 5
    assert partition_bytes(tmp_path / "records", DAY) == partition_bytes(tmp_path / "dicts", DAY)
    assert with_records.stats == without.stats
    assert with_records.stats.unknown_fields == {"connections.zz_field_joor_added": 1}


def test_a_worker_stops_trying_records_after_a_few_pages_that_are_not_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A field JOOR adds reaches every page: the typed decoder declines the first few, then is not asked again,
    so the pages are not decoded twice for the rest of the run."""
    connections = generate_connections(600, seed=5)
    for connection in connections:
        connection["zz_field_joor_added"] = 1
    land(tmp_path, DAY, connections)
    calls = _counting_decoder(monkeypatch)
    report = flatten_snapshot(tmp_path, snap(DAY), workers=1)
    assert calls == [False] * parts.MAX_DECLINED
    assert report.connections == 600 and report.stats.unknown_fields == {"connections.zz_field_joor_added": 600}


@pytest.mark.parametrize(
    ("fmt", "spoil", "reason"),
    [
        ("json", lambda body: body[: len(body) // 2], "invalid JSON"),
        ("xml", lambda body: body[: len(body) // 2], "invalid XML"),
        ("json", lambda body: b'{"response": {"code": 0}, "connections": "none"}', "'connections' should be a list"),
        ("xml", lambda body: b"<orders><response><code>0</code></response></orders>", "root element is <orders>"),
    ],
)
def test_a_failed_rerun_leaves_the_previous_partition_intact(
    tmp_path: Path, fmt: str, spoil: Callable[[bytes], bytes], reason: str
) -> None:
    land(tmp_path, DAY, generate_connections(120, seed=1), fmt)
    flatten_snapshot(tmp_path, snap(DAY))
    before = partition_bytes(tmp_path, DAY)

    land(tmp_path, DAY, generate_connections(300, seed=2), fmt, body_of=lambda i, b: spoil(b) if i == 1 else b)
    with pytest.raises(PayloadError) as caught:
        flatten_snapshot(tmp_path, snap(DAY))
    message = str(caught.value)
    assert reason in message
    assert re.search(rf"page-00001-\w+\.{fmt}", message)
    assert "log_id log-1" in message  # from the manifest when the body has none
    assert partition_bytes(tmp_path, DAY) == before
    assert staging_leftovers(tmp_path) == []


def test_an_upload_failing_midway_publishes_nothing_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    land(tmp_path, DAY, generate_connections(120, seed=1))
    flatten_snapshot(tmp_path, snap(DAY))
    before = partition_bytes(tmp_path, DAY)
    folders = {table: sorted(partition_dir(tmp_path, table, DAY).iterdir()) for table in TABLES}
    land(tmp_path, DAY, generate_connections(200, seed=2))
    rename = os.replace
    doors = partition_dir(tmp_path, "doors", DAY)

    def failing_rename(src: Any, dst: Any) -> None:
        # The filesystem gives out when the doors table's new file is moved in beside the live one.
        if Path(dst).parent == doors and "new" in Path(src).parts:
            raise OSError("simulated rename failure")
        rename(src, dst)

    monkeypatch.setattr(os, "replace", failing_rename)
    with pytest.raises(OSError, match="simulated rename failure"):
        flatten_snapshot(tmp_path, snap(DAY))
    monkeypatch.undo()
    assert partition_bytes(tmp_path, DAY) == before
    # The uploads made before the failure (other tables' new files) were deleted, and the pending record too.
    assert {table: sorted(partition_dir(tmp_path, table, DAY).iterdir()) for table in TABLES} == folders
    assert not list((tmp_path / "_work" / "journals").iterdir())
    assert staging_leftovers(tmp_path) == []


def test_a_page_that_differs_from_its_manifest_entry_is_refused(tmp_path: Path) -> None:
    land(tmp_path, DAY, generate_connections(10, seed=1))
    page = raw_pages(tmp_path, DAY)[0]
    page.write_bytes(page.read_bytes().replace(b'"code": 0', b'"code":0'))
    with pytest.raises(PayloadError, match=r"sha256.*page-00000-\w+\.json \(log_id log-0\)"):
        flatten_snapshot(tmp_path, snap(DAY))
    assert not (tmp_path / PARQUET_DIR / "connections").exists()


def test_a_snapshot_without_manifest_is_incomplete(tmp_path: Path) -> None:
    land(tmp_path, DAY, generate_connections(3, seed=1))
    raw_dir = raw_snapshot_dir(tmp_path, DAY)
    (raw_dir / MANIFEST_NAME).unlink()
    with pytest.raises(SnapshotNotFound, match="incomplete") as caught:
        flatten_snapshot(tmp_path, snap(DAY))
    assert str(raw_dir) in str(caught.value)
    with pytest.raises(SnapshotNotFound, match="2024-05-02"):
        flatten_snapshot(tmp_path, snap(NEXT_DAY))


def test_a_page_missing_from_disk_is_reported(tmp_path: Path) -> None:
    land(tmp_path, DAY, generate_connections(150, seed=1))
    raw_pages(tmp_path, DAY)[1].unlink()
    with pytest.raises(SnapshotNotFound, match=r"page-00001-\w+\.json is in the manifest but not on disk"):
        flatten_snapshot(tmp_path, snap(DAY))
    assert staging_leftovers(tmp_path) == []


# --- reading it back --------------------------------------------------------------------------------------


def test_duckdb_reads_the_partitions_with_snapshot_date_as_a_date(tmp_path: Path) -> None:
    land(tmp_path, DAY, generate_connections(30, seed=5))
    land(tmp_path, NEXT_DAY, generate_connections(40, seed=5))
    first, second = flatten_snapshot(tmp_path, snap(DAY)), flatten_snapshot(tmp_path, snap(NEXT_DAY))
    glob = str(tmp_path / "parquet" / "addresses" / "*" / "*" / "*.parquet")
    con = duckdb.connect()
    relation = "read_parquet(?, hive_partitioning = true)"
    counts = con.execute(
        f"select snapshot_date, typeof(snapshot_date), count(*) from {relation} group by all order by 1", [glob]
    ).fetchall()
    assert counts == [
        (DAY, "DATE", first.rows["addresses"]),
        (NEXT_DAY, "DATE", second.rows["addresses"]),
    ]
    columns = [row[0] for row in con.execute(f"describe select * from {relation}", [glob]).fetchall()]
    assert columns == arrow_schema("addresses").names  # snapshot_date once, where the contract puts it
    pruned = con.execute(f"select count(*) from {relation} where snapshot_date = ?", [glob, NEXT_DAY]).fetchone()
    assert pruned == (second.rows["addresses"],)


def test_an_empty_snapshot_writes_every_table_empty(tmp_path: Path) -> None:
    land(tmp_path, DAY, [])
    report = flatten_snapshot(tmp_path, snap(DAY))
    assert report.pages == 0 and report.rows == dict.fromkeys(TABLES, 0)
    con = duckdb.connect()
    for name in TABLES:
        path = parquet_path(tmp_path, name, DAY)
        table = pq.read_table(path)
        assert table.num_rows == 0 and table.schema.equals(arrow_schema(name)), name
        glob = str(tmp_path / "parquet" / name / "*" / "*" / "*.parquet")
        assert con.execute("select count(*) from read_parquet(?, hive_partitioning = true)", [glob]).fetchone() == (0,)

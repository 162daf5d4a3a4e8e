"""The dbt models on DuckDB: known Parquet snapshots in, exact answers out; the project's conventions."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from joor_pipeline.flatten.schema import REQ_YES, STRING, TABLES, arrow_schema
from joor_pipeline.warehouse import ANALYST_MODELS, DBT_PROJECT_DIR, WarehouseError, database_path
from joor_pipeline_tests.model_fixtures import (
    CHILD_TABLES,
    Retailer,
    build,
    clean_retailer,
    parquet_root,
    partition_path,
    publish_partition,
    query,
    snapshot_rows,
    table_of,
    write_snapshot,
    write_table,
)

D1, D2, D3 = date(2024, 3, 1), date(2024, 3, 2), date(2024, 3, 4)  # no snapshot on 2024-03-03
LONG_CODE = "X" * 51


# --- the main data set: three snapshots, six retailers ------------------------------------------------------


def _alpha() -> Retailer:
    """Unchanged in every snapshot; its defaults are not its first methods."""
    r = clean_retailer(1001, "ALPHA")
    r.children["addresses"] = [
        {"address_type": "billing", "address_id": 10010, "city": "New York", "state": "NY", "country": "United States"},
        {"address_type": "billing", "address_id": 10012, "city": "New York", "state": "NY", "country": "U.S.A."},
        {"address_type": "shipping", "address_id": 10011, "city": "New York", "state": "NY", "country": "USA"},
        {"address_type": "location", "address_id": 10013, "city": "Berlin", "country": "Deutschland"},
    ]
    r.children["payment_methods"] = [
        {"payment_method_code": "cc", "payment_method_name": "Credit Card", "payment_method_is_default": False},
        {"payment_method_code": "net30", "payment_method_name": "Net 30", "payment_method_is_default": True},
        {"payment_method_code": "wt", "payment_method_name": "Wire Transfer", "payment_method_is_default": True},
    ]
    r.children["shipping_methods"] = [
        {
            "shipping_method_code": "ups_ground",
            "shipping_method_name": "UPS Ground",
            "shipping_method_is_default": False,
        },
        {
            "shipping_method_code": "fedex_economy",
            "shipping_method_name": "FedEx International Economy",
            "shipping_method_is_default": True,
        },
    ]
    r.children["discounts"] = [
        {"account_boutique_discount_id": 1, "amount": 4.0, "division_id": 498, "line_item_level": True},
        {"account_boutique_discount_id": 2, "amount": 7.0, "division_id": None, "line_item_level": False},
    ]
    r.children["buyers"] = [{"buyer_id": 1, "buyer_name": "Kristen"}, {"buyer_id": 2, "buyer_email": "b@example.com"}]
    return r


def _beta(shipping_city: str) -> Retailer:
    """Its shipping address moves in the second snapshot."""
    r = clean_retailer(1002, "BETA")
    r.children["addresses"] = [
        {"address_type": "billing", "address_id": 10020, "city": "London", "country": "U.K."},
        {"address_type": "shipping", "address_id": 10021, "city": shipping_city, "state": "MA", "country": "US"},
    ]
    r.children["payment_methods"] = [
        {"payment_method_code": "net30", "payment_method_name": "Net 30", "payment_method_is_default": True},
        {"payment_method_code": "cc", "payment_method_name": "Credit Card", "payment_method_is_default": False},
    ]
    r.children["discounts"] = [{"amount": 6.0, "division_id": 498, "line_item_level": True}]
    return r


def _gamma() -> Retailer:
    """Gone from the third snapshot."""
    return clean_retailer(1003, "GAMMA")


def _delta() -> Retailer:
    """Missing from the second snapshot, back in the third."""
    r = clean_retailer(1004, "DELTA")
    r.children["addresses"] = [
        {"address_type": "billing", "address_id": 10040, "city": "Tokyo", "state": "Tokyo", "country": "Japan"},
        {"address_type": "shipping", "address_id": 10041, "city": "Osaka", "state": "Osaka", "country": "jp "},
    ]
    r.children["payment_methods"] = [
        {"payment_method_code": "cc", "payment_method_name": "Credit Card", "payment_method_is_default": True}
    ]
    r.children["discounts"] = [{"amount": 10.0, "division_id": 755, "line_item_level": False}]
    return r


def _epsilon() -> Retailer:
    """New in the third snapshot, with planted problems."""
    r = clean_retailer(1005, "EPSILON")
    r.connection["customer_alias"] = None  # required field missing
    r.children["addresses"] = [
        {"address_type": "billing", "address_id": 10050, "city": "Austin", "state": None, "country": "USA"},
        {"address_type": "shipping", "address_id": 10051, "city": "Cair Paravel", "country": "Narnia"},
    ]
    r.children["doors"] = [{"door_id": 77, "shipping_address_id": 999, "door_name": "Door 77"}]  # dangling
    r.children["payment_methods"] = [
        {"payment_method_code": "wt", "payment_method_name": "Wire Transfer", "payment_method_is_default": False}
    ]
    r.children["discounts"] = [
        {"amount": None, "division_id": None, "line_item_level": True, "invalid_values": '{"amount":"lots"}'}
    ]
    r.children["buyers"] = [{"buyer_id": 5, "buyer_name": "Eve", "extra": '{"buyer_phone":"555"}'}]
    return r


def _zeta() -> Retailer:
    """New in the third snapshot: a customer_code over JOOR's 50 characters and a duplicated warehouse key."""
    r = clean_retailer(1006, LONG_CODE)
    r.children["warehouses"] = [
        {"warehouse_name": "Main", "warehouse_code": "W1", "ordinal": 0},
        {"warehouse_name": "Second", "warehouse_code": "W2", "ordinal": 0},
    ]
    return r


def _without_tax_ids(retailers: list[Retailer]) -> list[Retailer]:
    for retailer in retailers:
        retailer.children["tax_ids"] = []
    return retailers


SNAPSHOTS: dict[date, list[Retailer]] = {
    D1: _without_tax_ids([_alpha(), _beta("Boston"), _gamma(), _delta()]),
    D2: _without_tax_ids([_alpha(), _beta("Cambridge"), _gamma()]),
    D3: _without_tax_ids([_alpha(), _beta("Cambridge"), _delta(), _epsilon(), _zeta()]),
}


@dataclass(frozen=True)
class Built:
    data_dir: Path
    counts: dict[str, int]

    def rows(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        return query(self.data_dir, sql, params)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    data_dir = tmp_path_factory.mktemp("warehouse")
    for page, (snapshot_date, retailers) in enumerate(SNAPSHOTS.items()):
        # provenance differs in every snapshot; it must not open versions
        write_snapshot(parquet_root(data_dir), snapshot_date, retailers, source_page=page)
    return Built(data_dir, build(data_dir))


# --- the model catalogue ------------------------------------------------------------------------------------


MODEL_FILES = sorted((DBT_PROJECT_DIR / "models").rglob("*.sql"))


def test_one_file_per_model_with_a_header_stating_its_grain_in_lowercase_sql() -> None:
    names = [path.stem for path in MODEL_FILES]
    assert len(names) == len(set(names))
    assert {f"stg_{table}" for table in TABLES} | set(ANALYST_MODELS) <= set(names)
    for path in MODEL_FILES:
        lines = path.read_text().splitlines()
        assert lines[0].startswith(f"-- {path.stem}: "), path.name
        assert any(line.startswith("-- grain: one row per ") for line in lines[:4]), path.name
        body = "\n".join(line.split("--")[0] for line in lines)
        code = re.sub(r"'[^']*'", "''", re.sub(r"\{\{.*?\}\}", "", body, flags=re.S))
        assert code == code.lower(), path.name
        for other in names:  # models read each other through ref(), never by a bare name
            if other != path.stem:
                assert not re.search(rf"(from|join)\s+{other}\b", code), (path.name, other)
    for path in (DBT_PROJECT_DIR / "models").glob("*/_models.yml"):  # the dbt docs say what the headers say
        for model in yaml.safe_load(path.read_text())["models"]:
            header = [line[3:] for line in (path.parent / f"{model['name']}.sql").read_text().splitlines()]
            first = header[0].removeprefix(f"{model['name']}: ")
            assert model["description"].startswith(first), model["name"]
            assert "grain: one row per" in model["description"], model["name"]
    for table in TABLES:
        assert f"source('joor', '{table}')" in (DBT_PROJECT_DIR / "models" / "staging" / f"stg_{table}.sql").read_text()


# --- staging --------------------------------------------------------------------------------------------------


def test_staging_shows_the_latest_snapshot_and_the_history_reads_every_partition(built: Built) -> None:
    assert built.rows("select snapshot_date, typeof(snapshot_date), count(*) from stg_connections group by all") == [
        (D3, "DATE", 5)
    ]
    assert built.counts["stg_addresses"] == 4 + 2 + 2 + 2 + 2
    assert built.counts["stg_tax_ids"] == 0
    assert built.rows("select snapshot_date, connections from int_snapshots order by 1") == [(D1, 4), (D2, 3), (D3, 5)]


def test_staging_takes_the_partition_date_from_the_path_and_reads_older_files_by_name(tmp_path: Path) -> None:
    root = parquet_root(tmp_path)
    # an older file: no customer_email column, a column the contract no longer has, a wrong date inside the file
    older = table_of("connections", snapshot_rows([clean_retailer(2, "TWO")], date(1999, 1, 1))["connections"])
    older = older.drop_columns(["customer_email"]).append_column("loyalty_tier", pa.array(["gold"]))
    path = partition_path(root, "connections", D2)
    path.parent.mkdir(parents=True)
    pq.write_table(older, path)
    publish_partition(root, "connections", D2)
    hidden = root / "connections" / ".staging-123" / "part-00000.parquet"  # a write in progress
    hidden.parent.mkdir()
    pq.write_table(table_of("connections", snapshot_rows([clean_retailer(3, "THREE")], D2)["connections"]), hidden)
    stray = partition_path(root, "connections", D2).with_name("copy of part.parquet")  # not a published file
    pq.write_table(table_of("connections", snapshot_rows([clean_retailer(4, "FOUR")], D2)["connections"]), stray)

    build(tmp_path)
    assert query(
        tmp_path, "select snapshot_date, customer_account_id, customer_email, loyalty_tier from stg_connections"
    ) == [(D2, 2, None, "gold")]
    columns = [row[0] for row in query(tmp_path, "describe stg_connections")]
    assert columns == [*arrow_schema("connections").names, "loyalty_tier"]
    assert query(tmp_path, "select customer_account_id from retailer_history") == [(2,)]


_DUCKDB_TYPES = {
    pa.string(): "VARCHAR",
    pa.int64(): "BIGINT",
    pa.int32(): "INTEGER",
    pa.float64(): "DOUBLE",
    pa.bool_(): "BOOLEAN",
    pa.date32(): "DATE",
    pa.timestamp("us", tz="UTC"): "TIMESTAMP WITH TIME ZONE",
}


def test_no_published_snapshot_is_one_clear_error_and_leaves_no_warehouse(tmp_path: Path) -> None:
    with pytest.raises(WarehouseError, match=r"^no published snapshot under .*parquet: flatten one first"):
        build(tmp_path)
    assert not database_path(tmp_path).exists()


def test_models_build_when_only_connections_have_partitions_with_typed_staging_views(tmp_path: Path) -> None:
    rows = snapshot_rows([clean_retailer(1, "ONE"), clean_retailer(2, "TWO")], D1)
    write_table(parquet_root(tmp_path), "connections", D1, rows["connections"])

    counts = build(tmp_path)

    assert counts["dim_retailers"] == 2
    assert counts["retailer_history"] == 2
    assert counts["data_quality_issues"] == 0
    assert query(
        tmp_path,
        "select customer_account_id, default_payment_method_code, billing_addresses, doors, payment_methods "
        "from dim_retailers order by 1",
    ) == [(1, None, 0, 0, 0), (2, None, 0, 0, 0)]
    for table in TABLES:
        described = [(row[0], row[1]) for row in query(tmp_path, f"describe stg_{table}")]
        assert described == [(f.name, _DUCKDB_TYPES[f.type]) for f in arrow_schema(table)], table


# --- dim_retailers -------------------------------------------------------------------------------------------


def test_dim_retailers_has_the_latest_snapshot_with_defaults_and_counts(built: Built) -> None:
    rows = built.rows(
        "select customer_account_id, customer_code, snapshot_date, default_payment_method_code, "
        "default_payment_method_name, default_shipping_method_code, default_shipping_method_name, "
        "billing_addresses, shipping_addresses, locations, doors, buyers, price_types, discounts, payment_methods, "
        "shipping_methods, warehouses, tax_ids from dim_retailers"
    )
    assert rows == [
        (1001, "ALPHA", D3, "net30", "Net 30", "fedex_economy", "FedEx International Economy",
         2, 1, 1, 1, 2, 1, 2, 3, 2, 1, 0),
        (1002, "BETA", D3, "net30", "Net 30", "ups_ground", "UPS Ground", 1, 1, 0, 1, 1, 1, 1, 2, 1, 1, 0),
        (1004, "DELTA", D3, "cc", "Credit Card", "ups_ground", "UPS Ground", 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 0),
        (1005, "EPSILON", D3, None, None, "ups_ground", "UPS Ground", 1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 0),
        (1006, LONG_CODE, D3, "net30", "Net 30", "ups_ground", "UPS Ground", 1, 1, 0, 1, 1, 1, 1, 1, 1, 2, 0),
    ]  # fmt: skip
    assert built.rows("select customer_alias, company_number_name, sales_rep_code from dim_retailers limit 1") == [
        ("ALPHA alias", "company1", "AB")
    ]


# --- retailer_history ----------------------------------------------------------------------------------------


def test_retailer_history_versions(built: Built) -> None:
    rows = built.rows(
        "select customer_account_id, version_number, valid_from, valid_to, is_current, last_seen_snapshot_date "
        "from retailer_history order by customer_account_id, valid_from"
    )
    assert rows == [
        (1001, 1, D1, None, True, D3),  # unchanged in three snapshots, provenance changing: one version
        (1002, 1, D1, D2, False, D1),  # shipping city changed in D2
        (1002, 2, D2, None, True, D3),
        (1003, 1, D1, D3, False, D2),  # missing from D3: closed on the first snapshot it is missing from
        (1004, 1, D1, D2, False, D1),  # missing from D2 ...
        (1004, 2, D3, None, True, D3),  # ... back in D3: a new version
        (1005, 1, D3, None, True, D3),
        (1006, 1, D3, None, True, D3),
    ]
    hashes = dict(built.rows("select customer_account_id || '/' || version_number, change_hash from retailer_history"))
    assert hashes["1002/1"] != hashes["1002/2"]
    assert hashes["1004/1"] == hashes["1004/2"]  # the same content, yet a version of its own after the gap
    assert all(re.fullmatch(r"[0-9a-f]{16}", h) for h in hashes.values())
    assert built.rows(
        "select customer_code, customer_alias from retailer_history where customer_account_id = 1001"
    ) == [("ALPHA", "ALPHA alias")]


def _variant(account_id: int, state: int) -> Retailer:
    retailer = clean_retailer(account_id, f"R{account_id}")
    if state == 1:
        retailer.connection["customer_alias"] = "renamed"
    elif state == 2:
        retailer.children["doors"][0]["door_code"] = "D2"
    return retailer


def _expected_versions(states: list[int | None], dates: list[date]) -> list[tuple[date, date | None, bool]]:
    """SCD2 by hand: a version opens on a change or a return, and closes on the next snapshot that differs."""
    versions: list[list[Any]] = []
    previous: int | None = None
    for snapshot_date, state in zip(dates, states, strict=True):
        if state != previous:
            if versions and versions[-1][1] is None:
                versions[-1][1] = snapshot_date
            if state is not None:
                versions.append([snapshot_date, None])
        previous = state
    return [(valid_from, valid_to, valid_to is None) for valid_from, valid_to in versions]


def test_retailer_history_matches_a_reference_on_random_histories(tmp_path: Path) -> None:
    rng = random.Random(20240301)
    dates = [date(2024, 1, 1 + 2 * i) for i in range(7)]
    states = {account_id: [rng.choice([None, 0, 0, 1, 2]) for _ in dates] for account_id in range(5000, 5040)}
    for i, snapshot_date in enumerate(dates):
        present = [_variant(a, state) for a, s in states.items() if (state := s[i]) is not None]
        write_snapshot(parquet_root(tmp_path), snapshot_date, [clean_retailer(4999, "ANCHOR"), *present])
        build(tmp_path)  # daily: each build after the first is incremental, continuing the open versions

    rows = query(
        tmp_path,
        "select customer_account_id, valid_from, valid_to, is_current from retailer_history order by 1, 2",
    )
    expected = [(4999, dates[0], None, True)] + [
        (account_id, *version)
        for account_id, account_states in states.items()
        for version in _expected_versions(account_states, dates)
    ]
    assert rows == expected
    assert len(expected) > 60


_CHILD_CHANGES: dict[str, tuple[str, Any]] = {
    "addresses": ("city", "Brooklyn"),
    "payment_methods": ("payment_method_name", "Net 30 days"),
    "shipping_methods": ("shipping_method_is_default", False),
    "discounts": ("amount", 5.5),
    "doors": ("door_code", "D1"),
    "price_types": ("price_type_terms", "new terms"),
    "buyers": ("buyer_email", "new@example.com"),
    "warehouses": ("warehouse_code", "W9"),
    "tax_ids": ("tax_id_number", "FR999"),
}


def test_change_hash_covers_every_child_table_and_ignores_provenance_and_file_order(tmp_path: Path) -> None:
    assert set(_CHILD_CHANGES) == set(CHILD_TABLES)
    root = parquet_root(tmp_path)
    first = [clean_retailer(3000 + i, f"C{i}") for i in range(len(CHILD_TABLES))]
    steady = clean_retailer(3100, "STEADY")
    steady.children["buyers"] = [{"buyer_id": 1, "buyer_name": "A"}, {"buyer_id": 2, "buyer_name": "B"}]
    reordered = clean_retailer(3200, "REORDERED")
    reordered.children["buyers"] = [{"buyer_id": 1, "buyer_name": "A"}, {"buyer_id": 2, "buyer_name": "B"}]
    renamed = clean_retailer(3300, "RENAMED")
    write_snapshot(root, D1, [*first, steady, reordered, renamed], log_id="log-a", source_page=0)

    second = [retailer.copy() for retailer in first]
    for retailer, (table, (column, value)) in zip(second, _CHILD_CHANGES.items(), strict=True):
        retailer.children[table][0][column] = value
    reordered_again = reordered.copy()
    reordered_again.children["buyers"].reverse()
    renamed_again = renamed.copy()
    renamed_again.connection["customer_alias"] = "new alias"
    rows = snapshot_rows([*second, steady, reordered_again, renamed_again], D2, log_id="log-b", source_page=7)
    for table, table_rows in rows.items():
        write_table(root, table, D2, table_rows[::-1])  # file order must not matter, only ordinal

    build(tmp_path)

    versions = dict(query(tmp_path, "select customer_account_id, count(*) from retailer_history group by 1"))
    assert versions == {**{3000 + i: 2 for i in range(len(CHILD_TABLES))}, 3100: 1, 3200: 2, 3300: 2}


# --- retailer_addresses, payment_terms, discount_summary ---------------------------------------------------


def test_retailer_addresses_of_current_retailers_with_country_codes_and_doors(built: Built) -> None:
    rows = built.rows(
        "select customer_account_id, address_type, ordinal, country, country_code, is_door_address, snapshot_date "
        "from retailer_addresses"
    )
    assert rows == [
        (1001, "billing", 0, "United States", "US", False, D3),
        (1001, "billing", 1, "U.S.A.", "US", False, D3),
        (1001, "location", 0, "Deutschland", "DE", False, D3),
        (1001, "shipping", 0, "USA", "US", True, D3),
        (1002, "billing", 0, "U.K.", "GB", False, D3),
        (1002, "shipping", 0, "US", "US", True, D3),
        (1004, "billing", 0, "Japan", "JP", False, D3),
        (1004, "shipping", 0, "jp ", "JP", True, D3),
        (1005, "billing", 0, "USA", "US", False, D3),
        (1005, "shipping", 0, "Narnia", None, False, D3),
        (1006, "billing", 0, "United States", "US", False, D3),
        (1006, "shipping", 0, "US", "US", True, D3),
    ]


_COUNTRIES = {
    "US": ["United States", "US", "USA", "united states of america"],
    "CA": ["Canada", "CA"],
    "JP": ["Japan", "JP"],
    "AU": ["Australia", "AU"],
    "FR": ["France", "FR"],
    "IT": ["Italy", "IT"],
    "DE": ["Germany", "DE"],
    "GB": ["United Kingdom", "UK", "GB", "Great  Britain"],
    "ES": ["Spain", "ES"],
    "CH": ["Switzerland", "CH"],
    "SE": ["Sweden", "SE"],
    "BR": ["Brazil", "BR"],
    "DK": ["Denmark", "DK"],
    "PL": ["Poland", "PL"],
    "NL": ["Netherlands", "NL", "The Netherlands"],
}


def test_country_names_and_iso_codes_map_to_iso2(tmp_path: Path) -> None:
    retailer = clean_retailer(1, "ONE")
    spellings = [(spelling, code) for code, names in _COUNTRIES.items() for spelling in names]
    retailer.children["addresses"] = [
        {"address_type": "location", "address_id": i, "country": spelling, "state": "S"}
        for i, (spelling, _) in enumerate(spellings)
    ]
    write_snapshot(parquet_root(tmp_path), D1, [retailer])
    build(tmp_path)

    rows = query(tmp_path, "select country, country_code from retailer_addresses order by ordinal")
    assert rows == spellings


def test_payment_terms(built: Built) -> None:
    assert built.rows("select * from payment_terms") == [
        ("default", "cc", "Credit Card", 3, 1, 0.6),
        ("default", "net30", "Net 30", 3, 3, 0.6),
        ("default", "wt", "Wire Transfer", 2, 0, 0.4),  # ALPHA flags it default too, but its net30 comes first
    ]


def test_discount_summary(built: Built) -> None:
    assert built.rows("select * from discount_summary") == [
        ("default", 498, False, 3, 3, 5.0, 4.0, 6.0, 1.0),
        ("default", 755, False, 1, 1, 10.0, 10.0, 10.0, 0.0),
        ("default", None, True, 2, 2, 7.0, 7.0, 7.0, 0.5),  # EPSILON's amount could not be read: counted, not averaged
    ]


# --- data_quality_issues ---------------------------------------------------------------------------------


def test_data_quality_issues_finds_exactly_the_planted_problems(built: Built) -> None:
    rows = built.rows(
        "select snapshot_date, table_name, rule, customer_account_id, record_key, column_name, detail "
        "from data_quality_issues "
        "order by snapshot_date, table_name, customer_account_id, record_key, rule, column_name"
    )
    assert rows == [
        (D3, "addresses", "state_missing", 1005, "address_type=billing, ordinal=0", "state",
         "state is required for an address in USA"),
        (D3, "buyers", "unknown_field", 1005, "ordinal=0", "buyer_phone", 'unknown field, value "555"'),
        (D3, "connections", "required_missing", 1005, "customer_account_id=1005", "customer_alias",
         "customer_alias is required but missing"),
        (D3, "connections", "max_length_exceeded", 1006, "customer_account_id=1006", "customer_code",
         "customer_code has 51 characters; JOOR allows 50"),
        (D3, "discounts", "invalid_value", 1005, "ordinal=0", "amount",
         "value \"lots\" could not be read as the column's type"),
        (D3, "doors", "dangling_door", 1005, "ordinal=0", "shipping_address_id",
         "door 77 points at shipping address 999, which the connection does not have"),
        (D3, "warehouses", "duplicate_key", 1006, "ordinal=0", None, "2 rows share this key"),
    ]  # fmt: skip
    assert built.rows("select distinct customer_code from data_quality_issues where customer_account_id = 1006") == [
        (LONG_CODE,)
    ]


def test_data_quality_issues_is_empty_for_clean_snapshots(built: Built) -> None:
    assert built.rows("select count(*) from data_quality_issues where snapshot_date < ?", [D3]) == [(0,)]


def _string_columns_with_max_length(table: str) -> list[tuple[str, int]]:
    spec = TABLES[table]
    return [
        (c.name, c.max_length)
        for c in spec.columns
        if c.type == STRING and c.max_length is not None and not (spec.is_child and c.name == "customer_code")
    ]


def test_max_length_rules_match_the_contract(tmp_path: Path) -> None:
    retailer = clean_retailer(1, "C" * 51)
    retailer.connection.update({name: "x" * (n + 1) for name, n in _string_columns_with_max_length("connections")})
    for table in CHILD_TABLES:
        for item in retailer.children[table]:
            item.update({name: "x" * (n + 1) for name, n in _string_columns_with_max_length(table)})
    write_snapshot(parquet_root(tmp_path), D1, [retailer])
    build(tmp_path)

    found = query(tmp_path, "select distinct table_name, column_name, rule from data_quality_issues order by all")
    expected = sorted(
        (table, name, "max_length_exceeded") for table in TABLES for name, _ in _string_columns_with_max_length(table)
    )
    assert found == expected
    assert len(expected) > 25


def test_required_rules_match_the_contract(tmp_path: Path) -> None:
    retailer = clean_retailer(1, "ONE")
    required = {
        table: [
            c.name
            for c in spec.columns
            if c.required == REQ_YES
            and c.name != "price_type_terms"
            and not (spec.is_child and c.name == "customer_code")
        ]
        for table, spec in TABLES.items()
    }
    retailer.connection.update(dict.fromkeys(required["connections"]))
    retailer.customer_code = None
    for table in CHILD_TABLES:
        for item in retailer.children[table]:
            item.update(dict.fromkeys(required[table]))
    retailer.children["addresses"] = [
        {"address_type": kind, "address_id": i, "city": None, "country": None}
        for i, kind in enumerate(("billing", "shipping", "location"))
    ]
    no_id = clean_retailer(2, "TWO")
    no_id.customer_account_id = None
    write_snapshot(parquet_root(tmp_path), D1, [retailer, no_id])
    build(tmp_path)

    found = query(
        tmp_path,
        "select table_name, customer_account_id, record_key, column_name from data_quality_issues "
        "where rule = 'required_missing' order by all",
    )
    expected = sorted(
        [("connections", 1, "customer_account_id=1", name) for name in required["connections"]]
        + [("doors", 1, "ordinal=0", name) for name in required["doors"]]
        + [("price_types", 1, "ordinal=0", name) for name in required["price_types"]]
        + [("addresses", 1, f"address_type={kind}, ordinal=0", name)
           for kind in ("billing", "shipping") for name in ("city", "country")]
        + [("connections", None, "customer_account_id=null", "customer_account_id")],
        key=lambda row: (row[0], row[1] is None, row[1] or 0, row[2], row[3]),
    )  # fmt: skip
    assert found == expected
    assert query(tmp_path, "select count(*) from data_quality_issues where rule <> 'required_missing'") == [(0,)]
    assert query(tmp_path, "select customer_account_id from dim_retailers") == [(1,)]


# --- the warehouse's shape ---------------------------------------------------------------------------------


def test_analyst_models_are_tables_in_main_and_staging_models_are_views(built: Built) -> None:
    kinds = {
        (schema, name): kind
        for schema, name, kind in built.rows(
            "select table_schema, table_name, table_type from information_schema.tables"
        )
    }
    for name in ANALYST_MODELS:
        assert kinds[("main", name)] == "BASE TABLE", name
    for table in TABLES:
        assert kinds[("staging", f"stg_{table}")] == "VIEW", table
    assert kinds[("staging", "int_retailer_fingerprints")] == "BASE TABLE"


def test_views_read_a_data_dir_whose_path_has_quotes(tmp_path: Path) -> None:
    data_dir = tmp_path / "brand's data"
    write_snapshot(parquet_root(data_dir), D1, [clean_retailer(1, "ONE"), clean_retailer(2, "TWO")])
    counts = build(data_dir)
    assert counts["stg_connections"] == counts["dim_retailers"] == 2
    assert query(data_dir, "select customer_code from stg_connections order by 1") == [("ONE",), ("TWO",)]

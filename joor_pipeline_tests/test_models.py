"""The DuckDB models and their runner: known Parquet snapshots in, exact answers out; atomic, locked builds."""

from __future__ import annotations

import random
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from joor_pipeline.flatten.schema import REQ_YES, STRING, TABLES, arrow_schema
from joor_pipeline.warehouse import (
    MODELS,
    WarehouseLockTimeout,
    build_warehouse,
    database_path,
    parquet_root,
    query,
    sql_string,
    writer_lock,
)
from joor_pipeline_tests.model_fixtures import (
    CHILD_TABLES,
    Retailer,
    clean_retailer,
    partition_path,
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
    return Built(data_dir, build_warehouse(data_dir))


# --- the model catalogue ------------------------------------------------------------------------------------


def _body(sql: str) -> str:
    return "\n".join(line.split("--")[0] for line in sql.splitlines())


def test_models_run_in_dependency_order_and_read_exactly_what_they_declare() -> None:
    names = [model.name for model in MODELS]
    assert names[:10] == sorted(f"stg_{table}" for table in TABLES)
    assert {"int_addresses", "dim_retailers", "retailer_history", "retailer_addresses"} < set(names)
    for position, model in enumerate(MODELS):
        assert set(model.depends_on) <= set(names[:position]), model.name
        referenced = {name for name in names if re.search(rf"\b{name}\b", _body(model.sql))} - {model.name}
        assert referenced == set(model.depends_on), model.name
        code = re.sub(r"'[^']*'", "''", _body(model.sql))  # lowercase SQL, string literals aside
        assert code == code.lower(), model.name
        assert any(line.startswith("grain: one row per ") for line in model.description.splitlines()), model.name
        assert model.path.name == f"{model.name}.sql"
        if model.name.startswith("stg_"):
            assert model.source_table == model.name.removeprefix("stg_")
            assert model.depends_on == ()
        else:
            assert model.source_table is None


# --- staging --------------------------------------------------------------------------------------------------


def test_staging_reads_every_partition_with_snapshot_date_as_date(built: Built) -> None:
    assert built.rows(
        "select snapshot_date, typeof(snapshot_date), count(*) from stg_connections group by all order by 1"
    ) == [
        (D1, "DATE", 4),
        (D2, "DATE", 3),
        (D3, "DATE", 5),
    ]
    assert built.counts["stg_addresses"] == (4 + 2 + 2 + 2) + (4 + 2 + 2) + (4 + 2 + 2 + 2 + 2)
    assert built.counts["stg_tax_ids"] == 0


def test_staging_takes_the_partition_date_from_the_path_and_reads_older_files_by_name(tmp_path: Path) -> None:
    root = parquet_root(tmp_path)
    write_table(root, "connections", D1, snapshot_rows([clean_retailer(1, "ONE")], D1)["connections"])
    # an older file: no customer_email column, a column the contract no longer has, a wrong date inside the file
    older = table_of("connections", snapshot_rows([clean_retailer(2, "TWO")], date(1999, 1, 1))["connections"])
    older = older.drop_columns(["customer_email"]).append_column("loyalty_tier", pa.array(["gold"]))
    path = partition_path(root, "connections", D2)
    path.parent.mkdir(parents=True)
    pq.write_table(older, path)
    hidden = root / "connections" / ".staging-123" / "part-00000.parquet"  # a write in progress
    hidden.parent.mkdir()
    pq.write_table(table_of("connections", snapshot_rows([clean_retailer(3, "THREE")], D2)["connections"]), hidden)

    assert build_warehouse(tmp_path, models=["stg_connections"]) == {"stg_connections": 2}
    assert query(
        tmp_path,
        "select snapshot_date, customer_account_id, customer_email, loyalty_tier from stg_connections order by 1",
    ) == [(D1, 1, "one@example.com", None), (D2, 2, None, "gold")]
    columns = [row[0] for row in query(tmp_path, "describe stg_connections")]
    assert columns == [*arrow_schema("connections").names, "loyalty_tier"]


_DUCKDB_TYPES = {
    pa.string(): "VARCHAR",
    pa.int64(): "BIGINT",
    pa.int32(): "INTEGER",
    pa.float64(): "DOUBLE",
    pa.bool_(): "BOOLEAN",
    pa.date32(): "DATE",
    pa.timestamp("us", tz="UTC"): "TIMESTAMP WITH TIME ZONE",
}


def test_every_model_builds_on_an_empty_parquet_root_with_typed_staging_views(tmp_path: Path) -> None:
    counts = build_warehouse(tmp_path)

    assert counts == {model.name: 0 for model in MODELS}
    for table in TABLES:
        described = [(row[0], row[1]) for row in query(tmp_path, f"describe stg_{table}")]
        assert described == [(f.name, _DUCKDB_TYPES[f.type]) for f in arrow_schema(table)], table


def test_models_build_when_only_connections_have_partitions(tmp_path: Path) -> None:
    rows = snapshot_rows([clean_retailer(1, "ONE"), clean_retailer(2, "TWO")], D1)
    write_table(parquet_root(tmp_path), "connections", D1, rows["connections"])

    counts = build_warehouse(tmp_path)

    assert counts["dim_retailers"] == 2
    assert counts["retailer_history"] == 2
    assert counts["data_quality_issues"] == 0
    assert query(
        tmp_path,
        "select customer_account_id, default_payment_method_code, billing_addresses, doors, payment_methods "
        "from dim_retailers order by 1",
    ) == [(1, None, 0, 0, 0), (2, None, 0, 0, 0)]


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
        "from retailer_history"
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
    assert all(re.fullmatch(r"[0-9a-f]{32}", h) for h in hashes.values())
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
    build_warehouse(tmp_path, models=[m.name for m in MODELS if m.name.startswith("stg_")] + ["retailer_history"])

    rows = query(tmp_path, "select customer_account_id, valid_from, valid_to, is_current from retailer_history")
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

    build_warehouse(tmp_path, models=[m.name for m in MODELS if m.name.startswith("stg_")] + ["retailer_history"])

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
    build_warehouse(tmp_path)

    rows = query(tmp_path, "select country, country_code from retailer_addresses order by ordinal")
    assert rows == spellings


def test_payment_terms(built: Built) -> None:
    assert built.rows("select * from payment_terms") == [
        ("cc", "Credit Card", 3, 1, 0.6),
        ("net30", "Net 30", 3, 3, 0.6),
        ("wt", "Wire Transfer", 2, 0, 0.4),  # ALPHA flags it default too, but its net30 comes first
    ]


def test_discount_summary(built: Built) -> None:
    assert built.rows("select * from discount_summary") == [
        (498, False, 3, 3, 5.0, 4.0, 6.0, 1.0),
        (755, False, 1, 1, 10.0, 10.0, 10.0, 0.0),
        (None, True, 2, 2, 7.0, 7.0, 7.0, 0.5),  # EPSILON's amount could not be read: counted, not averaged
    ]


# --- data_quality_issues ---------------------------------------------------------------------------------


def test_data_quality_issues_finds_exactly_the_planted_problems(built: Built) -> None:
    rows = built.rows(
        "select snapshot_date, table_name, rule, customer_account_id, record_key, column_name, detail "
        "from data_quality_issues"
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
    build_warehouse(tmp_path)

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
    build_warehouse(tmp_path)

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


# --- the runner: atomic builds, one writer at a time --------------------------------------------------------


def test_a_failing_model_leaves_the_previous_warehouse_intact(tmp_path: Path) -> None:
    root = parquet_root(tmp_path)
    write_snapshot(root, D1, [clean_retailer(1, "ONE")])
    before = build_warehouse(tmp_path)
    write_snapshot(root, D2, [clean_retailer(1, "ONE"), clean_retailer(2, "TWO")])
    partition_path(root, "warehouses", D2).write_bytes(b"not parquet at all")

    with pytest.raises(duckdb.Error):
        build_warehouse(tmp_path)

    # stg_addresses and stg_connections ran before stg_warehouses failed: rolled back with it
    for model in MODELS:
        assert query(tmp_path, f"select count(*) from {model.name}") == [(before[model.name],)], model.name
    assert query(tmp_path, "select distinct snapshot_date from stg_addresses") == [(D1,)]
    assert query(tmp_path, "select table_name from duckdb_tables() where table_name like '%new%'") == []

    write_snapshot(root, D2, [clean_retailer(1, "ONE"), clean_retailer(2, "TWO")])
    assert build_warehouse(tmp_path, models=["stg_connections", "dim_retailers"]) == {
        "stg_connections": 3,
        "dim_retailers": 2,
    }
    with pytest.raises(ValueError, match="unknown model"):
        build_warehouse(tmp_path, models=["no_such_model"])


def test_a_second_writer_waits_for_the_lock(tmp_path: Path) -> None:
    write_snapshot(parquet_root(tmp_path), D1, [clean_retailer(1, "ONE")])
    result: dict[str, int] = {}
    writer = threading.Thread(target=lambda: result.update(build_warehouse(tmp_path)))
    with writer_lock(tmp_path):
        writer.start()
        writer.join(0.5)
        assert writer.is_alive()
        assert not database_path(tmp_path).exists()
    writer.join(20)
    assert not writer.is_alive()
    assert result["dim_retailers"] == 1


def test_the_lock_holds_across_processes_for_writers_and_readers(tmp_path: Path) -> None:
    write_snapshot(parquet_root(tmp_path), D1, [clean_retailer(1, "ONE")])
    build_warehouse(tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys; f = open(sys.argv[1], 'ab'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('locked', flush=True); sys.stdin.read()",
            str(tmp_path / "joor.duckdb.lock"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(WarehouseLockTimeout):
            build_warehouse(tmp_path, lock_timeout=0.2)
        with pytest.raises(WarehouseLockTimeout):
            query(tmp_path, "select 1", lock_timeout=0.2)
    finally:
        holder.communicate("", timeout=10)
    assert build_warehouse(tmp_path, lock_timeout=5)["stg_connections"] == 1
    assert query(tmp_path, "select count(*) from dim_retailers") == [(1,)]


# --- staging views ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["plain", "it's", "''", "a'b'c", "back\\slash", "ünïcode ' 東京"])
def test_sql_string_round_trips_through_duckdb(text: str) -> None:
    with duckdb.connect() as con:
        assert con.execute(f"select {sql_string(text)}").fetchone() == (text,)


def test_staging_models_are_views_and_the_marts_are_tables(built: Built) -> None:
    kinds = dict(built.rows("select table_name, table_type from information_schema.tables"))
    for table in TABLES:
        assert kinds[f"stg_{table}"] == "VIEW", table
    assert kinds["dim_retailers"] == kinds["retailer_history"] == "BASE TABLE"


def test_views_read_a_data_dir_whose_path_has_quotes(tmp_path: Path) -> None:
    data_dir = tmp_path / "brand's data"
    write_snapshot(parquet_root(data_dir), D1, [clean_retailer(1, "ONE"), clean_retailer(2, "TWO")])
    counts = build_warehouse(data_dir)
    assert counts["stg_connections"] == counts["dim_retailers"] == 2
    assert query(data_dir, "select customer_code from stg_connections order by 1") == [("ONE",), ("TWO",)]


def test_a_warehouse_with_staging_tables_is_rebuilt_with_views(tmp_path: Path) -> None:
    write_snapshot(parquet_root(tmp_path), D1, [clean_retailer(1, "ONE")])
    with duckdb.connect(str(database_path(tmp_path))) as con:
        con.execute("create table stg_connections as select 42 as stale")
    build_warehouse(tmp_path)
    assert query(tmp_path, "select table_type from information_schema.tables where table_name = 'stg_connections'") == [
        ("VIEW",)
    ]
    assert query(tmp_path, "select customer_code from stg_connections") == [("ONE",)]

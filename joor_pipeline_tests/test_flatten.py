"""Flattening canonical connections: golden rows of the seed examples, JSON/XML parity, coercion and drift."""

from __future__ import annotations

import copy
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from joor_pipeline.flatten import TABLES, arrow_schema, flatten_page
from joor_pipeline.flatten.coerce import INVALID, coerce_value
from joor_pipeline.flatten.dictionary import DEFAULT_PATH, render_dictionary
from joor_pipeline.flatten.flatten import FlatBatch
from joor_pipeline.flatten.runner import flatten_snapshot
from joor_pipeline.flatten.schema import BOOL, FLOAT64, INT64, STRING, TIMESTAMP_UTC
from joor_pipeline.joor.errors import PayloadError
from joor_pipeline.joor.parse import parse_page
from joor_pipeline.layout import DEFAULT_ACCOUNT
from joor_pipeline.quality import check_partition, published_counts, raw_counts, raw_recount
from joor_pipeline.sandbox.data import generate_connections
from joor_pipeline.sandbox.render import render_json, render_xml
from joor_pipeline.storage.parquet import published_files
from joor_pipeline_tests.raw_fixtures import snap

SNAPSHOT = date(2024, 3, 1)
#: The seed document was captured from a page that obfuscated e-mail addresses; this is the literal text.
PROTECTED = "[email protected]"
MODIFIED = datetime(2014, 1, 30, 13, 21, 43, tzinfo=UTC)
JSON_LOG_ID = "854554c0-83e4-4409-8b8f-a6ef7daa7c4b"
XML_LOG_ID = "f57e7fb4-965a-4d7b-be5e-1f92be257e9d"

ADDRESS_COLUMNS = (
    "address_type",
    "ordinal",
    "address_id",
    "code",
    "name",
    "phone",
    "email",
    "address_1",
    "address_2",
    "city",
    "state",
    "postal_code",
    "country",
)


def flatten_seed(seeds_dir: Path, fmt: str, source_page: int = 3) -> FlatBatch:
    page = parse_page((seeds_dir / f"connection-example.{fmt}").read_bytes(), fmt)
    return flatten_page(
        page.connections,
        snapshot_date=SNAPSHOT,
        account=DEFAULT_ACCOUNT,
        source_page=source_page,
        log_id=page.response.log_id,
    )


def rows(table: pa.Table, *columns: str) -> list[tuple[Any, ...]]:
    """The given columns of ``table`` as row tuples."""
    return list(zip(*(table.column(name).to_pylist() for name in columns), strict=True))


def flat(connections: list[dict[str, Any]], source_page: int = 0) -> FlatBatch:
    return flatten_page(
        connections, snapshot_date=SNAPSHOT, account=DEFAULT_ACCOUNT, source_page=source_page, log_id="L"
    )


def envelope(connections: list[dict[str, Any]], log_id: str = "log-1") -> dict[str, Any]:
    return {
        "response": {"code": 0, "comment": "", "start_from": 0, "next_start": 0, "count": 1, "log_id": log_id},
        "connections": connections,
    }


def assert_common_columns(batch: FlatBatch, log_id: str, source_page: int = 3) -> None:
    for name, table in batch.tables.items():
        assert table.schema.equals(arrow_schema(name)), name
        n = table.num_rows
        assert (
            rows(table, "snapshot_date", "customer_account_id", "customer_code") == [(SNAPSHOT, 24181, "JBNY")] * n
        ), name
        assert (
            rows(table, "source_page", "log_id", "extra", "invalid_values") == [(source_page, log_id, None, None)] * n
        ), name


# --- golden: the seed examples ---------------------------------------------------------------------------


def test_seed_json_example_flattens_to_the_expected_rows(seeds_dir: Path) -> None:
    batch = flatten_seed(seeds_dir, "json")
    t = batch.tables
    assert_common_columns(batch, JSON_LOG_ID)

    (connection,) = t["connections"].drop_columns(["account", "snapshot_date", "source_page", "log_id"]).to_pylist()
    assert connection == {
        "customer_account_id": 24181,
        "customer_code": "JBNY",
        "brand_account_id": 24180,
        "customer_alias": "Alias",
        "customer_name": "JboutiqueNY",
        "customer_email": PROTECTED,
        "customer_contact_name": "Kristen Leone",
        "customer_contact_email": None,
        "customer_buyer_name": None,
        "company_number_name": "company1",
        "company_number_code": "c1",
        "customer_group_name": "Specialty",
        "customer_group_code": "SPC",
        "sales_rep_code": "AB",
        "connection_modified": MODIFIED,
        "extra": None,
        "invalid_values": None,
    }
    # fmt: off
    assert rows(t["addresses"], *ADDRESS_COLUMNS) == [
        ("billing", 0, 115886, None, "JboutiqueNY", "0000000000", None, "1 Main St", None,
         "New York", "NY", "10005", "United States"),
        ("billing", 1, 115889, None, "JboutiqueNY", "212-555-1212", None, "1 Main St", "Accts Payable",
         "New York", "NY", "10005", "United States"),
        ("shipping", 0, 66590, None, "JboutiqueNY", "212-555-1212", PROTECTED, "1 Main St", None,
         "New York", "NY", "10005", "United States"),
        ("shipping", 1, 141151, None, "JboutiqueNY", "212-555-1212", PROTECTED, "1 Main St", None,
         "New York", "NY", "10005", "United States"),
        ("location", 0, 25965, None, None, "212-555-1212", None, "1 Main St", None,
         "New York", "NY", "10005", "United States"),
    ]
    # fmt: on
    assert rows(
        t["payment_methods"],
        "ordinal",
        "payment_method_id",
        "payment_method_code",
        "payment_method_name",
        "payment_method_is_default",
    ) == [
        (0, -6, "net30", "Net 30 (Pending Approval)", True),
        (1, 26, "x30w", "X30W (Pending Approval)", False),
        (2, 27, "oth", "Other", False),
        (3, 28, "30pdc", "30 Days PDC", False),
        (4, 29, "pp", "Payment Plan", False),
    ]
    assert rows(
        t["shipping_methods"],
        "ordinal",
        "shipping_method_id",
        "shipping_method_code",
        "shipping_method_name",
        "shipping_method_is_default",
    ) == [
        (0, -12, "ups_ground", "UPS Ground", False),
        (1, 14, "fedex_economy", "FedEx International Economy", True),
    ]
    assert_discounts_doors_warehouses(batch)
    assert rows(
        t["price_types"],
        "ordinal",
        "price_type_id",
        "price_type_label",
        "price_type_currency_code",
        "price_type_currency_name",
        "price_type_retail_currency_code",
        "price_type_retail_currency_name",
        "price_type_terms",
        "connection_override_terms_name",
        "connection_override_terms_value",
    ) == [
        (0, 2982, "Europe", "EUR", "Euro", "EUR", "Euro", "These are the EUR Terms", None, None),
        (
            1,
            2989,
            "Australia",
            "AUD",
            "Australian Dollar",
            "USD",
            "US Dollar",
            None,
            "US Terms",
            "These terms and conditions apply to US retailers only.",
        ),
    ]
    assert rows(t["buyers"], "ordinal", "buyer_id", "buyer_name", "buyer_email") == [
        (0, 60523, None, PROTECTED),
        (1, 108698, None, PROTECTED),
        (2, 108704, "Kristen Friedel", PROTECTED),
        (3, 108705, None, PROTECTED),
    ]
    assert rows(t["tax_ids"], "ordinal", "tax_id_number", "name") == [(0, "7718241", "France")]
    assert batch.stats.rows == {
        "connections": 1,
        "addresses": 5,
        "payment_methods": 5,
        "shipping_methods": 2,
        "discounts": 3,
        "doors": 1,
        "price_types": 2,
        "buyers": 4,
        "warehouses": 1,
        "tax_ids": 1,
    }
    assert not batch.stats.unknown_fields and not batch.stats.coercion_problems


def assert_discounts_doors_warehouses(batch: FlatBatch) -> None:
    """The lists both seed examples share: discounts, the door and the warehouse."""
    t = batch.tables
    assert rows(
        t["discounts"],
        "ordinal",
        "account_boutique_discount_id",
        "amount",
        "type",
        "division_id",
        "line_item_level",
        "style_id",
    ) == [
        (0, 16042, 4.0, "PERCENT", 498, True, None),
        (1, 16043, 6.0, "PERCENT", 755, True, None),
        (2, 16044, 7.0, "PERCENT", None, False, None),
    ]
    # The door points at a shipping address the JSON connection does not have: kept as sent.
    assert rows(t["doors"], "ordinal", "door_id", "shipping_address_id", "door_name", "door_code") == [
        (0, 1228, 214920, "Door1", "D1")
    ]
    assert rows(t["warehouses"], "ordinal", "warehouse_name", "warehouse_code") == [(0, "Test Warehouse", "Test Code")]


def test_seed_xml_example_flattens_to_the_expected_rows(seeds_dir: Path) -> None:
    batch = flatten_seed(seeds_dir, "xml")
    t = batch.tables
    assert_common_columns(batch, XML_LOG_ID)

    (connection,) = rows(
        t["connections"],
        "brand_account_id",
        "customer_alias",
        "customer_name",
        "customer_email",
        "customer_contact_name",
        "customer_contact_email",
        "customer_buyer_name",
        "company_number_name",
        "company_number_code",
        "customer_group_name",
        "customer_group_code",
        "sales_rep_code",
        "connection_modified",
    )
    assert connection == (
        24180,
        "Alias",
        "JboutiqueNY",
        PROTECTED,
        "Kristen Leone",
        None,
        None,
        "Company1",
        "c1",
        "Specialty",
        "SPC",
        "AB",
        MODIFIED,
    )
    # fmt: off
    assert rows(t["addresses"], *ADDRESS_COLUMNS) == [
        ("billing", 0, 109958, None, "JboutiqueNY", "2018926148", None, "708 Willow Ave", "Suite 5F",
         "Hoboken", "NJ", "07030", "France"),
        ("billing", 1, 115886, None, "JboutiqueNY", "0000000000", None, "1 Main St", None,
         "New York", "NY", "10005", "United States"),
        ("shipping", 0, 66590, None, "JboutiqueNY", "212-555-1212", PROTECTED, "1 Main St", None,
         "New York", "NY", "10005", "United States"),
        ("shipping", 1, 214920, None, "JboutiqueNY", "(713) 780-8564", PROTECTED, "1 Main St", None,
         "New York", "NY", "10005", "United States"),
        ("location", 0, 25965, None, None, "212-555-1212", None, "1 Main St", None,
         "New York", "NY", "10005", "United States"),
    ]
    # fmt: on
    assert rows(
        t["payment_methods"],
        "ordinal",
        "payment_method_id",
        "payment_method_code",
        "payment_method_name",
        "payment_method_is_default",
    ) == [
        (0, -6, "net30", "Net 30 (Pending Approval)", True),
        (1, -4, "cc", "Credit Card", False),
        (2, -2, "wt", "Wire Transfer", False),
    ]
    assert rows(
        t["shipping_methods"],
        "ordinal",
        "shipping_method_id",
        "shipping_method_code",
        "shipping_method_name",
        "shipping_method_is_default",
    ) == [
        (0, -12, "ups_ground", "UPS Ground", False),
        (1, -11, "ups_2day", "UPS 2-Day", False),
        (2, 14, "fedex_economy", "FedEx International Economy", True),
    ]
    assert_discounts_doors_warehouses(batch)
    assert rows(t["price_types"], "price_type_id", "price_type_retail_currency_name", "price_type_terms") == [
        (2982, "Euro", "These are the EUR Terms"),
        (2989, "US Dollars", None),
    ]
    assert rows(t["buyers"], "ordinal", "buyer_id", "buyer_name", "buyer_email") == [
        (0, 109357, "Kristen Friedel", "kristen+joor@http://jooraccess.com"),
        (1, 60581, None, PROTECTED),
        (2, 108698, None, PROTECTED),
        (3, 108704, None, PROTECTED),
        (4, 108705, None, PROTECTED),
    ]
    assert rows(t["tax_ids"], "ordinal", "tax_id_number", "name") == [(0, "testVAT", "France")]


# --- the same data as JSON and as XML ---------------------------------------------------------------------


def flatten_rendered(connections: list[dict[str, Any]], fmt: str) -> FlatBatch:
    document = envelope(connections)
    body = render_json(document) if fmt == "json" else render_xml(document)
    page = parse_page(body, fmt)
    return flatten_page(
        page.connections, snapshot_date=SNAPSHOT, account=DEFAULT_ACCOUNT, source_page=0, log_id=page.response.log_id
    )


def drifting_connection(seeds_dir: Path) -> dict[str, Any]:
    """The seed JSON connection with unknown fields, aliases and values that cannot be coerced (XML-safe)."""
    connection = json.loads((seeds_dir / "connection-example.json").read_text())["connections"][0]
    connection["loyalty"] = {"tier": "gold", "points": 12}
    connection["connection_modified"] = "not a date"
    connection["billing"]["billing_addresses"][0]["billing_fax"] = "555-0100"
    connection["discounts"][0] = {"discount": "9.5", "discount_line_item_level": "yes", "division_id": "4.5"}
    connection["doors"][0]["shipping_address_id"] = 66590  # alias disagreeing with door_shipping_address_id
    return connection


@pytest.mark.parametrize("data", ["seed", "drifting", "generated"])
def test_json_and_xml_of_the_same_data_give_identical_tables(seeds_dir: Path, data: str) -> None:
    if data == "seed":
        connections = [json.loads((seeds_dir / "connection-example.json").read_text())["connections"][0]]
    elif data == "drifting":
        connections = [drifting_connection(seeds_dir)]
    else:
        connections = generate_connections(40, seed=5)
    from_json = flatten_rendered(copy.deepcopy(connections), "json")
    from_xml = flatten_rendered(copy.deepcopy(connections), "xml")
    for name in TABLES:
        assert from_json.tables[name].equals(from_xml.tables[name]), name
    assert from_json.stats == from_xml.stats
    assert from_json.tables["connections"].num_rows == len(connections)


@pytest.mark.parametrize("data", ["seed", "generated"])
def test_native_json_values_flatten_like_their_text(seeds_dir: Path, data: str) -> None:
    """A fast path may hand over orjson's native ints, floats and bools: the tables must not change."""
    if data == "seed":
        body = (seeds_dir / "connection-example.json").read_bytes()
    else:
        body = render_json(envelope(generate_connections(200, seed=13)))
    native = orjson.loads(body)["connections"]
    assert any(type(d["amount"]) in (int, float) for c in native for d in c["discounts"])
    canonical = parse_page(body, "json").connections
    a, b = flat(native), flat(canonical)
    for name in TABLES:
        assert a.tables[name].equals(b.tables[name]), name
    assert a.stats == b.stats


# --- coercion ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", True),
        ("True", True),
        ("TRUE", True),
        (" true ", True),
        ("1", True),
        ("yes", True),
        ("Yes", True),
        (True, True),
        (1, True),
        ("false", False),
        ("False", False),
        ("FALSE", False),
        ("0", False),
        ("no", False),
        (False, False),
        (0, False),
        ("", None),
        (None, None),
    ],
)
def test_bool_spellings(value: Any, expected: bool | None) -> None:
    assert coerce_value(value, BOOL) is expected


@pytest.mark.parametrize(
    ("value", "arrow_type", "expected"),
    [
        ("6", INT64, 6),
        (" 42 ", INT64, 42),
        ("-6", INT64, -6),
        ("+7", INT64, 7),
        ("007", INT64, 7),
        ("4.0", INT64, 4),
        (6, INT64, 6),
        (4.0, INT64, 4),
        ("9223372036854775807", INT64, 2**63 - 1),
        ("6", FLOAT64, 6.0),
        ("4.0", FLOAT64, 4.0),
        (" 4.5 ", FLOAT64, 4.5),
        ("1e2", FLOAT64, 100.0),
        (7, FLOAT64, 7.0),
        (33.33, FLOAT64, 33.33),
        ("2014-01-30T13:21:43+00:00", TIMESTAMP_UTC, MODIFIED),
        ("2014-01-30T15:21:43+02:00", TIMESTAMP_UTC, MODIFIED),
        ("2014-01-30T13:21:43Z", TIMESTAMP_UTC, MODIFIED),
        ("2014-01-30 13:21:43", TIMESTAMP_UTC, MODIFIED),
        ("JBNY", STRING, "JBNY"),
        ("  ", STRING, "  "),
        (5, STRING, "5"),
        (True, STRING, "True"),
        (4.0, STRING, "4.0"),
    ],
)
def test_values_coerce_faithfully(value: Any, arrow_type: pa.DataType, expected: Any) -> None:
    result = coerce_value(value, arrow_type)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize("arrow_type", [STRING, INT64, FLOAT64, BOOL, TIMESTAMP_UTC])
@pytest.mark.parametrize("value", ["", None])
def test_empty_is_null_for_every_type(value: Any, arrow_type: pa.DataType) -> None:
    assert coerce_value(value, arrow_type) is None


@pytest.mark.parametrize(
    ("value", "arrow_type"),
    [
        ("4.5", INT64),
        ("abc", INT64),
        ("1_000", INT64),
        ("0x1F", INT64),
        ("\u0663", INT64),  # an Arabic-Indic digit: int() would read it
        ("1e3", INT64),
        ("9223372036854775808", INT64),
        (True, INT64),
        (4.5, INT64),
        ("nan", FLOAT64),
        ("inf", FLOAT64),
        ("1,5", FLOAT64),
        (False, FLOAT64),
        ("maybe", BOOL),
        ("2", BOOL),
        (1.0, BOOL),
        ("yesterday", TIMESTAMP_UTC),
        ("2014-13-01", TIMESTAMP_UTC),
        (5, TIMESTAMP_UTC),
        ({"a": "1"}, STRING),
        (["x"], STRING),
        ({"a": "1"}, INT64),
    ],
)
def test_values_that_cannot_be_coerced_are_invalid(value: Any, arrow_type: pa.DataType) -> None:
    assert coerce_value(value, arrow_type) is INVALID


def test_bad_values_keep_the_row_null_the_column_and_are_counted(seeds_dir: Path) -> None:
    connection = parse_page((seeds_dir / "connection-example.json").read_bytes(), "json").connections[0]
    connection["customer_account_id"] = "24181x"
    connection["connection_modified"] = "yesterday"
    connection["discounts"][1]["amount"] = "lots"
    connection["discounts"][1]["division_id"] = "4.5"
    connection["discounts"][1]["line_item_level"] = "maybe"
    connection["shipping"]["shipping_methods"][0]["shipping_method_name"] = {"en": "UPS"}
    batch = flat([connection])
    t = batch.tables

    assert rows(t["connections"], "customer_account_id", "customer_code", "connection_modified") == [
        (None, "JBNY", None)
    ]
    assert json.loads(t["connections"]["invalid_values"][0].as_py()) == {
        "connection_modified": "yesterday",
        "customer_account_id": "24181x",
    }
    assert rows(t["discounts"], "ordinal", "amount", "division_id", "line_item_level", "customer_account_id") == [
        (0, 4.0, 498, True, None),
        (1, None, None, None, None),
        (2, 7.0, None, False, None),
    ]
    discount_invalid = t["discounts"]["invalid_values"].to_pylist()
    assert discount_invalid[0] is None and discount_invalid[2] is None
    assert discount_invalid[1] == '{"amount":"lots","division_id":"4.5","line_item_level":"maybe"}'
    assert t["shipping_methods"]["invalid_values"][0].as_py() == '{"shipping_method_name":"{\\"en\\":\\"UPS\\"}"}'
    assert batch.stats.coercion_problems == {
        "connections.customer_account_id": 1,
        "connections.connection_modified": 1,
        "discounts.amount": 1,
        "discounts.division_id": 1,
        "discounts.line_item_level": 1,
        "shipping_methods.shipping_method_name": 1,
    }
    assert batch.stats.missing_customer_account_id == 1
    assert batch.stats.rows["addresses"] == 5  # the child rows stay, with a null customer_account_id


# --- aliases and unknown fields ---------------------------------------------------------------------------


def test_aliases_from_the_field_table_are_read() -> None:
    connection = {
        "customer_account_id": "1",
        "shipping": {
            "shipping_addresses": [{"shipping_address_id": "7", "shipping _name": "Dock"}],
            "shipping_methods": [{"shipping _method_name": "UPS", "shipping _method_is_default": "True"}],
        },
        "discounts": [{"discount": "10", "discount_line_item_level": "False"}],
        "doors": [{"door_id": "3", "shipping_address_id": "7"}],
    }
    batch = flat([connection])
    t = batch.tables
    assert rows(t["addresses"], "address_type", "address_id", "name") == [("shipping", 7, "Dock")]
    assert rows(t["shipping_methods"], "shipping_method_name", "shipping_method_is_default") == [("UPS", True)]
    assert rows(t["discounts"], "amount", "line_item_level") == [(10.0, False)]
    assert rows(t["doors"], "door_id", "shipping_address_id") == [(3, 7)]
    assert not batch.stats.unknown_fields
    assert all(table["extra"].null_count == table.num_rows for table in t.values())


def test_an_alias_disagreeing_with_the_canonical_field_goes_to_extra() -> None:
    connection = {
        "customer_account_id": "1",
        "doors": [
            {"door_id": "3", "door_shipping_address_id": "7", "shipping_address_id": "8"},
            {"door_id": "4", "door_shipping_address_id": "9", "shipping_address_id": "9"},
        ],
    }
    batch = flat([connection])
    doors = batch.tables["doors"]
    assert rows(doors, "door_id", "shipping_address_id", "extra") == [
        (3, 7, '{"shipping_address_id":"8"}'),
        (4, 9, None),
    ]
    assert batch.stats.unknown_fields == {"doors.shipping_address_id": 1}


def test_unknown_fields_go_to_extra_and_are_counted(seeds_dir: Path) -> None:
    connection = parse_page((seeds_dir / "connection-example.json").read_bytes(), "json").connections[0]
    connection["customer_tier"] = "gold"
    connection["loyalty_programs"] = [{"program": "silver", "since": "2020"}]
    connection["billing"]["credit_limit"] = "5000"
    connection["price_types"][1]["price_type_margin"] = "2.5"
    connection["customer_locations"][0]["location_geo"] = {"lat": "40.7", "lon": "-74.0"}
    batch = flat([connection])
    t = batch.tables

    assert json.loads(t["connections"]["extra"][0].as_py()) == {
        "billing.credit_limit": "5000",
        "customer_tier": "gold",
        "loyalty_programs": [{"program": "silver", "since": "2020"}],
    }
    assert t["price_types"]["extra"].to_pylist() == [None, '{"price_type_margin":"2.5"}']
    assert rows(t["addresses"], "address_type", "extra")[-1] == (
        "location",
        '{"location_geo":{"lat":"40.7","lon":"-74.0"}}',
    )
    assert batch.stats.unknown_fields == {
        "connections.customer_tier": 1,
        "connections.loyalty_programs": 1,
        "connections.billing.credit_limit": 1,
        "price_types.price_type_margin": 1,
        "addresses.location_geo": 1,
    }
    assert not batch.stats.coercion_problems


# --- shapes, duplicates, errors ---------------------------------------------------------------------------


def test_lists_of_the_wrong_shape_are_kept_not_dropped() -> None:
    connection = {
        "customer_account_id": "1",
        "warehouses": "",
        "buyers": {"buyer_id": "5", "buyer_name": "Ann"},
        "doors": "D1",
        "billing": "n/a",
        "tax_id_numbers": [{"tax_id_number": "FR1", "name": "France"}, "DE2"],
    }
    batch = flat([connection])
    t = batch.tables
    assert t["warehouses"].num_rows == 0 and t["doors"].num_rows == 0
    assert rows(t["buyers"], "ordinal", "buyer_id", "buyer_name") == [(0, 5, "Ann")]
    assert json.loads(t["connections"]["invalid_values"][0].as_py()) == {"billing": "n/a", "doors": "D1"}
    assert rows(t["tax_ids"], "ordinal", "tax_id_number", "name", "invalid_values") == [
        (0, "FR1", "France", None),
        (1, None, None, '{"tax_id_number":"DE2"}'),
    ]
    assert batch.stats.coercion_problems == {
        "connections.billing": 1,
        "connections.doors": 1,
        "tax_ids.tax_id_number": 1,
    }


def test_duplicate_connections_keep_the_first_and_are_counted() -> None:
    first = {"customer_account_id": "1", "customer_code": "A", "buyers": [{"buyer_id": "10"}]}
    again = {"customer_account_id": "1", "customer_code": "B", "buyers": [{"buyer_id": "11"}]}
    other = {"customer_account_id": "2", "customer_code": "C"}
    seen: set[int] = set()
    page0 = flatten_page(
        [first, again],
        snapshot_date=SNAPSHOT,
        account=DEFAULT_ACCOUNT,
        source_page=0,
        log_id=None,
        seen_account_ids=seen,
    )
    page1 = flatten_page(
        [other, first],
        snapshot_date=SNAPSHOT,
        account=DEFAULT_ACCOUNT,
        source_page=1,
        log_id=None,
        seen_account_ids=seen,
    )
    assert rows(page0.tables["connections"], "customer_account_id", "customer_code") == [(1, "A")]
    assert rows(page0.tables["buyers"], "buyer_id") == [(10,)]
    assert page0.stats.duplicate_connections == 1 and page0.stats.connections == 2
    assert rows(page1.tables["connections"], "customer_account_id", "customer_code") == [(2, "C")]
    assert page1.stats.duplicate_connections == 1
    assert seen == {1, 2}


def test_connections_without_an_id_are_all_kept() -> None:
    batch = flat([{"customer_code": "A"}, {"customer_code": "B", "customer_account_id": ""}])
    assert rows(batch.tables["connections"], "customer_account_id", "customer_code") == [(None, "A"), (None, "B")]
    assert batch.stats.missing_customer_account_id == 2 and batch.stats.duplicate_connections == 0


def test_a_connection_that_is_not_an_object_is_a_payload_error() -> None:
    with pytest.raises(PayloadError, match=r"connection #1 is a str.*page 4 \(log_id L4\)"):
        flatten_page(
            [{"customer_account_id": "1"}, "oops"],
            snapshot_date=SNAPSHOT,
            account=DEFAULT_ACCOUNT,
            source_page=4,
            log_id="L4",
        )


def test_an_empty_page_gives_every_table_empty_with_its_schema() -> None:
    batch = flat([])
    assert set(batch.tables) == set(TABLES)
    for name, table in batch.tables.items():
        assert table.num_rows == 0 and table.schema.equals(arrow_schema(name))


# --- the contract and its dictionary ----------------------------------------------------------------------


def test_the_contract_has_ten_tables_with_common_columns_first_and_provenance_last() -> None:
    assert list(TABLES) == [
        "connections",
        "addresses",
        "payment_methods",
        "shipping_methods",
        "discounts",
        "doors",
        "price_types",
        "buyers",
        "warehouses",
        "tax_ids",
    ]
    for name, spec in TABLES.items():
        names = arrow_schema(name).names
        assert names[:4] == ["account", "snapshot_date", "customer_account_id", "customer_code"]
        assert names[-4:] == ["source_page", "log_id", "extra", "invalid_values"]
        assert ("ordinal" in names) == spec.is_child
        assert set(spec.key) <= set(names)
        assert len(set(names)) == len(names)
    assert arrow_schema("connections").field("connection_modified").type == pa.timestamp("us", tz="UTC")
    assert arrow_schema("addresses").field("snapshot_date").type == pa.date32()


MODELS_MARKER = "<!-- models:"  # the dbt models' section, generated by python -m joor_pipeline.warehouse


def test_data_dictionary_is_up_to_date() -> None:
    text = render_dictionary()
    for spec in TABLES.values():
        for column in spec.columns:
            assert f"| `{column.name}` |" in text
    tables_part = DEFAULT_PATH.read_text(encoding="utf-8").split(MODELS_MARKER, 1)[0]  # the models come after
    assert tables_part.rstrip("\n") == text.rstrip("\n"), (
        "docs/data-dictionary.md is stale: run python -m joor_pipeline.flatten.dictionary"
    )


# ---- hostile payloads, end to end: landed raw pages, flattened, reconciled ------------------------------------

DAY = date(2024, 5, 1)


def landed_with(tmp_path: Path, replacements: dict[bytes, bytes], n: int = 300) -> list[dict[str, Any]]:
    """``n`` generated connections landed as JSON pages, with placeholders in the bodies swapped for raw JSON
    that the renderer could not write (integers past 64 bits, deep nesting)."""
    from joor_pipeline_tests.raw_fixtures import land

    connections = generate_connections(n, seed=11)
    connections[150]["customer_code"] = "__CODE__"
    connections[151]["customer_account_id"] = "__ID__"
    connections[152]["customer_name"] = "__DEEP__"
    connections[153]["surprise"] = "__DEEP__"

    def body_of(_index: int, body: bytes) -> bytes:
        for placeholder, value in replacements.items():
            body = body.replace(b'"' + placeholder + b'"', value)
        return body

    land(tmp_path, DAY, connections, body_of=body_of)
    return connections


def connections_by_page_row(tmp_path: Path) -> list[dict[str, Any]]:
    files = published_files(tmp_path, "connections", snap(DAY))
    return pa.concat_tables(pq.read_table(path) for path in files).to_pylist()


@pytest.mark.parametrize("workers", [1, 2])
def test_big_integers_and_deep_values_are_kept_as_text_and_the_rows_kept(tmp_path: Path, workers: int) -> None:
    big = b"123456789012345678901234567890"
    deep = b"[" * 900 + b'"x"' + b"]" * 900
    landed_with(tmp_path, {b"__CODE__": big, b"__ID__": b"-" + big, b"__DEEP__": deep})
    report = flatten_snapshot(tmp_path, snap(DAY), workers=workers)

    assert report.connections == 300
    rows = connections_by_page_row(tmp_path)
    assert rows[150]["customer_code"] == big.decode()  # a string column takes the digits as sent
    assert rows[151]["customer_account_id"] is None
    assert json.loads(rows[151]["invalid_values"]) == {"customer_account_id": "-" + big.decode()}
    # 900 levels in one field: the row is kept, the value kept as text, nothing crashed.
    name_text = json.loads(rows[152]["invalid_values"])["customer_name"]
    assert name_text.replace("[", "").replace("]", "").replace('"', "").replace("\\", "") == "x"
    assert name_text.count("[") == 900
    surprise = json.loads(rows[153]["extra"])["surprise"]
    assert json.dumps(surprise).count("[") == 900
    assert report.stats.coercion_problems["connections.customer_name"] == 1
    assert raw_counts(tmp_path, snap(DAY)) == published_counts(tmp_path, snap(DAY))


@pytest.mark.parametrize("workers", [1, 2])
def test_a_different_connection_sharing_an_id_fails_the_reconciliation_naming_it(tmp_path: Path, workers: int) -> None:
    from joor_pipeline_tests.raw_fixtures import land

    connections = generate_connections(300, seed=11)
    same = copy.deepcopy(connections[10])
    different = copy.deepcopy(connections[20])
    different["customer_account_id"] = connections[5]["customer_account_id"]
    land(tmp_path, DAY, [*connections, same, different, copy.deepcopy(different)])
    report = flatten_snapshot(tmp_path, snap(DAY), workers=workers)

    conflicting = int(connections[5]["customer_account_id"])
    assert report.connections == 300
    assert report.stats.duplicate_connections == 3
    assert report.stats.conflicting_duplicates == [conflicting]
    recount = raw_recount(tmp_path, snap(DAY))
    assert recount.conflicting_ids == [conflicting]
    # The different connection (counted once, though it came twice) is a record the Parquet lacks.
    assert recount.counts["connections"] == 301 and published_counts(tmp_path, snap(DAY))["connections"] == 300
    # ...and the blocking reconciliation check fails, naming the id.
    files = {table: published_files(tmp_path, table, snap(DAY)) for table in TABLES}
    outcome = next(
        o
        for o in check_partition(tmp_path, files, snap(DAY))
        if o.table == "connections" and o.check.name == "reconciles_with_raw"
    )
    assert not outcome.passed and outcome.blocks
    assert outcome.metadata["conflicting_customer_account_ids"] == [conflicting]
    assert str(conflicting) in outcome.detail


def test_identical_repeats_still_reconcile(tmp_path: Path) -> None:
    from joor_pipeline_tests.raw_fixtures import land

    connections = generate_connections(300, seed=11)
    land(tmp_path, DAY, [*connections, copy.deepcopy(connections[7]), copy.deepcopy(connections[250])])
    report = flatten_snapshot(tmp_path, snap(DAY), workers=2)
    assert report.stats.duplicate_connections == 2 and report.stats.conflicting_duplicates == []
    assert raw_recount(tmp_path, snap(DAY)).conflicting_ids == []
    assert raw_counts(tmp_path, snap(DAY)) == published_counts(tmp_path, snap(DAY))


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_an_id_past_64_bits_is_reported_out_of_range_not_missing(tmp_path: Path, fmt: str) -> None:
    """A 30-digit customer_account_id is present (kept in invalid_values): the blocking check says it is out of
    range, in JSON and XML alike, and the flatten refuses it naming the value (issue 19)."""
    from joor_pipeline.flatten.runner import AuditFailed
    from joor_pipeline.quality import blocking_failures
    from joor_pipeline_tests.raw_fixtures import land

    big = "123456789012345678901234567890"
    connections = generate_connections(120, seed=11)
    connections[30]["customer_account_id"] = "__ID__" if fmt == "json" else big
    next(c for c in connections[31:] if c.get("doors"))["doors"][0]["door_id"] = "4" * 25
    land(tmp_path, DAY, connections, fmt, body_of=lambda _i, body: body.replace(b'"__ID__"', big.encode()))
    with pytest.raises(AuditFailed) as info:
        flatten_snapshot(tmp_path, snap(DAY), audit=lambda staged: blocking_failures(tmp_path, staged))
    message = str(info.value)
    assert "connections.required_fields_present" in message
    assert f"customer_account_id {big} is out of range (beyond 64 bits; kept in invalid_values)" in message
    assert "customer_account_id is required but missing" not in message
    assert f"door_id {'4' * 25} is out of range" in message

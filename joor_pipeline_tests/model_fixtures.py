"""Small Parquet snapshots for the model tests, written with the contract's Arrow schemas."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from joor_pipeline.flatten.schema import TABLES, arrow_schema
from joor_pipeline.layout import SnapshotKey
from joor_pipeline.storage.parquet import write_partition_manifest
from joor_pipeline.warehouse import build_warehouse, database_path

Row = dict[str, Any]
CHILD_TABLES = tuple(name for name, spec in TABLES.items() if spec.is_child)


def partition_path(root: Path, table: str, snapshot_date: date, account: str = "default") -> Path:
    """Where the flattener writes one table's partition of one account's snapshot."""
    return root / table / f"account={account}" / f"snapshot_date={snapshot_date.isoformat()}" / "part-00000.parquet"


def table_of(table: str, rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """An Arrow table of exactly the contract schema; a column the contract does not have is an error."""
    schema = arrow_schema(table)
    for row in rows:
        unknown = set(row) - set(schema.names)
        if unknown:
            raise KeyError(f"{table} has no column(s) {sorted(unknown)}")
    return pa.Table.from_pylist([{name: row.get(name) for name in schema.names} for row in rows], schema=schema)


def publish_partition(root: Path, table: str, snapshot_date: date, account: str = "default") -> None:
    """Publish what a partition folder holds (its ``part-*.parquet`` files, in name order) under a new publication
    id, by writing its manifest: readers see nothing else."""
    directory = partition_path(root, table, snapshot_date, account).parent
    write_partition_manifest(directory, table, SnapshotKey(account, snapshot_date), uuid.uuid4().hex)


def write_table(
    root: Path, table: str, snapshot_date: date, rows: Sequence[Mapping[str, Any]], account: str = "default"
) -> Path:
    """Write and publish one partition file (zstd, as the flattener does)."""
    path = partition_path(root, table, snapshot_date, account)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table_of(table, rows), path, compression="zstd")
    publish_partition(root, table, snapshot_date, account)
    return path


@dataclass
class Retailer:
    """One connection and its child lists, as rows without the snapshot and provenance columns."""

    customer_account_id: int | None
    customer_code: str | None
    connection: Row = field(default_factory=dict)
    children: dict[str, list[Row]] = field(default_factory=dict)

    def copy(self) -> Retailer:
        """A deep copy, to change in a later snapshot."""
        return copy.deepcopy(self)


def clean_retailer(account_id: int, code: str) -> Retailer:
    """A retailer that breaks no data quality rule: one of each child, a US billing address with a state."""
    shipping_id = account_id * 10 + 1
    return Retailer(
        account_id,
        code,
        {
            "brand_account_id": 24180,
            "customer_alias": f"{code} alias",
            "customer_name": f"{code} boutique",
            "customer_email": f"{code.lower()}@example.com",
            "customer_contact_name": "Kristen Leone",
            "company_number_name": "company1",
            "company_number_code": "c1",
            "customer_group_name": "Specialty",
            "customer_group_code": "SPC",
            "sales_rep_code": "AB",
        },
        {
            "addresses": [
                {
                    "address_type": "billing",
                    "address_id": account_id * 10,
                    "name": code,
                    "address_1": "1 Main St",
                    "city": "New York",
                    "state": "NY",
                    "postal_code": "10005",
                    "country": "United States",
                },
                {
                    "address_type": "shipping",
                    "address_id": shipping_id,
                    "name": code,
                    "address_1": "2 Main St",
                    "city": "New York",
                    "state": "NY",
                    "postal_code": "10005",
                    "country": "US",
                },
            ],
            "payment_methods": [
                {
                    "payment_method_id": -6,
                    "payment_method_code": "net30",
                    "payment_method_name": "Net 30",
                    "payment_method_is_default": True,
                }
            ],
            "shipping_methods": [
                {
                    "shipping_method_id": -12,
                    "shipping_method_code": "ups_ground",
                    "shipping_method_name": "UPS Ground",
                    "shipping_method_is_default": True,
                }
            ],
            "discounts": [
                {
                    "account_boutique_discount_id": account_id * 10,
                    "amount": 5.0,
                    "type": "PERCENT",
                    "division_id": 498,
                    "line_item_level": True,
                }
            ],
            "doors": [{"door_id": account_id, "shipping_address_id": shipping_id, "door_name": "Door 1"}],
            "price_types": [
                {
                    "price_type_id": 2982,
                    "price_type_label": "Europe",
                    "price_type_currency_code": "EUR",
                    "price_type_currency_name": "Euro",
                    "price_type_terms": "EUR terms",
                }
            ],
            "buyers": [{"buyer_id": account_id * 10, "buyer_name": "Buyer", "buyer_email": "buyer@example.com"}],
            "warehouses": [{"warehouse_name": "Main", "warehouse_code": "W1"}],
            "tax_ids": [{"tax_id_number": "FR123", "name": "France"}],
        },
    )


def snapshot_rows(
    retailers: Sequence[Retailer],
    snapshot_date: date,
    *,
    log_id: str | None = None,
    source_page: int = 0,
    account: str = "default",
) -> dict[str, list[Row]]:
    """The rows of every table for one snapshot, with ordinals from list positions (per address_type)."""
    provenance: Row = {
        "account": account,
        "snapshot_date": snapshot_date,
        "source_page": source_page,
        "log_id": log_id or f"log-{snapshot_date.isoformat()}",
    }
    tables: dict[str, list[Row]] = {name: [] for name in TABLES}
    for retailer in retailers:
        owner: Row = {"customer_account_id": retailer.customer_account_id, "customer_code": retailer.customer_code}
        tables["connections"].append({**provenance, **owner, **retailer.connection})
        for table, items in retailer.children.items():
            positions: dict[Any, int] = {}
            for item in items:
                group = item.get("address_type")
                ordinal = item.get("ordinal", positions.get(group, 0))
                positions[group] = ordinal + 1
                tables[table].append({**provenance, **owner, "ordinal": ordinal, **item})
    return tables


def write_snapshot(
    root: Path,
    snapshot_date: date,
    retailers: Sequence[Retailer],
    *,
    log_id: str | None = None,
    source_page: int = 0,
    account: str = "default",
) -> None:
    """Write every table of the contract for one snapshot (a table without rows gets an empty file)."""
    rows = snapshot_rows(retailers, snapshot_date, log_id=log_id, source_page=source_page, account=account)
    for table, table_rows in rows.items():
        write_table(root, table, snapshot_date, table_rows, account)


def parquet_root(data_dir: Path) -> Path:
    """Where the published Parquet tables of a data directory live."""
    return data_dir / "parquet"


def query(data_dir: Path, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Rows of one query on the published warehouse, read-only; models resolve in ``main`` then ``staging``."""
    with duckdb.connect(str(database_path(data_dir)), read_only=True) as con:
        con.execute("set search_path = 'main,staging'")
        con.execute("set TimeZone = 'UTC'")
        return con.execute(sql, params).fetchall()


def model_counts(data_dir: Path) -> dict[str, int]:
    """The row count of every model in the published warehouse (``main`` and ``staging``)."""
    names = query(
        data_dir,
        "select table_name from information_schema.tables where table_schema in ('main', 'staging') order by 1",
    )
    return {name: query(data_dir, f'select count(*) from "{name}"')[0][0] for (name,) in names}


def build(data_dir: Path, **options: Any) -> dict[str, int]:
    """Build and publish the warehouse with dbt, then count every model."""
    build_warehouse(data_dir, **options)
    return model_counts(data_dir)

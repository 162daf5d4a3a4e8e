"""Data-quality rules for one snapshot partition, shared by the Dagster asset checks and the CLI.

Three sources of truth, none restated here:
- the rules of ``data_quality_issues`` (the dbt macro ``joor_quality_rules``), evaluated on the one partition in
  an in-memory DuckDB;
- the raw snapshot, recounted independently of the flattener, for raw-to-Parquet reconciliation;
- the previous partition, for row counts that move sharply.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Final

import duckdb
import pyarrow.parquet as pq

from joor_pipeline.flatten import TABLES
from joor_pipeline.joor.parse import as_list
from joor_pipeline.joor.shapes import CONNECTION_LISTS
from joor_pipeline.storage.parquet import partition_parquet_files, published_dates
from joor_pipeline.storage.raw import iter_raw_pages
from joor_pipeline.warehouse import rule_issues_sql, source_view_sql

#: Which JOOR list feeds which table (the connections table is fed by the connections themselves).
LIST_TABLE: Final[dict[str, str]] = {
    "warehouses": "warehouses",
    "billing_addresses": "addresses",
    "shipping_addresses": "addresses",
    "customer_locations": "addresses",
    "payment_methods": "payment_methods",
    "shipping_methods": "shipping_methods",
    "price_types": "price_types",
    "doors": "doors",
    "buyers": "buyers",
    "tax_id_numbers": "tax_ids",
    "discounts": "discounts",
}
#: A partition whose connection count moves by more than this share against the previous one is flagged.
SHARP_CHANGE: Final = 0.5


@dataclass(frozen=True)
class Issue:
    """One failed rule on one record, as ``data_quality_issues`` reports it."""

    table_name: str
    rule: str
    customer_account_id: int | None
    customer_code: str | None
    record_key: str | None
    column_name: str | None
    detail: str | None


def partition_issues(data_dir: Path, snapshot_date: date) -> list[Issue]:
    """Every rule of ``data_quality_issues`` that a record of this one partition breaks."""
    con = duckdb.connect()
    try:
        con.execute("set TimeZone = 'UTC'")
        con.execute("create schema published")
        for table in TABLES:
            con.execute(source_view_sql(data_dir, table, [snapshot_date]))
        rows = con.execute(
            "select table_name, rule, customer_account_id, customer_code, record_key, column_name, detail "
            f"from ({rule_issues_sql({table: f'published.{table}' for table in TABLES})}) order by all"
        ).fetchall()
    finally:
        con.close()
    return [Issue(*row) for row in rows]


def _account_key(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def _list_length(connection: dict[str, Any], path: tuple[str, ...], key: str) -> int:
    node: Any = connection
    for group in path:
        node = node.get(group) if isinstance(node, dict) else None
    items = as_list(key, node.get(key) if isinstance(node, dict) else None)
    return 0 if items is None else len(items)


def raw_counts(data_dir: Path, snapshot_date: date) -> dict[str, int]:
    """Rows each table should hold, counted from the raw pages (a repeated connection counts once)."""
    counts: Counter[str] = Counter({table: 0 for table in TABLES})
    seen: set[int] = set()
    for _entry, connections, _log_id in iter_raw_pages(data_dir, snapshot_date):
        for connection in connections:
            key = _account_key(connection.get("customer_account_id"))
            if key is not None:
                if key in seen:
                    continue
                seen.add(key)
            counts["connections"] += 1
            for path, list_key in CONNECTION_LISTS:
                counts[LIST_TABLE[list_key]] += _list_length(connection, path, list_key)
    return dict(counts)


def partition_rows(data_dir: Path, table: str, snapshot_date: date) -> int:
    """Rows one table's Parquet partition holds, over all its files (from the file footers)."""
    return sum(
        pq.ParquetFile(path).metadata.num_rows for path in partition_parquet_files(data_dir, table, snapshot_date)
    )


def parquet_counts(data_dir: Path, snapshot_date: date) -> dict[str, int]:
    """Rows each table's Parquet partition holds."""
    return {table: partition_rows(data_dir, table, snapshot_date) for table in TABLES}


def previous_partition(data_dir: Path, table: str, snapshot_date: date) -> date | None:
    """The latest snapshot date before ``snapshot_date`` that ``table`` has a partition for."""
    return max((day for day in published_dates(data_dir, table) if day < snapshot_date), default=None)

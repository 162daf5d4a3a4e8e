"""Data-quality rules for one snapshot partition, shared by the Dagster asset checks and the CLI.

Three sources of truth, none restated here:
- the rules of ``models/data_quality_issues.sql``, evaluated on the one partition in an in-memory DuckDB;
- the raw snapshot, recounted independently of the flattener, for raw-to-Parquet reconciliation;
- the previous published partition, for row counts that move sharply.

The functions take the files (or the Parquet root) to check, never assume the published paths: the blocking
checks run on a staged flatten before it is published (write, audit, publish; see ``storage.parquet``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Final

import duckdb

from joor_pipeline.flatten import TABLES
from joor_pipeline.joor.parse import as_list
from joor_pipeline.joor.shapes import CONNECTION_LISTS
from joor_pipeline.storage.parquet import partition_rows, published_dates
from joor_pipeline.storage.raw import iter_raw_pages
from joor_pipeline.warehouse import MODELS, MODELS_BY_NAME, run_model

__all__ = ["partition_rows"]  # re-exported: rows of some Parquet files, naming a damaged one

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


def _model_closure(name: str) -> list[str]:
    needed: set[str] = set()
    stack = [name]
    while stack:
        current = stack.pop()
        if current not in needed:
            needed.add(current)
            stack.extend(MODELS_BY_NAME[current].depends_on)
    return [model.name for model in MODELS if model.name in needed]


def partition_issues(root: Path, snapshot_date: date) -> list[Issue]:
    """Every rule of ``data_quality_issues`` that a record of one partition breaks.

    ``root`` is the Parquet root holding the partition: a staged flatten's, or ``data_dir/parquet``.
    """
    con = duckdb.connect()
    try:
        con.execute("set TimeZone = 'UTC'")
        for name in _model_closure("data_quality_issues"):
            run_model(con, MODELS_BY_NAME[name], root, snapshot_dates=[snapshot_date])
        rows = con.execute(
            "select table_name, rule, customer_account_id, customer_code, record_key, column_name, detail "
            "from data_quality_issues order by all"
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


def parquet_counts(files: Mapping[str, Sequence[Path]]) -> dict[str, int]:
    """Rows each table holds, given each table's files (e.g. a staged flatten's, or ``published_files``)."""
    return {table: partition_rows(list(files[table])) for table in TABLES}


def previous_partition(data_dir: Path, table: str, snapshot_date: date) -> date | None:
    """The latest snapshot date before ``snapshot_date`` that ``table`` has a published partition for."""
    return max((day for day in published_dates(data_dir, table) if day < snapshot_date), default=None)

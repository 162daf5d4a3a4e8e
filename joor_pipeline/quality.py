"""Data-quality rules for one snapshot partition, shared by the Dagster asset checks and the CLI.

Three sources of truth, none restated here:
- the rules of ``models/data_quality_issues.sql``, evaluated on the one partition in an in-memory DuckDB;
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
from joor_pipeline.flatten.coerce import account_id_key, fingerprint
from joor_pipeline.joor.parse import as_list
from joor_pipeline.joor.shapes import CONNECTION_LISTS
from joor_pipeline.storage.parquet import partition_parquet_files
from joor_pipeline.storage.raw import iter_raw_pages
from joor_pipeline.warehouse import MODELS, MODELS_BY_NAME, parquet_root, partition_files, run_model

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


def partition_issues(data_dir: Path, snapshot_date: date) -> list[Issue]:
    """Every rule of ``data_quality_issues`` that a record of this one partition breaks."""
    con = duckdb.connect()
    try:
        con.execute("set TimeZone = 'UTC'")
        for name in _model_closure("data_quality_issues"):
            run_model(con, MODELS_BY_NAME[name], parquet_root(data_dir), snapshot_dates=[snapshot_date])
        rows = con.execute(
            "select table_name, rule, customer_account_id, customer_code, record_key, column_name, detail "
            "from data_quality_issues order by all"
        ).fetchall()
    finally:
        con.close()
    return [Issue(*row) for row in rows]


def _list_length(connection: dict[str, Any], path: tuple[str, ...], key: str) -> int:
    node: Any = connection
    for group in path:
        node = node.get(group) if isinstance(node, dict) else None
    items = as_list(key, node.get(key) if isinstance(node, dict) else None)
    return 0 if items is None else len(items)


@dataclass(frozen=True)
class RawRecount:
    """What the raw pages say the tables should hold."""

    #: Rows per table: every connection once per customer_account_id, plus each connection that repeats an id
    #: with different content (a distinct record the flatten cannot keep), and their list items.
    counts: dict[str, int]
    #: customer_account_ids repeated by connections that differ from the first (sorted): a non-empty list fails
    #: the reconciliation, and names the ids.
    conflicting_ids: list[int]


def _count(counts: Counter[str], connection: dict[str, Any]) -> None:
    counts["connections"] += 1
    for path, list_key in CONNECTION_LISTS:
        counts[LIST_TABLE[list_key]] += _list_length(connection, path, list_key)


def raw_recount(data_dir: Path, snapshot_date: date) -> RawRecount:
    """Rows each table should hold, counted from the raw pages with the flatten's own dedup key
    (:func:`~joor_pipeline.flatten.coerce.account_id_key`); an identical repeat counts once."""
    counts: Counter[str] = Counter({table: 0 for table in TABLES})
    seen: set[int] = set()
    repeated: set[int] = set()
    for _entry, connections, _log_id in iter_raw_pages(data_dir, snapshot_date):
        for connection in connections:
            key = account_id_key(connection.get("customer_account_id"))
            if key is not None:
                if key in seen:
                    repeated.add(key)
                    continue
                seen.add(key)
            _count(counts, connection)
    if not repeated:
        return RawRecount(dict(counts), [])
    # Repeats are rare: a second pass compares them with the first, and counts each different version once.
    versions: dict[int, set[bytes]] = {}
    for _entry, connections, _log_id in iter_raw_pages(data_dir, snapshot_date):
        for connection in connections:
            key = account_id_key(connection.get("customer_account_id"))
            if key in repeated:
                digest = fingerprint(connection)
                seen_versions = versions.setdefault(key, set())
                if seen_versions and digest not in seen_versions:
                    _count(counts, connection)
                seen_versions.add(digest)
    conflicting = sorted(key for key, seen_versions in versions.items() if len(seen_versions) > 1)
    return RawRecount(dict(counts), conflicting)


def raw_counts(data_dir: Path, snapshot_date: date) -> dict[str, int]:
    """Rows each table should hold, counted from the raw pages (see :func:`raw_recount`)."""
    return raw_recount(data_dir, snapshot_date).counts


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
    days = (
        date.fromisoformat(path.parent.name.removeprefix("snapshot_date="))
        for path in partition_files(parquet_root(data_dir), table)
    )
    return max((day for day in days if day < snapshot_date), default=None)

"""Data-quality rules for one snapshot partition, shared by the Dagster asset checks and the CLI.

Three sources of truth, none restated here:
- the rules of ``data_quality_issues`` (the dbt macro ``joor_quality_rules``), evaluated on the one partition in
  an in-memory DuckDB;
- the raw snapshot, recounted independently of the flattener, for raw-to-Parquet reconciliation;
- the previous published partition, for row counts that move sharply.

The functions take the files (or the Parquet root) to check, never assume the published paths: the blocking
checks run on a staged flatten before it is published (write, audit, publish; see ``flatten.runner``).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Final, Literal

import duckdb

from joor_pipeline.flatten import TABLES
from joor_pipeline.flatten.recount import RawRecount, raw_recount
from joor_pipeline.flatten.runner import StagedFlatten
from joor_pipeline.layout import WORK, SnapshotKey
from joor_pipeline.storage.access import register
from joor_pipeline.storage.parquet import partition_rows, published_dates, published_files
from joor_pipeline.warehouse import SOURCE_SCHEMA, files_view_sql, rule_issues_sql

#: A partition whose connection count moves by more than this share against the previous one is flagged.
SHARP_CHANGE: Final = 0.5
#: Example records a failed check shows.
SAMPLE_SIZE: Final = 20
#: DuckDB's memory cap for the rules of one partition (the audit before publishing, and the asset checks): past
#: it, the rules' joins and aggregations spill to a scratch directory under ``_work/`` instead of growing the
#: process, so that ``joor-pipeline flatten`` of 200,000 connections stays under 600 MB for all its processes
#: (``bench/run_cost.py --only memory``). DuckDB counts its buffers against it, not Python's objects.
AUDIT_MEMORY_LIMIT: Final = "192MB"
#: Threads for those rules: each DuckDB thread holds buffers of its own, and the audit runs after the flatten's
#: workers, on a machine the flatten just filled.
AUDIT_THREADS: Final = 2


@dataclass(frozen=True)
class Check:
    """One check of a table partition; a failed blocking one keeps the partition from being published."""

    name: str
    severity: Literal["ERROR", "WARN"]
    blocking: bool
    description: str
    #: The data_quality_issues rules it reports (none for the reconciliation and the row-count movement).
    rules: tuple[str, ...] = ()


#: Checks run on every table.
TABLE_CHECKS: Final = (
    Check("unique_keys", "ERROR", True, "each row's key (connection, list, ordinal) appears once", ("duplicate_key",)),
    Check("required_fields_present", "ERROR", True, "fields JOOR marks required are present", ("required_missing",)),
    Check("reconciles_with_raw", "ERROR", True, "every raw connection / list item landed once"),
    Check("max_lengths", "WARN", False, "no value longer than JOOR's documented maximum", ("max_length_exceeded",)),
    Check("no_unknown_fields", "WARN", False, "JOOR sent no field the contract does not know", ("unknown_field",)),
    Check("values_coerced", "WARN", False, "every value could be typed (originals kept otherwise)", ("invalid_value",)),
    Check("row_count_steady", "WARN", False, f"rows move by at most {SHARP_CHANGE:.0%} vs the previous snapshot"),
)
#: Checks that only make sense on one table.
EXTRA_CHECKS: Final = (
    (
        "addresses",
        Check("state_for_us_ca_jp_au", "ERROR", True, "US, CA, JP and AU addresses have a state", ("state_missing",)),
    ),
    (
        "doors",
        Check(
            "door_addresses_known",
            "WARN",
            False,
            "each door's shipping address is the connection's",
            ("dangling_door",),
        ),
    ),
)
#: (table, check) for every check, in a fixed order.
CHECKS: Final[tuple[tuple[str, Check], ...]] = (
    *((table, check) for table in TABLES for check in TABLE_CHECKS),
    *EXTRA_CHECKS,
)
#: The checks that keep a partition from being published: the audit of a staged flatten.
BLOCKING_CHECKS: Final = tuple((table, check) for table, check in CHECKS if check.blocking)


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


@dataclass(frozen=True)
class CheckOutcome:
    """One check's result on one table's partition: plain values, for the asset checks and the CLI alike."""

    table: str
    check: Check
    passed: bool
    #: Figures and samples (numbers, text, lists and dicts of them).
    metadata: dict[str, Any]
    #: What failed, in words with example records ("" when it passed).
    detail: str

    @property
    def blocks(self) -> bool:
        """A failed blocking check: the partition must not be published."""
        return self.check.blocking and not self.passed

    def describe(self) -> str:
        return f"{self.table}.{self.check.name} ({self.detail})"


#: The tables the rules of a table read besides that table itself: a door's shipping address is one of the
#: connection's addresses. Every other rule reads the records of its own table only.
RULE_INPUTS: Final[dict[str, tuple[str, ...]]] = {"doors": ("addresses",)}
#: Up to this many rows in the ten tables together, the rules run as one query (a daily partition of a few
#: thousand retailers: 0.07 s, against 0.47 s table by table at 500 retailers); past it, table by table.
ONE_QUERY_ROWS: Final = 1_000_000


def partition_issues(
    data_dir: Path, files: Mapping[str, Sequence[Path | str]], snapshot_date: date, rules: Collection[str] | None = None
) -> list[Issue]:
    """Every rule of ``data_quality_issues`` (or only ``rules``) that a record of one partition breaks, given each
    table's ``files`` (a staged flatten's, or the published ones); ``data_dir`` holds the contract files the views
    read first. The rules are one ``union all`` branch each, so filtering on ``rule`` leaves DuckDB only the
    branches asked for: the audit before publishing asks for the blocking ones alone.

    Past :data:`ONE_QUERY_ROWS`, one table at a time (with the tables its rules also read, :data:`RULE_INPUTS`),
    the others empty: what DuckDB holds at once is then one table's keys, not all ten tables' (the duplicate-key
    aggregate over every record of 200,000 connections ran out of a 384 MB limit; table by table it fits in
    :data:`AUDIT_MEMORY_LIMIT`, and is faster). The result is the same: a rule never compares the records of two
    tables but through RULE_INPUTS.
    """
    scratch_root = data_dir / WORK / "tmp"
    scratch_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="audit-", dir=scratch_root) as scratch:
        return _partition_issues(data_dir, files, rules, Path(scratch))


def _partition_issues(
    data_dir: Path, files: Mapping[str, Sequence[Path | str]], rules: Collection[str] | None, scratch: Path
) -> list[Issue]:
    config: dict[str, str | bool | int | float | list[str]] = {
        "memory_limit": AUDIT_MEMORY_LIMIT,
        "temp_directory": str(scratch),
        "threads": AUDIT_THREADS,
        "preserve_insertion_order": False,
    }
    con = duckdb.connect(config=config)
    rows: list[tuple[Any, ...]] = []
    try:
        con.execute("set enable_progress_bar = false")
        register(con, data_dir)
        con.execute("set TimeZone = 'UTC'")
        con.execute(f"create schema {SOURCE_SCHEMA}")
        for table in TABLES:
            con.execute(files_view_sql(data_dir, table, list(files[table])))
        # The rules rendered once, over placeholders each pass replaces with a table's view or an empty one.
        query = (
            "select table_name, rule, customer_account_id, customer_code, record_key, column_name, detail "
            f"from ({rule_issues_sql({table: _placeholder(table) for table in TABLES})}) "
            "where ($table is null or table_name = $table) and ($rules is null or list_contains($rules, rule))"
        )
        one_query = sum(parquet_counts(files).values()) <= ONE_QUERY_ROWS
        targets: list[str | None] = [None] if one_query else list(TABLES)
        for target in targets:
            read = set(TABLES) if target is None else {target, *RULE_INPUTS.get(target, ())}
            sql = query
            for table in TABLES:
                view = f"{SOURCE_SCHEMA}.{table}"
                sql = sql.replace(_placeholder(table), view if table in read else f"(select * from {view} where false)")
            rows += con.execute(sql, {"table": target, "rules": None if rules is None else sorted(rules)}).fetchall()
    finally:
        con.close()
    return [Issue(*row) for row in sorted(rows, key=_issue_order)]


def _placeholder(table: str) -> str:
    return f"__joor_relation_{table}__"


def _issue_order(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """``order by all`` of the issue rows, nulls last, in Python."""
    return tuple((value is None, value if value is not None else 0) for value in row)


def raw_counts(data_dir: Path, key: SnapshotKey) -> dict[str, int]:
    """Rows each table should hold, counted from the raw pages (see :func:`raw_recount`)."""
    return raw_recount(data_dir, key).counts


def _sample(issues: list[Issue]) -> list[dict[str, Any]]:
    return [
        {
            "customer_account_id": i.customer_account_id,
            "customer_code": i.customer_code,
            "record": i.record_key,
            "column": i.column_name,
            "detail": i.detail,
        }
        for i in issues[:SAMPLE_SIZE]
    ]


def _examples(issues: list[Issue]) -> str:
    return "; ".join(
        f"customer_account_id {i.customer_account_id} ({i.customer_code}) {i.column_name}: {i.detail}"
        for i in issues[:3]
    )


def check_partition(
    data_dir: Path,
    files: Mapping[str, Sequence[Path | str]],
    key: SnapshotKey,
    recount: RawRecount | None = None,
    checks: Sequence[tuple[str, Check]] = CHECKS,
) -> list[CheckOutcome]:
    """Every check on one snapshot's partition, given each table's ``files`` (staged or published). The raw
    snapshot and the previous published partition come from ``data_dir``; ``recount`` is the raw snapshot's,
    when the flatten's workers made it from the pages they read (otherwise the pages are read again). ``checks``
    picks some of :data:`CHECKS` (the audit: :data:`BLOCKING_CHECKS`); only their rules are evaluated."""
    by_check: dict[tuple[str, str], list[Issue]] = {}
    rules = None if checks is CHECKS else {rule for _table, check in checks for rule in check.rules}
    snapshot_date = key.snapshot_date
    for issue in partition_issues(data_dir, files, snapshot_date, rules):
        for table, check in checks:
            if issue.table_name == table and issue.rule in check.rules:
                by_check.setdefault((table, check.name), []).append(issue)
    if recount is None:
        recount = raw_recount(data_dir, key)
    expected = recount.counts
    actual = parquet_counts(files)

    outcomes = []
    for table, check in checks:
        metadata: dict[str, Any]
        detail = ""
        if check.name == "reconciles_with_raw":
            # A connection that shares its id with a different one cannot be kept beside it: named, and failed.
            conflicting = recount.conflicting_ids if table == "connections" else []
            passed = expected[table] == actual[table] and not conflicting
            metadata = {"raw_items": expected[table], "parquet_rows": actual[table]}
            detail = f"{expected[table]} raw items, {actual[table]} Parquet rows"
            if conflicting:
                metadata["conflicting_customer_account_ids"] = conflicting[:20]
                shown = ", ".join(map(str, conflicting[:5]))
                detail += f"; {len(conflicting)} customer_account_id(s) shared by different connections, e.g. {shown}"
        elif check.name == "row_count_steady":
            previous = previous_partition(data_dir, table, key)
            if previous is None:
                passed, metadata = True, {"previous_snapshot": "none"}
            else:
                before = partition_rows(published_files(data_dir, table, SnapshotKey(key.account, previous)))
                change = (actual[table] - before) / before if before else (0.0 if not actual[table] else 1.0)
                passed = abs(change) <= SHARP_CHANGE
                detail = f"{before} rows on {previous}, {actual[table]} now"
                metadata = {
                    "previous_snapshot": previous.isoformat(),
                    "previous_rows": before,
                    "rows": actual[table],
                    "change": round(change, 4),
                }
        else:
            found = by_check.get((table, check.name), [])
            passed = not found
            metadata = {"failures": len(found)}
            if found:
                detail = f"{len(found)} records, e.g. {_examples(found)}"
                metadata["by_column"] = dict(Counter(str(i.column_name) for i in found))
                metadata["sample"] = _sample(found)
        outcomes.append(CheckOutcome(table, check, passed, metadata, detail))
    return outcomes


def parquet_counts(files: Mapping[str, Sequence[Path | str]]) -> dict[str, int]:
    """Rows each table holds, given each table's files (e.g. a staged flatten's, or ``published_files``)."""
    return {table: partition_rows(list(files[table])) for table in TABLES}


def published_counts(data_dir: Path, key: SnapshotKey) -> dict[str, int]:
    """Rows each table's published partition of a snapshot holds."""
    return parquet_counts({table: published_files(data_dir, table, key) for table in TABLES})


def previous_partition(data_dir: Path, table: str, key: SnapshotKey) -> date | None:
    """The latest snapshot date before ``key``'s that ``table`` has a published partition for (same account)."""
    days = published_dates(data_dir, table, account=key.account)
    return max((day for day in days if day < key.snapshot_date), default=None)


def blocking_failures(data_dir: Path, staged: StagedFlatten) -> list[str]:
    """The failed blocking checks of a staged flatten, in words: the audit of ``flatten_snapshot``."""
    files = {table: staged.files(table) for table in TABLES}
    outcomes = check_partition(data_dir, files, staged.report.key, staged.raw_recount, BLOCKING_CHECKS)
    return [outcome.describe() for outcome in outcomes if outcome.blocks]

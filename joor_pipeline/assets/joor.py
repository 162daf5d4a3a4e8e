"""JOOR assets: the raw snapshot, the ten Parquet tables and their checks (wiring only; the work is in the library)."""

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from joor_pipeline.assets.partitions import daily_partitions
from joor_pipeline.assets.resources import DataDirResource, JoorApiResource
from joor_pipeline.flatten import TABLES
from joor_pipeline.flatten.schema import REQ_IF_STATE_COUNTRY, REQ_YES
from joor_pipeline.pipeline import fetch_snapshot
from joor_pipeline.quality import (
    SHARP_CHANGE,
    Issue,
    parquet_counts,
    partition_issues,
    partition_rows,
    previous_partition,
    raw_counts,
)
from joor_pipeline.storage.parquet import flatten_snapshot, partition_parquet_files
from joor_pipeline.storage.raw import MANIFEST_NAME, raw_snapshot_dir, read_manifest

RAW_ASSET: Final = "joor_raw_connections"
JOOR_API_POOL: Final = "joor_api"
PREVIEW_ROWS: Final = 5
LOG_IDS_SHOWN: Final = 20
#: The run tag Dagster sets on every run of a backfill.
BACKFILL_TAG: Final = "dagster/backfill"


class FetchConfig(dg.Config):
    """Run configuration of the raw fetch."""

    refetch: bool = False
    """Fetch again even when a past date already has a raw snapshot (JOOR only serves the current state)."""
    allow_backdated: bool = False
    """Allow fetching today's JOOR state into a past date's partition that has no raw snapshot yet: one run of
    one date only, refused inside a backfill (list the dates in backdated_dates there)."""
    backdated_dates: list[str] = Field(default_factory=list)
    """Past dates (YYYY-MM-DD) that may receive today's JOOR state, each named explicitly (for a backfill)."""


def _partition_date(context: dg.AssetExecutionContext) -> date:
    return date.fromisoformat(context.partition_key)


@dg.asset(
    name=RAW_ASSET,
    partitions_def=daily_partitions,
    group_name="joor_raw",
    kinds={"python", "json"},
    pool=JOOR_API_POOL,
    description="Every JOOR connection page of the day, landed exactly as received, with a manifest.",
)
def joor_raw_connections(
    context: dg.AssetExecutionContext, config: FetchConfig, joor: JoorApiResource, storage: DataDirResource
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    """Land the raw snapshot of the partition's date (JOOR serves only the current state: see FetchConfig)."""
    snapshot_date = _partition_date(context)
    data_dir = storage.path
    today = datetime.now(UTC).date()
    existing = (raw_snapshot_dir(data_dir, snapshot_date) / MANIFEST_NAME).is_file()
    if snapshot_date < today and not config.refetch:
        if existing:
            manifest = read_manifest(data_dir, snapshot_date)
            context.log.info(
                "kept the raw snapshot of %s fetched at %s", snapshot_date, manifest.get("fetch_started_at")
            )
            return dg.MaterializeResult(metadata={**_manifest_metadata(manifest), "reused_existing_snapshot": True})
        listed = snapshot_date.isoformat() in config.backdated_dates
        if config.allow_backdated and not listed and BACKFILL_TAG in context.run.tags:
            raise dg.Failure(
                description=(
                    f"allow_backdated applies to one date at a time, and this run of {snapshot_date} is part of a "
                    "backfill: list each past date to fill with today's JOOR state in backdated_dates instead."
                )
            )
        if not (config.allow_backdated or listed):
            raise dg.Failure(
                description=(
                    f"no raw snapshot exists for {snapshot_date} and JOOR serves only the current state, so a "
                    "fetch now would store today's data under a past date. Set allow_backdated: true in the "
                    "run config to do it anyway."
                )
            )
    settings = joor.settings(data_dir)
    pages_logged = 0

    def progress(pages: int, connections: int) -> None:
        nonlocal pages_logged
        if pages - pages_logged >= 10:
            pages_logged = pages
            context.log.info("fetched %d pages, %d connections", pages, connections)

    with joor.client() as client:
        context.log.info(
            "fetching connections from %s (%s, %s)", settings.target, settings.api_version, settings.format
        )
        report = fetch_snapshot(client, data_dir, snapshot_date, progress=progress)
    context.log.info("landed %d connections in %d pages at %s", report.connections, report.pages, report.path)
    return dg.MaterializeResult(metadata={**_manifest_metadata(report.manifest), "reused_existing_snapshot": False})


def _manifest_metadata(manifest: dict[str, Any]) -> dict[str, Any]:
    log_ids = [p["log_id"] for p in manifest.get("pages", []) if p.get("log_id")]
    return {
        "pages": manifest.get("page_count", 0),
        "connections": manifest.get("connections", 0),
        "format": manifest.get("format"),
        "api_version": manifest.get("api_version"),
        "source": manifest.get("source"),
        "requests": manifest.get("requests", 0),
        "retries": manifest.get("retries", 0),
        "throttled_429": manifest.get("throttled", 0),
        "fetch_seconds": manifest.get("fetch_seconds"),
        "fetched_at": manifest.get("fetch_started_at"),
        "joor_log_ids": dg.MetadataValue.json({"count": len(log_ids), "first": log_ids[:LOG_IDS_SHOWN]}),
    }


# ---- the ten tables and their checks ---------------------------------------------------------------------------

#: (check name, severity, blocking, description) for every table.
TABLE_CHECKS: Final = (
    ("unique_keys", dg.AssetCheckSeverity.ERROR, True, "each row's key (connection, list, ordinal) appears once"),
    ("required_fields_present", dg.AssetCheckSeverity.ERROR, True, "fields JOOR marks required are present"),
    ("reconciles_with_raw", dg.AssetCheckSeverity.ERROR, True, "every raw connection / list item landed once"),
    ("max_lengths", dg.AssetCheckSeverity.WARN, False, "no value longer than JOOR's documented maximum"),
    ("no_unknown_fields", dg.AssetCheckSeverity.WARN, False, "JOOR sent no field the contract does not know"),
    ("values_coerced", dg.AssetCheckSeverity.WARN, False, "every value could be typed (originals kept otherwise)"),
    (
        "row_count_steady",
        dg.AssetCheckSeverity.WARN,
        False,
        f"rows move by at most {SHARP_CHANGE:.0%} vs the previous snapshot",
    ),
)
#: Checks that only make sense on one table.
EXTRA_CHECKS: Final = (
    (
        "addresses",
        "state_for_us_ca_jp_au",
        dg.AssetCheckSeverity.ERROR,
        True,
        "US, CA, JP and AU addresses have a state",
    ),
    (
        "doors",
        "door_addresses_known",
        dg.AssetCheckSeverity.WARN,
        False,
        "each door's shipping address is the connection's",
    ),
)
#: Check name -> the data_quality_issues rule(s) it reports.
CHECK_RULES: Final[dict[str, tuple[str, ...]]] = {
    "unique_keys": ("duplicate_key",),
    "required_fields_present": ("required_missing",),
    "max_lengths": ("max_length_exceeded",),
    "no_unknown_fields": ("unknown_field",),
    "values_coerced": ("invalid_value",),
    "state_for_us_ca_jp_au": ("state_missing",),
    "door_addresses_known": ("dangling_door",),
}


def _check_specs() -> list[dg.AssetCheckSpec]:
    specs = [
        dg.AssetCheckSpec(name, asset=table, blocking=blocking, description=description)
        for table in TABLES
        for name, _severity, blocking, description in TABLE_CHECKS
    ]
    specs += [
        dg.AssetCheckSpec(name, asset=table, blocking=blocking, description=description)
        for table, name, _severity, blocking, description in EXTRA_CHECKS
    ]
    return specs


SEVERITY: Final[dict[str, dg.AssetCheckSeverity]] = {
    **{name: severity for name, severity, _b, _d in TABLE_CHECKS},
    **{name: severity for _t, name, severity, _b, _d in EXTRA_CHECKS},
}


def _column_schema(table: str) -> dg.TableSchema:
    spec = TABLES[table]
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=column.name,
                type=str(column.type),
                description=column.description + (f" (JOOR: {', '.join(column.sources)})" if column.sources else ""),
                constraints=dg.TableColumnConstraints(
                    nullable=column.nullable,
                    other=[f"JOOR REQ {column.required}"] if column.required in (REQ_YES, REQ_IF_STATE_COUNTRY) else [],
                ),
            )
            for column in spec.columns
        ]
    )


def _first_rows(files: list[Path]) -> pa.Table:
    """The first rows of a partition for its preview, read without loading the whole table."""
    for path in files:
        batches = pq.ParquetFile(path).iter_batches(batch_size=PREVIEW_ROWS)
        first = next(batches, None)
        if first is not None and first.num_rows:
            return pa.Table.from_batches([first])
    return pq.ParquetFile(files[0]).schema_arrow.empty_table()


def _preview(table: pa.Table) -> str:
    """A markdown table of the first rows, wide text cut short."""
    rows = table.slice(0, PREVIEW_ROWS).to_pylist()
    names = table.column_names

    def cell(value: Any) -> str:
        text = "" if value is None else str(value)
        text = text.replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= 40 else text[:39] + "…"

    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(cell(row[name]) for name in names) + " |" for row in rows]
    return "\n".join(lines)


def _issue_sample(issues: list[Issue]) -> dg.MetadataValue:  # type: ignore[type-arg]
    return dg.MetadataValue.json(
        [
            {
                "customer_account_id": i.customer_account_id,
                "customer_code": i.customer_code,
                "record": i.record_key,
                "column": i.column_name,
                "detail": i.detail,
            }
            for i in issues[:20]
        ]
    )


def evaluate_checks(storage: DataDirResource, snapshot_date: date) -> Iterator[dg.AssetCheckResult]:
    """Every table check on one partition: DuckDB rules, reconciliation and row-count movement."""
    data_dir = storage.path
    issues = partition_issues(data_dir, snapshot_date)
    by_check: dict[tuple[str, str], list[Issue]] = {}
    for issue in issues:
        for check, rules in CHECK_RULES.items():
            if issue.rule in rules:
                by_check.setdefault((issue.table_name, check), []).append(issue)
    expected = raw_counts(data_dir, snapshot_date)
    actual = parquet_counts(data_dir, snapshot_date)

    for spec in _check_specs():
        table = spec.asset_key.path[-1]
        name = spec.name
        metadata: dict[str, Any]
        if name == "reconciles_with_raw":
            passed = expected[table] == actual[table]
            metadata = {"raw_items": expected[table], "parquet_rows": actual[table]}
        elif name == "row_count_steady":
            previous = previous_partition(data_dir, table, snapshot_date)
            if previous is None:
                passed, metadata = True, {"previous_snapshot": "none"}
            else:
                before = partition_rows(data_dir, table, previous)
                change = (actual[table] - before) / before if before else (0.0 if not actual[table] else 1.0)
                passed = abs(change) <= SHARP_CHANGE
                metadata = {
                    "previous_snapshot": previous.isoformat(),
                    "previous_rows": before,
                    "rows": actual[table],
                    "change": dg.MetadataValue.float(round(change, 4)),
                }
        else:
            found = by_check.get((table, name), [])
            passed = not found
            metadata = {"failures": len(found)}
            if found:
                metadata["by_column"] = dg.MetadataValue.json(dict(Counter(str(i.column_name) for i in found)))
                metadata["sample"] = _issue_sample(found)
        yield dg.AssetCheckResult(
            asset_key=spec.asset_key,
            check_name=name,
            passed=passed,
            severity=SEVERITY[name],
            metadata=metadata,
        )


@dg.multi_asset(
    name="joor_tables",
    specs=[
        dg.AssetSpec(
            table,
            deps=[RAW_ASSET],
            description=TABLES[table].description,
            group_name="joor_tables",
            kinds={"parquet"},
            metadata={"dagster/column_schema": _column_schema(table)},
        )
        for table in TABLES
    ],
    check_specs=_check_specs(),
    partitions_def=daily_partitions,
)
def joor_tables(context: dg.AssetExecutionContext, storage: DataDirResource) -> Iterator[Any]:
    """Flatten the partition's raw snapshot into the ten Parquet tables, then check them."""
    snapshot_date = _partition_date(context)
    data_dir = storage.path
    last_logged = 0

    def progress(done: int, total: int, connections: int) -> None:
        nonlocal last_logged
        if done - last_logged >= 10 or done == total:
            last_logged = done
            context.log.info("flattened %d/%d pages, %d connections", done, total, connections)

    report = flatten_snapshot(data_dir, snapshot_date, progress=progress, workers=storage.workers())
    if report.workers > 1:
        context.log.info("flattened by %d worker processes (one file per table each)", report.workers)
    stats = report.stats
    for table in TABLES:
        path = report.paths[table]
        data = _first_rows(partition_parquet_files(data_dir, table, snapshot_date))
        unknown = {k: v for k, v in stats.unknown_fields.items() if k.startswith(f"{table}.")}
        problems = {k: v for k, v in stats.coercion_problems.items() if k.startswith(f"{table}.")}
        yield dg.MaterializeResult(
            asset_key=table,
            metadata={
                "dagster/row_count": report.rows[table],
                "dagster/column_schema": _column_schema(table),
                "path": dg.MetadataValue.path(str(path)),
                "preview": dg.MetadataValue.md(_preview(data)),
                "unknown_fields": sum(unknown.values()),
                "unknown_field_counts": dg.MetadataValue.json(unknown),
                "coercion_problems": sum(problems.values()),
                "coercion_problem_counts": dg.MetadataValue.json(problems),
                "pages": report.pages,
                "duration_seconds": dg.MetadataValue.float(round(report.duration_seconds, 3)),
            },
        )
    if stats.duplicate_connections:
        context.log.warning(
            "%d connection(s) appeared more than once in the raw pages; kept the first", stats.duplicate_connections
        )
    yield from evaluate_checks(storage, snapshot_date)

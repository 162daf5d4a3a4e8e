"""JOOR assets: the raw snapshot, the ten Parquet tables and their checks (wiring only; the work is in the library)."""

import warnings
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import dagster as dg
import pyarrow as pa
from pydantic import Field

from joor_pipeline.assets.logs import forward_logs
from joor_pipeline.assets.partitions import partition_of, snapshot_partitions
from joor_pipeline.assets.resources import DataDirResource, JoorApiResource
from joor_pipeline.flatten import TABLES
from joor_pipeline.flatten.dictionary import column_description
from joor_pipeline.flatten.runner import stage_snapshot
from joor_pipeline.flatten.schema import REQ_IF_STATE_COUNTRY, REQ_YES
from joor_pipeline.layout import SnapshotKey
from joor_pipeline.pipeline import backdating_refusal, fetch_snapshot
from joor_pipeline.quality import CHECKS, Check, CheckOutcome, check_partition
from joor_pipeline.storage.access import parquet_file
from joor_pipeline.storage.parquet import published_files
from joor_pipeline.storage.raw import raw_snapshot_exists, read_manifest

RAW_ASSET: Final = "joor_raw_connections"
PREVIEW_ROWS: Final = 5
LOG_IDS_SHOWN: Final = 20
#: The run tag Dagster sets on every run of a backfill.
BACKFILL_TAG: Final = "dagster/backfill"


class FetchConfig(dg.Config):
    """Run configuration of the raw fetch."""

    refetch: bool = False
    """Fetch again even when the date already has a raw snapshot (a kept one, today's too, is reused otherwise;
    JOOR only serves the current state)."""
    allow_backdated: bool = False
    """Allow fetching today's JOOR state into a past date's partition that has no raw snapshot yet: one run of
    one date only, refused inside a backfill (list the dates in backdated_dates there)."""
    backdated_dates: list[str] = Field(default_factory=list)
    """Past dates (YYYY-MM-DD) that may receive today's JOOR state, each named explicitly (for a backfill)."""


def _partition(context: dg.AssetExecutionContext) -> SnapshotKey:
    """The snapshot of the run's partition (its account and date)."""
    return SnapshotKey(*partition_of(context.partition_key))


@dg.asset(
    name=RAW_ASSET,
    partitions_def=snapshot_partitions,
    group_name="joor_raw",
    kinds={"python", "json"},
    # No pool: one account's runs never overlap (run-tag concurrency on dagster/partition/account, see
    # dagster_home.example/dagster.yaml), and each account has its own JOOR credit budget.
    description="Every JOOR connection page of the account's day, landed exactly as received, with a manifest.",
)
def joor_raw_connections(
    context: dg.AssetExecutionContext, config: FetchConfig, joor: JoorApiResource, storage: DataDirResource
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    """Land the raw snapshot of the partition's date (JOOR serves only the current state: see FetchConfig)."""
    key = _partition(context)
    account, snapshot_date = key.account, key.snapshot_date
    data_dir = storage.path
    today = datetime.now(UTC).date()
    existing = raw_snapshot_exists(data_dir, key)
    # A kept snapshot is reused, today's too (a second run after a model failure spends no credits again).
    if existing and not config.refetch:
        manifest = read_manifest(data_dir, key)
        context.log.info(
            "kept the raw snapshot of %s of account %s fetched at %s (refetch: true fetches it again)",
            snapshot_date,
            account,
            manifest.get("fetch_started_at"),
        )
        return dg.MaterializeResult(metadata={**_manifest_metadata(manifest), "reused_existing_snapshot": True})
    if snapshot_date < today and not config.refetch:
        listed = snapshot_date.isoformat() in config.backdated_dates
        if config.allow_backdated and not listed and BACKFILL_TAG in context.run.tags:
            raise dg.Failure(
                description=(
                    f"allow_backdated applies to one date at a time, and this run of {snapshot_date} is part of a "
                    "backfill: list each past date to fill with today's JOOR state in backdated_dates instead."
                )
            )
    refusal = backdating_refusal(
        snapshot_date,
        today,
        allowed=config.refetch or config.allow_backdated or snapshot_date.isoformat() in config.backdated_dates,
        how_to_allow="set allow_backdated: true in the run config (backdated_dates in a backfill)",
    )
    if refusal is not None:
        raise dg.Failure(description=f"no raw snapshot is kept for {snapshot_date}: {refusal}")
    settings = joor.settings(data_dir, account=account)
    pages_logged = 0

    def progress(pages: int, connections: int) -> None:
        nonlocal pages_logged
        if pages - pages_logged >= 10:
            pages_logged = pages
            context.log.info("fetched %d pages, %d connections", pages, connections)

    with forward_logs(context), joor.client(account=account) as client:
        context.log.info(
            "fetching connections of account %s from %s (%s, %s)",
            account,
            settings.target,
            settings.api_version,
            settings.format,
        )
        report = fetch_snapshot(client, data_dir, key, progress=progress)
    context.log.info("landed %d connections in %d pages at %s", report.connections, report.pages, report.path)
    return dg.MaterializeResult(metadata={**_manifest_metadata(report.manifest), "reused_existing_snapshot": False})


#: The ``source`` a raw manifest records for the built-in sandbox (``JoorSettings.target``): synthetic retailers.
BUILTIN_SOURCE: Final = "built-in sandbox"


def synthetic(manifest: dict[str, Any]) -> bool:
    """Whether a raw snapshot holds the built-in sandbox's synthetic retailers, not a brand's."""
    return manifest.get("source") == BUILTIN_SOURCE


def _manifest_metadata(manifest: dict[str, Any]) -> dict[str, Any]:
    log_ids = [p["log_id"] for p in manifest.get("pages", []) if p.get("log_id")]
    return {
        "synthetic": synthetic(manifest),
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
        "joor_reported_total": manifest.get("reported_total"),
        "walks": manifest.get("walks", 1),
        # Names and last values of the rate-limit headers JOOR sent (never a secret: masked by the client).
        "rate_limit_headers": dg.MetadataValue.json(manifest.get("rate_limit_headers", {})),
    }


# ---- the ten tables and their checks ---------------------------------------------------------------------------

#: What Dagster 1.13 says, once per spec, about a partitioned check; exactly this warning is silenced.
PARTITIONED_CHECK_PREVIEW: Final = r"Specifying a partitions_def on an AssetCheckSpec is currently in preview"


#: The two asset checks of every table: each holds every rule of ``quality.CHECKS`` of its kind on that table,
#: with each rule's result in its metadata. One check per rule would record 72 results, each three events in
#: Dagster's log (planned, output, evaluation: 216 of a run's 415 events, recorded one by one), for the same
#: information; grouped, a run records 20.
BLOCKING_CHECK: Final = "blocking_rules"
WARNING_CHECK: Final = "warning_rules"


def table_rules(table: str, blocking: bool) -> list[Check]:
    """The rules of ``quality.CHECKS`` on ``table`` that block publication (or that only warn)."""
    return [check for name, check in CHECKS if name == table and check.blocking == blocking]


def _check_description(rules: Sequence[Check], blocking: bool) -> str:
    kind = (
        "Blocking: any failure keeps the partition from being published (it is quarantined instead)."
        if blocking
        else "Warnings: flagged, never blocking."
    )
    return f"{kind} Rules: " + "; ".join(f"{rule.name} ({rule.description})" for rule in rules) + "."


def _check_specs() -> list[dg.AssetCheckSpec]:
    """Two checks per table (its blocking rules, its warnings), tied to the daily partitions so their history
    shows one result per date."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=PARTITIONED_CHECK_PREVIEW, category=dg.PreviewWarning)
        return [
            dg.AssetCheckSpec(
                name,
                asset=table,
                blocking=blocking,
                description=_check_description(rules, blocking),
                partitions_def=snapshot_partitions,
            )
            for table in TABLES
            for name, blocking in ((BLOCKING_CHECK, True), (WARNING_CHECK, False))
            if (rules := table_rules(table, blocking))
        ]


def _column_schema(table: str) -> dg.TableSchema:
    spec = TABLES[table]
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=column.name,
                type=str(column.type),
                description=column_description(column),
                constraints=dg.TableColumnConstraints(
                    nullable=column.nullable,
                    other=[f"JOOR REQ {column.required}"] if column.required in (REQ_YES, REQ_IF_STATE_COUNTRY) else [],
                ),
            )
            for column in spec.columns
        ]
    )


def _first_rows(files: Sequence[Path | str]) -> pa.Table:
    """The first rows of a partition for its preview, read without loading the whole table."""
    for path in files:
        batches = parquet_file(path).iter_batches(batch_size=PREVIEW_ROWS)
        first = next(batches, None)
        if first is not None and first.num_rows:
            return pa.Table.from_batches([first])
    return parquet_file(files[0]).schema_arrow.empty_table()


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


def _failed_rule(outcome: CheckOutcome) -> str:
    """A failed rule in a few words: its name, and its failing records or what failed."""
    if "failures" in outcome.metadata:
        return f"{outcome.check.name} ({outcome.metadata['failures']} records)"
    return f"{outcome.check.name} ({outcome.detail})" if outcome.detail else outcome.check.name


def check_results(outcomes: Sequence[CheckOutcome]) -> list[dg.AssetCheckResult]:
    """The library's rule outcomes of one partition as Dagster records them: one result per table and kind.

    Its metadata has ``failed_rules`` (each failed rule, in a few words), ``failures`` (the failing records of those
    rules that count records), and one entry per rule with its figures, ``passed`` and, if it failed, ``detail``
    (what failed, with example records).
    """
    grouped: dict[tuple[str, bool], list[CheckOutcome]] = {}
    for outcome in outcomes:
        grouped.setdefault((outcome.table, outcome.check.blocking), []).append(outcome)
    results = []
    for (table, blocking), group in grouped.items():
        failed = [outcome for outcome in group if not outcome.passed]
        metadata: dict[str, Any] = {
            "failed_rules": dg.MetadataValue.json([_failed_rule(outcome) for outcome in failed]),
            "failures": sum(int(outcome.metadata.get("failures") or 0) for outcome in failed),
        }
        for outcome in group:
            figures = {
                "passed": outcome.passed,
                **outcome.metadata,
                **({"detail": outcome.detail} if outcome.detail else {}),
            }
            metadata[outcome.check.name] = dg.MetadataValue.json(figures)
        results.append(
            dg.AssetCheckResult(
                asset_key=table,
                check_name=BLOCKING_CHECK if blocking else WARNING_CHECK,
                passed=not failed,
                severity=dg.AssetCheckSeverity.ERROR if blocking else dg.AssetCheckSeverity.WARN,
                metadata=metadata,
            )
        )
    return results


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
    partitions_def=snapshot_partitions,
)
def joor_tables(context: dg.AssetExecutionContext, storage: DataDirResource) -> Iterator[Any]:
    """Flatten the partition's raw snapshot into staging, check it there, and publish it only if the blocking
    checks pass (the previous partition and the models stay as they were otherwise)."""
    key = _partition(context)
    data_dir = storage.path
    last_logged = 0

    def progress(done: int, total: int, connections: int) -> None:
        nonlocal last_logged
        if done - last_logged >= 10 or done == total:
            last_logged = done
            context.log.info("flattened %d/%d pages, %d connections", done, total, connections)

    with stage_snapshot(data_dir, key, progress=progress, workers=storage.workers()) as staged:
        report = staged.report
        if report.workers > 1:
            context.log.info("flattened by %d worker processes (one file per table each)", report.workers)
        files = {table: staged.files(table) for table in TABLES}
        outcomes = check_partition(data_dir, files, key, staged.raw_recount)
        results = check_results(outcomes)
        failures = [outcome.describe() for outcome in outcomes if outcome.blocks]
        if failures:
            refused = staged.refuse(failures)
            yield from results
            raise dg.Failure(description=str(refused))
        staged.publish()
    context.log.info(
        "published the ten tables of %s of account %s (publication %s)",
        key.snapshot_date,
        key.account,
        report.publication_id,
    )
    stats = report.stats
    made_up = synthetic(read_manifest(data_dir, key))
    for table in TABLES:
        data = _first_rows(published_files(data_dir, table, key))
        unknown = {k: v for k, v in stats.unknown_fields.items() if k.startswith(f"{table}.")}
        problems = {k: v for k, v in stats.coercion_problems.items() if k.startswith(f"{table}.")}
        yield dg.MaterializeResult(
            asset_key=table,
            metadata={
                "dagster/row_count": report.rows[table],
                "dagster/column_schema": _column_schema(table),
                "path": dg.MetadataValue.path(report.paths[table]),
                "publication_id": report.publication_id,
                "preview": dg.MetadataValue.md(_preview(data)),
                "unknown_fields": sum(unknown.values()),
                "unknown_field_counts": dg.MetadataValue.json(unknown),
                "coercion_problems": sum(problems.values()),
                "coercion_problem_counts": dg.MetadataValue.json(problems),
                "pages": report.pages,
                "duration_seconds": dg.MetadataValue.float(round(report.duration_seconds, 3)),
                "synthetic": made_up,
            },
        )
    if stats.duplicate_connections:
        context.log.warning(
            "%d connection(s) appeared more than once in the raw pages; kept the first", stats.duplicate_connections
        )
    yield from results

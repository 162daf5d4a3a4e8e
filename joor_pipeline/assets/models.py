"""The dbt models as Dagster assets (dagster-dbt): one asset per model, downstream of the ten table assets, with
every dbt test as an asset check.

The models are unpartitioned: a build processes every published snapshot date that changed since the warehouse
last built it (see :mod:`joor_pipeline.warehouse`), so a model materialized alone, a daily run and a backfill of
N dates all leave every model built on every published partition, and a backfill builds the models once. The
whole project is built whatever subset is selected (an incremental model skipped on a date would never see it
again); only the selected assets and checks are reported. dbt runs in this process (see ``run_dbt``).
"""

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final

import dagster as dg
import duckdb
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, dbt_assets
from dagster_dbt.asset_utils import get_asset_check_key_for_test

from joor_pipeline.assets.joor import synthetic
from joor_pipeline.assets.logs import forward_logs
from joor_pipeline.assets.resources import DataDirResource
from joor_pipeline.joor.errors import JoorError
from joor_pipeline.layout import SnapshotKey
from joor_pipeline.storage.raw import read_manifest
from joor_pipeline.warehouse import (
    DBT_PROJECT_DIR,
    DbtFailed,
    WarehouseError,
    attach_warehouse,
    database_path,
    load_manifest,
    manifest_path,
    reader_connection,
    run_dbt,
    warehouse_build,
)

DUCKDB_POOL: Final = "duckdb"
GROUP: Final = "joor_models"
PREVIEW_ROWS: Final = 5
MANIFEST: Final = manifest_path()


class JoorDbtTranslator(DagsterDbtTranslator):
    """dbt models in one group, named by model (``dim_retailers``); sources are the table assets (their meta)."""

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return GROUP if dbt_resource_props["resource_type"] == "model" else None


TRANSLATOR: Final = JoorDbtTranslator(settings=DagsterDbtTranslatorSettings(enable_asset_checks=True))


def _model_metadata(
    con: duckdb.DuckDBPyConnection, schema: str, name: str, descriptions: Mapping[str, str]
) -> dict[str, Any]:
    """Row count, column schema (with each column's description from the dbt project) and a preview of one built
    model."""
    relation = f'"{schema}"."{name}"'
    columns = con.execute(
        "select column_name, data_type, is_nullable from duckdb_columns() where schema_name = ? and table_name = ? "
        "order by column_index",
        [schema, name],
    ).fetchall()
    counted = con.execute(f"select count(*) from {relation}").fetchone()
    preview = con.execute(f"select * from {relation} limit {PREVIEW_ROWS}").fetchall()

    def cell(value: Any) -> str:
        text = "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= 40 else text[:39] + "…"

    lines = ["| " + " | ".join(c[0] for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in preview]
    return {
        "dagster/row_count": int(counted[0]) if counted else 0,
        "dagster/column_schema": dg.TableSchema(
            columns=[
                dg.TableColumn(
                    name=c,
                    type=t,
                    description=descriptions.get(c) or None,
                    constraints=dg.TableColumnConstraints(nullable=bool(n)),
                )
                for c, t, n in columns
            ]
        ),
        "dagster/relation_identifier": f"joor.{schema}.{name}",
        "preview": dg.MetadataValue.md("\n".join(lines)),
    }


def _check_result(
    context: dg.AssetExecutionContext, manifest: Mapping[str, Any], result: Mapping[str, Any]
) -> dg.AssetCheckResult | None:
    """The asset check result of one dbt test result, if that check was selected."""
    key = get_asset_check_key_for_test(manifest, TRANSLATOR, result["unique_id"], project=None)
    if key is None or key not in context.selected_asset_check_keys:
        return None
    status = result["status"]
    return dg.AssetCheckResult(
        asset_key=key.asset_key,
        check_name=key.name,
        passed=status == "pass",
        severity=dg.AssetCheckSeverity.WARN if status == "warn" else dg.AssetCheckSeverity.ERROR,
        metadata={
            "status": status,
            "failures": int(result.get("failures") or 0),
            "dbt_test": result["unique_id"],
            "execution_seconds": dg.MetadataValue.float(round(float(result.get("execution_time") or 0.0), 3)),
        },
    )


def _events(
    context: dg.AssetExecutionContext,
    manifest: Mapping[str, Any],
    results: Mapping[str, Any],
    con: duckdb.DuckDBPyConnection | None,
    extra: Mapping[str, Any],
    kept_views: Sequence[str] = (),
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Dagster events in dbt's execution order (topological), after the views the build kept in place (upstream
    of every other model); models only with ``con`` (once published)."""

    def materialized(unique_id: str) -> Iterator[dg.MaterializeResult]:
        if con is None:
            return
        node = manifest["nodes"][unique_id]
        key = TRANSLATOR.get_asset_spec(manifest, unique_id, None).key
        if key in context.selected_asset_keys:
            descriptions = {column: entry.get("description", "") for column, entry in node["columns"].items()}
            metadata = _model_metadata(con, node["schema"], node["alias"] or node["name"], descriptions)
            yield dg.MaterializeResult(asset_key=key, metadata={**metadata, **extra})

    for unique_id in kept_views:
        yield from materialized(unique_id)
    for result in results.get("results", []):
        unique_id = result["unique_id"]
        if unique_id.startswith("test."):
            check = _check_result(context, manifest, result)
            if check is not None:
                yield check
        elif unique_id.startswith("model."):
            yield from materialized(unique_id)


def _synthetic_accounts(storage: DataDirResource, latest: Mapping[str, Any]) -> list[str]:
    """The accounts whose latest snapshot (what the "latest" marts show) is the built-in sandbox's synthetic data."""
    found = []
    for account, day in sorted(latest.items()):
        try:
            if synthetic(read_manifest(storage.path, SnapshotKey(account, day))):
                found.append(account)
        except (JoorError, OSError):  # no raw snapshot kept (or unreadable): nothing says it was synthetic
            continue
    return found


@dbt_assets(manifest=MANIFEST, dagster_dbt_translator=TRANSLATOR, name="joor_models", pool=DUCKDB_POOL)
def joor_models(context: dg.AssetExecutionContext, storage: DataDirResource) -> Iterator[Any]:
    """Build every dbt model on the snapshot dates that changed, then publish ``joor.duckdb`` by atomic rename."""
    manifest = load_manifest(MANIFEST)
    try:
        # The library's warnings in the run's log; its progress is the line below (said once, not twice).
        with forward_logs(context, logging.WARNING), warehouse_build(storage.path) as plan:
            refresh = plan.refresh_partitions
            context.log.info(
                "dbt build on %d partition(s) (account/snapshot date) (%s): %s",
                len(refresh),
                plan.reason,
                ", ".join(f"{account}/{day.isoformat()}" for account, day in refresh[:10])
                + (" …" if len(refresh) > 10 else ""),
            )
            for batch in plan.batches():
                if len(refresh) > len(batch):
                    context.log.info("dbt build on %s/%s to %s/%s", *batch[0], *batch[-1])
                results = run_dbt(plan.dbt_args(), plan.target_dir)
    except DbtFailed as failed:
        yield from _events(context, manifest, failed.results, None, {})
        raise dg.Failure(description=str(failed)) from None
    except WarehouseError as error:
        raise dg.Failure(description=str(error)) from None
    con = reader_connection(storage.path)  # the build just published, never a cached instance of an older one
    try:
        attach_warehouse(con, database_path(storage.path))
        made_up = _synthetic_accounts(storage, plan.latest_dates)
        extra = {
            "refreshed_partitions": len(plan.refresh_partitions),
            "build": plan.reason,
            "synthetic": bool(made_up),
            **({"synthetic_accounts": dg.MetadataValue.json(made_up)} if made_up else {}),
        }
        yield from _events(context, manifest, results, con, extra, plan.kept_views)
    finally:
        con.close()


__all__ = ["DBT_PROJECT_DIR", "joor_models"]

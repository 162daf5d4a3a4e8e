"""The dbt models as Dagster assets: built on every published partition, schema and preview, ranges, partitions."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from joor_pipeline.assets.joor import RAW_ASSET, joor_raw_connections
from joor_pipeline.assets.models import joor_models
from joor_pipeline.assets.partitions import FIRST_SNAPSHOT_VAR, build_daily_partitions
from joor_pipeline.assets.resources import DataDirResource, JoorApiResource
from joor_pipeline.batch import RangeRefused, range_partitions, run_batch
from joor_pipeline.cli import EXIT_ERROR, main
from joor_pipeline.config import first_snapshot_date
from joor_pipeline.joor.errors import ConfigError
from joor_pipeline.sandbox import load_seed_connection, run_sandbox
from joor_pipeline_tests.model_fixtures import clean_retailer, parquet_root, query, write_snapshot
from joor_pipeline_tests.raw_fixtures import land

D1, D2, D3 = date(2026, 3, 2), date(2026, 3, 3), date(2026, 3, 4)


def connections(count: int, alias: str = "") -> list[dict[str, Any]]:
    """``count`` copies of JOOR's example connection, each with its own id and code."""
    seed = load_seed_connection()
    found = []
    for i in range(count):
        c = copy.deepcopy(seed)
        c["customer_account_id"] = str(7000 + i)
        c["customer_code"] = f"C{i}"
        if alias:
            c["customer_alias"] = alias
        found.append(c)
    return found


def storage(data_dir: Path) -> dict[str, Any]:
    return {"storage": DataDirResource(data_dir=str(data_dir)), "joor": JoorApiResource()}


def test_a_model_materialized_alone_is_built_on_every_published_partition(tmp_path: Path) -> None:
    for day, retailers in ((D1, 2), (D3, 3), (D2, 1)):
        write_snapshot(parquet_root(tmp_path), day, [clean_retailer(1000 + i, f"R{i}") for i in range(retailers)])

    result = dg.materialize([joor_models], selection=[dg.AssetKey("data_quality_issues")], resources=storage(tmp_path))

    assert result.success
    assert query(tmp_path, "select snapshot_date, connections from int_snapshots order by 1") == [
        (D1, 2),
        (D2, 1),
        (D3, 3),
    ]
    [materialization] = result.asset_materializations_for_node("joor_models")
    assert materialization.asset_key == dg.AssetKey("data_quality_issues")
    metadata = materialization.metadata
    assert metadata["dagster/row_count"].value == 0
    columns = [c.name for c in metadata["dagster/column_schema"].value.columns]
    assert columns[:4] == ["account", "snapshot_date", "table_name", "rule"]
    checks = result.get_asset_check_evaluations()
    assert checks and all(c.asset_key == dg.AssetKey("data_quality_issues") and c.passed for c in checks)


def test_model_assets_carry_their_schema_and_a_preview(tmp_path: Path) -> None:
    write_snapshot(parquet_root(tmp_path), D1, [clean_retailer(1000 + i, f"R{i}") for i in range(3)])
    result = dg.materialize([joor_models], resources=storage(tmp_path))
    assert result.success
    by_key = {m.asset_key.to_user_string(): m.metadata for m in result.asset_materializations_for_node("joor_models")}
    dim = by_key["dim_retailers"]
    assert dim["dagster/row_count"].value == 3
    assert "customer_account_id" in [c.name for c in dim["dagster/column_schema"].value.columns]
    assert "| R0 |" in dim["preview"].value or "R0" in dim["preview"].value
    assert by_key["staging/stg_connections"]["dagster/row_count"].value == 3


def test_a_daily_build_reports_every_model_and_check_with_the_views_kept_in_place(tmp_path: Path) -> None:
    """The second build leaves the views to the first (warehouse.py), and still records every model, the views
    with their rows of the new date, and every check, the views' tests included."""
    write_snapshot(parquet_root(tmp_path), D1, [clean_retailer(1000 + i, f"R{i}") for i in range(3)])
    first = dg.materialize([joor_models], resources=storage(tmp_path))
    write_snapshot(parquet_root(tmp_path), D2, [clean_retailer(1000 + i, f"R{i}") for i in range(5)])
    daily = dg.materialize([joor_models], resources=storage(tmp_path))

    assert first.success and daily.success
    built, kept = (
        {m.asset_key.to_user_string(): m.metadata for m in result.asset_materializations_for_node("joor_models")}
        for result in (first, daily)
    )
    assert kept.keys() == built.keys() == {key.to_user_string() for key in joor_models.keys}
    assert kept["staging/stg_connections"]["dagster/row_count"].value == 5  # the view reads the latest date
    assert (
        kept["staging/int_addresses"]["dagster/column_schema"]
        == built["staging/int_addresses"]["dagster/column_schema"]
    )
    checks = {(c.asset_key.to_user_string(), c.check_name, c.passed) for c in daily.get_asset_check_evaluations()}
    assert checks == {
        (c.asset_key.to_user_string(), c.check_name, c.passed) for c in first.get_asset_check_evaluations()
    }
    assert any(asset == "staging/stg_connections" for asset, _check, _passed in checks)
    assert all(passed for _asset, _check, passed in checks)


def test_models_on_a_fresh_data_dir_fail_with_one_clear_line(tmp_path: Path) -> None:
    result = dg.materialize([joor_models], resources=storage(tmp_path), raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.event_specific_data.error.message  # type: ignore[union-attr]
    assert "no published snapshot under" in message and "flatten one first" in message
    assert not (tmp_path / "joor.duckdb").exists()


def test_partitions_begin_at_the_first_snapshot_date() -> None:
    assert first_snapshot_date({}) == date(2025, 1, 1)
    partitions = build_daily_partitions({FIRST_SNAPSHOT_VAR: "2026-03-02"})
    assert partitions.get_first_partition_key() == "2026-03-02"
    today = datetime.now(UTC).date()
    assert partitions.get_last_partition_key() == today.isoformat()
    with pytest.raises(ConfigError, match="JOOR_FIRST_SNAPSHOT_DATE must be a date"):
        first_snapshot_date({FIRST_SNAPSHOT_VAR: "March"})


def test_allow_backdated_is_refused_inside_a_backfill_unless_the_date_is_listed(tmp_path: Path) -> None:
    past = (datetime.now(UTC).date() - timedelta(days=3)).isoformat()
    with run_sandbox(connections=5, rate_limit_credits=0) as sb:
        joor = JoorApiResource(base_url=sb.base_url, api_token=sb.config.api_token)
        resources = {"joor": joor, "storage": DataDirResource(data_dir=str(tmp_path))}

        def fetch(config: dict[str, Any]) -> dg.ExecuteInProcessResult:
            return dg.materialize(
                [joor_raw_connections],
                partition_key=f"default|{past}",
                resources=resources,
                run_config={"ops": {"joor_raw_connections": {"config": config}}},
                tags={"dagster/backfill": "abcdef"},
                raise_on_error=False,
            )

        refused = fetch({"allow_backdated": True})
        assert not refused.success
        [failure] = [e for e in refused.all_events if e.event_type_value == "STEP_FAILURE"]
        assert "allow_backdated applies to one date at a time" in str(failure.event_specific_data)
        assert fetch({"backdated_dates": [past]}).success


def test_run_from_to_reflattens_kept_snapshots_and_builds_the_models_once(tmp_path: Path) -> None:
    land(tmp_path, D1, connections(4))
    land(tmp_path, D2, connections(3, alias="renamed"))
    env = {"JOOR_DATA_DIR": str(tmp_path)}

    batch = run_batch(range_partitions(D1, D2, tmp_path), env, fetch=False)

    assert batch.success, batch.failed
    assert [run.label for run in batch.runs] == [D1.isoformat(), D2.isoformat(), "models"]  # the models built once
    assert batch.runs[1].rows["connections"] == 3 and RAW_ASSET not in batch.runs[1].rows  # never a fetch
    assert query(tmp_path, "select snapshot_date, connections from int_snapshots order by 1") == [(D1, 4), (D2, 3)]
    assert query(tmp_path, "select count(*) from retailer_history") == [(4 + 3,)]


def test_run_from_to_refuses_a_date_without_a_raw_snapshot(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    land(tmp_path, D1, connections(2))
    land(tmp_path, D3, connections(2))
    with pytest.raises(RangeRefused, match="no raw snapshot kept for 2026-03-03"):
        range_partitions(D1, D3, tmp_path)
    code = main(["run", "--from", "2026-03-01", "--to", "2026-03-02", "--data-dir", str(tmp_path)])
    assert code == EXIT_ERROR
    assert "error: no raw snapshot kept for 2026-03-01 in " in capsys.readouterr().err
    assert not (tmp_path / "parquet").exists()

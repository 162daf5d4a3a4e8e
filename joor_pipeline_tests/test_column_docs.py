"""Every column of every table and model is described, from one source, in dbt's docs, Dagster and the warehouse."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest
import yaml

from joor_pipeline.column_docs import (
    SOURCES_PATH,
    ColumnDocsError,
    render_models,
    render_sources,
    source_key,
    stale_files,
)
from joor_pipeline.flatten.dictionary import column_description
from joor_pipeline.flatten.schema import TABLES
from joor_pipeline.warehouse import DICTIONARY_PATH, database_path, manifest_path, model_columns, models_markdown
from joor_pipeline_tests.model_fixtures import clean_retailer, parquet_root, write_snapshot

Columns = dict[str, list[tuple[str, str]]]


@pytest.fixture(scope="module")
def columns(tmp_path_factory: pytest.TempPathFactory) -> Columns:
    """Every model's columns and types, from the dbt project run on no data."""
    return model_columns(tmp_path_factory.mktemp("columns"))


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return dict(json.loads(manifest_path().read_text(encoding="utf-8")))


def test_the_generated_dbt_yml_is_current(columns: Columns, manifest: dict[str, Any]) -> None:
    rendered = render_models(columns, manifest)
    rendered[SOURCES_PATH] = render_sources()
    assert len(rendered) == 4
    assert stale_files(rendered) == [], "stale: run `python -m joor_pipeline.column_docs` (make dictionary)"


def test_the_data_dictionary_lists_every_model_column_with_its_description() -> None:
    section = models_markdown()
    assert "| `change_hash` | VARCHAR | The version's fingerprint" in section
    assert "| `customer_name` | VARCHAR | The retailer's name on JOOR. (JOOR: customer_name) | `connections." in section
    assert section.rstrip("\n") in DICTIONARY_PATH.read_text(encoding="utf-8"), (
        "docs/data-dictionary.md is stale: run python -m joor_pipeline.warehouse (make dictionary)"
    )


def test_every_table_and_model_column_has_its_description_in_the_dbt_manifest(
    columns: Columns, manifest: dict[str, Any]
) -> None:
    for table, spec in TABLES.items():
        source = manifest["sources"][source_key(table)]
        assert source["description"] == spec.description
        assert list(source["columns"]) == [column.name for column in spec.columns], table
        for column in spec.columns:
            assert source["columns"][column.name]["description"] == column_description(column)
    models = {node["name"]: node for node in manifest["nodes"].values() if node["resource_type"] == "model"}
    assert models.keys() == columns.keys()
    for name, node in models.items():
        assert [(c, e["data_type"]) for c, e in node["columns"].items()] == columns[name], name
        assert all(entry["description"].strip() for entry in node["columns"].values()), name
    # a column passed through says where its description comes from; one the model computes has its own
    history = models["retailer_history"]["columns"]
    assert history["customer_name"]["meta"] == {"description_from": "connections.customer_name"}
    assert history["customer_name"]["description"] == column_description(TABLES["connections"].column("customer_name"))
    assert not history["change_hash"]["meta"] and "hexadecimal" in history["change_hash"]["description"]
    assert models["retailer_addresses"]["columns"]["country_code"]["meta"] == {
        "description_from": "int_addresses.country_code"
    }


def test_dagster_shows_every_column_description_on_tables_models_and_materializations(tmp_path: Path) -> None:
    from joor_pipeline.assets.joor import joor_tables
    from joor_pipeline.assets.models import joor_models
    from joor_pipeline.assets.resources import DataDirResource

    for spec in joor_tables.specs:
        schema = spec.metadata["dagster/column_schema"]
        assert [c.name for c in schema.columns] == [c.name for c in TABLES[spec.key.path[-1]].columns]
        assert all(c.description for c in schema.columns), spec.key
    model_keys = set()
    for spec in joor_models.specs:  # dagster-dbt takes them from the yml
        schema = spec.metadata["dagster/column_schema"]
        assert schema.columns and all(c.description and c.type != "?" for c in schema.columns), spec.key
        model_keys.add(spec.key)

    write_snapshot(parquet_root(tmp_path), date(2026, 3, 2), [clean_retailer(1000, "R0")])
    result = dg.materialize([joor_models], resources={"storage": DataDirResource(data_dir=str(tmp_path))})
    assert result.success
    materialized = {m.asset_key: m.metadata for m in result.asset_materializations_for_node("joor_models")}
    assert materialized.keys() == model_keys
    for key, metadata in materialized.items():
        schema = metadata["dagster/column_schema"].value
        assert schema.columns and all(c.description for c in schema.columns), key

    # the published warehouse carries them too, as comments (dbt's persist_docs)
    with duckdb.connect() as con:
        con.execute(f"attach '{database_path(tmp_path)}' as joor (read_only)")
        undescribed = con.execute(
            "select table_name, column_name from duckdb_columns() where database_name = 'joor'"
            " and schema_name in ('main', 'staging') and coalesce(comment, '') = ''"
        ).fetchall()
        relations = con.execute(
            "select count(*), count(comment) from (select comment from duckdb_tables() where database_name = 'joor'"
            " and schema_name in ('main', 'staging') union all select comment from duckdb_views()"
            " where database_name = 'joor' and schema_name in ('main', 'staging'))"
        ).fetchone()
    assert undescribed == []
    assert relations == (len(model_keys), len(model_keys))


def _project(tmp_path: Path, columns: list[dict[str, Any]] | None) -> Path:
    models = tmp_path / "models"
    (models / "marts").mkdir(parents=True)
    model: dict[str, Any] = {"name": "m", "description": "a model. grain: one row per thing"}
    if columns is not None:
        model["columns"] = columns
    (models / "marts" / "_models.yml").write_text(yaml.safe_dump({"version": 2, "models": [model]}))
    return models


FAKE_MANIFEST = {
    "nodes": {"model.joor.m": {"name": "m", "resource_type": "model", "depends_on": {"nodes": [source_key("doors")]}}}
}


def test_a_passed_column_inherits_a_computed_one_must_be_described(tmp_path: Path) -> None:
    built = {"m": [("door_name", "VARCHAR"), ("door_count", "BIGINT"), ("door_id", "VARCHAR")]}
    with pytest.raises(ColumnDocsError) as refused:
        render_models(built, FAKE_MANIFEST, _project(tmp_path / "a", None))
    message = str(refused.value)
    assert "m.door_count is computed by the model: describe it there" in message
    assert "m.door_id is VARCHAR where doors.door_id is BIGINT: the model computes it, describe it there" in message
    assert "door_name" not in message

    own = [
        {"name": "door_count", "description": "Doors of the retailer."},
        {"name": "door_id", "description": "The door's id as text.", "data_tests": ["not_null"]},
        {"name": "gone", "description": "a column the model no longer has"},
    ]
    with pytest.raises(ColumnDocsError, match=r"m\.gone is not a column of the model \(any more\): remove its entry"):
        render_models(built, FAKE_MANIFEST, _project(tmp_path / "b", own))

    models = _project(tmp_path / "c", own[:2])
    [(path, text)] = render_models(built, FAKE_MANIFEST, models).items()
    entries = yaml.safe_load(text)["models"][0]["columns"]
    assert entries == [
        {
            "name": "door_name",
            "description": column_description(TABLES["doors"].column("door_name")),
            "data_type": "VARCHAR",
            "meta": {"description_from": "doors.door_name"},
        },
        {"name": "door_count", "description": "Doors of the retailer.", "data_type": "BIGINT"},
        {
            "name": "door_id",
            "description": "The door's id as text.",
            "data_type": "VARCHAR",
            "data_tests": ["not_null"],
        },
    ]
    # generated once more from its own output: the same text (an inherited entry is regenerated, not kept)
    path.write_text(text)
    assert render_models(built, FAKE_MANIFEST, models) == {path: text}

"""One Dagster asset per SQL model in ``models/``, built together into ``joor.duckdb`` by a single writer."""

import hashlib
from collections.abc import Iterator
from typing import Final

import dagster as dg

from joor_pipeline.assets.resources import DataDirResource
from joor_pipeline.warehouse import MODELS, build_warehouse, database_path

DUCKDB_POOL: Final = "duckdb"


def _spec(model_name: str) -> dg.AssetSpec:
    model = next(m for m in MODELS if m.name == model_name)
    deps = [*model.depends_on, *([model.source_table] if model.source_table else [])]
    return dg.AssetSpec(
        model.name,
        deps=deps,
        description=model.description,
        group_name="joor_models",
        kinds={"duckdb", "sql"},
        code_version=hashlib.sha256(model.sql.encode()).hexdigest()[:12],
        metadata={"sql_file": f"joor_pipeline/models/{model.path.name}"},
    )


@dg.multi_asset(
    name="joor_models",
    specs=[_spec(model.name) for model in MODELS],
    can_subset=True,
    pool=DUCKDB_POOL,
)
def joor_models(context: dg.AssetExecutionContext, storage: DataDirResource) -> Iterator[dg.MaterializeResult]:  # type: ignore[type-arg]
    """Run the selected SQL models, in dependency order, in one transaction on ``joor.duckdb``."""
    selected = [model.name for model in MODELS if dg.AssetKey(model.name) in context.selected_asset_keys]
    counts = build_warehouse(storage.path, models=selected)
    database = database_path(storage.path)
    for name in selected:
        yield dg.MaterializeResult(
            asset_key=name,
            metadata={"dagster/row_count": counts[name], "database": dg.MetadataValue.path(str(database))},
        )

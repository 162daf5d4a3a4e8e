"""The dbt build reads the store: a dbt-duckdb plugin that lets each connection dbt opens read the data
directory's files, as :func:`~joor_pipeline.storage.access.register` does for the pipeline's own connections.

``dbt_project/profiles.yml`` names it, with the data directory in the ``data_dir`` variable (given by
``joor_pipeline.warehouse``); dbt runs in the pipeline's process, so the store is the one already opened there.
Nothing to do on local disk; on an object store, its file system is registered with DuckDB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dbt.adapters.duckdb.plugins import BasePlugin
from duckdb import DuckDBPyConnection

from joor_pipeline.storage.access import register


class Plugin(BasePlugin):  # type: ignore[misc]
    """``plugins: [{module: joor_pipeline.storage.dbt_plugin, config: {data_dir: ...}}]``."""

    def initialize(self, plugin_config: dict[str, Any]) -> None:
        self.data_dir = str(plugin_config.get("data_dir") or "")

    def configure_connection(self, conn: DuckDBPyConnection) -> None:
        if self.data_dir:
            register(conn, Path(self.data_dir))

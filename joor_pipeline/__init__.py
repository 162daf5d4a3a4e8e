"""JOOR wholesale connections into partitioned Parquet and DuckDB.

For notebooks: ``joor_pipeline.read("dim_retailers")`` returns any model or table as a pandas DataFrame with
Arrow-backed dtypes, read-only (see :func:`joor_pipeline.warehouse.read`); ``joor_pipeline.connect()`` a read-only
DuckDB connection on the models and the tables, as ``joor-pipeline sql`` sees them (:func:`joor_pipeline.sql.connect`).
Both read the newest published build at every call.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "connect", "read"]


def __getattr__(name: str) -> Any:
    # Lazy, so importing any module of the package does not load DuckDB, pandas and the warehouse.
    if name == "read":
        from joor_pipeline.warehouse import read

        return read
    if name == "connect":
        from joor_pipeline.sql import connect

        return connect
    raise AttributeError(f"module 'joor_pipeline' has no attribute {name!r}")

"""JOOR wholesale connections into partitioned Parquet and DuckDB.

For notebooks: ``joor_pipeline.read("dim_retailers")`` returns any model or table as a pandas DataFrame with
Arrow-backed dtypes, read-only (see :func:`joor_pipeline.warehouse.read`).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "read"]


def __getattr__(name: str) -> Any:
    # Lazy, so importing any module of the package does not load DuckDB, pandas and the warehouse.
    if name == "read":
        from joor_pipeline.warehouse import read

        return read
    raise AttributeError(f"module 'joor_pipeline' has no attribute {name!r}")

"""JOOR wholesale connections into partitioned Parquet and DuckDB."""

__version__ = "0.1.0"

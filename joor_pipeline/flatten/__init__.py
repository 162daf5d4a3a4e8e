"""Canonical JOOR connections -> the typed tables of the data contract (pure; no I/O)."""

from joor_pipeline.flatten.flatten import FlatBatch, FlattenStats, conflicting_repeats, flatten_page, flatten_pages
from joor_pipeline.flatten.schema import TABLES, Column, ListSource, TableSpec, arrow_schema

__all__ = [
    "TABLES",
    "Column",
    "FlatBatch",
    "FlattenStats",
    "ListSource",
    "TableSpec",
    "arrow_schema",
    "conflicting_repeats",
    "flatten_page",
    "flatten_pages",
]

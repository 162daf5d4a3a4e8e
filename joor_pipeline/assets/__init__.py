"""Dagster wiring: assets, checks and resources over the library (``definitions.py`` puts them together)."""

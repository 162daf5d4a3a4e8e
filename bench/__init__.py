"""Benchmarks: our flatten against pandas and DuckDB on the same raw pages, and fetch against the sandbox.

Run with ``make bench`` (``python -m bench --help`` for the options); the results go to
``bench/results.md``. Nothing here is collected by pytest: no module is named ``test_*``.
"""

"""The DuckDB models: one lowercase SQL query per file, run in dependency order by :mod:`joor_pipeline.warehouse`.

Each file opens with a comment header: ``-- <name>: <what it is>``, ``-- grain: ...``, then ``-- depends_on: a, b``
(the models it reads; continuation lines are indented) or, for staging models, ``-- source: <table>`` (the
Parquet table it reads through the bound parameters ``$contract_file`` and ``$parquet_files``).
"""

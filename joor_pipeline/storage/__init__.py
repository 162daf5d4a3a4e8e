"""Storage: bytes and their publication, on any backend.

``store`` (the protocol every backend implements), ``local`` and ``cloud`` (the backends), ``factory``
(``JOOR_DATA_DIR`` to a store), ``publish`` (the one publish mechanism and its recovery), ``raw`` and ``parquet``
(the published data, read through manifests), ``inventory`` (what a data directory holds, for retention),
``access`` (DuckDB, pyarrow and local copies), ``locks``, ``lease``, ``durable`` and ``migrate``. Nothing here
imports the flatten, the configuration or anything above them.
"""

"""Storage: the raw landing zone (``raw``), partitioned Parquet (``parquet``), and how both are published
(``publish``, ``locks``)."""

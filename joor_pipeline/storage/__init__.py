"""Storage: the raw landing zone (``raw``), atomic directory swaps (``atomic``) and partitioned Parquet."""

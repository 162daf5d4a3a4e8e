"""The DuckDB alternative: ``read_json`` over the page files, ``unnest`` of the lists, Parquet out.

It produces the five core tables (connections, addresses, payment_methods, discounts, doors) from the raw JSON
pages, with DuckDB's default threads. DuckDB has no XML reader, so it is JSON only.

Its types are inferred: fields JOOR sends sometimes as numbers and sometimes as strings come out as DuckDB's
``JSON`` type (text in the Parquet file), booleans spelled ``"True"`` likewise. Fine for a baseline, but
nothing checks a value against a contract or records what it could not read, as our flatten does.

The page list is a bound parameter. The Parquet files are written with the relational API's
``write_parquet`` rather than ``COPY ... TO '<path>'``, whose target cannot be a parameter, so no path is
ever formatted into SQL.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import duckdb

LOAD_CONNECTIONS: Final = """
create temp table joor_connections as
select unnest(connections) as c
from read_json($files)
"""

TABLE_QUERIES: Final[dict[str, str]] = {
    "connections": """
        select * exclude (
            warehouses, billing, shipping, price_types, doors, customer_locations, buyers, tax_id_numbers, discounts
        )
        from (select unnest(c) from joor_connections)
    """,
    "addresses": """
        with billing as (
            select c.customer_account_id, c.customer_code, unnest(c.billing.billing_addresses) as a
            from joor_connections
        ),
        shipping as (
            select c.customer_account_id, c.customer_code, unnest(c.shipping.shipping_addresses) as a
            from joor_connections
        ),
        locations as (
            select c.customer_account_id, c.customer_code, unnest(c.customer_locations) as a
            from joor_connections
        )
        select
            customer_account_id, customer_code, 'billing' as address_type,
            a.billing_address_id as address_id, a.billing_code as code, a.billing_name as name,
            a.billing_phone as phone, null::varchar as email, a.billing_address_1 as address_1,
            a.billing_address_2 as address_2, a.billing_city as city, a.billing_state as state,
            a.billing_postal_code as postal_code, a.billing_country as country
        from billing
        union all
        select
            customer_account_id, customer_code, 'shipping',
            a.shipping_address_id, a.shipping_code, a.shipping_name,
            a.shipping_phone, a.shipping_email, a.shipping_address_1,
            a.shipping_address_2, a.shipping_city, a.shipping_state,
            a.shipping_postal_code, a.shipping_country
        from shipping
        union all
        select
            customer_account_id, customer_code, 'location',
            a.location_address_id, null, null,
            a.location_phone, null, a.location_address_1,
            a.location_address_2, a.location_city, a.location_state,
            a.location_zip, a.location_country
        from locations
    """,
    "payment_methods": """
        select c.customer_account_id, c.customer_code, unnest(c.billing.payment_methods, recursive := true)
        from joor_connections
    """,
    "discounts": """
        select c.customer_account_id, c.customer_code, unnest(c.discounts, recursive := true)
        from joor_connections
    """,
    "doors": """
        select c.customer_account_id, c.customer_code, unnest(c.doors, recursive := true)
        from joor_connections
    """,
}


def flatten_with_duckdb(page_files: Sequence[Path], out_dir: Path) -> dict[str, Path]:
    """Load every page's connections once, then write each core table to ``out_dir/<table>.parquet``."""
    written: dict[str, Path] = {}
    with duckdb.connect() as con:
        con.execute(LOAD_CONNECTIONS, {"files": [str(path) for path in page_files]})
        for table, query in TABLE_QUERIES.items():
            path = out_dir / f"{table}.parquet"
            con.sql(query).write_parquet(str(path), compression="zstd")
            written[table] = path
    return written


def main(argv: list[str]) -> int:
    """``python -m bench.duckdb_baseline RAW_SNAPSHOT_DIR OUT_DIR``: the script a user would write, as a whole
    process (interpreter start and ``import duckdb`` included): the five tables from the JSON pages."""
    if len(argv) != 2:
        print(main.__doc__, file=sys.stderr)
        return 2
    raw_dir, out_dir = Path(argv[0]), Path(argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    flatten_with_duckdb(sorted(raw_dir.glob("page-*.json")), out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

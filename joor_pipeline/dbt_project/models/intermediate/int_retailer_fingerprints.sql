-- int_retailer_fingerprints: one compact fingerprint per retailer and snapshot, from which retailer_history derives
-- its versions without reading old snapshots again.
-- grain: one row per (account, snapshot_date, customer_account_id); connections without an id are left out.
-- change_hash is a 64-bit hash of the connection's columns and of every child row (each with its list's name and
-- its ordinal, so the order within a list counts and the order of the files does not). Child rows are combined
-- by a sum of their hashes rather than a sorted list, which is what made fingerprints expensive. Provenance
-- (account, snapshot_date, source_page, log_id) stays out of it; extra and invalid_values stay in, as they carry JOOR
-- data. DuckDB's hash may change between DuckDB versions: a warehouse built by another version is rebuilt in
-- full. Incremental: each build deletes, then inserts, exactly the snapshot dates it processes, so dates may
-- arrive in any order.
{{ config(materialized='incremental', incremental_strategy='append', pre_hook="{{ joor_delete_refresh_dates() }}") }}
with connection_hashes as (
    select
        account,
        snapshot_date,
        customer_account_id,
        hash(struct_pack(*columns(* exclude (account, snapshot_date, customer_account_id, source_page, log_id))))
            as connection_hash
    from {{ joor_refreshed(ref('stg_connections')) }} as stg_connections
    where customer_account_id is not null
),

child_rows as (
    select
        account,
        snapshot_date,
        customer_account_id,
        hash('addresses', struct_pack(*columns(* exclude (account, snapshot_date, customer_account_id, customer_code, source_page, log_id))))
            as row_hash
    from {{ joor_refreshed(ref('stg_addresses')) }} as stg_addresses

    union all

    select
        account,
        snapshot_date,
        customer_account_id,
        hash('payment_methods', struct_pack(*columns(* exclude (account, snapshot_date, customer_account_id, customer_code, source_page, log_id))))
            as row_hash
    from {{ joor_refreshed(ref('stg_payment_methods')) }} as stg_payment_methods

    union all

    select
        account,
        snapshot_date,
        customer_account_id,
        hash('shipping_methods', struct_pack(*columns(* exclude (account, snapshot_date, customer_account_id, customer_code, source_page, log_id))))
            as row_hash
    from {{ joor_refreshed(ref('stg_shipping_methods')) }} as stg_shipping_methods

    union all

    select
        account,
        snapshot_date,
        customer_account_id,
        hash('discounts', struct_pack(*columns(* exclude (account, snapshot_date, customer_account_id, customer_code, source_page, log_id))))
            as row_hash
    from {{ joor_refreshed(ref('stg_discounts')) }} as stg_discounts

    union all

    select
        account,
        snapshot_date,
        customer_account_id,
        hash('doors', struct_pack(*columns(* exclude (account, snapshot_date, customer_account_id, customer_code, source_page, log_id))))
            as row_hash
    from {{ joor_refreshed(ref('stg_doors')) }} as stg_doors

    union all

    select
        account,
        snapshot_date,
        customer_account_id,
        hash('price_types', struct_pack(*columns(* exclude (account, snapshot_date, customer_account_id, customer_code, source_page, log_id))))
            as row_hash
    from {{ joor_refreshed(ref('stg_price_types')) }} as stg_price_types

    union all

    select
        account,
        snapshot_date,
        customer_account_id,
        hash('buyers', struct_pack(*columns(* exclude (account, snapshot_date, customer_account_id, customer_code, source_page, log_id))))
            as row_hash
    from {{ joor_refreshed(ref('stg_buyers')) }} as stg_buyers

    union all

    select
        account,
        snapshot_date,
        customer_account_id,
        hash('warehouses', struct_pack(*columns(* exclude (account, snapshot_date, customer_account_id, customer_code, source_page, log_id))))
            as row_hash
    from {{ joor_refreshed(ref('stg_warehouses')) }} as stg_warehouses

    union all

    select
        account,
        snapshot_date,
        customer_account_id,
        hash('tax_ids', struct_pack(*columns(* exclude (account, snapshot_date, customer_account_id, customer_code, source_page, log_id))))
            as row_hash
    from {{ joor_refreshed(ref('stg_tax_ids')) }} as stg_tax_ids
),

children as (
    select
        account,
        snapshot_date,
        customer_account_id,
        count(*) as child_rows,
        sum(row_hash::hugeint) as child_hash_sum
    from child_rows
    group by account, snapshot_date, customer_account_id
)

select
    connection_hashes.account,
    connection_hashes.snapshot_date,
    connection_hashes.customer_account_id,
    hash(
        connection_hashes.connection_hash,
        coalesce(children.child_rows, 0),
        coalesce(children.child_hash_sum, 0)::varchar
    ) as change_hash
from connection_hashes
left join children using (account, snapshot_date, customer_account_id)

-- int_retailer_fingerprints: one compact fingerprint per retailer and snapshot, from which retailer_history derives
-- its versions without reading old snapshots again.
-- grain: one row per (snapshot_date, customer_account_id); connections without an id are left out.
-- change_hash is the md5 (as a 128-bit number) of the connection's columns and every child list in JOOR order,
-- as JSON. Provenance (snapshot_date, source_page, log_id) stays out of it; extra and invalid_values stay in, as
-- they carry JOOR data. Incremental: each build deletes, then inserts, exactly the snapshot dates it processes,
-- so dates may arrive in any order.
{{ config(materialized='incremental', incremental_strategy='append', pre_hook="{{ joor_delete_refresh_dates() }}") }}
with connection_contents as (
    select
        snapshot_date,
        customer_account_id,
        to_json(struct_pack(*columns(* exclude (snapshot_date, customer_account_id, source_page, log_id))))
            as content
    from {{ joor_refreshed(ref('stg_connections')) }} as stg_connections
    where customer_account_id is not null
),

child_contents as (
    select
        snapshot_date,
        customer_account_id,
        'addresses' as child_table,
        to_json(list(
            struct_pack(*columns(* exclude (snapshot_date, customer_account_id, customer_code, source_page, log_id)))
            order by address_type, ordinal
        )) as content
    from {{ joor_refreshed(ref('stg_addresses')) }} as stg_addresses
    group by snapshot_date, customer_account_id

    union all

    select
        snapshot_date,
        customer_account_id,
        'payment_methods' as child_table,
        to_json(list(
            struct_pack(*columns(* exclude (snapshot_date, customer_account_id, customer_code, source_page, log_id)))
            order by ordinal
        )) as content
    from {{ joor_refreshed(ref('stg_payment_methods')) }} as stg_payment_methods
    group by snapshot_date, customer_account_id

    union all

    select
        snapshot_date,
        customer_account_id,
        'shipping_methods' as child_table,
        to_json(list(
            struct_pack(*columns(* exclude (snapshot_date, customer_account_id, customer_code, source_page, log_id)))
            order by ordinal
        )) as content
    from {{ joor_refreshed(ref('stg_shipping_methods')) }} as stg_shipping_methods
    group by snapshot_date, customer_account_id

    union all

    select
        snapshot_date,
        customer_account_id,
        'discounts' as child_table,
        to_json(list(
            struct_pack(*columns(* exclude (snapshot_date, customer_account_id, customer_code, source_page, log_id)))
            order by ordinal
        )) as content
    from {{ joor_refreshed(ref('stg_discounts')) }} as stg_discounts
    group by snapshot_date, customer_account_id

    union all

    select
        snapshot_date,
        customer_account_id,
        'doors' as child_table,
        to_json(list(
            struct_pack(*columns(* exclude (snapshot_date, customer_account_id, customer_code, source_page, log_id)))
            order by ordinal
        )) as content
    from {{ joor_refreshed(ref('stg_doors')) }} as stg_doors
    group by snapshot_date, customer_account_id

    union all

    select
        snapshot_date,
        customer_account_id,
        'price_types' as child_table,
        to_json(list(
            struct_pack(*columns(* exclude (snapshot_date, customer_account_id, customer_code, source_page, log_id)))
            order by ordinal
        )) as content
    from {{ joor_refreshed(ref('stg_price_types')) }} as stg_price_types
    group by snapshot_date, customer_account_id

    union all

    select
        snapshot_date,
        customer_account_id,
        'buyers' as child_table,
        to_json(list(
            struct_pack(*columns(* exclude (snapshot_date, customer_account_id, customer_code, source_page, log_id)))
            order by ordinal
        )) as content
    from {{ joor_refreshed(ref('stg_buyers')) }} as stg_buyers
    group by snapshot_date, customer_account_id

    union all

    select
        snapshot_date,
        customer_account_id,
        'warehouses' as child_table,
        to_json(list(
            struct_pack(*columns(* exclude (snapshot_date, customer_account_id, customer_code, source_page, log_id)))
            order by ordinal
        )) as content
    from {{ joor_refreshed(ref('stg_warehouses')) }} as stg_warehouses
    group by snapshot_date, customer_account_id

    union all

    select
        snapshot_date,
        customer_account_id,
        'tax_ids' as child_table,
        to_json(list(
            struct_pack(*columns(* exclude (snapshot_date, customer_account_id, customer_code, source_page, log_id)))
            order by ordinal
        )) as content
    from {{ joor_refreshed(ref('stg_tax_ids')) }} as stg_tax_ids
    group by snapshot_date, customer_account_id
),

children_by_connection as (
    select
        snapshot_date,
        customer_account_id,
        string_agg(child_table || '=' || content, chr(10) order by child_table) as content
    from child_contents
    group by snapshot_date, customer_account_id
)

select
    connection_contents.snapshot_date,
    connection_contents.customer_account_id,
    md5_number(
        'connection=' || connection_contents.content || chr(10) || coalesce(children_by_connection.content, '')
    ) as change_hash
from connection_contents
left join children_by_connection using (snapshot_date, customer_account_id)

-- retailer_history: type 2 history of every retailer over all daily snapshots; a version lasts while neither the
-- connection nor any of its children changes.
-- grain: one row per retailer version: (customer_account_id, valid_from).
-- depends_on: stg_connections, stg_addresses, stg_payment_methods, stg_shipping_methods, stg_discounts,
--   stg_doors, stg_price_types, stg_buyers, stg_warehouses, stg_tax_ids
-- Only snapshot dates that exist count: valid_to is the next existing snapshot after the version was last seen
-- (where it was replaced, or where the retailer was first missing); null while the version is current.
-- change_hash is the md5 of the connection's columns and every child list in JOOR order, as JSON. Provenance
-- (snapshot_date, source_page, log_id) stays out of it; extra and invalid_values stay in, as they carry JOOR data.
with snapshots as (
    select
        snapshot_date,
        row_number() over (order by snapshot_date) as snapshot_number
    from (select distinct snapshot_date from stg_connections)
),

connection_contents as (
    select
        snapshot_date,
        customer_account_id,
        to_json(struct_pack(*columns(* exclude (snapshot_date, customer_account_id, source_page, log_id))))
            as content
    from stg_connections
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
    from stg_addresses
    group by snapshot_date, customer_account_id

    union all

    select
        snapshot_date,
        customer_account_id,
        'payment_methods',
        to_json(list(
            struct_pack(*columns(* exclude (snapshot_date, customer_account_id, customer_code, source_page, log_id)))
            order by ordinal
        ))
    from stg_payment_methods
    group by snapshot_date, customer_account_id

    union all

    select
        snapshot_date,
        customer_account_id,
        'shipping_methods',
        to_json(list(
            struct_pack(*columns(* exclude (snapshot_date, customer_account_id, customer_code, source_page, log_id)))
            order by ordinal
        ))
    from stg_shipping_methods
    group by snapshot_date, customer_account_id

    union all

    select
        snapshot_date,
        customer_account_id,
        'discounts',
        to_json(list(
            struct_pack(*columns(* exclude (snapshot_date, customer_account_id, customer_code, source_page, log_id)))
            order by ordinal
        ))
    from stg_discounts
    group by snapshot_date, customer_account_id

    union all

    select
        snapshot_date,
        customer_account_id,
        'doors',
        to_json(list(
            struct_pack(*columns(* exclude (snapshot_date, customer_account_id, customer_code, source_page, log_id)))
            order by ordinal
        ))
    from stg_doors
    group by snapshot_date, customer_account_id

    union all

    select
        snapshot_date,
        customer_account_id,
        'price_types',
        to_json(list(
            struct_pack(*columns(* exclude (snapshot_date, customer_account_id, customer_code, source_page, log_id)))
            order by ordinal
        ))
    from stg_price_types
    group by snapshot_date, customer_account_id

    union all

    select
        snapshot_date,
        customer_account_id,
        'buyers',
        to_json(list(
            struct_pack(*columns(* exclude (snapshot_date, customer_account_id, customer_code, source_page, log_id)))
            order by ordinal
        ))
    from stg_buyers
    group by snapshot_date, customer_account_id

    union all

    select
        snapshot_date,
        customer_account_id,
        'warehouses',
        to_json(list(
            struct_pack(*columns(* exclude (snapshot_date, customer_account_id, customer_code, source_page, log_id)))
            order by ordinal
        ))
    from stg_warehouses
    group by snapshot_date, customer_account_id

    union all

    select
        snapshot_date,
        customer_account_id,
        'tax_ids',
        to_json(list(
            struct_pack(*columns(* exclude (snapshot_date, customer_account_id, customer_code, source_page, log_id)))
            order by ordinal
        ))
    from stg_tax_ids
    group by snapshot_date, customer_account_id
),

children_by_connection as (
    select
        snapshot_date,
        customer_account_id,
        string_agg(child_table || '=' || content, chr(10) order by child_table) as content
    from child_contents
    group by snapshot_date, customer_account_id
),

observations as (
    select
        connection_contents.snapshot_date,
        connection_contents.customer_account_id,
        snapshots.snapshot_number,
        md5(
            'connection=' || connection_contents.content || chr(10) || coalesce(children_by_connection.content, '')
        ) as change_hash
    from connection_contents
    inner join snapshots using (snapshot_date)
    left join children_by_connection using (snapshot_date, customer_account_id)
),

version_starts as (
    select
        *,
        case
            when lag(snapshot_number) over retailer is null then true
            -- back after being missing from at least one snapshot
            when lag(snapshot_number) over retailer < snapshot_number - 1 then true
            else lag(change_hash) over retailer <> change_hash
        end as starts_version
    from observations
    window retailer as (partition by customer_account_id order by snapshot_number)
),

numbered as (
    select
        *,
        cast(
            sum(starts_version::integer) over (
                partition by customer_account_id order by snapshot_number rows unbounded preceding
            ) as integer
        ) as version_number
    from version_starts
),

versions as (
    select
        customer_account_id,
        version_number,
        min(snapshot_date) as valid_from,
        max(snapshot_number) as last_snapshot_number,
        any_value(change_hash) as change_hash
    from numbered
    group by customer_account_id, version_number
)

select
    versions.customer_account_id,
    versions.version_number,
    versions.valid_from,
    next_snapshot.snapshot_date as valid_to,
    next_snapshot.snapshot_date is null as is_current,
    last_snapshot.snapshot_date as last_seen_snapshot_date,
    versions.change_hash,
    connections.customer_code,
    connections.customer_alias,
    connections.customer_name,
    connections.customer_email,
    connections.customer_contact_name,
    connections.customer_contact_email,
    connections.customer_buyer_name,
    connections.brand_account_id,
    connections.company_number_name,
    connections.company_number_code,
    connections.customer_group_name,
    connections.customer_group_code,
    connections.sales_rep_code,
    connections.connection_modified
from versions
inner join snapshots as last_snapshot on last_snapshot.snapshot_number = versions.last_snapshot_number
left join snapshots as next_snapshot on next_snapshot.snapshot_number = versions.last_snapshot_number + 1
inner join stg_connections as connections
    on connections.customer_account_id = versions.customer_account_id
    and connections.snapshot_date = versions.valid_from
order by versions.customer_account_id, versions.valid_from

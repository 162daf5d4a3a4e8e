-- dim_retailers: every retailer (connection) of each account's latest snapshot, with its default payment and shipping
-- methods and how many of each child it has.
-- grain: one row per (account, customer_account_id) (connections without an id are left out; data_quality_issues has them).
-- A default method is the one flagged is_default; when several are flagged, the first in JOOR's list wins.
with latest_snapshot as (
    select account, max(snapshot_date) as snapshot_date
    from {{ ref('stg_connections') }} as stg_connections
    group by account
),

connections as (
    select stg_connections.*
    from {{ ref('stg_connections') }} as stg_connections
    inner join latest_snapshot using (account, snapshot_date)
    where stg_connections.customer_account_id is not null
),

default_payment_methods as (
    select
        stg_payment_methods.account,
        stg_payment_methods.customer_account_id,
        stg_payment_methods.payment_method_code,
        stg_payment_methods.payment_method_name
    from {{ ref('stg_payment_methods') }} as stg_payment_methods
    inner join latest_snapshot using (account, snapshot_date)
    where stg_payment_methods.payment_method_is_default
    qualify row_number() over (
        partition by stg_payment_methods.account, stg_payment_methods.customer_account_id order by ordinal
    ) = 1
),

default_shipping_methods as (
    select
        stg_shipping_methods.account,
        stg_shipping_methods.customer_account_id,
        stg_shipping_methods.shipping_method_code,
        stg_shipping_methods.shipping_method_name
    from {{ ref('stg_shipping_methods') }} as stg_shipping_methods
    inner join latest_snapshot using (account, snapshot_date)
    where stg_shipping_methods.shipping_method_is_default
    qualify row_number() over (
        partition by stg_shipping_methods.account, stg_shipping_methods.customer_account_id order by ordinal
    ) = 1
),

child_rows as (
    select account, snapshot_date, customer_account_id, address_type || '_address' as child from {{ ref('stg_addresses') }} as stg_addresses
    union all
    select account, snapshot_date, customer_account_id, 'payment_method' from {{ ref('stg_payment_methods') }} as stg_payment_methods
    union all
    select account, snapshot_date, customer_account_id, 'shipping_method' from {{ ref('stg_shipping_methods') }} as stg_shipping_methods
    union all
    select account, snapshot_date, customer_account_id, 'discount' from {{ ref('stg_discounts') }} as stg_discounts
    union all
    select account, snapshot_date, customer_account_id, 'door' from {{ ref('stg_doors') }} as stg_doors
    union all
    select account, snapshot_date, customer_account_id, 'price_type' from {{ ref('stg_price_types') }} as stg_price_types
    union all
    select account, snapshot_date, customer_account_id, 'buyer' from {{ ref('stg_buyers') }} as stg_buyers
    union all
    select account, snapshot_date, customer_account_id, 'warehouse' from {{ ref('stg_warehouses') }} as stg_warehouses
    union all
    select account, snapshot_date, customer_account_id, 'tax_id' from {{ ref('stg_tax_ids') }} as stg_tax_ids
),

child_counts as (
    select
        child_rows.account,
        child_rows.customer_account_id,
        count(*) filter (where child = 'billing_address') as billing_addresses,
        count(*) filter (where child = 'shipping_address') as shipping_addresses,
        count(*) filter (where child = 'location_address') as locations,
        count(*) filter (where child = 'door') as doors,
        count(*) filter (where child = 'buyer') as buyers,
        count(*) filter (where child = 'price_type') as price_types,
        count(*) filter (where child = 'discount') as discounts,
        count(*) filter (where child = 'payment_method') as payment_methods,
        count(*) filter (where child = 'shipping_method') as shipping_methods,
        count(*) filter (where child = 'warehouse') as warehouses,
        count(*) filter (where child = 'tax_id') as tax_ids
    from child_rows
    inner join latest_snapshot using (account, snapshot_date)
    group by child_rows.account, child_rows.customer_account_id
)

select
    connections.account,
    connections.customer_account_id,
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
    connections.connection_modified,
    connections.snapshot_date,
    default_payment_methods.payment_method_code as default_payment_method_code,
    default_payment_methods.payment_method_name as default_payment_method_name,
    default_shipping_methods.shipping_method_code as default_shipping_method_code,
    default_shipping_methods.shipping_method_name as default_shipping_method_name,
    coalesce(child_counts.billing_addresses, 0) as billing_addresses,
    coalesce(child_counts.shipping_addresses, 0) as shipping_addresses,
    coalesce(child_counts.locations, 0) as locations,
    coalesce(child_counts.doors, 0) as doors,
    coalesce(child_counts.buyers, 0) as buyers,
    coalesce(child_counts.price_types, 0) as price_types,
    coalesce(child_counts.discounts, 0) as discounts,
    coalesce(child_counts.payment_methods, 0) as payment_methods,
    coalesce(child_counts.shipping_methods, 0) as shipping_methods,
    coalesce(child_counts.warehouses, 0) as warehouses,
    coalesce(child_counts.tax_ids, 0) as tax_ids
from connections
left join default_payment_methods using (account, customer_account_id)
left join default_shipping_methods using (account, customer_account_id)
left join child_counts using (account, customer_account_id)
order by connections.account, connections.customer_account_id

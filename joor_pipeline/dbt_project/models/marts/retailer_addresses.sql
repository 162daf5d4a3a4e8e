-- retailer_addresses: every address of every current retailer (each account's latest snapshot), with an ISO-2 country_code
-- and whether one of the retailer's doors points at it.
-- grain: one row per (account, customer_account_id, address_type, ordinal).
-- Doors point at shipping addresses only (JOOR's door_shipping_address_id), so only those can be door addresses.
with latest_snapshot as (
    select account, max(snapshot_date) as snapshot_date
    from {{ ref('stg_connections') }} as stg_connections
    group by account
),

addresses as (
    select int_addresses.*
    from {{ ref('int_addresses') }} as int_addresses
    inner join latest_snapshot using (account, snapshot_date)
    where int_addresses.customer_account_id is not null
),

door_addresses as (
    select distinct
        stg_doors.account,
        stg_doors.customer_account_id,
        stg_doors.shipping_address_id
    from {{ ref('stg_doors') }} as stg_doors
    inner join latest_snapshot using (account, snapshot_date)
    where stg_doors.shipping_address_id is not null
)

select
    addresses.account,
    addresses.snapshot_date,
    addresses.customer_account_id,
    addresses.customer_code,
    addresses.address_type,
    addresses.ordinal,
    addresses.address_id,
    addresses.code,
    addresses.name,
    addresses.phone,
    addresses.email,
    addresses.address_1,
    addresses.address_2,
    addresses.city,
    addresses.state,
    addresses.postal_code,
    addresses.country,
    addresses.country_code,
    addresses.address_type = 'shipping' and door_addresses.shipping_address_id is not null as is_door_address
from addresses
left join door_addresses
    on door_addresses.account = addresses.account
    and door_addresses.customer_account_id = addresses.customer_account_id
    and door_addresses.shipping_address_id = addresses.address_id
order by addresses.account, addresses.customer_account_id, addresses.address_type, addresses.ordinal

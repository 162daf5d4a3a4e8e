-- payment_terms: how many retailers of each account's latest snapshot are offered each payment method, and how many have it
-- as their default.
-- grain: one row per (account, payment_method_code, payment_method_name).
-- A retailer's default is the method flagged is_default, the first in JOOR's list when several are (as in
-- dim_retailers). share_of_retailers divides by every retailer of the snapshot, with or without payment methods.
with latest_snapshot as (
    select account, max(snapshot_date) as snapshot_date
    from {{ ref('stg_connections') }} as stg_connections
    group by account
),

retailer_total as (
    select stg_connections.account, count(distinct stg_connections.customer_account_id) as retailers
    from {{ ref('stg_connections') }} as stg_connections
    inner join latest_snapshot using (account, snapshot_date)
    group by stg_connections.account
),

payment_methods as (
    select stg_payment_methods.*
    from {{ ref('stg_payment_methods') }} as stg_payment_methods
    inner join latest_snapshot using (account, snapshot_date)
    where stg_payment_methods.customer_account_id is not null
),

default_payment_methods as (
    select
        account,
        customer_account_id,
        ordinal
    from payment_methods
    where payment_method_is_default
    qualify row_number() over (partition by account, customer_account_id order by ordinal) = 1
)

select
    payment_methods.account,
    payment_methods.payment_method_code,
    payment_methods.payment_method_name,
    count(distinct payment_methods.customer_account_id) as retailers,
    count(distinct default_payment_methods.customer_account_id) as retailers_with_it_as_default,
    count(distinct payment_methods.customer_account_id) / nullif(any_value(retailer_total.retailers), 0)
        as share_of_retailers
from payment_methods
inner join retailer_total on retailer_total.account = payment_methods.account
left join default_payment_methods
    on default_payment_methods.account = payment_methods.account
    and default_payment_methods.customer_account_id = payment_methods.customer_account_id
    and default_payment_methods.ordinal = payment_methods.ordinal
group by payment_methods.account, payment_methods.payment_method_code, payment_methods.payment_method_name
order by payment_methods.account, retailers desc, payment_methods.payment_method_code nulls last, payment_methods.payment_method_name nulls last

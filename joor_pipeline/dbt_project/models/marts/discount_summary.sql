-- discount_summary: the discounts of each account's latest snapshot by division; a discount without a division applies to
-- every division and forms its own group.
-- grain: one row per (account, division_id) (null included).
-- line_item_level_share is the share of discounts applied per line item, among those where JOOR says.
with latest_snapshot as (
    select account, max(snapshot_date) as snapshot_date
    from {{ ref('stg_connections') }} as stg_connections
    group by account
),

discounts as (
    select stg_discounts.*
    from {{ ref('stg_discounts') }} as stg_discounts
    inner join latest_snapshot using (account, snapshot_date)
    where stg_discounts.customer_account_id is not null
)

select
    account,
    division_id,
    division_id is null as applies_to_all_divisions,
    count(*) as discounts,
    count(distinct customer_account_id) as retailers,
    avg(amount) as avg_amount,
    min(amount) as min_amount,
    max(amount) as max_amount,
    avg(line_item_level::integer) as line_item_level_share
from discounts
group by account, division_id
order by account, division_id nulls last

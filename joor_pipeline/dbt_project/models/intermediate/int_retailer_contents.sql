-- int_retailer_contents: the connection's own columns for each distinct content a retailer has had, so that
-- retailer_history can describe a version without reading its snapshot again.
-- grain: one row per (account, customer_account_id, change_hash).
-- A change_hash covers every one of these columns, so one row per hash is exact. Incremental: contents first
-- seen in the dates of a build are added; a content no longer referenced by any fingerprint is harmless (the
-- history joins on the fingerprints) and goes at the next full refresh.
{{ config(materialized='incremental', incremental_strategy='append') }}
with fingerprints as (
    select *
    from {{ joor_refreshed(ref('int_retailer_fingerprints')) }} as int_retailer_fingerprints
    {% if is_incremental() %}
    where not exists (
        select 1
        from {{ this }} as known
        where known.account = int_retailer_fingerprints.account
            and known.customer_account_id = int_retailer_fingerprints.customer_account_id
            and known.change_hash = int_retailer_fingerprints.change_hash
    )
    {% endif %}
)

select
    fingerprints.account,
    fingerprints.customer_account_id,
    fingerprints.change_hash,
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
from fingerprints
inner join {{ joor_refreshed(ref('stg_connections')) }} as connections
    using (account, snapshot_date, customer_account_id)
qualify row_number() over (
    partition by fingerprints.account, fingerprints.customer_account_id, fingerprints.change_hash
    order by fingerprints.snapshot_date
) = 1

-- retailer_history: type 2 history of every retailer over all daily snapshots; a version lasts while neither the
-- connection nor any of its children changes.
-- grain: one row per retailer version: (account, customer_account_id, valid_from).
-- Each account has its own snapshots and history. Only snapshot dates that exist count: valid_to is the next existing snapshot after the version was last seen
-- (where it was replaced, or where the retailer was first missing); null while the version is current.
-- Derived from the compact fingerprints (int_retailer_fingerprints), never from the snapshots themselves, so the
-- history is the same whatever order the snapshots were built in. change_hash is the fingerprint, in hex.
with snapshots as (
    select
        account,
        snapshot_date,
        row_number() over (partition by account order by snapshot_date) as snapshot_number
    from {{ ref('int_snapshots') }}
),

observations as (
    select
        fingerprints.account,
        fingerprints.snapshot_date,
        fingerprints.customer_account_id,
        fingerprints.change_hash,
        snapshots.snapshot_number
    from {{ ref('int_retailer_fingerprints') }} as fingerprints
    inner join snapshots using (account, snapshot_date)
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
    window retailer as (partition by account, customer_account_id order by snapshot_number)
),

numbered as (
    select
        account,
        customer_account_id,
        snapshot_date,
        snapshot_number,
        change_hash,
        cast(
            sum(starts_version::integer) over (
                partition by account, customer_account_id order by snapshot_number rows unbounded preceding
            ) as integer
        ) as version_number
    from version_starts
),

versions as (
    select
        account,
        customer_account_id,
        version_number,
        min(snapshot_date) as valid_from,
        max(snapshot_number) as last_snapshot_number,
        any_value(change_hash) as change_hash
    from numbered
    group by account, customer_account_id, version_number
)

select
    versions.account,
    versions.customer_account_id,
    versions.version_number,
    versions.valid_from,
    next_snapshot.snapshot_date as valid_to,
    next_snapshot.snapshot_date is null as is_current,
    last_snapshot.snapshot_date as last_seen_snapshot_date,
    lower(lpad(to_hex(versions.change_hash), 16, '0')) as change_hash,
    contents.customer_code,
    contents.customer_alias,
    contents.customer_name,
    contents.customer_email,
    contents.customer_contact_name,
    contents.customer_contact_email,
    contents.customer_buyer_name,
    contents.brand_account_id,
    contents.company_number_name,
    contents.company_number_code,
    contents.customer_group_name,
    contents.customer_group_code,
    contents.sales_rep_code,
    contents.connection_modified
from versions
inner join snapshots as last_snapshot
    on last_snapshot.account = versions.account
    and last_snapshot.snapshot_number = versions.last_snapshot_number
left join snapshots as next_snapshot
    on next_snapshot.account = versions.account
    and next_snapshot.snapshot_number = versions.last_snapshot_number + 1
inner join {{ ref('int_retailer_contents') }} as contents
    on contents.account = versions.account
    and contents.customer_account_id = versions.customer_account_id
    and contents.change_hash = versions.change_hash
order by versions.account, versions.customer_account_id, versions.valid_from

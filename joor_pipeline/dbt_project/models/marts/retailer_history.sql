-- retailer_history: type 2 history of every retailer over all daily snapshots; a version lasts while neither the
-- connection nor any of its children changes.
-- grain: one row per retailer version: (account, customer_account_id, valid_from). Each account has its own
-- snapshots and history.
-- Only snapshot dates that exist count: valid_to is the next existing snapshot after the version was last seen
-- (where it was replaced, or where the retailer was first missing); null while the version is current.
-- Derived from the compact fingerprints (int_retailer_fingerprints), never from the snapshots themselves, so the
-- history is the same whatever order the snapshots were built in. change_hash is the fingerprint, in hex.
-- Incremental: versions closed before the first snapshot date of a build stay as they are; the versions still
-- open at that date are recomputed from the fingerprints of the dates from it on, each continuing from one
-- observation standing for what it had seen before (a daily build reads one day of fingerprints). A date that
-- arrives out of order, earlier than the latest, makes the build recompute every version open at that date.
{%- set key = joor_retailer_key() | join(', ') %}
{{ config(
    materialized='incremental',
    incremental_strategy='append',
    pre_hook="{{ joor_history_reopen() }}",
    post_hook="{{ joor_history_drop_reopened() }}",
) }}
with snapshots as (
    select
        account,
        snapshot_date,
        row_number() over (partition by account order by snapshot_date) as snapshot_number
    from {{ ref('int_snapshots') }}
),

{% if is_incremental() %}
-- per account: the build's first date (one for all accounts) and the account's last snapshot before it
first_refresh as (
    select
        accounts.account,
        first_date.snapshot_date,
        (
            select max(snapshots.snapshot_date)
            from snapshots
            where snapshots.account = accounts.account and snapshots.snapshot_date < first_date.snapshot_date
        ) as previous_snapshot_date
    from (select distinct account from snapshots) as accounts
    cross join (select {{ joor_first_refresh_date() }} as snapshot_date) as first_date
),

-- each reopened version that began before the first refresh date, as one observation: it was seen in every
-- snapshot from valid_from to its last sighting before that date, so only that last sighting matters next
seeds as (
    select
        {{ key }},
        case
            when reopened.last_seen_snapshot_date < first_refresh.snapshot_date
                then reopened.last_seen_snapshot_date
            else first_refresh.previous_snapshot_date
        end as snapshot_date,
        ('0x' || reopened.change_hash)::ubigint as change_hash,
        reopened.valid_from as seed_valid_from
    from joor_meta.retailer_history_reopened as reopened
    inner join first_refresh using (account)
    where reopened.valid_from < first_refresh.snapshot_date
),

{% endif %}
-- a full build reads every fingerprint; an incremental one those from its first date on, plus the seeds
fingerprints as (
    select
        {{ key }},
        snapshot_date,
        change_hash,
        null::date as seed_valid_from
    from {{ ref('int_retailer_fingerprints') }}
{% if is_incremental() %}
    where snapshot_date >= {{ joor_first_refresh_date() }}

    union all by name

    select * from seeds
{% endif %}
),

observations as (
    select
        fingerprints.*,
        snapshots.snapshot_number
    from fingerprints
    inner join snapshots using (account, snapshot_date)
),

-- the versions each retailer keeps (closed before the first refresh date) are numbered first
kept_versions as (
{% if is_incremental() %}
    select
        {{ key }},
        max(kept.version_number) as versions
    from {{ this }} as kept
    inner join (select distinct {{ key }} from observations) as touched using ({{ key }})
    group by {{ key }}
{% else %}
    select {{ key }}, 0 as versions from observations where false
{% endif %}
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
    window retailer as (partition by {{ key }} order by snapshot_number)
),

numbered as (
    select
        {{ key }},
        snapshot_date,
        snapshot_number,
        change_hash,
        seed_valid_from,
        cast(
            sum(starts_version::integer) over (
                partition by {{ key }} order by snapshot_number rows unbounded preceding
            ) as integer
        ) as version_number
    from version_starts
),

versions as (
    select
        {{ key }},
        version_number,
        coalesce(min(seed_valid_from), min(snapshot_date)) as valid_from,
        max(snapshot_number) as last_snapshot_number,
        any_value(change_hash) as change_hash
    from numbered
    group by {{ key }}, version_number
)

select
    {{ key }},
    cast(coalesce(kept_versions.versions, 0) + versions.version_number as integer) as version_number,
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
left join kept_versions using ({{ key }})
inner join snapshots as last_snapshot
    on last_snapshot.account = versions.account
    and last_snapshot.snapshot_number = versions.last_snapshot_number
left join snapshots as next_snapshot
    on next_snapshot.account = versions.account
    and next_snapshot.snapshot_number = versions.last_snapshot_number + 1
inner join {{ ref('int_retailer_contents') }} as contents using ({{ key }}, change_hash)

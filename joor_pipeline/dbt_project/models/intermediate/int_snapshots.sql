-- int_snapshots: every snapshot date of each account that holds at least one connection, over the whole history.
-- grain: one row per (account, snapshot_date).
-- Incremental: each build deletes, then inserts, exactly the snapshot dates it processes.
{{ config(materialized='incremental', incremental_strategy='append', pre_hook="{{ joor_delete_refresh_dates() }}") }}
select
    account,
    snapshot_date,
    count(*) as connections
from {{ joor_refreshed(ref('stg_connections')) }} as stg_connections
group by account, snapshot_date

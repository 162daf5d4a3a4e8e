-- int_snapshots: every snapshot date that holds at least one connection, over the whole history.
-- grain: one row per snapshot_date.
-- Incremental: each build deletes, then inserts, exactly the snapshot dates it processes.
{{ config(materialized='incremental', incremental_strategy='append', pre_hook="{{ joor_delete_refresh_dates() }}") }}
select
    snapshot_date,
    count(*) as connections
from {{ joor_refreshed(ref('stg_connections')) }} as stg_connections
group by snapshot_date

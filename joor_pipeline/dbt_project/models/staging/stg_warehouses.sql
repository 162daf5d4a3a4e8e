-- stg_warehouses: every warehouse assigned to a connection, per snapshot, as flattened.
-- grain: one row per (account, snapshot_date, customer_account_id, ordinal).
-- A view over exactly the published files of the snapshot dates this build processes (joor_pipeline.warehouse
-- prepares the source); in the published joor.duckdb it shows the latest snapshot.
select *
from {{ source('joor', 'warehouses') }}

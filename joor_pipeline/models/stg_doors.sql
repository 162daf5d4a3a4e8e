-- stg_doors: every door (store) of a connection, per snapshot, as flattened.
-- grain: one row per (snapshot_date, customer_account_id, ordinal).
-- source: doors
-- The empty contract file comes first so every contract column exists, typed and in order, even before the
-- first partition is written; the partition path is authoritative for snapshot_date.
select *
from read_parquet($contract_file)
union all by name
select * replace (cast(snapshot_date as date) as snapshot_date)
from read_parquet($parquet_files, hive_partitioning = true, union_by_name = true)
order by snapshot_date, customer_account_id, ordinal

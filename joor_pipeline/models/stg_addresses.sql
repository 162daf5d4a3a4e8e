-- stg_addresses: every billing address, shipping address and customer location of every snapshot, as flattened.
-- grain: one row per (snapshot_date, customer_account_id, address_type, ordinal).
-- source: addresses
-- The empty contract file comes first so every contract column exists, typed and in order, even before the
-- first partition is written; the partition path is authoritative for snapshot_date.
select *
from read_parquet($contract_file)
union all by name
select * replace (cast(snapshot_date as date) as snapshot_date)
from read_parquet($parquet_files, hive_partitioning = true, union_by_name = true)
order by snapshot_date, customer_account_id, address_type, ordinal

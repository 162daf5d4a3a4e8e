-- data_quality_issues: every rule a record breaks, in every snapshot; a clean snapshot contributes zero rows.
-- grain: one row per (account, snapshot_date, table_name, customer_account_id, record_key, rule, column_name).
-- The rules are in macros/joor_rules.sql, shared with the per-partition asset checks of the ten tables.
-- Incremental: each build deletes, then inserts, exactly the snapshot dates it processes.
{{ config(materialized='incremental', incremental_strategy='append', pre_hook="{{ joor_delete_refresh_dates() }}") }}
{{ joor_quality_rules({
    'connections': joor_refreshed(ref('stg_connections')),
    'addresses': joor_refreshed(ref('stg_addresses')),
    'payment_methods': joor_refreshed(ref('stg_payment_methods')),
    'shipping_methods': joor_refreshed(ref('stg_shipping_methods')),
    'discounts': joor_refreshed(ref('stg_discounts')),
    'doors': joor_refreshed(ref('stg_doors')),
    'price_types': joor_refreshed(ref('stg_price_types')),
    'buyers': joor_refreshed(ref('stg_buyers')),
    'warehouses': joor_refreshed(ref('stg_warehouses')),
    'tax_ids': joor_refreshed(ref('stg_tax_ids')),
}) }}

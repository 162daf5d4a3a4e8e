-- int_addresses: every address of the snapshots in the build, with its country normalised to an ISO 3166-1
-- alpha-2 code and whether JOOR requires a state for it (US, CA, JP, AU).
-- grain: one row per (account, snapshot_date, customer_account_id, address_type, ordinal).
-- A view: it is read for the latest snapshot only (retailer_addresses); data_quality_issues applies the same
-- macro to the dates it processes. The spellings are in macros/joor_rules.sql.
{{ joor_address_countries(ref('stg_addresses')) }}

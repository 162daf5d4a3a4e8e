{#- retailer_history's incremental build (models/marts/retailer_history.sql). -#}

{#- The columns that identify a retailer: every partition, join and grouping of retailer_history uses this list. -#}
{% macro joor_retailer_key() -%}
{{ return(['account', 'customer_account_id']) }}
{%- endmacro %}

{#- The first snapshot date this build processes, over every account; 9999-12-31 when it processes none (then
    nothing is reopened). One date for all accounts: an account with nothing to refresh recomputes the versions open
    at it from its own fingerprints, the same result (see first_refresh in the model). -#}
{% macro joor_first_refresh_date() -%}
(select coalesce(min(snapshot_date), date '9999-12-31') from joor_meta.refresh_dates)
{%- endmacro %}

{#- The versions a build may change: every version still open at the first date it processes (current, or closed
    on or after that date). Versions closed before it depend only on earlier snapshots, which the build leaves as
    they are. -#}
{% macro joor_history_reopened_where() -%}
(valid_to is null or valid_to >= {{ joor_first_refresh_date() }})
{%- endmacro %}

{#- Pre-hooks: set the reopened versions aside (the model reads them back), then delete them; the model inserts
    their recomputation. Incremental builds only: a first build computes every version. -#}
{% macro joor_history_reopen() -%}
{% if is_incremental() %}
create or replace table joor_meta.retailer_history_reopened as
select * from {{ this }} where {{ joor_history_reopened_where() }};
delete from {{ this }} where {{ joor_history_reopened_where() }}
{% endif %}
{%- endmacro %}

{% macro joor_history_drop_reopened() -%}
drop table if exists joor_meta.retailer_history_reopened
{%- endmacro %}

{#- The (account, snapshot date) partitions a build processes are written by joor_pipeline.warehouse into
    joor_meta.refresh_dates of the build's copy, not passed as vars: the vars (and so dbt's partial parse) stay the
    same from day to day. A partition is keyed as 'account/YYYY-MM-DD' (account names never hold a '/'). -#}

{% macro joor_partition_key(prefix='') -%}
({{ prefix }}account || '/' || strftime({{ prefix }}snapshot_date, '%Y-%m-%d'))
{%- endmacro %}

{% macro joor_refresh_dates() -%}
(select partition_key from joor_meta.refresh_dates)
{%- endmacro %}

{#- `relation` restricted to the (account, snapshot date) partitions of this build, as a subquery. -#}
{% macro joor_refreshed(relation) -%}
(select * from {{ relation }} where {{ joor_partition_key() }} in {{ joor_refresh_dates() }})
{%- endmacro %}

{#- Pre-hook of the incremental models: delete, then the model inserts (a partition republished or withdrawn since
    the last build is replaced or removed; every other partition is left as it was). -#}
{% macro joor_delete_refresh_dates() -%}
{% if is_incremental() %}
delete from {{ this }} where {{ joor_partition_key() }} in {{ joor_refresh_dates() }}
{% endif %}
{%- endmacro %}

{#- dbt-duckdb would otherwise name a custom schema main_staging: keep the names analysts see short. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
{{ custom_schema_name if custom_schema_name else target.schema }}
{%- endmacro %}

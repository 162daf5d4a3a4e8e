{#- The snapshot dates a build processes are written by joor_pipeline.warehouse into joor_meta.refresh_dates of
    the build's copy, not passed as vars: the vars (and so dbt's partial parse) stay the same from day to day. -#}

{% macro joor_refresh_dates() -%}
(select snapshot_date from joor_meta.refresh_dates)
{%- endmacro %}

{#- `relation` restricted to the snapshot dates of this build, as a subquery. -#}
{% macro joor_refreshed(relation) -%}
(select * from {{ relation }} where snapshot_date in {{ joor_refresh_dates() }})
{%- endmacro %}

{#- Pre-hook of the incremental models: delete, then the model inserts (a date republished or withdrawn since the
    last build is replaced or removed; every other date is left as it was). -#}
{% macro joor_delete_refresh_dates() -%}
{% if is_incremental() %}
delete from {{ this }} where snapshot_date in {{ joor_refresh_dates() }}
{% endif %}
{%- endmacro %}

{#- dbt-duckdb would otherwise name a custom schema main_staging: keep the names analysts see short. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
{{ custom_schema_name if custom_schema_name else target.schema }}
{%- endmacro %}

# One entry point per task; each bootstraps the environment from nothing (Python 3.11 + pip).
SHELL := /bin/bash
PYTHON ?= python3
UV := $(shell command -v uv 2>/dev/null || echo "$(PYTHON) -m uv")
RUN := $(UV) run --frozen

.PHONY: setup demo test check fmt bench dictionary docs ui clean

setup:
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet --disable-pip-version-check uv
	@# Compiled bytecode for every installed package, and for ours: where PYTHONDONTWRITEBYTECODE is set (as on
	@# this project's machines) nothing is cached otherwise, and every process pays to compile Dagster, pandas
	@# and DuckDB's Python again (imports measured 1.9x slower). Compiled once here, about 15 s.
	@$(UV) sync --frozen --quiet --compile-bytecode
	@$(RUN) python -m compileall -q joor_pipeline
	@# dagster-dbt reads the dbt manifest when the definitions load: parse it now (offline, cached per version)
	@$(RUN) python -c "from joor_pipeline.warehouse import manifest_path; manifest_path()"

# `make demo` and `make ui` share one Dagster instance, ./dagster_home (SQLite, made from the example on first use):
# the UI shows the demo's runs and assets.
DAGSTER_HOME_DIR := $(CURDIR)/dagster_home

dagster_home/dagster.yaml:
	@mkdir -p dagster_home && cp dagster_home.example/dagster.sqlite.yaml dagster_home/dagster.yaml

demo: setup dagster_home/dagster.yaml
	DAGSTER_HOME="$(DAGSTER_HOME_DIR)" $(RUN) joor-pipeline demo

test: setup
	$(RUN) pytest -q

check: setup
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) mypy

fmt: setup
	$(RUN) ruff check --fix .
	$(RUN) ruff format .

bench: setup
	$(RUN) python -m bench
	$(RUN) python -m bench.warehouse_growth

docs: setup
	@# dbt docs for the warehouse (offline): one page that opens from disk, data/_work/warehouse/docs/static_index.html
	$(RUN) python -c "from joor_pipeline.warehouse import default_data_dir, generate_docs; print(generate_docs(default_data_dir()))"

dictionary: setup
	$(RUN) python -m joor_pipeline.flatten.dictionary
	@# the dbt yml: the sources from the data contract, every model column's entry (runs the models on no data)
	$(RUN) python -m joor_pipeline.column_docs
	$(RUN) python -m joor_pipeline.warehouse

ui: setup dagster_home/dagster.yaml
	@# With no JOOR configured, on the built-in sandbox (JOOR_ENVIRONMENT=builtin: the demo's synthetic data), said
	@# on the way in and on the fetch asset in the UI.
	DAGSTER_HOME="$(DAGSTER_HOME_DIR)" $(RUN) python -m joor_pipeline.assets.instance ui dagster dev -w workspace.yaml

clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache

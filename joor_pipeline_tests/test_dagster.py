"""The Dagster project: definitions load, the full graph materializes per partition, checks, CLI run and demo."""

from __future__ import annotations

import copy
import fcntl
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import zlib
from contextlib import closing, suppress
from datetime import UTC, date, datetime
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow.parquet as pq
import pytest

from joor_pipeline.assets.instance import InstanceBusy, open_instance
from joor_pipeline.assets.joor import RAW_ASSET, joor_raw_connections, joor_tables
from joor_pipeline.assets.models import joor_models
from joor_pipeline.assets.resources import DataDirResource, JoorApiResource, resources_from_env
from joor_pipeline.assets.sensors import FRESHNESS_CHECK_KEYS
from joor_pipeline.batch import run_batch
from joor_pipeline.cli import main
from joor_pipeline.config import NOT_CONFIGURED
from joor_pipeline.definitions import build_defs
from joor_pipeline.flatten import TABLES
from joor_pipeline.flatten.runner import flatten_snapshot
from joor_pipeline.quality import parquet_counts, raw_counts
from joor_pipeline.sandbox import load_seed_connection, run_sandbox
from joor_pipeline.storage.parquet import DamagedPartition, partition_rows, published_files, staged_files
from joor_pipeline.storage.publish import quarantine_dir
from joor_pipeline.warehouse import ANALYST_MODELS, database_path
from joor_pipeline_tests.raw_fixtures import land, parquet_path, partition_bytes, snap

DAY1 = "2026-03-02"
DAY2 = "2026-03-03"
#: The partitions of those dates of the one account there is without an accounts file (account|date).
P1, P2 = f"default|{DAY1}", f"default|{DAY2}"
ASSETS = [joor_raw_connections, joor_tables, joor_models]
BACKDATED = {"ops": {"joor_raw_connections": {"config": {"allow_backdated": True}}}}


def resources(sandbox, data_dir: Path, **joor) -> dict:
    return {
        "joor": JoorApiResource(base_url=sandbox.base_url, api_token=sandbox.config.api_token, page_size="20", **joor),
        "storage": DataDirResource(data_dir=str(data_dir)),
    }


def checks_of(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], bool]:
    return {(e.asset_key.to_user_string(), e.check_name): e.passed for e in result.get_asset_check_evaluations()}


def rules_of(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], dict]:
    """Each table rule's figures (with ``passed``), from its table's blocking_rules and warning_rules results."""
    return {
        (e.asset_key.to_user_string(), rule): value.value
        for e in result.get_asset_check_evaluations()
        if e.check_name in ("blocking_rules", "warning_rules")
        for rule, value in e.metadata.items()
        if isinstance(value.value, dict) and "passed" in value.value
    }


def passed_rules(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], bool]:
    return {key: figures["passed"] for key, figures in rules_of(result).items()}


def warehouse(data_dir: Path, sql: str) -> list[tuple]:
    with duckdb.connect(str(database_path(data_dir)), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_definitions_load_every_asset_check_schedule_and_resource() -> None:
    defs = build_defs({})
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    # Every check is tied to the daily partitions, so its history shows one result per date.
    assert {spec.partitions_def for spec in joor_tables.check_specs} == {joor_tables.partitions_def}
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    models = {key.to_user_string() for key in joor_models.keys}
    assert keys == {"joor_raw_connections", *TABLES, *models}
    assert set(ANALYST_MODELS) <= models
    assert {f"staging/stg_{table}" for table in TABLES} <= models
    # the dbt tests are asset checks of the models they test
    dbt_checks = {key for key in graph.asset_check_keys if key.asset_key in joor_models.keys}
    # retailers are unique within an account: the unique_combination test on (account, customer_account_id)
    assert any(
        key.asset_key.to_user_string() == "dim_retailers" and key.name.startswith("unique_combination_dim_retailers")
        for key in dbt_checks
    )
    # Each table has two checks, its blocking rules and its warnings, every rule of quality.CHECKS in one of them
    table_checks = {key for key in graph.asset_check_keys if key.asset_key not in joor_models.keys} - set(
        FRESHNESS_CHECK_KEYS
    )
    assert {key.name for key in table_checks} == {"blocking_rules", "warning_rules"}
    assert len(table_checks) == 2 * len(TABLES)
    [blocking] = [
        s for s in joor_tables.check_specs if s.asset_key.path == ["addresses"] and s.name == "blocking_rules"
    ]
    assert blocking.blocking and "state_for_us_ca_jp_au" in (blocking.description or "")
    # + each table's freshness check (unpartitioned: freshness is of the present, evaluated by its sensor), never
    # in a run
    fresh = set(FRESHNESS_CHECK_KEYS)
    assert fresh <= set(graph.asset_check_keys) and len(fresh) == len(TABLES)
    for job in ("joor_daily", "joor_warehouse"):
        assert not fresh & set(defs.resolve_job_def(job).asset_layer.asset_graph.asset_check_keys), job
    assert {s.name for s in defs.sensors or []} == {
        "joor_models_after_landing",
        "joor_run_failure_alerts",
        "joor_check_warning_alerts",
        "joor_freshness",
    }
    # lineage reads end to end: each staging model reads its table asset
    assert graph.get(dg.AssetKey(["staging", "stg_connections"])).parent_keys == {dg.AssetKey("connections")}
    # The landing job lands one account's day; the models are built by their own job, once per batch.
    assert defs.resolve_job_def("joor_daily").asset_layer.executable_asset_keys == {
        dg.AssetKey(RAW_ASSET),
        *joor_tables.keys,
    }
    assert defs.resolve_job_def("joor_warehouse").asset_layer.executable_asset_keys == set(joor_models.keys)
    assert defs.resolve_schedule_def("joor_daily_schedule").cron_schedule == "0 6 * * *"
    assert defs.resolve_sensor_def("joor_models_after_landing").job_name == "joor_warehouse"
    assert set(defs.resources or {}) == {"joor", "storage"}
    # One process talks to JOOR and one writes joor.duckdb at a time (limits in dagster_home.example).
    assert joor_raw_connections.op.pool is None  # one run per account at a time: run-tag concurrency instead
    assert joor_models.op.pool == "duckdb"


def test_with_nothing_configured_the_ui_says_what_is_missing() -> None:
    """The code location loads with no JOOR configured; the fetch asset says what to set, where the UI shows it."""
    fetch = build_defs({}).resolve_asset_graph().get(dg.AssetKey(RAW_ASSET))
    assert fetch.description is not None and fetch.description.startswith("NOT CONFIGURED, runs will fail: ")
    assert NOT_CONFIGURED in fetch.description
    assert fetch.metadata["configuration_problem"] == NOT_CONFIGURED
    secret_url = {"JOOR_API_TOKEN": "t", "JOOR_BASE_URL": "http://me:hunter2@h", "JOOR_TIMEOUT": "nan"}
    flagged = build_defs(secret_url).resolve_asset_graph().get(dg.AssetKey(RAW_ASSET))
    assert "JOOR_TIMEOUT" in flagged.description and "hunter2" not in repr(flagged.metadata) + flagged.description
    configured = build_defs({"JOOR_API_TOKEN": "t"}).resolve_asset_graph().get(dg.AssetKey(RAW_ASSET))
    assert "configuration_problem" not in configured.metadata
    assert configured.description == joor_raw_connections.specs_by_key[dg.AssetKey(RAW_ASSET)].description


def test_a_run_with_nothing_configured_fails_at_the_fetch_with_the_same_line(tmp_path: Path) -> None:
    today = datetime.now(UTC).date()
    batch = run_batch([("default", today)], {"JOOR_DATA_DIR": str(tmp_path / "data")})
    [summary] = batch.runs  # nothing published: no model build
    assert not summary.success
    assert summary.failure == f"{RAW_ASSET}: {NOT_CONFIGURED}"
    assert summary.rows == {}
    assert not (tmp_path / "data" / "raw").exists()


def _stored_text(home: Path) -> str:
    """Everything the instance stored, SQLite rows and zlib-compressed snapshots decoded."""
    texts = []
    for path in home.rglob("*"):
        if not path.is_file():
            continue
        if path.suffix == ".db":
            with closing(sqlite3.connect(path)) as con:
                tables = [t for (t,) in con.execute("select name from sqlite_master where type = 'table'")]
                for table in tables:
                    for row in con.execute(f'select * from "{table}"'):
                        for value in row:
                            if isinstance(value, bytes):
                                with suppress(zlib.error):
                                    value = zlib.decompress(value)
                                value = value.decode("utf-8", "replace")
                            texts.append(str(value))
        else:
            texts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(texts)


def test_run_graph_leaves_os_environ_alone_and_stores_no_secret(tmp_path: Path) -> None:
    token = "tok-4f1c9e-never-stored"
    before = dict(os.environ)
    home = tmp_path / "home"
    with run_sandbox(connections=15, rate_limit_credits=0, api_token=token) as sb:
        environ = {
            "DAGSTER_HOME": str(home),
            "JOOR_BASE_URL": sb.base_url,
            "JOOR_API_TOKEN": token,
            "JOOR_DATA_DIR": str(tmp_path / "data"),
            "JOOR_PAGE_SIZE": "5",
        }
        batch = run_batch([("default", date.fromisoformat(DAY1))], environ, allow_backdated=True)
        assert sb.stats.requests >= 3  # the token was used: three pages fetched with it
    assert batch.success, batch.failed
    assert batch.runs[0].rows["connections"] == 15
    assert batch.runs[0].tags["dagster/partition"] == P1 and batch.runs[0].tags["joor/batch"]
    assert dict(os.environ) == before
    stored = _stored_text(home)
    assert DAY1 in stored and "joor_raw_connections" in stored  # the run is there...
    assert token not in stored  # ...its secret is not
    assert token not in "".join(p.read_text("utf-8", "replace") for p in (tmp_path / "data").rglob("*.json"))


def test_two_first_runs_create_one_dagster_home_without_racing(tmp_path: Path) -> None:
    """Processes opening one fresh DAGSTER_HOME at once: each waits for the one creating its storage."""
    home = tmp_path / "fresh"
    script = (
        "import sys; from joor_pipeline.assets.instance import open_instance\n"
        "with open_instance({'DAGSTER_HOME': sys.argv[1]}) as instance: print(len(instance.get_runs()))"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", script, str(home)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    results = [(p.wait(timeout=300), *p.communicate()) for p in processes]
    for code, out, err in results:
        assert code == 0, err.decode()[-2000:]
        assert out.strip() == b"0"
    assert (home / "dagster.yaml").is_file()


def test_a_dagster_home_held_too_long_is_one_clear_error(tmp_path: Path) -> None:
    home = tmp_path / "busy"
    home.mkdir()
    with open(home / ".joor-pipeline-instance.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(InstanceBusy, match=f"DAGSTER_HOME {home} is being set up by another process"):
            open_instance({"DAGSTER_HOME": str(home)}, wait=0.3)
    with open_instance({"DAGSTER_HOME": str(home)}, wait=0.3) as instance:
        assert instance.get_runs() == []


def test_workspace_loads_with_the_dagster_cli(tmp_path: Path) -> None:
    """What `dagster dev -w workspace.yaml` loads: every asset, check, schedule and resource, without error."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "DAGSTER_HOME": str(tmp_path), "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "All code locations passed validation" in done.stderr + done.stdout


def test_resources_use_envvar_only_for_variables_that_are_set() -> None:
    res = resources_from_env({"JOOR_API_TOKEN": "tok-123", "JOOR_DATA_DIR": "some/dir", "JOOR_MAX_PAGES": "5"})
    joor = res["joor"]
    assert isinstance(joor.api_token, dg.EnvVar) and joor.api_token == "JOOR_API_TOKEN"
    assert isinstance(joor.max_pages, dg.EnvVar) and joor.max_pages == "JOOR_MAX_PAGES"
    assert joor.password is None
    assert isinstance(res["storage"].data_dir, dg.EnvVar) and res["storage"].flatten_workers is None
    assert "tok-123" not in repr(res)


def test_full_graph_for_two_partitions(tmp_path: Path) -> None:
    with run_sandbox(connections=40, seed=21, rate_limit_credits=0) as sb:
        first = dg.materialize(ASSETS, partition_key=P1, resources=resources(sb, tmp_path), run_config=BACKDATED)
        assert first.success
        # Between the snapshots: one retailer changes its alias, five leave, JBNY's door moves.
        changed = sb.connections[3]
        changed["customer_alias"] = "Renamed Boutique"
        gone = [str(c["customer_account_id"]) for c in sb.connections[-5:]]
        del sb.connections[-5:]
        second = dg.materialize(ASSETS, partition_key=P2, resources=resources(sb, tmp_path), run_config=BACKDATED)
        assert second.success

    for day in (DAY1, DAY2):
        for table in TABLES:
            assert parquet_path(tmp_path, table, date.fromisoformat(day)).is_file()
    raw = second.asset_materializations_for_node("joor_raw_connections")[0].metadata
    assert raw["connections"].value == 35
    assert raw["pages"].value == 2
    assert raw["joor_log_ids"].value["count"] == 2
    tables = {
        m.asset_key.to_user_string(): m.metadata
        for m in second.get_asset_materialization_events()
        and [e.event_specific_data.materialization for e in second.get_asset_materialization_events()]
    }
    assert tables["connections"]["dagster/row_count"].value == 35
    assert "customer_code" in tables["connections"]["preview"].value
    assert [c.name for c in tables["addresses"]["dagster/column_schema"].value.columns[:2]] == [
        "account",
        "snapshot_date",
    ]

    failed = {key for key, passed in passed_rules(second).items() if not passed}
    assert failed <= {("doors", "door_addresses_known"), ("connections", "row_count_steady")}
    assert passed_rules(second)[("connections", "reconciles_with_raw")]
    assert all(checks_of(second)[(table, "blocking_rules")] for table in TABLES)

    assert warehouse(tmp_path, "select count(*) from dim_retailers") == [(35,)]
    history = warehouse(
        tmp_path,
        "select customer_account_id::varchar, valid_from::varchar, valid_to::varchar, is_current "
        "from retailer_history order by 1, 2",
    )
    assert len(history) == 41
    closed = {row[0] for row in history if row[2] == DAY2 and not row[3]}
    assert closed == set(gone) | {str(changed["customer_account_id"])}
    versions = [row for row in history if row[0] == str(changed["customer_account_id"])]
    assert [(v[1], v[2], v[3]) for v in versions] == [(DAY1, DAY2, False), (DAY2, None, True)]


def test_past_partition_without_raw_snapshot_is_refused(tmp_path: Path) -> None:
    with run_sandbox(connections=5, rate_limit_credits=0) as sb:
        result = dg.materialize(
            [joor_raw_connections], partition_key=P1, resources=resources(sb, tmp_path), raise_on_error=False
        )
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data
    assert "JOOR serves only the current state" in failure.description
    assert not (tmp_path / "raw").exists()


def test_a_kept_snapshot_is_reused_today_too_unless_refetch(tmp_path: Path) -> None:
    """A second run of today spends no credits (issue 17); ``refetch: true`` fetches again; a past date's kept
    snapshot is reused as before. The fetch's metadata carries JOOR's rate-limit headers and total."""
    today = f"default|{datetime.now(UTC).date().isoformat()}"
    refetch = {"ops": {"joor_raw_connections": {"config": {"refetch": True}}}}

    def fetch(partition: str, **kwargs) -> dict:
        result = dg.materialize(
            [joor_raw_connections], partition_key=partition, resources=resources(sb, tmp_path), **kwargs
        )
        return result.asset_materializations_for_node("joor_raw_connections")[0].metadata

    with run_sandbox(connections=5, rate_limit_credits=300, rate_limit_header_prefix="X-RateLimit") as sb:
        first = fetch(today)
        assert first["reused_existing_snapshot"].value is False
        assert first["joor_reported_total"].value == 5
        assert set(first["rate_limit_headers"].value) == {
            "X-RateLimit-Limit",
            "X-RateLimit-Remaining",
            "X-RateLimit-Reset",
        }
        requests = sb.stats.requests
        assert fetch(today)["reused_existing_snapshot"].value is True
        assert sb.stats.requests == requests
        assert fetch(today, run_config=refetch)["reused_existing_snapshot"].value is False
        assert sb.stats.requests == requests + 1
        land(tmp_path, date.fromisoformat(DAY1), [load_seed_connection()])
        kept = fetch(P1)
        assert sb.stats.requests == requests + 1
    assert kept["reused_existing_snapshot"].value is True
    assert kept["connections"].value == 1


def _bad_connections() -> list[dict]:
    seed = load_seed_connection()
    us_without_state = copy.deepcopy(seed)
    us_without_state["customer_account_id"] = 777
    us_without_state["customer_code"] = "NOSTATE"
    us_without_state["billing"]["billing_addresses"][0]["billing_state"] = ""
    no_door_name = copy.deepcopy(seed)
    no_door_name["customer_account_id"] = 778
    no_door_name["customer_code"] = "NODOORNAME"
    no_door_name["doors"][0]["door_name"] = ""
    no_door_name["surprise_field"] = "new in JOOR"
    return [seed, us_without_state, no_door_name]


def test_blocking_checks_fail_on_bad_data_and_keep_models_from_running(tmp_path: Path) -> None:
    day = date.fromisoformat(DAY1)
    storage = DataDirResource(data_dir=str(tmp_path))
    land(tmp_path, day, [load_seed_connection()])
    good = dg.materialize(ASSETS, partition_key=P1, resources={"joor": JoorApiResource(), "storage": storage})
    assert good.success
    good_rules = passed_rules(good)
    assert len(good_rules) == 7 * len(TABLES) + 2  # every rule of quality.CHECKS, each in its table's checks
    assert all(passed for (asset, rule), passed in good_rules.items() if rule != "door_addresses_known")
    assert not good_rules[("doors", "door_addresses_known")]  # the seed's door points at address 214920
    assert not checks_of(good)[("doors", "warning_rules")]

    published = partition_bytes(tmp_path, day)
    database = database_path(tmp_path).read_bytes()
    land(tmp_path, day, _bad_connections())
    bad = dg.materialize(
        ASSETS, partition_key=P1, resources={"joor": JoorApiResource(), "storage": storage}, raise_on_error=False
    )
    # Write, audit, publish: the checks ran on the staged tables, and failing, published nothing.
    assert not bad.success
    failure = bad.get_step_failure_events()[0].step_failure_data.user_failure_data.description
    assert "addresses.state_for_us_ca_jp_au (1 records, e.g. customer_account_id 777 (NOSTATE)" in failure
    assert "doors.required_fields_present" in failure and "Nothing was published" in failure
    assert partition_bytes(tmp_path, day) == published
    assert database_path(tmp_path).read_bytes() == database
    kept = quarantine_dir(tmp_path, snap(day))
    assert str(kept) in failure
    assert partition_rows(staged_files(kept / "parquet", "connections", snap(day))) == 3
    assert not {e.asset_key.to_user_string() for e in bad.get_asset_materialization_events()} & set(TABLES)
    rules = passed_rules(bad)
    assert rules[("addresses", "state_for_us_ca_jp_au")] is False
    assert rules[("doors", "required_fields_present")] is False
    assert rules[("connections", "no_unknown_fields")] is False
    assert rules[("connections", "unique_keys")] is True
    evaluation = next(
        e
        for e in bad.get_asset_check_evaluations()
        if e.check_name == "blocking_rules" and e.asset_key.to_user_string() == "addresses"
    )
    assert evaluation.severity == dg.AssetCheckSeverity.ERROR and not evaluation.passed
    assert evaluation.metadata["failed_rules"].value == ["state_for_us_ca_jp_au (1 records)"]
    assert evaluation.metadata["state_for_us_ca_jp_au"].value["sample"][0]["customer_code"] == "NOSTATE"
    materialized = {e.asset_key.to_user_string() for e in bad.get_asset_materialization_events()}
    assert "dim_retailers" not in materialized  # blocked by the failed ERROR checks
    assert warehouse(tmp_path, "select customer_code from dim_retailers") == [("JBNY",)]
    assert all(e.partition == P1 for e in bad.get_asset_check_evaluations())

    # The next successful run of that date publishes it and clears the quarantine.
    land(tmp_path, day, [load_seed_connection()])
    assert dg.materialize(ASSETS, partition_key=P1, resources={"joor": JoorApiResource(), "storage": storage}).success
    assert not kept.exists()


def test_reconciliation_notices_a_lost_row(tmp_path: Path) -> None:
    day = date.fromisoformat(DAY1)
    land(tmp_path, day, _bad_connections())
    flatten_snapshot(tmp_path, snap(day))
    files = {table: published_files(tmp_path, table, snap(day)) for table in TABLES}
    assert raw_counts(tmp_path, snap(day)) == parquet_counts(files)
    path = parquet_path(tmp_path, "buyers", day)
    table = pq.read_table(path)
    pq.write_table(table.slice(1), path)
    assert raw_counts(tmp_path, snap(day))["buyers"] == parquet_counts(files)["buyers"] + 1
    # Readers of the published partition notice the rewritten file too: it no longer matches its manifest.
    with pytest.raises(
        DamagedPartition, match=r"buyers/account=default/snapshot_date=2026-03-02/part-00000-\w+\.parquet is damaged"
    ):
        published_files(tmp_path, "buyers", snap(day))


def test_cli_run_records_in_dagster_home(tmp_path: Path, monkeypatch, capsys) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    # The one-machine (SQLite) example, as `make ui` uses it; the Postgres one has its own deployment test.
    shutil.copy(
        Path(__file__).resolve().parents[1] / "dagster_home.example" / "dagster.sqlite.yaml", home / "dagster.yaml"
    )
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with run_sandbox(connections=30, rate_limit_credits=0) as sb:
        monkeypatch.setenv("JOOR_BASE_URL", sb.base_url)
        monkeypatch.setenv("JOOR_API_TOKEN", sb.config.api_token)
        code = main(["run", "--date", DAY1, "--data-dir", str(tmp_path / "data"), "--allow-backdated"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert re.search(r"^  connections +30 rows$", out, re.MULTILINE), out
    with dg.DagsterInstance.from_config(str(home)) as instance:
        landing, models = sorted(instance.get_runs(), key=lambda run: run.job_name)
        assert landing.job_name == "joor_daily" and landing.tags.get("dagster/partition/date") == DAY1
        assert landing.tags.get("dagster/partition/account") == "default"
        assert models.job_name == "joor_warehouse" and "dagster/partition" not in models.tags
        assert landing.tags["joor/batch"] == models.tags["joor/batch"]  # one batch: landed, then built once
    with run_sandbox(connections=30, rate_limit_credits=0) as sb:
        monkeypatch.setenv("JOOR_BASE_URL", sb.base_url)
        monkeypatch.setenv("JOOR_API_TOKEN", sb.config.api_token)
        # --refetch reaches the fetch asset: the kept snapshot is fetched again, not reused (JOOR failing now, the
        # run stops at the fetch, and the kept snapshot stays).
        sb.faults.error_code = 17
        args = ["run", "--date", DAY1, "--data-dir", str(tmp_path / "data"), "--allow-backdated", "--refetch"]
        assert main(args) == 1
        assert sb.stats.requests == 1
        assert "response.code 17" in capsys.readouterr().err


def _row_blocks(out: str) -> list[list[str]]:
    """The summary's row lines ("  <asset>  <rows> rows"), one list per run."""
    blocks: list[list[str]] = [[]]
    for line in out.splitlines():
        if re.fullmatch(r"  \S+ +\d+ rows", line):
            blocks[-1].append(line)
        elif blocks[-1]:
            blocks.append([])
    return [block for block in blocks if block]


def test_cli_demo_end_to_end(tmp_path: Path, monkeypatch, capsys) -> None:
    home = tmp_path / "not" / "made" / "yet"  # a first run creates its DAGSTER_HOME
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("JOOR_API_TOKEN", "a-real-looking-token")  # demo ignores configured credentials
    monkeypatch.setenv("JOOR_SANDBOX_CONNECTIONS", "60")
    assert main(["demo", "--data-dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "on the built-in JOOR sandbox (synthetic retailers)" in out and str(home) in out
    assert re.search(r"^  connections +60 rows$", out, re.MULTILINE), out
    assert "checks: " in out and "make ui" in out
    assert warehouse(tmp_path, "select count(*) from dim_retailers") == [(60,)]
    # Each line once: the library's lines come through the run's log only, not also through Python's logging.
    everything = out + captured.err
    assert everything.count("using the built-in sandbox at") == 1, captured.err
    assert everything.count("partition(s)") == 1, captured.err
    # The summary's columns stay aligned, long model names too.
    blocks = _row_blocks(out)
    assert len(blocks) == 2 and any("staging/int_retailer_fingerprints" in line for line in blocks[1])
    assert all(len({len(line) for line in block}) == 1 for block in blocks), blocks
    # Recorded in DAGSTER_HOME (the one `make ui` opens), every run and asset saying its data is synthetic.
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        assert sorted(run.job_name for run in runs) == ["joor_daily", "joor_warehouse"]
        assert all(run.tags.get("joor/synthetic") == "true" for run in runs)
        for key in (RAW_ASSET, "connections", "dim_retailers"):
            event = instance.get_latest_materialization_event(dg.AssetKey.from_user_string(key))
            assert event is not None and event.asset_materialization is not None
            assert event.asset_materialization.metadata["synthetic"].value is True, key


def test_warning_checks_flag_but_do_not_block(tmp_path: Path) -> None:
    """Max lengths and a sharp drop in rows are warnings: flagged, and the models still build."""
    from joor_pipeline.sandbox import generate_connections

    storage = DataDirResource(data_dir=str(tmp_path))
    res = {"joor": JoorApiResource(), "storage": storage}
    land(tmp_path, date.fromisoformat(DAY1), generate_connections(100, seed=4))
    first = dg.materialize(ASSETS, partition_key=P1, resources=res)
    assert passed_rules(first)[("connections", "row_count_steady")]  # no previous snapshot to compare with

    shrunk = generate_connections(30, seed=4)
    shrunk[1]["customer_code"] = "X" * 51  # JOOR's field table: at most 50
    land(tmp_path, date.fromisoformat(DAY2), shrunk)
    second = dg.materialize(ASSETS, partition_key=P2, resources=res)
    assert second.success
    rules = rules_of(second)
    assert rules[("connections", "row_count_steady")]["passed"] is False
    assert rules[("connections", "max_lengths")]["passed"] is False
    evaluations = {e.check_name: e for e in second.get_asset_check_evaluations() if e.asset_key.path == ["connections"]}
    assert evaluations["warning_rules"].severity == dg.AssetCheckSeverity.WARN
    assert not evaluations["warning_rules"].passed and evaluations["blocking_rules"].passed
    assert rules[("connections", "row_count_steady")]["previous_rows"] == 100
    assert warehouse(tmp_path, "select count(*) from dim_retailers") == [(30,)]

"""The README's *Running in production*, followed step by step on a fresh checkout and run for real: the install,
PostgreSQL, dagster_home.example/dagster.yaml, check, the daemon and the webserver as separate processes, the pool;
a backfill of 2 accounts x 2 dates launched through GraphQL, its runs, checks, per-account run concurrency, the
models built once after it by the sensor; and a joor-pipeline run recorded in the same instance."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import duckdb
import httpx
import psycopg2
import pytest

from joor_pipeline.alerts import ALERT_TAG, IN_PROCESS
from joor_pipeline.assets.automation import SENSOR_NAME
from joor_pipeline.assets.joor import RAW_ASSET, joor_tables
from joor_pipeline.assets.models import DUCKDB_POOL, joor_models
from joor_pipeline.assets.partitions import ACCOUNT_TAG
from joor_pipeline.config import load_account
from joor_pipeline.definitions import JOB_NAME, MODELS_JOB_NAME
from joor_pipeline.pipeline import connect, fetch_snapshot
from joor_pipeline.sandbox import Faults, Sandbox, run_sandbox
from joor_pipeline_tests.deployment import (
    DeploymentError,
    GraphQL,
    PostgresServer,
    ServiceProcess,
    exported,
    follow,
    free_port,
    log_tail,
    operator_environment,
    running_postgres,
    service,
    uv_dir,
    wait_for,
)
from joor_pipeline_tests.raw_fixtures import snap
from joor_pipeline_tests.readme import blocks, fresh_checkout, operator_step, replaced

pytestmark = pytest.mark.deployment

REPO: Final = Path(__file__).resolve().parent.parent
EXAMPLE_CONFIG: Final = REPO / "dagster_home.example" / "dagster.yaml"

#: The database and role an operator creates, exactly as the README says (the password is the test's own).
DB_NAME: Final = "dagster"
DB_USER: Final = "dagster"

#: Bounds on every wait, so a hung part fails the test instead of hanging it (generous: on a busy 2-core
#: machine the backfill took 150 s).
STARTUP_TIMEOUT: Final = 180.0
BACKFILL_TIMEOUT: Final = 420.0

#: Sandbox latency per request once the deployment runs: today's fetch (7 pages, one at a time) takes seconds.
FETCH_LATENCY_MS: Final = 400
#: One process per run (a choice any operator can make in the launchpad): the pools bind steps the same way,
#: and on a small shared machine it saves a process start per step.
RUN_CONFIG: Final = {"execution": {"config": {"in_process": {}}}}


def backfill_config(today: date) -> dict[str, Any]:
    """The backfill's run config: in process, and today named in ``backdated_dates``, so that a test crossing
    midnight UTC still fetches it (today's snapshot is not landed beforehand: it would be reused, not fetched)."""
    fetch = {"joor_raw_connections": {"config": {"backdated_dates": [today.isoformat()]}}}
    return {**RUN_CONFIG, "ops": fetch}


FETCH_STEP: Final = RAW_ASSET
MODELS_STEP: Final = "joor_models"
TERMINAL_BACKFILL: Final = {"COMPLETED_SUCCESS", "COMPLETED_FAILED", "COMPLETED", "FAILED", "CANCELED"}
TERMINAL_RUN: Final = {"SUCCESS", "FAILURE", "CANCELED"}

WORKSPACE_QUERY: Final = """
query {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on RepositoryLocation { repositories { name partitionSets { name pipelineName } } }
          ... on PythonError { message }
        }
      }
    }
  }
}
"""

LAUNCH_BACKFILL: Final = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}
"""

BACKFILL_QUERY: Final = """
query Backfill($id: String!, $tags: [ExecutionTag!]) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status partitionNames }
    ... on Error { message }
  }
  runsOrError(filter: {tags: $tags}) {
    __typename
    ... on Runs {
      results {
        runId
        status
        startTime
        endTime
        tags { key value }
        stepStats { stepKey status startTime endTime }
      }
    }
    ... on Error { message }
  }
}
"""

MODEL_RUNS_QUERY: Final = """
query ModelRuns($job: String!) {
  runsOrError(filter: {pipelineName: $job}) {
    __typename
    ... on Runs {
      results { runId status startTime endTime tags { key value } stepStats { stepKey status startTime endTime } }
    }
    ... on Error { message }
  }
}
"""

POOLS_QUERY: Final = """
query Pool($key: String!) {
  instance { concurrencyLimit(concurrencyKey: $key) { limit slotCount usingDefaultLimit } }
}
"""


@dataclass(frozen=True)
class Deployment:
    """What the test started: the database, the GraphQL endpoint and the logs to show when something fails."""

    postgres: PostgresServer
    password: str
    graphql: GraphQL
    sandboxes: dict[str, Sandbox]
    data_dir: Path
    logs: tuple[Path, ...]
    location: str = ""
    repository: str = ""
    start_daemon: Callable[[], ServiceProcess] | None = None
    #: The fresh checkout the README was followed in, and the environment of its steps (DAGSTER_*, JOOR_*).
    checkout: Path = Path()
    environment: dict[str, str] | None = None

    def tails(self) -> str:
        return "\n".join(log_tail(path) for path in self.logs)

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows from Dagster's own database, read as the operator's role over TCP."""
        connection = psycopg2.connect(
            host=self.postgres.host,
            port=self.postgres.port,
            user=DB_USER,
            password=self.password,
            dbname=DB_NAME,
            connect_timeout=10,
        )
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return list(cursor.fetchall())
        finally:
            connection.close()


def backfill_dates() -> list[date]:
    """Yesterday and today (UTC): a past date whose snapshot the schedule landed, and the current one."""
    today = datetime.now(UTC).date()
    return [today - timedelta(days=1), today]


#: The two JOOR accounts of the deployment, each served by a sandbox of its own (own token, data and budget).
ACCOUNTS: Final = ("brand_a", "brand_b")


def partition_keys(dates: list[date]) -> list[str]:
    """The job's partition keys, account x date (Dagster spells them ``account|date``)."""
    return [f"{account}|{d.isoformat()}" for account in ACCOUNTS for d in dates]


def joor_environment(sandboxes: dict[str, Sandbox], data_dir: Path) -> dict[str, str]:
    """The JOOR_* variables of the daemon, the webserver and the runs: an accounts file naming each account's
    sandbox on loopback, and the variables holding their tokens."""
    tables = []
    for account, sandbox in sandboxes.items():
        # One page at a time, so a fetch lasts long enough that two runs of one account would overlap without
        # the run-tag limit.
        tables.append(
            f'[accounts.{account}]\nenvironment = "sandbox"\nbase_url = "{sandbox.base_url}"\n'
            f'api_token_env = "{account.upper()}_JOOR_TOKEN"\npage_size = 20\nconcurrency = 1\ntimeout = 10\n'
        )
    accounts_file = data_dir.parent / "joor-accounts.toml"
    accounts_file.write_text("\n".join(tables), encoding="utf-8")
    return {
        "JOOR_ACCOUNTS_FILE": str(accounts_file),
        **{f"{account.upper()}_JOOR_TOKEN": sandbox.config.api_token for account, sandbox in sandboxes.items()},
        "JOOR_DATA_DIR": str(data_dir),
        "JOOR_FLATTEN_WORKERS": "1",
    }


def land_snapshot(joor_env: dict[str, str], account: str, snapshot_date: date) -> None:
    """Land a raw snapshot with the project's own fetch, as the daily schedule did on that day.

    JOOR serves only the current state, so a backfill of a past date re-flattens the snapshot kept from that day;
    landing it beforehand is what makes the past date of the backfill legitimate, with no ``allow_backdated``.
    Today's is not landed: a kept snapshot is reused, and today's runs must fetch (see :func:`backfill_config`).
    """
    settings = load_account(joor_env, account)
    assert not settings.builtin_sandbox, "the deployment must talk to the sandbox it was given, not the built-in one"
    with connect(settings) as client:
        fetch_snapshot(client, settings.data_dir, snap(snapshot_date, account))


def _base_environment(extra: dict[str, str]) -> dict[str, str]:
    """Our own environment without any JOOR_* or DAGSTER_* variable of the machine, plus ``extra``."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("JOOR_", "DAGSTER_"))}
    inherited = {k: v for k, v in inherited.items() if not k.endswith("_JOOR_TOKEN")}
    return {**inherited, **extra}


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    """The README's operator steps on a fresh checkout, on 127.0.0.1: install, PostgreSQL's role and database,
    DAGSTER_HOME, check, the webserver (the daemon on request), the pool's limit; all stopped after.

    Each step runs the README's own block (``<!-- operator: STEP -->``), with only its placeholders replaced.
    Steps 4 (the JOOR_* variables) and 7 (run config in the UI) are prose and YAML: the JOOR_* variables name an
    accounts file of two sandboxes standing in for JOOR, and the backfill takes the run config through GraphQL.
    """
    password = secrets.token_urlsafe(18)
    dagster_home = tmp_path / "dagster_home"
    data_dir = tmp_path / "data"
    logs = (tmp_path / "webserver.log", tmp_path / "daemon.log")
    checkout = fresh_checkout(tmp_path / "joor-pipeline")
    readme = blocks(checkout / "README.md")
    shell = operator_environment(_base_environment({}), uv_dir(tmp_path / "uv"))

    # 1. Install, as the README says, into the checkout's own .venv (uv's cache makes it seconds).
    follow("install", operator_step("install", readme).text, shell, checkout)
    assert (checkout / ".venv" / "bin" / "dagster-webserver").is_file()

    with contextlib.ExitStack() as stack:
        postgres = stack.enter_context(running_postgres())
        sandboxes = {
            account: stack.enter_context(
                run_sandbox(connections=120 - 20 * n, seed=11 + n, rate_limit_credits=0, api_token=f"token-{account}")
            )
            for n, account in enumerate(ACCOUNTS)
        }
        # 2. The role and the database, as the superuser.
        database = replaced(operator_step("database", readme), {"'choose-a-password'": f"'{password}'"})
        postgres.sql(*(statement.strip() for statement in database.split(";") if statement.strip()))
        # 3. DAGSTER_HOME and the database's variables, exported for the next steps.
        home = replaced(
            operator_step("home", readme),
            {
                "/srv/joor/dagster_home": str(dagster_home),
                "db.internal": postgres.host,
                "DAGSTER_PG_PORT=5432": f"DAGSTER_PG_PORT={postgres.port}",
                "DAGSTER_PG_PASSWORD=...": f"DAGSTER_PG_PASSWORD={password}",
            },
        )
        dagster_env = exported("home", home, shell, checkout)
        assert (dagster_home / "dagster.yaml").read_bytes() == EXAMPLE_CONFIG.read_bytes()
        assert dagster_env["DAGSTER_HOME"] == str(dagster_home) and dagster_env["DAGSTER_PG_USER"] == DB_USER
        # 4. The JOOR_* variables, then the connection test of every account.
        data_dir.mkdir()
        joor_env = joor_environment(sandboxes, data_dir)
        env = {**shell, **dagster_env, **joor_env}
        checked = follow("check", operator_step("check", readme).text, env, checkout)
        assert all(f"account {account}: ok" in checked for account in ACCOUNTS), checked
        for account in ACCOUNTS:
            land_snapshot(joor_env, account, backfill_dates()[0])
        # From here on each page takes a while, so a fetch step lasts long enough to collide with another run's.
        for sandbox in sandboxes.values():
            sandbox.faults = Faults(latency_ms=FETCH_LATENCY_MS)

        # 5. The two services, each line of the README's block (the webserver on 127.0.0.1 and a free port).
        web_port = free_port()
        services = replaced(operator_step("services", readme), {"-h 0.0.0.0 -p 3000": f"-h 127.0.0.1 -p {web_port}"})
        [daemon_line] = [line for line in services.splitlines() if "dagster-daemon run" in line]
        [webserver_line] = [line for line in services.splitlines() if "dagster-webserver" in line]
        graphql = GraphQL(f"http://127.0.0.1:{web_port}/graphql")
        webserver = stack.enter_context(
            service("dagster-webserver", ["bash", "-c", f"exec {webserver_line}"], env, checkout, logs[0])
        )
        deployed = Deployment(postgres, password, graphql, sandboxes, data_dir, logs)

        def start_daemon() -> ServiceProcess:
            return stack.enter_context(
                service("dagster-daemon", ["bash", "-c", f"exec {daemon_line}"], env, checkout, logs[1])
            )

        clock = time.monotonic()
        try:
            location, repository = wait_for(
                "the webserver to load the code location", lambda: _location_loaded(graphql, webserver),
                STARTUP_TIMEOUT,
            )  # fmt: skip
        except DeploymentError as exc:
            raise DeploymentError(f"{exc}\n{deployed.tails()}") from None
        print(f"webserver serving the code location {time.monotonic() - clock:.0f}s after start")
        # 6. The pool's limit, with the README's command. Explicit, as the README says: it also avoids
        # dagster-io/dagster#33552 (on Postgres, two runs that both initialise a pool from default_limit at the
        # same moment can fail one of them).
        follow("pool", operator_step("pool", readme).text, env, checkout)
        for sandbox in sandboxes.values():
            sandbox.reset_stats()
        yield replace(
            deployed,
            location=location,
            repository=repository,
            start_daemon=start_daemon,
            checkout=checkout,
            environment=env,
        )

    output = "\n".join(path.read_text(errors="replace") for path in logs if path.is_file())
    assert password not in output, "the Postgres password appeared in Dagster's output"
    for sandbox in sandboxes.values():
        assert sandbox.config.api_token not in output, "a JOOR token appeared in Dagster's output"


def _location_loaded(graphql: GraphQL, webserver: ServiceProcess) -> tuple[str, str] | None:
    """(location, repository) once the webserver has loaded the code location; None while it is still starting."""
    webserver.check_alive()
    try:
        data = graphql(WORKSPACE_QUERY)
    except (DeploymentError, httpx.TransportError):  # not listening yet, or still loading
        return None
    entries = data["workspaceOrError"].get("locationEntries") or []
    for entry in entries:
        location = entry.get("locationOrLoadError") or {}
        if location.get("__typename") == "PythonError":
            raise DeploymentError(f"the code location {entry['name']} failed to load: {location['message']}")
        for repository in location.get("repositories", []):
            return entry["name"], repository["name"]
    return None


def _launch_backfill(deployed: Deployment, keys: list[str], today: date) -> str:
    params = {
        "selector": {
            "partitionSetName": f"{JOB_NAME}_partition_set",
            "repositorySelector": {
                "repositoryLocationName": deployed.location,
                "repositoryName": deployed.repository,
            },
        },
        "partitionNames": keys,
        "runConfigData": backfill_config(today),
        "title": "deployment test",
    }
    result = deployed.graphql(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    assert result["__typename"] == "LaunchBackfillSuccess", f"the backfill was not launched: {result}"
    return str(result["backfillId"])


def _backfill_state(deployed: Deployment, backfill_id: str) -> dict[str, Any]:
    tags = [{"key": "dagster/backfill", "value": backfill_id}]
    data = deployed.graphql(BACKFILL_QUERY, {"id": backfill_id, "tags": tags})
    backfill = data["partitionBackfillOrError"]
    assert backfill["__typename"] == "PartitionBackfill", backfill
    runs = data["runsOrError"]
    assert runs["__typename"] == "Runs", runs
    return {"status": backfill["status"], "runs": runs["results"]}


def _overlaps(intervals: list[tuple[float, float]]) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Every pair of intervals that share some time."""
    return [(a, b) for a, b in itertools.combinations(intervals, 2) if a[0] < b[1] and b[0] < a[1]]


def test_backfill_through_graphql_on_a_postgres_instance(deployment: Deployment) -> None:
    dates = backfill_dates()
    keys = partition_keys(dates)
    started = time.monotonic()
    backfill_id = _launch_backfill(deployment, keys, dates[-1])
    # Started after the launch, the daemon finds the backfill on its first pass instead of 30 s later.
    assert deployment.start_daemon is not None
    daemon = deployment.start_daemon()

    def finished() -> dict[str, Any] | None:
        daemon.check_alive()
        state = _backfill_state(deployment, backfill_id)
        runs_done = len(state["runs"]) == len(keys) and all(r["status"] in TERMINAL_RUN for r in state["runs"])
        return state if runs_done and state["status"] in TERMINAL_BACKFILL else None

    try:
        state = wait_for(f"backfill {backfill_id} of {keys} to finish", finished, BACKFILL_TIMEOUT, interval=1.0)
    except DeploymentError as exc:
        raise DeploymentError(f"{exc}\n{_backfill_state(deployment, backfill_id)}\n{deployment.tails()}") from None
    runs = state["runs"]
    print(f"backfill {backfill_id}: {state['status']} {time.monotonic() - started:.0f}s after launch")

    # Every run succeeded, one per partition, and the daemon closed the backfill as a success.
    assert {r["status"] for r in runs} == {"SUCCESS"}, f"{runs}\n{deployment.tails()}"
    partitions = sorted(next(t["value"] for t in r["tags"] if t["key"] == "dagster/partition") for r in runs)
    assert partitions == sorted(keys)
    account_of = {r["runId"]: next(t["value"] for t in r["tags"] if t["key"] == ACCOUNT_TAG) for r in runs}
    assert sorted(account_of.values()) == sorted(ACCOUNTS * len(dates))
    assert state["status"] == "COMPLETED_SUCCESS"

    # The runs were recorded in Postgres, with their events.
    run_ids = [r["runId"] for r in runs]
    stored = deployment.query("select run_id, status from runs where run_id = any(%s)", run_ids)
    assert sorted(stored) == sorted((run_id, "SUCCESS") for run_id in run_ids)

    # Every table check ran in every run and its result was recorded in Postgres; the blocking ones passed. The
    # landing runs built no model: the models are built once, after the backfill, by the sensor (below).
    specs = list(joor_tables.check_specs)
    expected = {(spec.asset_key.path[-1], spec.name) for spec in specs}
    blocking = {(spec.asset_key.path[-1], spec.name) for spec in specs if spec.blocking}
    rows = deployment.query(
        "select run_id, asset_key, check_name, execution_status from asset_check_executions "
        "where run_id = any(%s) and execution_status in ('SUCCEEDED', 'FAILED')",
        run_ids,
    )
    for run_id in run_ids:
        results = {(json.loads(key)[-1], name): status for rid, key, name, status in rows if rid == run_id}
        assert set(results) == expected, f"run {run_id} recorded {len(results)} of {len(expected)} check results"
        assert {key for key in blocking if results[key] != "SUCCEEDED"} == set()
    assert all(not [s for s in r["stepStats"] if s["stepKey"] == MODELS_STEP] for r in runs)

    # One model build for the whole backfill: launched by the sensor once every run of it had ended, after the
    # last of them, and its dbt tests recorded as the models' checks.
    def built() -> dict[str, Any] | None:
        daemon.check_alive()
        found = deployment.graphql(MODEL_RUNS_QUERY, {"job": MODELS_JOB_NAME})["runsOrError"]["results"]
        return found[0] if len(found) == 1 and found[0]["status"] in TERMINAL_RUN else None

    try:
        build = wait_for("the sensor's model build after the backfill", built, BACKFILL_TIMEOUT, interval=1.0)
    except DeploymentError as exc:
        raise DeploymentError(f"{exc}\n{deployment.tails()}") from None
    assert build["status"] == "SUCCESS", f"{build}\n{deployment.tails()}"
    tags = {t["key"]: t["value"] for t in build["tags"]}
    assert tags.get("dagster/sensor_name") == SENSOR_NAME, tags
    assert float(build["startTime"]) >= max(float(r["endTime"]) for r in runs)
    [models_step] = [s for s in build["stepStats"] if s["stepKey"] == MODELS_STEP]
    assert models_step["status"] == "SUCCESS"
    dbt_checks = {spec.name for spec in joor_models.check_specs}
    recorded = deployment.query(
        "select check_name, execution_status from asset_check_executions where run_id = %s", build["runId"]
    )
    assert {name for name, status in recorded if status == "SUCCEEDED"} == dbt_checks
    assert len(deployment.graphql(MODEL_RUNS_QUERY, {"job": MODELS_JOB_NAME})["runsOrError"]["results"]) == 1

    # The run-tag limit (dagster/partition/account, applyLimitPerUniqueValue, limit 1) kept the runs of one
    # account apart, and let different accounts run side by side (max_concurrent_runs 4); the duckdb pool kept
    # the model builds of all runs apart.
    def interval(run: dict[str, Any]) -> tuple[float, float]:
        return float(run["startTime"]), float(run["endTime"])

    for account in ACCOUNTS:
        same = [interval(r) for r in runs if account_of[r["runId"]] == account]
        assert not _overlaps(same), f"runs of account {account} overlapped: {same}"
    across = [
        (a, b)
        for a, b in itertools.combinations(runs, 2)
        if account_of[a["runId"]] != account_of[b["runId"]] and _overlaps([interval(a), interval(b)])
    ]
    shown = [(account_of[r["runId"]], interval(r)) for r in runs]
    assert across, f"no runs of different accounts ran at the same time: {shown}"
    limit = deployment.graphql(POOLS_QUERY, {"key": DUCKDB_POOL})["instance"]["concurrencyLimit"]
    assert limit["slotCount"] == 1, (DUCKDB_POOL, limit)

    # Today's runs fetched from each account's own sandbox (yesterday's kept their snapshots), into JOOR_DATA_DIR;
    # the warehouse holds both accounts, each on both dates.
    for n, (account, sandbox) in enumerate(deployment.sandboxes.items()):
        assert sandbox.stats.requests >= (120 - 20 * n) // 20, (account, sandbox.stats)
    with duckdb.connect(str(deployment.data_dir / "joor.duckdb"), read_only=True) as con:
        snapshots = con.execute("select account, count(*) from staging.int_snapshots group by 1 order by 1").fetchall()
    assert snapshots == [(account, len(dates)) for account in ACCOUNTS]

    # 8. The README's last step: `joor-pipeline run` from the command line, in the same environment, recorded in
    # the same Postgres instance (today's snapshots are kept, so it re-flattens them, then builds the models).
    assert deployment.environment is not None
    step = operator_step("run", blocks(deployment.checkout / "README.md"))
    ran = follow("run", step.text, deployment.environment, deployment.checkout)
    cli_runs = deployment.query(
        "select r.status from runs r join run_tags t on t.run_id = r.run_id where t.key = %s and t.value = %s",
        ALERT_TAG,
        IN_PROCESS,
    )
    assert sorted(status for (status,) in cli_runs) == ["SUCCESS"] * (len(ACCOUNTS) + 1), (cli_runs, ran)

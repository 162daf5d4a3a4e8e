"""Several JOOR accounts: the accounts file, the account=<name> layout, the account column, the migration of the
single-account layout, the CLI's --account, and the account x date partitions."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import httpx
import pyarrow.parquet as pq
import pytest

from joor_pipeline.cli import main
from joor_pipeline.config import (
    SETTINGS,
    UnknownAccount,
    account_names,
    load_account,
    load_accounts,
)
from joor_pipeline.flatten import TABLES
from joor_pipeline.flatten.runner import flatten_snapshot
from joor_pipeline.joor.errors import ConfigError
from joor_pipeline.sandbox import SandboxConfig, generate_connections, run_sandbox
from joor_pipeline.storage.migrate import MigrationError, legacy_partitions, migrate_legacy_layout
from joor_pipeline.storage.parquet import published_dates, published_files, published_partitions
from joor_pipeline.storage.raw import read_raw_snapshot
from joor_pipeline.warehouse import build_warehouse, database_path, read
from joor_pipeline_tests.raw_fixtures import land, snap

DAY = date(2026, 3, 2)
NEXT_DAY = date(2026, 3, 3)
TODAY = datetime.now(UTC).date()
SECRET = "s3cr3t-value-never-shown"


def write_accounts(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "accounts.toml"
    path.write_text(text, encoding="utf-8")
    return path


# --- the accounts file ------------------------------------------------------------------------------------------


def test_without_a_file_the_joor_variables_are_the_default_account() -> None:
    env = {"JOOR_API_TOKEN": "t", "JOOR_PAGE_SIZE": "20"}
    accounts = load_accounts(env)
    assert list(accounts) == ["default"] and accounts["default"].page_size == 20
    assert accounts["default"].api_token is not None and accounts["default"].api_token.reveal() == "t"


def test_accounts_file_gives_each_account_its_settings_and_secrets_from_named_variables(tmp_path: Path) -> None:
    path = write_accounts(
        tmp_path,
        """
[accounts.brand_a]
api_token_env = "BRAND_A_TOKEN"
page_size = 50
environment = "sandbox"

[accounts.agency-2]
api_version = "v4"
account_id = "24180"
client_id = "cid"
client_secret_env = "AGENCY_SECRET"
username = "me"
password_env = "AGENCY_PASSWORD"
base_url = "http://127.0.0.1:9"
""",
    )
    env = {
        "JOOR_ACCOUNTS_FILE": str(path),
        "BRAND_A_TOKEN": "token-a",
        "AGENCY_SECRET": SECRET,
        "AGENCY_PASSWORD": "pw",
        "JOOR_API_TOKEN": "ignored: the file defines the accounts",
        "JOOR_DATA_DIR": str(tmp_path / "data"),
    }
    accounts = load_accounts(env)
    assert list(accounts) == ["brand_a", "agency-2"] == account_names(env)
    a, b = accounts["brand_a"], accounts["agency-2"]
    assert a.api_token is not None and a.api_token.reveal() == "token-a" and a.page_size == 50
    assert a.base_url == "https://apisandbox.jooraccess.com"
    assert b.api_version == "v4" and b.client_secret is not None and b.client_secret.reveal() == SECRET
    assert b.base_url == "http://127.0.0.1:9" and b.auth_url == "http://127.0.0.1:9/auth/"
    assert a.data_dir == b.data_dir == tmp_path / "data"  # per deployment, from the environment
    assert SECRET not in repr(accounts)
    with pytest.raises(UnknownAccount, match=r"unknown account 'nope'; configured: brand_a, agency-2"):
        load_account(env, "nope")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (f'[accounts.a]\napi_token = "{SECRET}"\n', r"\[accounts\.a\]: api_token holds a secret.*api_token_env"),
        (f'[accounts.a]\npassword = "{SECRET}"\n', r"\[accounts\.a\]: password holds a secret"),
        (
            '[accounts.a]\napi_token_env = "UNSET_VAR"\n',
            r"api_token_env names an environment variable that is not set \(the name is not shown",
        ),
        ('[accounts.a]\napi_token_env = "T"\npage_size = 0\n', r"\[accounts\.a\]: page_size must be a whole number"),
        ('[accounts.a]\napi_token_env = "T"\ncolour = "red"\n', r"\[accounts\.a\]: unknown key 'colour'; allowed: "),
        (
            '[accounts.a]\napi_token_env = "T"\ndata_dir = "/x"\n',
            r"data_dir is set for the whole deployment",
        ),
        ('[accounts.Bad_Name]\napi_token_env = "T"\n', r"account name 'Bad_Name' must be 1 to 40 lowercase"),
        ("[accounts]\n", r"lists no account"),
        ("[accounts.a\n", r"is not valid TOML"),
        ('[other]\nx = 1\n[accounts.a]\napi_token_env = "T"\n', r"only \[accounts\.<name>\] tables belong here"),
        ("[accounts.a]\npage_size = 5\n", r"\[accounts\.a\]: no JOOR account configured"),
    ],
)
def test_a_bad_accounts_file_is_one_clear_error_naming_file_account_and_key(
    tmp_path: Path, body: str, expected: str
) -> None:
    path = write_accounts(tmp_path, body)
    with pytest.raises(ConfigError, match=expected) as caught:
        load_accounts({"JOOR_ACCOUNTS_FILE": str(path), "T": "token"})
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    assert SECRET not in message  # a secret put in the file by mistake is never echoed


def test_an_accounts_file_saved_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    """Windows editors save UTF-8 with a BOM: the file reads as without one (issue 19)."""
    path = tmp_path / "accounts.toml"
    path.write_bytes(b"\xef\xbb\xbf" + b'[accounts.brand_a]\napi_token_env = "T"\npage_size = 50\n')
    accounts = load_accounts({"JOOR_ACCOUNTS_FILE": str(path), "T": "token"})
    assert list(accounts) == ["brand_a"] and accounts["brand_a"].page_size == 50
    path.write_bytes('[accounts.a]\napi_token_env = "T"\ncustomer = "Caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"accounts\.toml is not UTF-8 text \(byte \d+\): save it as UTF-8"):
        load_accounts({"JOOR_ACCOUNTS_FILE": str(path), "T": "token"})


def test_a_missing_accounts_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"JOOR_ACCOUNTS_FILE .*missing\.toml does not exist"):
        load_accounts({"JOOR_ACCOUNTS_FILE": str(tmp_path / "missing.toml")})


def test_the_accounts_file_is_a_declared_setting() -> None:
    assert "JOOR_ACCOUNTS_FILE" in {s.name for s in SETTINGS}


# --- layout and account column ----------------------------------------------------------------------------------


def test_two_accounts_land_flatten_and_build_side_by_side_with_keys_unique_within_an_account(tmp_path: Path) -> None:
    # The same customer_account_ids in both accounts (the generator numbers them alike): unique only per account.
    land(tmp_path, DAY, generate_connections(30, seed=1), account="brand_a")
    land(tmp_path, DAY, generate_connections(20, seed=2), account="brand_b")
    land(tmp_path, NEXT_DAY, generate_connections(25, seed=1), account="brand_a")
    for account, day in (("brand_a", DAY), ("brand_b", DAY), ("brand_a", NEXT_DAY)):
        flatten_snapshot(tmp_path, snap(day, account))
    assert (tmp_path / "raw/connections/account=brand_b/snapshot_date=2026-03-02/_manifest.json").is_file()
    part = Path(published_files(tmp_path, "addresses", snap(NEXT_DAY, "brand_a"))[0])
    assert part.parent == tmp_path / "parquet/addresses/account=brand_a/snapshot_date=2026-03-03"
    assert set(pq.read_table(part)["account"].to_pylist()) == {"brand_a"}  # stored in the file too
    assert published_partitions(tmp_path) == [("brand_a", DAY), ("brand_a", NEXT_DAY), ("brand_b", DAY)]
    assert published_dates(tmp_path, account="brand_b") == [DAY] and published_dates(tmp_path, account="default") == []
    manifest = json.loads((part.parent / "_manifest.json").read_text())
    assert manifest["account"] == "brand_a"

    report = build_warehouse(tmp_path)
    assert sorted(report.refresh_partitions) == [("brand_a", DAY), ("brand_a", NEXT_DAY), ("brand_b", DAY)]
    with duckdb.connect(str(database_path(tmp_path)), read_only=True) as con:
        per_account = con.execute("select account, count(*) from dim_retailers group by 1 order by 1").fetchall()
        assert per_account == [("brand_a", 25), ("brand_b", 20)]  # each account's latest snapshot
        shared = con.execute(
            "select count(*) from (select customer_account_id from dim_retailers group by 1 having count(*) > 1)"
        ).fetchone()
        assert shared is not None and shared[0] > 0  # ids collide across accounts (dbt tests: never within one)
        # Each account's history runs over its own snapshots: 5 of brand_a's retailers are gone on its second day.
        history = con.execute(
            "select account, count(*), count(*) filter (where not is_current) "
            "from retailer_history group by 1 order by 1"
        )
        assert history.fetchall() == [("brand_a", 30, 5), ("brand_b", 20, 0)]
        for model in ("payment_terms", "discount_summary", "retailer_addresses", "data_quality_issues"):
            columns = [row[0] for row in con.execute(f"describe main.{model}").fetchall()]
            assert "account" in columns, model
    frame = read("connections", tmp_path)
    assert sorted(frame["account"].unique()) == ["brand_a", "brand_b"] and len(frame) == 75

    # A republished partition of one account rebuilds that partition only.
    land(tmp_path, DAY, generate_connections(22, seed=3), account="brand_b")
    flatten_snapshot(tmp_path, snap(DAY, "brand_b"))
    assert build_warehouse(tmp_path).refresh_partitions == [("brand_b", DAY)]
    with duckdb.connect(str(database_path(tmp_path)), read_only=True) as con:
        rows = con.execute("select account, count(*) from dim_retailers group by 1 order by 1").fetchall()
        assert rows == [("brand_a", 25), ("brand_b", 22)]

    # A date of one account that arrives out of order (before its latest): the incremental history of both
    # accounts is still exactly what a full refresh computes.
    earlier = date(2026, 3, 1)
    land(tmp_path, earlier, generate_connections(24, seed=2), account="brand_b")
    flatten_snapshot(tmp_path, snap(earlier, "brand_b"))
    assert build_warehouse(tmp_path).refresh_partitions == [("brand_b", earlier)]
    history_sql = "select * from retailer_history order by all"
    with duckdb.connect(str(database_path(tmp_path)), read_only=True) as con:
        incremental = con.execute(history_sql).fetchall()
    build_warehouse(tmp_path, full_refresh=True)
    with duckdb.connect(str(database_path(tmp_path)), read_only=True) as con:
        assert con.execute(history_sql).fetchall() == incremental
        assert con.execute(
            "select account, count(*) from retailer_history where valid_from = ? group by 1", [earlier]
        ).fetchall() == [("brand_b", 24)]


# --- the migration of the single-account layout -----------------------------------------------------------------


def _make_legacy(data_dir: Path, day: date, connections: int) -> None:
    """A data directory as the single-account version wrote it: no account level, no account column."""
    land(data_dir, day, generate_connections(connections, seed=5), account="default")
    flatten_snapshot(data_dir, snap(day, "default"))
    for root in (data_dir / "raw" / "connections", *(data_dir / "parquet" / t for t in TABLES)):
        (root / "account=default" / f"snapshot_date={day.isoformat()}").rename(root / f"snapshot_date={day}")
        (root / "account=default").rmdir()
    for table in TABLES:
        directory = data_dir / "parquet" / table / f"snapshot_date={day}"
        for path in directory.glob("part-*.parquet"):  # the files of that version had no account column...
            legacy_name = "-".join(path.name.split("-")[:2]) + ".parquet"  # ...nor a publication id in their name
            pq.write_table(pq.read_table(path).drop(["account"]), path.with_name(legacy_name))
            path.unlink()
        (directory / "_manifest.json").unlink()  # it had no manifests either
    (data_dir / "_work" / "layout.json").unlink()  # nor the record of a current layout
    quarantine = data_dir / "_work" / "quarantine" / f"snapshot_date={day}"
    quarantine.mkdir(parents=True)
    (quarantine / "reason.json").write_text("{}")


def test_old_single_account_data_moves_to_the_default_account_once_and_keeps_working(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _make_legacy(tmp_path, DAY, 15)
    assert len(legacy_partitions(tmp_path)) == 12  # raw, ten tables, the quarantine
    with caplog.at_level("WARNING", logger="joor_pipeline.storage.migrate"):
        build_warehouse(tmp_path)  # the start of a build migrates first
    assert [r.getMessage() for r in caplog.records if "one-time migration" in r.getMessage()] != []
    assert legacy_partitions(tmp_path) == []
    assert (tmp_path / "_work/quarantine/account=default/snapshot_date=2026-03-02/reason.json").is_file()
    assert (
        read_raw_snapshot(tmp_path, snap(DAY)).directory
        == tmp_path / "raw/connections/account=default/snapshot_date=2026-03-02"
    )
    assert len(published_files(tmp_path, "connections", snap(DAY))) == 1
    with duckdb.connect(str(database_path(tmp_path)), read_only=True) as con:
        # The account comes from the directory for a file written without the column.
        assert con.execute("select account, count(*) from dim_retailers group by 1").fetchall() == [("default", 15)]
    caplog.clear()
    assert migrate_legacy_layout(tmp_path) == []  # idempotent: nothing left, nothing logged
    assert not caplog.records
    # New data of the default account goes beside the migrated one; the build sees both dates.
    land(tmp_path, NEXT_DAY, generate_connections(16, seed=5))
    flatten_snapshot(tmp_path, snap(NEXT_DAY))
    assert build_warehouse(tmp_path).refresh_partitions == [("default", NEXT_DAY)]


def test_a_partition_in_both_layouts_is_refused_without_overwriting_either(tmp_path: Path) -> None:
    _make_legacy(tmp_path, DAY, 3)
    new = tmp_path / "raw/connections/account=default/snapshot_date=2026-03-02"
    new.mkdir(parents=True)
    with pytest.raises(MigrationError, match=r"cannot move .*snapshot_date=2026-03-02 into the default account"):
        migrate_legacy_layout(tmp_path)
    assert (tmp_path / "raw/connections/snapshot_date=2026-03-02/_manifest.json").is_file()


# --- the command line -------------------------------------------------------------------------------------------


@pytest.fixture
def two_sandboxes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Two accounts served by one sandbox, each with its own credentials, data and credit budget; an accounts
    file for them."""
    for setting in SETTINGS:
        monkeypatch.delenv(setting.name, raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    other = SandboxConfig(connections=7, seed=2, api_token="token-b", rate_limit_credits=0)
    with run_sandbox(connections=12, seed=1, api_token="token-a", rate_limit_credits=0, accounts=[other]) as a:
        (b,) = a.accounts
        assert b.base_url == a.base_url
        path = write_accounts(
            tmp_path,
            f"""
[accounts.brand_a]
base_url = "{a.base_url}"
api_token_env = "BRAND_A_TOKEN"
page_size = 5

[accounts.brand_b]
base_url = "{b.base_url}"
api_token_env = "BRAND_B_TOKEN"
""",
        )
        monkeypatch.setenv("JOOR_ACCOUNTS_FILE", str(path))
        monkeypatch.setenv("BRAND_A_TOKEN", "token-a")
        monkeypatch.setenv("BRAND_B_TOKEN", "token-b")
        monkeypatch.setenv("JOOR_DATA_DIR", str(tmp_path / "data"))
        yield a, b


def test_cli_fetch_and_flatten_need_account_when_several_and_refuse_an_unknown_one(two_sandboxes, capsys) -> None:
    a, b = two_sandboxes
    assert main(["fetch"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: 2 accounts are configured (brand_a, brand_b): choose one with --account NAME"
    )
    assert main(["flatten", "--account", "brand_c"]) == 2
    assert capsys.readouterr().err.strip() == "error: unknown account 'brand_c'; configured: brand_a, brand_b"
    assert main(["fetch", "--account", "brand_b"]) == 0
    assert main(["flatten", "--account", "brand_b"]) == 0
    out = capsys.readouterr().out
    assert "wrote 7 connections of account brand_b" in out
    assert a.stats.requests == 0 and b.stats.credits_used == 1  # brand_b's credentials and budget only
    data = Path(os.environ["JOOR_DATA_DIR"])
    assert published_partitions(data) == [("brand_b", TODAY)]


def test_cli_run_lands_every_account_then_builds_the_models_once_and_a_failed_account_stops_nothing(
    two_sandboxes, capsys
) -> None:
    # In a process of its own, as a user runs it: the definitions read the accounts when they load.
    a, b = two_sandboxes
    run = [sys.executable, "-m", "joor_pipeline.cli", "run"]
    # brand_b's token is wrong: its run fails, brand_a's is published and the models are built on it all the same.
    env = {**os.environ, "BRAND_B_TOKEN": "not-brand-b", "JOOR_MAX_ATTEMPTS": "1"}
    done = subprocess.run(run, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    out, last = done.stdout, done.stderr.strip().splitlines()[-1]
    assert f"account brand_a, {TODAY}: Dagster run " in out and f"account brand_b, {TODAY}: Dagster run " in out
    assert out.count("models: Dagster run ") == 1 and "FAILED" in out
    assert last.startswith("error: 1 run(s) failed (1 other(s) published and the models built): ")
    assert f"account brand_b, {TODAY}: joor_raw_connections: " in last and "not-brand-b" not in done.stderr
    data = Path(os.environ["JOOR_DATA_DIR"])

    def retailers() -> list[tuple[str, int]]:
        with duckdb.connect(str(database_path(data)), read_only=True) as con:
            return con.execute("select account, count(*) from dim_retailers group by 1 order by 1").fetchall()

    assert retailers() == [("brand_a", 12)]
    assert a.stats.credits_used == 3  # pages of 5 (the wrong token was refused, and charged to no account)

    done = subprocess.run([*run, "--account", "brand_b"], capture_output=True, text=True, env=dict(os.environ))
    assert done.returncode == 0, done.stdout + done.stderr
    assert b.stats.requests >= 1 and retailers() == [("brand_a", 12), ("brand_b", 7)]
    assert main(["run", "--account", "brand_x"]) == 2
    assert "unknown account 'brand_x'; configured: brand_a, brand_b" in capsys.readouterr().err


def test_demo_runs_beside_an_accounts_file_that_has_no_default_account(two_sandboxes, tmp_path: Path) -> None:
    # The demo's one account is `default`, a partition of the definitions only when they load without the file.
    demo = [sys.executable, "-m", "joor_pipeline.cli", "demo", "--data-dir", str(tmp_path / "demo")]
    env = {**os.environ, "JOOR_SANDBOX_CONNECTIONS": "20"}
    done = subprocess.run(demo, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "succeeded" in done.stdout
    assert [account for account, _day in published_partitions(tmp_path / "demo")] == ["default"]
    assert not (Path(os.environ["JOOR_DATA_DIR"]) / "parquet").exists()  # the accounts' data is not touched


# --- Dagster: the account x date partitions and the schedule ----------------------------------------------------


def test_definitions_offer_the_configured_accounts_and_the_schedule_asks_one_run_per_account(tmp_path: Path) -> None:
    path = write_accounts(
        tmp_path, '[accounts.brand_a]\napi_token_env = "T"\n\n[accounts.brand_b]\napi_token_env = "T"\n'
    )
    script = """
import dagster as dg
from datetime import datetime, UTC
from joor_pipeline.definitions import defs
from joor_pipeline.assets.joor import joor_raw_connections
parts = joor_raw_connections.partitions_def
print(sorted(parts.get_partitions_def_for_dimension("account").get_partition_keys()))
schedule = defs.resolve_schedule_def("joor_daily_schedule")
today = datetime.now(UTC).replace(hour=6, minute=0, second=0, microsecond=0)
context = dg.build_schedule_context(scheduled_execution_time=today, repository_def=defs.get_repository_def())
for request in schedule.evaluate_tick(context).run_requests:
    print(request.partition_key, request.run_key)
"""
    env = {**os.environ, "JOOR_ACCOUNTS_FILE": str(path), "T": "token"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    today = TODAY.isoformat()  # (a test that crosses midnight UTC fails here, not wrongly passes)
    assert done.stdout.splitlines() == [
        "['brand_a', 'brand_b']",
        f"brand_a|{today} brand_a|{today}",
        f"brand_b|{today} brand_b|{today}",
    ]


def test_builtin_sandbox_accounts_each_get_their_own_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``environment = "builtin"`` per account: each fetch starts a sandbox of the account's own seed and size
    (own data, own credit budget), as the demo and tests of several accounts need."""
    for setting in SETTINGS:
        monkeypatch.delenv(setting.name, raising=False)
    path = write_accounts(
        tmp_path,
        '[accounts.one]\nenvironment = "builtin"\nsandbox_connections = 9\nsandbox_seed = 1\n\n'
        '[accounts.two]\nenvironment = "builtin"\nsandbox_connections = 4\nsandbox_seed = 2\n',
    )
    monkeypatch.setenv("JOOR_ACCOUNTS_FILE", str(path))
    monkeypatch.setenv("JOOR_DATA_DIR", str(tmp_path / "data"))
    for account in ("one", "two"):
        assert main(["fetch", "--account", account]) == 0
        assert main(["flatten", "--account", account]) == 0
    data = tmp_path / "data"
    rows = read("connections", data).to_dict("records")
    seen = {a: {(r["customer_code"], r["customer_name"]) for r in rows if r["account"] == a} for a in ("one", "two")}
    assert len(seen["one"]) == 9 and len(seen["two"]) == 4
    assert not seen["two"] <= seen["one"]  # another seed: other retailers, not the first four of the same ones


def test_one_sandbox_serves_several_accounts_with_their_own_data_and_budgets() -> None:
    """Over real HTTP: each credential reaches its own account's retailers and spends its own credits."""
    other = SandboxConfig(
        connections=3, seed=9, api_token="token-b", client_id="cid-b", username="user-b", account_id="555"
    )
    with run_sandbox(connections=5, seed=1, api_token="token-a", rate_limit_credits=2, accounts=[other]) as a:
        (b,) = a.accounts

        def page(token: str) -> httpx.Response:
            auth = "OAuth2 " + base64.b64encode(token.encode()).decode()
            headers = {"Authorization": auth, "Accept": "application/json", "Content-Type": "application/json"}
            return httpx.get(f"{a.base_url}/v2/connection/", headers=headers, timeout=10)

        first_a, first_b = page("token-a").json(), page("token-b").json()
        assert len(first_a["connections"]) == 5 and len(first_b["connections"]) == 3
        names_a = {c["customer_name"] for c in first_a["connections"]}
        assert not {c["customer_name"] for c in first_b["connections"]} <= names_a
        assert page("token-a").status_code == 200
        assert page("token-a").status_code == 429  # brand a's 2 credits are spent...
        assert page("token-b").status_code == 200  # ...brand b's budget is its own
        assert (a.stats.credits_used, a.stats.throttled) == (2, 1) and b.stats.credits_used == 2
        assert page("token-c").status_code == 401
        # v4: the token request names its account by its client credentials; the token then reaches it alone.
        form = {"grant_type": "password", "client_id": "cid-b", "client_secret": other.client_secret}
        form |= {"username": "user-b", "password": other.password}
        token = httpx.post(f"{a.base_url}/auth/", files={k: (None, v) for k, v in form.items()}, timeout=10)
        assert token.status_code == 200 and b.stats.tokens_issued == 1 and a.stats.tokens_issued == 0
        bearer = {
            "Authorization": f"Bearer {token.json()['access_token']}",
            "Accept": "application/json",
            "Content-Type": "application/json",
        }
        listed = httpx.get(f"{a.base_url}/v2/connection/", params={"account": "555"}, headers=bearer, timeout=10)
        assert listed.status_code == 200 and len(listed.json()["connections"]) == 3


def test_a_migration_stopped_halfway_is_finished_by_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between two renames (here: the fourth rename fails) leaves whole partitions in one layout or the
    other, never half of one; the next run moves the rest and the data reads as before."""
    import joor_pipeline.storage.migrate as migrate

    _make_legacy(tmp_path, DAY, 6)
    real_replace, calls = os.replace, []

    def crash_on_fourth(src: object, dst: object) -> None:
        calls.append(src)
        if len(calls) == 4:
            raise OSError("simulated crash")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(migrate.os, "replace", crash_on_fourth)
    with pytest.raises(OSError, match="simulated crash"):
        migrate_legacy_layout(tmp_path)
    monkeypatch.setattr(migrate.os, "replace", real_replace)
    assert len(legacy_partitions(tmp_path)) == 12 - 3
    moved = migrate_legacy_layout(tmp_path)
    assert len(moved) == 9 and legacy_partitions(tmp_path) == []
    assert len(read("connections", tmp_path)) == 6

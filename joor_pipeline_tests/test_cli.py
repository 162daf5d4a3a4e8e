"""The command line: one `error:` line and exit code 2 for every configuration or usage problem, root causes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from joor_pipeline.cli import main
from joor_pipeline.config import NOT_CONFIGURED, SETTINGS

CLI = str(Path(sys.executable).parent / "joor-pipeline")
TODAY = datetime.now(UTC).date()
TOMORROW = (TODAY + timedelta(days=1)).isoformat()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """A process environment with no JOOR setting and no DAGSTER_HOME, as on a fresh machine."""
    for setting in SETTINGS:
        monkeypatch.delenv(setting.name, raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    yield monkeypatch


def one_error_line(err: str) -> str:
    """The stderr of a refused command: exactly one line, starting with `error: `."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def cli(*args: str, env: dict[str, str] | None = None, user: str | None = None) -> subprocess.CompletedProcess[str]:
    """The installed `joor-pipeline` as a user runs it, with only ``env`` (and PATH) set."""
    base = {"PATH": "/usr/bin:/bin", "HOME": tempfile.gettempdir()}
    prefix = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user else []
    return subprocess.run(
        [*prefix, CLI, *args], capture_output=True, text=True, timeout=120, env={**base, **(env or {})}
    )


# ---- nothing configured ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["fetch", "run"])
def test_nothing_configured_exits_2_with_one_line_and_writes_nothing(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    clean_env.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    assert main([command, "--data-dir", str(tmp_path / "data")]) == 2
    captured = capsys.readouterr()
    assert one_error_line(captured.err) == f"error: {NOT_CONFIGURED}"
    assert captured.out == ""
    assert not (tmp_path / "data").exists() and not (tmp_path / "home").exists()


def test_builtin_sandbox_on_request_and_in_the_demo(clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    clean_env.setenv("JOOR_ENVIRONMENT", "builtin")
    clean_env.setenv("JOOR_SANDBOX_CONNECTIONS", "12")
    assert main(["fetch", "--data-dir", str(tmp_path / "data")]) == 0
    captured = capsys.readouterr()
    assert "landed 12 connections" in captured.out
    assert "from built-in sandbox" in captured.err


# ---- bad settings ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("JOOR_CONCURRENCY", "99999999999999999999"),
        ("JOOR_RATE_LIMIT_WINDOW", "nan"),
        ("JOOR_RATE_LIMIT_WINDOW", "inf"),
        ("JOOR_TIMEOUT", "nan"),
        ("JOOR_TIMEOUT", "inf"),
        ("JOOR_TIMEOUT", "1e308"),
        ("JOOR_MAX_RESPONSE_MB", "-1"),
        ("JOOR_MAX_PAGES", "1e99"),
        ("JOOR_PAGE_SIZE", "0x10"),
        ("JOOR_BASE_URL", "http://[::1"),
        ("JOOR_FORMAT", "yaml"),
    ],
)
@pytest.mark.parametrize("command", ["fetch", "run", "demo"])
def test_a_bad_value_names_its_variable_and_exits_2(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys, command: str, name: str, value: str
) -> None:
    clean_env.setenv("JOOR_API_TOKEN", "t")
    clean_env.setenv(name, value)
    if command == "demo" and name == "JOOR_BASE_URL":
        return  # the demo ignores any configured JOOR endpoint
    assert main([command, "--data-dir", str(tmp_path / "data")]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert name in line and value[:10] in line
    assert not (tmp_path / "data").exists()


def test_a_password_in_a_url_never_shows(clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    clean_env.setenv("JOOR_API_TOKEN", "t")
    for url in ("http://joor:hunter2@127.0.0.1:9", "http://joor:hunter2@[::1"):
        clean_env.setenv("JOOR_BASE_URL", url)
        for debug in ([], ["--debug"]):
            assert main([*debug, "fetch", "--data-dir", str(tmp_path)]) == 2
            captured = capsys.readouterr()
            assert "hunter2" not in captured.out + captured.err
            assert "JOOR_BASE_URL must not carry a user name or password" in captured.err


def test_data_dir_that_is_a_file_exits_2(clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    clean_env.setenv("JOOR_ENVIRONMENT", "builtin")
    file = tmp_path / "not-a-dir"
    file.write_text("x")
    for command in ("fetch", "flatten", "run", "demo"):
        assert main([command, "--data-dir", str(file)]) == 2
        assert one_error_line(capsys.readouterr().err) == f"error: --data-dir {file} is not a directory"
    clean_env.setenv("JOOR_DATA_DIR", str(file / "below"))
    assert main(["fetch"]) == 2
    assert "JOOR_DATA_DIR" in one_error_line(capsys.readouterr().err)


def test_a_read_only_data_dir_exits_2() -> None:
    """Run as an unprivileged user (root may write anywhere), as an operator's service account would."""
    user = "65534" if os.geteuid() == 0 else None
    if user and shutil.which("setpriv") is None:
        pytest.fail("running as root, and setpriv (util-linux) is needed to test as an unprivileged user")
    with tempfile.TemporaryDirectory() as top:
        os.chmod(top, 0o755)  # noqa: S103 - the unprivileged user must reach the read-only directory inside
        read_only = Path(top) / "ro"
        read_only.mkdir(mode=0o555)
        read_only.chmod(0o555)
        for target in (read_only, read_only / "data"):
            done = cli("fetch", "--data-dir", str(target), env={"JOOR_ENVIRONMENT": "builtin"}, user=user)
            assert done.returncode == 2, done.stderr
            assert "not writable" in one_error_line(done.stderr)
        assert list(read_only.iterdir()) == []


# ---- dates -------------------------------------------------------------------------------------------------------


def test_dates_that_cannot_be_fetched_are_one_line(clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    clean_env.setenv("JOOR_ENVIRONMENT", "builtin")
    data = str(tmp_path / "data")
    cases = [
        (["fetch", "--date", "9999-12-31"], "9999-12-31 is in the future"),
        (["fetch", "--date", TOMORROW], f"{TOMORROW} is in the future (today is {TODAY}, UTC)"),
        (["run", "--date", TOMORROW], f"{TOMORROW} is in the future"),
        (["demo", "--date", TOMORROW], f"{TOMORROW} is in the future"),
        (["fetch", "--date", "2026-01-05"], "add --allow-backdated"),
        (["run", "--date", "2026-01-05"], "no raw snapshot is kept for 2026-01-05"),
        (["run", "--date", "2024-12-31"], "before the first snapshot date 2025-01-01 (JOOR_FIRST_SNAPSHOT_DATE)"),
    ]
    for args, message in cases:
        assert main([*args, "--data-dir", data]) == 2, args
        assert message in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "data").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["fetch", "--date", "2026-02-30"])
    assert exit_info.value.code == 2
    assert "not a date in YYYY-MM-DD form" in capsys.readouterr().err


def test_a_range_that_ends_before_it_starts_is_a_usage_error_before_dagster_loads(tmp_path: Path) -> None:
    """`run --from D --to D-1` (issue 19): exit 2 and one line, without importing Dagster or writing anything."""
    day = TODAY - timedelta(days=3)
    code = (
        "import sys\n"
        "from joor_pipeline.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print('dagster' in sys.modules, file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    args = ["run", "--from", day.isoformat(), "--to", (day - timedelta(days=1)).isoformat()]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DAGSTER_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-c", code, *args, "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    error, imported = done.stderr.strip().splitlines()
    assert one_error_line(error) == f"error: --to {day - timedelta(days=1)} is before --from {day}"
    assert imported == "False"
    assert not (tmp_path / "data").exists() and not (tmp_path / "home").exists()


# ---- errors that are not configuration ---------------------------------------------------------------------------


def test_an_unexpected_error_is_one_line_and_debug_shows_the_traceback(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    """An OSError while landing (raw/ is a file) and a library error (a port out of range) end in one line."""
    clean_env.setenv("JOOR_ENVIRONMENT", "builtin")
    clean_env.setenv("JOOR_SANDBOX_CONNECTIONS", "3")
    (tmp_path / "raw").write_text("x")
    assert main(["fetch", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: NotADirectoryError: ")
    assert "Traceback" not in err

    for args in (["--debug", "fetch", "--data-dir", str(tmp_path)], ["fetch", "--debug", "--data-dir", str(tmp_path)]):
        assert main(args) == 1
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err
        assert err.strip().splitlines()[-1].startswith("error: NotADirectoryError: ")

    assert main(["sandbox", "--port", "99999"]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: OverflowError: ") and "65535" in line


def test_run_prints_the_root_cause_last(clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    clean_env.setenv("JOOR_BASE_URL", "http://127.0.0.1:9")
    clean_env.setenv("JOOR_API_TOKEN", "tok-not-printed")
    clean_env.setenv("JOOR_MAX_ATTEMPTS", "1")
    clean_env.setenv("DAGSTER_HOME", "relative/home")  # made absolute, and created
    assert main(["run", "--data-dir", str(tmp_path / "data")]) == 1
    captured = capsys.readouterr()
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("error: joor_raw_connections: GET http://127.0.0.1:9/v2/connection/")
    assert "ConnectError" in last
    assert "FAILED" in captured.out
    everything = captured.out + captured.err
    assert "Traceback" not in everything and "Stack Trace" not in everything
    assert "DagsterExecutionStepExecutionError" not in everything
    assert "tok-not-printed" not in everything
    assert len(captured.err.strip().splitlines()) < 20
    assert (tmp_path / "relative" / "home" / "dagster.yaml").is_file()

    assert main(["run", "--debug", "--data-dir", str(tmp_path / "data")]) == 1
    err = capsys.readouterr().err
    assert "Stack Trace" in err or "Traceback" in err
    assert err.strip().splitlines()[-1] == last


def test_a_dagster_home_that_is_a_file_exits_2(clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    clean_env.setenv("JOOR_ENVIRONMENT", "builtin")
    home = tmp_path / "home"
    home.write_text("x")
    clean_env.setenv("DAGSTER_HOME", str(home))
    assert main(["demo", "--data-dir", str(tmp_path / "data")]) == 2
    assert one_error_line(capsys.readouterr().err) == f"error: DAGSTER_HOME {home} is not a directory"


# ---- the installed command, in its own process --------------------------------------------------------------------


def test_installed_command_exit_codes(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    refused = [
        ({}, ["fetch", "--data-dir", data], "no JOOR account configured"),
        ({"JOOR_API_TOKEN": "t", "JOOR_TIMEOUT": "nan"}, ["fetch", "--data-dir", data], "JOOR_TIMEOUT"),
        (
            {"JOOR_API_TOKEN": "t", "JOOR_BASE_URL": "https://joor:hunter2@api.example"},
            ["run", "--data-dir", data],
            "JOOR_BASE_URL",
        ),
        ({"JOOR_ENVIRONMENT": "builtin"}, ["fetch", "--date", "9999-12-31", "--data-dir", data], "in the future"),
        ({"JOOR_ENVIRONMENT": "builtin"}, ["run", "--date", TOMORROW, "--data-dir", data], "in the future"),
    ]
    for env, args, message in refused:
        done = cli(*args, env=env)
        assert done.returncode == 2, (args, done.stderr)
        assert message in one_error_line(done.stderr)
        assert "hunter2" not in done.stderr + done.stdout
    assert not (tmp_path / "data").exists()
    done = cli("--version")
    assert done.returncode == 0 and "joor-pipeline" in done.stdout


def test_run_ends_its_process_itself_and_leaves_its_exit_code_runs_and_warehouse(tmp_path: Path) -> None:
    """The installed `run` ends its process with os._exit after Python's own exit steps (cli._exit_process): its
    exit code, every Dagster run with its events, and joor.duckdb are there afterwards, and DuckDB's bindings
    print nothing at exit."""
    import dagster as dg
    import duckdb
    from dagster._core.storage.dagster_run import DagsterRunStatus

    home, data = tmp_path / "home", tmp_path / "data"
    env = {"JOOR_ENVIRONMENT": "builtin", "JOOR_SANDBOX_CONNECTIONS": "20", "DAGSTER_HOME": str(home)}
    for _ in range(2):  # the first run builds the warehouse, the second is a daily run on it
        done = cli("run", "--data-dir", str(data), env=env)
        assert done.returncode == 0, done.stderr
        assert "leaked" not in done.stdout + done.stderr and "Traceback" not in done.stderr
        assert done.stdout.rstrip().endswith("passed"), done.stdout  # the last report line, flushed
    with duckdb.connect(str(data / "joor.duckdb"), read_only=True) as con:
        assert con.execute("select count(*) from dim_retailers").fetchall() == [(20,)]
        assert con.execute("select count(*) from staging.stg_connections").fetchall() == [(20,)]

    (data / "joor.duckdb").rename(tmp_path / "aside.duckdb")
    (data / "joor.duckdb").mkdir()  # the model build fails; the landing run publishes
    done = cli("run", "--data-dir", str(data), env=env)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: joor_models: ")  # its cause, last
    done = cli("run", "--date", "2025-01-02", "--data-dir", str(data), env=env)  # refused before Dagster starts
    assert done.returncode == 2 and "no raw snapshot is kept for 2025-01-02" in one_error_line(done.stderr)

    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        assert sorted((run.job_name, run.status.value) for run in runs) == [
            *[("joor_daily", DagsterRunStatus.SUCCESS.value)] * 3,
            ("joor_warehouse", DagsterRunStatus.FAILURE.value),
            *[("joor_warehouse", DagsterRunStatus.SUCCESS.value)] * 2,
        ]
        for run in runs:  # every run's log ends with its end, written before the process ended
            last = instance.all_logs(run.run_id)[-1]
            assert last.dagster_event is not None
            assert last.dagster_event.event_type_value in ("PIPELINE_SUCCESS", "PIPELINE_FAILURE"), run.job_name
        built = instance.fetch_materializations(dg.AssetKey("dim_retailers"), limit=10).records
        assert len(built) == 2


def test_a_secret_pasted_anywhere_is_never_echoed(tmp_path: Path) -> None:
    """Into api_token_env, into another variable, into a URL's query (issue 19): refused, never echoed, --debug too."""
    token = "tok-7f3a9c-PASTED-d41e88b0c2"
    accounts = tmp_path / "accounts.toml"
    accounts.write_text(f'[accounts.a]\napi_token_env = "{token}"\n', encoding="utf-8")
    data = str(tmp_path / "data")
    cases = [
        ({"JOOR_ACCOUNTS_FILE": str(accounts)}, "fetch", "api_token_env must be the name of an environment variable"),
        ({"JOOR_API_TOKEN": token, "JOOR_PAGE_SIZE": token}, "fetch", "JOOR_PAGE_SIZE must be a whole number"),
        ({"JOOR_API_TOKEN": token, "JOOR_FLATTEN_WORKERS": token}, "flatten", "JOOR_FLATTEN_WORKERS must be"),
        ({"JOOR_API_TOKEN": "t", "JOOR_BASE_URL": f"https://api.example/?token={token}"}, "run", "JOOR_BASE_URL"),
    ]
    for env, command, message in cases:
        done = cli(command, "--data-dir", data, env=env)
        assert done.returncode == 2, done.stderr
        assert message in one_error_line(done.stderr)
        assert token[:6] not in done.stdout + done.stderr
        done = cli("--debug", command, "--data-dir", data, env=env)
        assert done.returncode == 2 and message in done.stderr.strip().splitlines()[-1]
        assert token[:6] not in done.stdout + done.stderr
    assert not (tmp_path / "data").exists()


def test_flatten_needs_no_joor_account_but_checks_its_own_settings(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    assert main(["flatten", "--date", "2026-01-01", "--data-dir", str(tmp_path)]) == 1
    assert "no raw snapshot for 2026-01-01" in one_error_line(capsys.readouterr().err)  # not "no JOOR account"
    clean_env.setenv("JOOR_FLATTEN_WORKERS", "100000")
    clean_env.setenv("JOOR_DATA_DIR", "")
    assert main(["flatten", "--date", "2026-01-01", "--data-dir", str(tmp_path)]) == 2
    assert "JOOR_FLATTEN_WORKERS must be a whole number from 1 to 256" in one_error_line(capsys.readouterr().err)


def test_the_flatten_command_imports_no_dagster_pandas_or_dbt_and_its_workers_do_not_rerun_it(tmp_path: Path) -> None:
    """The installed ``joor-pipeline flatten`` with two workers, every process's imports logged
    (``PYTHONPROFILEIMPORTTIME`` reaches the forkserver and the workers): none imports Dagster, pandas or dbt, and
    the command's own module is imported twice, by the command and by the forkserver, not once more by every
    worker as it runs the joor-pipeline script again (multiprocessing's ``__mp_main__``)."""
    from joor_pipeline.sandbox.data import generate_connections
    from joor_pipeline_tests.raw_fixtures import land

    day = "2026-01-05"
    land(tmp_path, datetime.fromisoformat(day).date(), generate_connections(2000, seed=3))
    done = cli(
        "flatten", "--date", day, "--data-dir", str(tmp_path),
        env={"JOOR_FLATTEN_WORKERS": "2", "PYTHONPROFILEIMPORTTIME": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "by 2 processes" in done.stdout
    imported = [line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert "pyarrow" in imported  # the log is there
    heavy = {name for name in imported if name.split(".")[0] in {"dagster", "dbt"} or name.startswith("pandas.")}
    assert sorted(heavy) == []  # (a worker's refused attempt at pandas shows as "pandas" alone)
    assert imported.count("joor_pipeline.cli") == 2

"""Raw landing: pages byte for byte, the manifest last, atomic replacement, and no secret anywhere."""

from __future__ import annotations

import base64
import logging
import threading
from datetime import date
from pathlib import Path

import httpx
import pytest

from joor_pipeline.cli import main
from joor_pipeline.joor.client import JoorClient, RetryPolicy
from joor_pipeline.joor.errors import JoorError, RetriesExhausted
from joor_pipeline.layout import MANIFEST as MANIFEST_NAME
from joor_pipeline.pipeline import fetch_snapshot
from joor_pipeline.sandbox import run_sandbox
from joor_pipeline.storage.raw import read_manifest
from joor_pipeline_tests.conftest import sandbox_settings
from joor_pipeline_tests.raw_fixtures import raw_pages, raw_snapshot_dir, snap

DAY = date(2026, 11, 2)


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_pages_are_landed_exactly_as_received(sandbox, tmp_path: Path, fmt: str) -> None:
    settings = sandbox_settings(sandbox, fmt=fmt, page_size=50)
    with JoorClient(settings) as client:
        report = fetch_snapshot(client, tmp_path, snap(DAY))
    directory = raw_snapshot_dir(tmp_path, DAY)
    assert report.path == str(directory)
    publication = report.manifest["publication_id"]
    assert sorted(p.name for p in directory.iterdir()) == [
        MANIFEST_NAME,
        f"page-00000-{publication}.{fmt}",
        f"page-00001-{publication}.{fmt}",
        f"page-00002-{publication}.{fmt}",
    ]
    token = base64.b64encode(sandbox.config.api_token.encode()).decode()
    accept = {"json": "application/json", "xml": "application/xml"}[fmt]
    headers = {"Authorization": f"OAuth2 {token}", "Accept": accept, "Content-Type": accept}
    with httpx.Client(base_url=sandbox.base_url, headers=headers) as h:
        direct = h.get("/v2/connection/", params={"start_from": 50, "count": 50}).content
    landed = (directory / f"page-00001-{publication}.{fmt}").read_bytes()
    # Byte for byte, but for the log_id JOOR stamps on every call.
    assert landed.replace(report.log_ids[1].encode(), b"") == direct.replace(_log_id(direct, fmt).encode(), b"")
    manifest = read_manifest(tmp_path, snap(DAY))
    assert manifest["format"] == fmt
    assert manifest["connections"] == 120 == report.connections
    assert [p["connections"] for p in manifest["pages"]] == [50, 50, 20]
    assert [p["log_id"] for p in manifest["pages"]] == report.log_ids
    assert manifest["pages"][1]["start_from"] == 50
    assert manifest["fetch_started_at"] <= manifest["fetch_finished_at"]
    assert manifest["concurrency"] == settings.concurrency == 1


def _log_id(body: bytes, fmt: str) -> str:
    from joor_pipeline.joor.parse import parse_page

    log_id = parse_page(body, fmt).response.log_id
    assert log_id
    return log_id


def test_rerun_replaces_the_snapshot(tmp_path: Path) -> None:
    for connections, pages in ((30, 3), (12, 2)):
        with run_sandbox(connections=connections, rate_limit_credits=0) as sb:
            with JoorClient(sandbox_settings(sb, page_size=10)) as client:
                fetch_snapshot(client, tmp_path, snap(DAY))
        files = sorted(p.name for p in raw_snapshot_dir(tmp_path, DAY).glob("page-*"))
        assert len(files) == pages
        assert read_manifest(tmp_path, snap(DAY))["connections"] == connections
    assert [p.name for p in (tmp_path / "raw" / "connections").iterdir()] == ["account=default"]


@pytest.mark.parametrize("concurrency", [1, 4])
def test_failed_run_leaves_previous_snapshot_untouched(sandbox, tmp_path: Path, concurrency: int) -> None:
    with JoorClient(sandbox_settings(sandbox, page_size=40)) as client:
        fetch_snapshot(client, tmp_path, snap(DAY))
    before = {p.name: p.read_bytes() for p in raw_snapshot_dir(tmp_path, DAY).iterdir()}

    sandbox.faults.script = ["ok", "ok", *["503"] * 40]
    retry = RetryPolicy(max_attempts=3, backoff_base=0.01)
    with JoorClient(sandbox_settings(sandbox, page_size=10), retry=retry) as client:
        with pytest.raises(RetriesExhausted):
            fetch_snapshot(client, tmp_path, snap(DAY), concurrency=concurrency)
    assert not [t for t in threading.enumerate() if t.name.startswith("joor-fetch")]
    after = {p.name: p.read_bytes() for p in raw_snapshot_dir(tmp_path, DAY).iterdir()}
    assert after == before
    assert [p.name for p in (tmp_path / "raw" / "connections").iterdir()] == ["account=default"]


@pytest.mark.parametrize("concurrency", [1, 4])
def test_progress_reports_pages_and_connections(sandbox, tmp_path: Path, concurrency: int) -> None:
    seen: list[tuple[int, int]] = []
    with JoorClient(sandbox_settings(sandbox, page_size=50)) as client:
        report = fetch_snapshot(
            client, tmp_path, snap(DAY), progress=lambda p, c: seen.append((p, c)), concurrency=concurrency
        )
    assert seen == [(1, 50), (2, 100), (3, 120)]
    assert report.manifest["concurrency"] == concurrency
    assert [p["start_from"] for p in report.manifest["pages"]] == [0, 50, 100]


def test_concurrent_fetch_lands_the_same_snapshot(tmp_path: Path) -> None:
    landed = {}
    with run_sandbox(connections=95, seed=9, rate_limit_credits=0) as sb:
        for concurrency in (1, 4):
            with JoorClient(sandbox_settings(sb, page_size=10, concurrency=concurrency)) as client:
                report = fetch_snapshot(client, tmp_path / str(concurrency), snap(DAY))
            landed[concurrency] = [
                path.read_bytes().replace(log_id.encode(), b"")
                for path, log_id in zip(raw_pages(tmp_path / str(concurrency), DAY), report.log_ids, strict=True)
            ]
    assert len(landed[4]) == 10
    assert landed[4] == landed[1]


SECRETS = {
    "JOOR_API_TOKEN": "tok-SECRET-v2-9f3a",
    "JOOR_CLIENT_SECRET": "cs-SECRET-v4-77b1",
    "JOOR_PASSWORD": "pw-SECRET-v4-c0de",
}


@pytest.mark.parametrize("api_version", ["v2", "v4"])
def test_no_secret_reaches_logs_errors_or_raw_files(
    tmp_path: Path, caplog, capsys, monkeypatch, api_version: str
) -> None:
    """Run the CLI with distinctive secrets through faults and failures, then scan everything it left."""
    caplog.set_level(logging.DEBUG)
    forbidden = [*SECRETS.values(), base64.b64encode(SECRETS["JOOR_API_TOKEN"].encode()).decode()]
    errors: list[str] = []
    with run_sandbox(
        connections=25,
        api_token=SECRETS["JOOR_API_TOKEN"],
        client_secret=SECRETS["JOOR_CLIENT_SECRET"],
        password=SECRETS["JOOR_PASSWORD"],
        rate_limit_credits=0,
    ) as sb:
        env = {
            "JOOR_BASE_URL": sb.base_url,
            "JOOR_API_VERSION": api_version,
            "JOOR_ACCOUNT_ID": sb.config.account_id,
            "JOOR_CLIENT_ID": sb.config.client_id,
            "JOOR_USERNAME": sb.config.username,
            "JOOR_PAGE_SIZE": "10",
            "JOOR_MAX_ATTEMPTS": "3",
            **SECRETS,
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        sb.faults.script = ["500", "ok", "drop", "ok", "429"]
        assert main(["-v", "fetch", "--date", "2026-11-02", "--allow-backdated", "--data-dir", str(tmp_path)]) == 0
        sb.faults.script = ["503"] * 5
        assert main(["-v", "fetch", "--date", "2026-11-03", "--allow-backdated", "--data-dir", str(tmp_path)]) == 1
        # Hostile answers: a body over the size cap; a body slower than the whole-request deadline.
        monkeypatch.setenv("JOOR_MAX_RESPONSE_MB", "0.01")
        assert main(["-v", "fetch", "--date", "2026-11-05", "--allow-backdated", "--data-dir", str(tmp_path)]) == 1
        monkeypatch.delenv("JOOR_MAX_RESPONSE_MB")
        monkeypatch.setenv("JOOR_TIMEOUT", "0.1")
        sb.faults.latency_ms = 400
        assert main(["-v", "fetch", "--date", "2026-11-06", "--allow-backdated", "--data-dir", str(tmp_path)]) == 1
        sb.faults.latency_ms = 0
        monkeypatch.delenv("JOOR_TIMEOUT")
        with JoorClient(sandbox_settings(sb, api_version=api_version)) as client:
            sb.faults.script = ["garbage"]
            try:
                client.get_connection(24181)
            except JoorError as exc:
                errors.append(str(exc) + repr(exc))
            errors.append(repr(client) + repr(client.settings))
        monkeypatch.setenv("JOOR_PASSWORD", "wrong")
        monkeypatch.setenv("JOOR_API_TOKEN", "wrong")
        assert main(["fetch", "--date", "2026-11-04", "--allow-backdated", "--data-dir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    files = [p.read_text("utf-8") for p in tmp_path.rglob("*") if p.is_file()]
    data = [p for p in tmp_path.rglob("*") if p.is_file() and "_work" not in p.parts]
    assert len(data) == 4  # three pages and the manifest of the one good run (beside _work's lock files)
    texts = [caplog.text, captured.out, captured.err, *errors, *files]
    assert "Traceback" not in captured.err
    assert "over the 0.01 MB cap (JOOR_MAX_RESPONSE_MB)" in captured.err
    assert "outlasted its 0.1 s deadline (JOOR_TIMEOUT)" in captured.err
    for text in texts:
        for secret in forbidden:
            assert secret not in text


def test_cli_fetch_against_a_running_sandbox(sandbox, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("JOOR_BASE_URL", sandbox.base_url)
    monkeypatch.setenv("JOOR_API_TOKEN", sandbox.config.api_token)
    monkeypatch.setenv("JOOR_PAGE_SIZE", "25")
    assert main(["fetch", "--date", "2026-11-02", "--allow-backdated", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert "landed 120 connections in 5 pages" in out.out
    assert "fetch 2026-11-02: 5 pages, 120 connections" in out.err
    assert sandbox.config.api_token not in out.out + out.err


def test_cli_fetch_builtin_sandbox_when_asked(tmp_path: Path, monkeypatch, capsys) -> None:
    for name in (
        "JOOR_BASE_URL",
        "JOOR_API_TOKEN",
        "JOOR_ACCOUNT_ID",
        "JOOR_CLIENT_ID",
        "JOOR_CLIENT_SECRET",
        "JOOR_USERNAME",
        "JOOR_PASSWORD",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JOOR_ENVIRONMENT", "builtin")
    monkeypatch.setenv("JOOR_SANDBOX_CONNECTIONS", "42")
    monkeypatch.setenv("JOOR_FORMAT", "xml")
    assert main(["fetch", "--date", "2026-11-03", "--allow-backdated", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert "built-in sandbox" in out.err
    assert read_manifest(tmp_path, snap(date(2026, 11, 3)))["connections"] == 42


def test_cli_progress_line_says_the_fetch_waits_for_the_rate_limit(
    sandbox, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("JOOR_BASE_URL", sandbox.base_url)
    monkeypatch.setenv("JOOR_API_TOKEN", sandbox.config.api_token)
    sandbox.faults.script = ["429"]  # Retry-After: 1
    assert main(["fetch", "--date", "2026-11-02", "--allow-backdated", "--data-dir", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert (
        "fetch 2026-11-02: waiting 1s for JOOR's rate limit (HTTP 429): the account's credits, shared with its "
        "other integrations, are spent until JOOR's window resets"
    ) in err


def test_retry_warnings_and_waits_reach_dagsters_event_log(tmp_path: Path) -> None:
    """The fetch asset, materialized: the client's warnings (from its worker threads too) are in the run's log."""
    import dagster as dg

    from joor_pipeline.assets.joor import joor_raw_connections
    from joor_pipeline.assets.resources import DataDirResource, JoorApiResource

    with run_sandbox(connections=30, rate_limit_credits=0) as sb, dg.DagsterInstance.ephemeral() as instance:
        # Page 0 is refused once (the asset's own thread waits); page 1, planned, meets a 503 in a worker thread.
        sb.faults.script = ["429", "ok", "503"]
        resources = {
            "joor": JoorApiResource(base_url=sb.base_url, api_token=sb.config.api_token, page_size="20"),
            "storage": DataDirResource(data_dir=str(tmp_path)),
        }
        config = {"ops": {"joor_raw_connections": {"config": {"allow_backdated": True}}}}
        result = dg.materialize(
            [joor_raw_connections],
            partition_key="default|2026-03-02",
            resources=resources,
            run_config=config,
            instance=instance,
        )
        assert result.success
        logged = [(entry.level, entry.user_message) for entry in instance.all_logs(result.run_id)]
    warnings = [message for level, message in logged if level == logging.WARNING]
    infos = [message for level, message in logged if level == logging.INFO]
    assert any("start_from=20&count=20: HTTP 503; retry 1/5 in" in m for m in warnings), warnings
    assert any("start_from=0&count=20: HTTP 429 (JOOR's rate limit" in m for m in warnings), warnings
    assert any(m.startswith("waiting 1s for JOOR's rate limit (HTTP 429)") for m in infos), infos
    assert not any(sb.config.api_token in m for _, m in logged)
    # Forwarding ends with the asset body: the library's logger is as it was.
    assert not logging.getLogger("joor_pipeline").handlers


def test_cli_config_error_is_one_clear_message(monkeypatch, capsys) -> None:
    monkeypatch.setenv("JOOR_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("JOOR_API_TOKEN", raising=False)
    assert main(["fetch", "--date", "2026-11-02"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid JOOR configuration")
    assert "JOOR_API_TOKEN is required" in err
    assert "Traceback" not in err


def test_cli_unreachable_api_is_a_clear_error(monkeypatch, capsys, tmp_path: Path) -> None:
    monkeypatch.setenv("JOOR_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("JOOR_API_TOKEN", "t")
    monkeypatch.setenv("JOOR_MAX_ATTEMPTS", "2")
    assert main(["fetch", "--date", "2026-11-02", "--allow-backdated", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "error: GET http://127.0.0.1:9/v2/connection/" in err
    assert "ConnectError" in err


def test_cli_flatten_after_fetch(sandbox, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("JOOR_BASE_URL", sandbox.base_url)
    monkeypatch.setenv("JOOR_API_TOKEN", sandbox.config.api_token)
    assert main(["fetch", "--date", "2026-11-02", "--allow-backdated", "--data-dir", str(tmp_path)]) == 0
    assert main(["flatten", "--date", "2026-11-02", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "wrote 120 connections" in out
    assert "connections             120 rows" in out
    doors = tmp_path / "parquet" / "doors" / "account=default" / "snapshot_date=2026-11-02"
    assert [path.name for path in doors.glob("part-00000-*.parquet")]


def test_cli_flatten_without_raw_snapshot_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["flatten", "--date", "2026-01-01", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "error: no raw snapshot for 2026-01-01" in err
    # a past date: the fetch it suggests must work as given (JOOR serves only today's state)
    assert "joor-pipeline fetch --date 2026-01-01 --allow-backdated` (it files today's JOOR" in err


def test_standalone_sandbox_process(tmp_path: Path) -> None:
    """`joor-pipeline sandbox` as its own process, as a developer would start it."""
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-m", "joor_pipeline.sandbox", "--port", "0", "--connections", "7", "--seed", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "JOOR sandbox listening on http://127.0.0.1:" in line, line
        base_url = line.split(" on ")[1].split()[0]
        from joor_pipeline.config import load_settings

        settings = load_settings({"JOOR_BASE_URL": base_url, "JOOR_API_TOKEN": "sandbox-token", "JOOR_FORMAT": "xml"})
        with JoorClient(settings) as client:
            assert len([c for p in client.iter_connection_pages() for c in p.page.connections]) == 7
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout:
            process.stdout.close()
        if process.stderr:
            process.stderr.close()

"""JOOR's documented rules (content type, rate-limit headers), the connection test and the complete-or-refused walk."""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from joor_pipeline.assets.check import CHECK_JOB
from joor_pipeline.assets.resources import DataDirResource, JoorApiResource
from joor_pipeline.cli import main
from joor_pipeline.config import SETTINGS, Secret
from joor_pipeline.definitions import JOB_NAME, build_defs
from joor_pipeline.joor.check import MAX_REQUESTS, estimate_fetch
from joor_pipeline.joor.client import JoorClient, RetryPolicy
from joor_pipeline.joor.errors import IncompleteSnapshot
from joor_pipeline.joor.pacing import MAX_RATE_LIMIT_HEADERS, BudgetHint, CreditPacer, budget_hint, rate_limit_headers
from joor_pipeline.joor.parse import parse_page
from joor_pipeline.pipeline import fetch_snapshot
from joor_pipeline.sandbox import Faults, Sandbox, load_seed_connection, run_sandbox
from joor_pipeline.sandbox.render import render_json
from joor_pipeline.storage.raw import read_manifest
from joor_pipeline_tests.conftest import sandbox_settings
from joor_pipeline_tests.fake_time import FakeTime
from joor_pipeline_tests.raw_fixtures import raw_snapshot_dir, snap

DAY = date(2026, 11, 2)
FAST = RetryPolicy(max_attempts=6, max_elapsed=30.0, backoff_base=0.01, backoff_max=0.02)
MEDIA = {"json": "application/json", "xml": "application/xml"}
#: Credits of the module's sandbox: metered (so it can send rate-limit headers), never a limit here.
CREDITS = 100_000


@pytest.fixture(scope="module")
def shared() -> Iterator[Sandbox]:
    with run_sandbox(connections=300, seed=13, rate_limit_credits=CREDITS) as sb:
        yield sb


@pytest.fixture
def sb(shared: Sandbox) -> Sandbox:
    """The module's sandbox with no fault, no rate-limit header, zeroed stats and an empty request log."""
    shared.faults = Faults()
    shared.config.rate_limit_header_prefix = None
    shared.reset_stats()
    shared.recent.clear()
    return shared


def served_ids(sandbox: Sandbox) -> list[str]:
    return [str(c["customer_account_id"]) for c in sandbox.connections]


def landed_ids(data_dir: Path) -> list[str]:
    pages = sorted(raw_snapshot_dir(data_dir, DAY).glob("page-*"))
    return [str(c["customer_account_id"]) for p in pages for c in parse_page(p.read_bytes(), "json").connections]


# ---- the format's headers on every request kind ------------------------------------------------------------------

KINDS: dict[str, tuple[list[str], Callable[[JoorClient], object]]] = {
    "list pages": ([], lambda c: list(c.iter_connection_pages())),
    "planned list pages": ([], lambda c: list(c.iter_connection_pages(concurrency=4))),
    "by id": ([], lambda c: c.get_connection(24181)),
    "by customer code": ([], lambda c: c.get_connection_by_customer_code("JBNY")),
    "retries": (["503", "drop", "truncate", "ok"], lambda c: c.get_connection(24181)),
}


@pytest.mark.parametrize("api_version", ["v2", "v4"])
@pytest.mark.parametrize("fmt", ["json", "xml"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_request_carries_the_formats_content_type(sb: Sandbox, kind: str, fmt: str, api_version: str) -> None:
    """JOOR does not process a call without a content type: GETs carry one; the v4 token request its multipart."""
    script, call = KINDS[kind]
    sb.faults.script = list(script)
    with JoorClient(sandbox_settings(sb, api_version=api_version, fmt=fmt), retry=FAST) as client:
        call(client)
        sent = client.stats.requests
        tokens = client.stats.token_requests
    seen = list(sb.recent)
    assert len(seen) == sent >= (len(script) or 1)
    gets = [r for r in seen if r.method == "GET"]
    posts = [r for r in seen if r.method == "POST"]
    assert len(gets) + len(posts) == len(seen)
    assert {(r.accept, r.content_type) for r in gets} == {(MEDIA[fmt], MEDIA[fmt])}
    assert len(posts) >= tokens == (1 if api_version == "v4" else 0)
    for post in posts:
        assert post.path == "/auth/" and post.accept == MEDIA[fmt]
        assert post.content_type is not None and post.content_type.startswith("multipart/form-data; boundary=")
    assert sb.stats.by_status.get(415, 0) == 0


# ---- rate-limit headers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["X-RateLimit", "RateLimit", "X-Throttling"])
def test_rate_limit_headers_are_recorded_in_the_manifest(sb: Sandbox, tmp_path: Path, prefix: str) -> None:
    sb.config.rate_limit_header_prefix = prefix
    with JoorClient(sandbox_settings(sb)) as client:
        report = fetch_snapshot(client, tmp_path, snap(DAY))
        assert client.pacer.stats.header_updates == 3
    recorded = read_manifest(tmp_path, snap(DAY))["rate_limit_headers"]
    assert recorded == report.stats.rate_limit_headers
    assert set(recorded) == {f"{prefix}-Limit", f"{prefix}-Remaining", f"{prefix}-Reset"}
    assert recorded[f"{prefix}-Limit"] == str(CREDITS)
    assert 0 < int(recorded[f"{prefix}-Remaining"]) < CREDITS
    assert 0 < int(recorded[f"{prefix}-Reset"]) <= 300


class _ScriptedJoor:
    """A loopback server answering every GET with one JOOR page and the given headers (what the sandbox cannot)."""

    def __init__(self, headers: dict[str, str], response: dict[str, Any]) -> None:
        body = render_json({"response": response, "connections": [load_seed_connection()]})

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


ONE_PAGE = {"code": 0, "comment": "", "start_from": 0, "next_start": 0, "count": 1, "log_id": "log-1"}


def test_a_secret_echoed_in_a_rate_limit_header_is_masked(tmp_path: Path) -> None:
    token = "tok-SECRET-echo-7d1e"
    encoded = base64.b64encode(token.encode()).decode()
    hostile = {
        "X-RateLimit-Note": f"for {token}",
        "X-Throttling-Key": encoded,
        "X-RateLimit-Remaining": "9",
        "RateLimit-Cut": "y" * 190 + token,  # a value cut at 200 characters keeps no part of the secret
    }
    hostile |= {f"X-RateLimit-Filler-{i}": "x" * 500 for i in range(40)}
    server = _ScriptedJoor(hostile, ONE_PAGE)
    try:
        settings = sandbox_settings(_Endpoint(server.base_url), api_token=Secret(token))
        with JoorClient(settings) as client:
            fetch_snapshot(client, tmp_path, snap(DAY))
    finally:
        server.close()
    recorded = read_manifest(tmp_path, snap(DAY))["rate_limit_headers"]
    text = json.dumps(recorded)
    assert token not in text and encoded not in text
    assert recorded["X-RateLimit-Note"] == "for ********"
    assert recorded["X-Throttling-Key"] == "********"
    assert recorded["RateLimit-Cut"] == "y" * 190 + "********" and token[:4] not in text
    assert len(recorded) == MAX_RATE_LIMIT_HEADERS
    assert max(len(v) for v in recorded.values()) <= 200


def test_without_a_total_the_walk_is_published_and_says_it_could_not_be_checked(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.WARNING)
    server = _ScriptedJoor({}, {k: v for k, v in ONE_PAGE.items() if k != "count"})
    try:
        with JoorClient(sandbox_settings(_Endpoint(server.base_url))) as client:
            report = fetch_snapshot(client, tmp_path, snap(DAY))
    finally:
        server.close()
    assert report.connections == 1 and report.manifest["reported_total"] is None
    assert "JOOR reported no total (response.count)" in caplog.text


class _Endpoint:
    """What ``sandbox_settings`` reads of a sandbox, for another server."""

    def __init__(self, base_url: str) -> None:
        from joor_pipeline.sandbox import SandboxConfig

        self.base_url = base_url
        self.auth_url = f"{base_url}/auth/"
        self.config = SandboxConfig()


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-RateLimit-Remaining": "12", "X-RateLimit-Reset": "30"}, BudgetHint(12, 30.0)),
        ({"RateLimit-Remaining": "0", "RateLimit-Reset": "7"}, BudgetHint(0, 7.0)),
        ({"X-Throttling-Remaining": "4"}, BudgetHint(4, None)),
        ({"RateLimit": "limit=300, remaining=7, reset=20"}, BudgetHint(7, 20.0)),
        ({"RateLimit": '"default";r=5;t=9'}, BudgetHint(5, 9.0)),
        ({"X-RateLimit-Reset": "Thu, 01 Jan 2026 12:00:30 GMT"}, BudgetHint(None, 30.0)),
        (
            {"X-RateLimit-Reset": str(int(datetime(2026, 1, 1, 12, 0, 45, tzinfo=UTC).timestamp()))},
            BudgetHint(None, 45.0),
        ),
        ({"X-Throttling-Account-Id": "24180", "X-RateLimit-Remaining": "soon"}, BudgetHint(None, None)),
    ],
)
def test_budget_hint_reads_credits_left_and_reset(headers: dict[str, str], expected: BudgetHint) -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert budget_hint(headers, now=lambda: now) == expected


def test_only_rate_limit_headers_are_recorded() -> None:
    pairs = [
        ("X-RateLimit-Limit", "300"),
        ("Content-Type", "x"),
        ("RateLimit-Policy", "300;w=300"),
        ("x-throttling-account-id", "24180"),
        ("Retry-After", "3"),
        ("Set-Cookie", "a=b"),
    ]
    assert rate_limit_headers(pairs) == {
        "X-RateLimit-Limit": "300",
        "RateLimit-Policy": "300;w=300",
        "x-throttling-account-id": "24180",
    }


def test_pacer_follows_credits_left_and_the_reset_time() -> None:
    fake = FakeTime(0.0)
    pacer = CreditPacer(10, 300.0, margin=1.0, **fake.pair())
    pacer.acquire()
    # JOOR: 3 credits left in its window (the others spent the rest), which resets in 100 s, not in our 300 s.
    pacer.observe(BudgetHint(remaining=3, reset_after=100.0), pacer.window_number)
    assert [pacer.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert pacer.acquire() == pytest.approx(101.0)
    assert pacer.stats.windows == 2
    # An answer from the window before says nothing of this one; credits left above the share never raise it.
    pacer.observe(BudgetHint(remaining=0, reset_after=250.0), pacer.window_number - 1)
    pacer.observe(BudgetHint(remaining=1_000), pacer.window_number)
    assert [pacer.acquire() for _ in range(9)] == [0.0] * 9
    assert pacer.acquire() == pytest.approx(300.0 + 1.0)


@pytest.mark.parametrize(("prefix", "throttled"), [("X-RateLimit", 0), (None, 1)])
def test_with_rate_limit_headers_a_window_drained_by_others_meets_no_429(prefix: str | None, throttled: int) -> None:
    fake = FakeTime()
    with run_sandbox(
        connections=40, rate_limit_credits=300, rate_limit_window=300.0, rate_limit_header_prefix=prefix, **fake.pair()
    ) as sb:
        settings = sandbox_settings(sb, page_size=1, rate_limit_credits=300, rate_limit_window=300.0)
        with JoorClient(settings, **fake.pair()) as client:
            pages = client.iter_connection_pages()
            got = [next(pages)]
            assert sb.spend(280) == 280  # another integration of the account, after our first request
            got.extend(pages)
            assert client.stats.throttled == throttled
    assert [str(c["customer_account_id"]) for p in got for c in p.page.connections] == served_ids(sb)
    assert sb.stats.throttled == throttled


@pytest.mark.parametrize(("prefix", "low", "high"), [("RateLimit", 50.0, 60.0), (None, 300.0, 310.0)])
def test_a_reset_sooner_than_the_estimate_is_followed(prefix: str | None, low: float, high: float) -> None:
    """Another integration opened JOOR's window 250 s ago: the headers say it resets in 50 s, not 300."""
    fake = FakeTime()
    with run_sandbox(
        connections=15, rate_limit_credits=300, rate_limit_window=300.0, rate_limit_header_prefix=prefix, **fake.pair()
    ) as sb:
        sb.spend(1)
        fake.advance(250.0)
        settings = sandbox_settings(sb, page_size=1, rate_limit_credits=10, rate_limit_window=300.0)
        with JoorClient(settings, **fake.pair()) as client:
            assert len([p for p in client.iter_connection_pages()]) == 15
            waited = client.pacer.stats.waited_seconds
    assert sb.stats.throttled == 0
    assert low <= waited <= high


# ---- the walk: complete or refused ------------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 4])
def test_issue_19_break_1_a_page_repeating_the_one_before_is_refused(tmp_path: Path, concurrency: int) -> None:
    """Page 2 repeats 50 connections of page 1 while response.count says 300: main exited 0 with 250 retailers."""
    with run_sandbox(connections=300, seed=5, rate_limit_credits=0) as sb:
        with JoorClient(sandbox_settings(sb, concurrency=concurrency)) as client:
            fetch_snapshot(client, tmp_path, snap(DAY))
            before = read_manifest(tmp_path, snap(DAY))
            sb.faults.page_overlap = 50
            sb.reset_stats()
            with pytest.raises(IncompleteSnapshot) as info:
                fetch_snapshot(client, tmp_path, snap(DAY))
    message = str(info.value)
    walk = (
        "250 distinct connection(s) in 3 page(s) against JOOR's total of 300 (50 short; 50 repeated across pages, "
        "on page(s) 1 (log_id "
    )
    assert message.count(walk) == 2
    assert message.count("last page 2 (log_id ") == 2
    assert sb.stats.requests == 6  # two walks of three pages, each at the same pacer
    assert read_manifest(tmp_path, snap(DAY)) == before  # nothing published: the previous snapshot is untouched


def test_issue_19_break_1_on_the_command_line(tmp_path: Path, monkeypatch, capsys) -> None:
    with run_sandbox(connections=300, seed=5, rate_limit_credits=0, faults=Faults(page_overlap=50)) as sb:
        monkeypatch.setenv("JOOR_BASE_URL", sb.base_url)
        monkeypatch.setenv("JOOR_API_TOKEN", sb.config.api_token)
        code = main(["fetch", "--date", DAY.isoformat(), "--allow-backdated", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("error: the connection list came back short on each of 2 walks, so nothing was kept")
    assert "(50 short" in err[-1] and "Traceback" not in "\n".join(err)
    assert not raw_snapshot_dir(tmp_path, DAY).exists()


@pytest.mark.parametrize(
    ("faults", "walks", "total"),
    [
        (Faults(list_shifts=[50]), 2, 350),  # 50 retailers connect mid-walk: page 1 repeats, the walk again is whole
        (Faults(cursor_lag=7), 1, 300),  # next_start short of the page's end: repeats, nothing lost
    ],
)
def test_a_walk_that_lands_every_connection_is_published(
    tmp_path: Path, faults: Faults, walks: int, total: int
) -> None:
    with run_sandbox(connections=300, seed=6, rate_limit_credits=0, faults=faults) as sb:
        with JoorClient(sandbox_settings(sb)) as client:
            report = fetch_snapshot(client, tmp_path, snap(DAY))
        served = served_ids(sb)
    manifest = read_manifest(tmp_path, snap(DAY))
    assert (report.walks, manifest["walks"]) == (walks, walks)
    assert manifest["reported_total"] == manifest["distinct_connections"] == total == len(served)
    assert sorted(set(landed_ids(tmp_path))) == sorted(served)
    assert manifest["repeated_connections"] == report.connections - total
    assert (manifest["repeated_connections"] > 0) == (faults.cursor_lag > 0)


def test_a_list_shifting_under_both_walks_is_refused(tmp_path: Path) -> None:
    with run_sandbox(connections=300, seed=6, rate_limit_credits=0, faults=Faults(list_shifts=[50, 20])) as sb:
        with JoorClient(sandbox_settings(sb)) as client, pytest.raises(IncompleteSnapshot) as info:
            fetch_snapshot(client, tmp_path, snap(DAY))
    assert "walk 1: 300 distinct connection(s) in 4 page(s) against JOOR's total of 350 (50 short" in str(info.value)
    assert "walk 2: 350 distinct connection(s) in 4 page(s) against JOOR's total of 370 (20 short" in str(info.value)
    assert not raw_snapshot_dir(tmp_path, DAY).exists()


def test_a_disconnect_mid_walk_is_what_offset_paging_cannot_see(tmp_path: Path) -> None:
    """The README's limit, pinned: 10 retailers leave the head of the list after page 0, so the rest shifts
    forward; the count drops with it, the walk looks whole, and 10 connections still there are not landed."""
    with run_sandbox(connections=300, seed=6, rate_limit_credits=0, faults=Faults(list_shifts=[-10])) as sb:
        first_ten = served_ids(sb)[:10]
        with JoorClient(sandbox_settings(sb)) as client:
            report = fetch_snapshot(client, tmp_path, snap(DAY))
        served = served_ids(sb)
    landed = set(landed_ids(tmp_path))
    assert report.walks == 1 and report.connections == 290 == len(served)
    assert landed - set(served) == set(first_ten)  # gone from JOOR, landed before they left
    assert len(set(served) - landed) == 10  # still connected, skipped by the shift: the next day's snapshot has them


# ---- the connection test: joor-pipeline check ------------------------------------------------------------------


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sb: Sandbox) -> pytest.MonkeyPatch:
    """No setting but those pointing at the module's sandbox; the data directory named and never made."""
    for setting in SETTINGS:
        monkeypatch.delenv(setting.name, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("JOOR_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JOOR_BASE_URL", sb.base_url)
    monkeypatch.setenv("JOOR_API_TOKEN", sb.config.api_token)
    return monkeypatch


def _v4(sb: Sandbox) -> dict[str, str]:
    c = sb.config
    return {
        "JOOR_API_VERSION": "v4",
        "JOOR_ACCOUNT_ID": c.account_id,
        "JOOR_CLIENT_ID": c.client_id,
        "JOOR_CLIENT_SECRET": c.client_secret,
        "JOOR_USERNAME": c.username,
        "JOOR_PASSWORD": c.password,
    }


#: (extra settings, fault script, exit code, what the output says, requests the sandbox saw)
CHECKS: dict[str, tuple[Callable[[Sandbox], dict[str, str]], list[str], int, str, int]] = {
    "v2 json": (lambda sb: {}, [], 0, "connections     300 (JOOR's response.count", 1),
    "v4 xml": (lambda sb: {**_v4(sb), "JOOR_FORMAT": "xml"}, [], 0, "2 of at most 4, 1 token request(s)", 2),
    "token rejected": (
        lambda sb: {"JOOR_API_TOKEN": "not-the-token"},
        [],
        1,
        "JOOR rejected the API token (HTTP 401, 'Invalid authentication credentials', log_id ",
        1,
    ),
    "v4 credentials refused": (
        lambda sb: {**_v4(sb), "JOOR_PASSWORD": "wrong"},
        [],
        1,
        "JOOR's token endpoint refused the v4 credentials",
        1,
    ),
    "v4 token refused on the list": (
        lambda sb: {**_v4(sb), "JOOR_ACCOUNT_ID": "999"},
        [],
        1,
        "JOOR rejected the v4 token on the list (HTTP 401",
        4,
    ),
    "list endpoint missing": (
        lambda sb: {"JOOR_BASE_URL": f"{sb.base_url}/api"},
        [],
        1,
        "the list endpoint GET /v2/connection/ is not there (HTTP 404",
        1,
    ),
    "wrong format": (
        lambda sb: {},
        ["wrong_format"],
        1,
        "JOOR answered XML (application/xml) to a request for JSON",
        1,
    ),
    "unexpected envelope": (lambda sb: {}, ["other_envelope"], 1, "is not JOOR's envelope (envelope has no", 1),
    "throttled": (lambda sb: {}, ["429"], 1, "JOOR answered 429: the account's rate-limit credits are spent", 1),
    "failing": (lambda sb: {}, ["503"], 1, "HTTP 503: JOOR is failing; try again later", 1),
    "tls": (lambda sb: {"JOOR_BASE_URL": sb.base_url.replace("http:", "https:")}, [], 1, "the TLS handshake with", 0),
    "dns": (
        lambda sb: {"JOOR_BASE_URL": "http://joor-check.invalid"},
        [],
        1,
        "cannot resolve joor-check.invalid (DNS",
        0,
    ),
}


@pytest.mark.parametrize("case", CHECKS)
def test_check(env: pytest.MonkeyPatch, sb: Sandbox, tmp_path: Path, capsys, case: str) -> None:
    settings, script, code, says, requests = CHECKS[case]
    sb.config.rate_limit_header_prefix = "X-RateLimit"
    for name, value in settings(sb).items():
        env.setenv(name, value)
    sb.faults.script = list(script)
    assert main(["check"]) == code
    out, err = capsys.readouterr()
    assert says in (out if code == 0 else err)
    assert sb.stats.requests == requests <= MAX_REQUESTS
    assert not (tmp_path / "data").exists()
    for secret in (sb.config.api_token, sb.config.client_secret, sb.config.password):
        assert secret not in out + err
    if code == 0:
        assert out.startswith("account default: ok\n") and err == ""
        assert "  rate limit      X-RateLimit-Limit: 100000, X-RateLimit-Remaining: " in out
        assert "  full fetch      about " in out and ": 3 page(s) of 100, " in out
    else:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err
        assert f"  problem: {lines[0].removeprefix('error: ')}" in out


def test_check_writes_nothing_to_an_existing_data_dir(env: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    (data / "raw").mkdir(parents=True)
    (data / "raw" / "kept.txt").write_text("x")
    before = sorted((p.relative_to(data), p.stat().st_mtime_ns) for p in data.rglob("*"))
    assert main(["check"]) == 0
    assert sorted((p.relative_to(data), p.stat().st_mtime_ns) for p in data.rglob("*")) == before


def test_check_without_configuration_exits_2(env: pytest.MonkeyPatch, sb: Sandbox, capsys) -> None:
    env.delenv("JOOR_API_TOKEN")
    assert main(["check"]) == 2
    assert capsys.readouterr().err.startswith("error: invalid JOOR configuration: JOOR_API_TOKEN is required")
    assert sb.stats.requests == 0


def test_check_covers_every_configured_account(env: pytest.MonkeyPatch, sb: Sandbox, tmp_path: Path, capsys) -> None:
    accounts = tmp_path / "accounts.toml"
    accounts.write_text(
        f'[accounts.good]\nbase_url = "{sb.base_url}"\napi_token_env = "GOOD_TOKEN"\n\n'
        f'[accounts.bad]\nbase_url = "{sb.base_url}"\napi_token_env = "BAD_TOKEN"\n'
    )
    env.setenv("JOOR_ACCOUNTS_FILE", str(accounts))
    env.setenv("GOOD_TOKEN", sb.config.api_token)
    env.setenv("BAD_TOKEN", "revoked-token")
    assert main(["check"]) == 1
    out, err = capsys.readouterr()
    assert "account good: ok" in out and "account bad: FAILED" in out
    assert err.startswith("error: account bad: JOOR rejected the API token (HTTP 401")
    assert "check api_token_env (in JOOR_ACCOUNTS_FILE)" in err
    assert main(["check", "--account", "good"]) == 0
    assert "account bad" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--from", "2026-03-01", "--to", "2026-03-02", "--refetch"],
        ["run", "--date", "2026-03-01", "--refetch"],
    ],
)
def test_refetch_that_cannot_apply_is_a_usage_error(env: pytest.MonkeyPatch, capsys, args: list[str]) -> None:
    env.setenv("JOOR_FIRST_SNAPSHOT_DATE", "2026-01-01")
    assert main(args) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: ") and "--refetch" in line and "\n" not in line


def test_fetch_estimate() -> None:
    small = estimate_fetch(20_000, page_size=100, credits=300, window=300.0, round_trip=0.25)
    assert (small.pages, small.credits, small.windows, small.seconds, small.credit_bound) == (200, 200, 1, 50.0, False)
    large = estimate_fetch(200_000, page_size=100, credits=300, window=300.0, round_trip=0.25, token_request=True)
    assert (large.pages, large.credits, large.windows, large.credit_bound) == (2_000, 2_005, 7, True)
    assert large.seconds == pytest.approx(6 * 300 + (2_000 - (6 * 300 - 5)) * 0.25)


# ---- the connection test in Dagster ------------------------------------------------------------------------------


@pytest.mark.parametrize(("token", "success"), [(None, True), ("revoked-token", False)])
def test_check_job(sb: Sandbox, tmp_path: Path, token: str | None, success: bool) -> None:
    joor = JoorApiResource(base_url=sb.base_url, api_token=token or sb.config.api_token)
    defs = build_defs({}, resources={"joor": joor, "storage": DataDirResource(data_dir=str(tmp_path / "data"))})
    assert CHECK_JOB not in {node.name for node in defs.resolve_job_def(JOB_NAME).nodes}
    with dg.DagsterInstance.ephemeral() as instance:
        result = defs.resolve_job_def(CHECK_JOB).execute_in_process(instance=instance, raise_on_error=False)
    assert result.success is success
    if success:
        (output,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
        metadata = output.event_specific_data.metadata  # type: ignore[union-attr]
        assert metadata["default/joor_reported_total"].value == 300
        assert metadata["default/requests"].value == 1
    else:
        failure = result.get_step_failure_events()[0].step_failure_data.user_failure_data
        assert failure.description.startswith("account default: JOOR rejected the API token (HTTP 401")
    assert sb.stats.requests == 1
    assert not (tmp_path / "data").exists()

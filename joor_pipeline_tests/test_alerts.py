"""Alerts and freshness: real webhook and SMTP receivers on 127.0.0.1, the CLI, the daemon's sensors, a fake clock."""

from __future__ import annotations

import json
import logging
import subprocess
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from joor_pipeline.alerts import (
    ALERT_TAG,
    ALERTED_TAG,
    IN_PROCESS,
    Alert,
    AlertSettings,
    alert_for_failed_run,
    load_alert_settings,
    render,
    scrub,
    secret_values,
    send_alert,
)
from joor_pipeline.assets.joor import joor_raw_connections, joor_tables
from joor_pipeline.assets.resources import DataDirResource, JoorApiResource
from joor_pipeline.assets.sensors import (
    FRESHNESS_CHECK_KEYS,
    build_alert_sensors,
    build_freshness_checks,
    build_freshness_sensor,
)
from joor_pipeline.batch import CheckOutcome, RunSummary, open_instance, run_batch
from joor_pipeline.cli import main
from joor_pipeline.config import NOT_CONFIGURED, Secret, account_environments
from joor_pipeline.definitions import JOB_NAME, build_defs
from joor_pipeline.flatten.runner import flatten_snapshot
from joor_pipeline.freshness import evaluate
from joor_pipeline.joor.errors import ConfigError
from joor_pipeline.sandbox import Faults, generate_connections, run_sandbox
from joor_pipeline_tests.raw_fixtures import land, partition_dir, snap
from joor_pipeline_tests.receivers import (
    closed_port,
    self_signed_certificate,
    silent_port,
    smtp_receiver,
    webhook_receiver,
)

TODAY = datetime.now(UTC).date()
TOKEN = "tok-5e1f-never-in-an-alert"
HOOK_SECRET = "sig-9a7c-hook-secret"
SMTP_PASSWORD = "pw-31d8-mail-secret"
RECIPIENTS = ("ops@example.com", "data@example.com")
UI = "http://dagster.example:3000"


def channels(webhook_url: str | None = None, smtp_port: int | None = None, **extra: str) -> dict[str, str]:
    """Alert settings aimed at the receivers: a webhook URL carrying a secret in its query, plain SMTP."""
    env = {"JOOR_UI_URL": UI, **extra}
    if webhook_url is not None:
        env["JOOR_ALERT_WEBHOOK_URL"] = f"{webhook_url}/services/T0/B0?sig={HOOK_SECRET}"
    if smtp_port is not None:
        env |= {
            "JOOR_ALERT_SMTP_HOST": "127.0.0.1",
            "JOOR_ALERT_SMTP_PORT": str(smtp_port),
            "JOOR_ALERT_SMTP_SECURITY": "none",
            "JOOR_ALERT_SMTP_FROM": "joor@example.com",
            "JOOR_ALERT_SMTP_TO": ", ".join(RECIPIENTS),
        }
    return env


def fields_of(text: str) -> dict[str, str]:
    """The ``name: value`` lines of an alert's text."""
    return dict(line.split(": ", 1) for line in text.splitlines()[1:] if ": " in line)


# ---- settings and scrubbing ------------------------------------------------------------------------------------


def test_alert_settings_are_checked_at_once_without_echoing_a_secret(tmp_path: Path) -> None:
    assert load_alert_settings({}).channels == []
    with pytest.raises(ConfigError) as info:
        load_alert_settings(
            {
                "JOOR_ALERT_WEBHOOK_URL": "https://user:hunter2@hooks.example.com/x",
                "JOOR_ALERT_SMTP_HOST": "mail.example.com",
                "JOOR_ALERT_SMTP_PORT": "0",
                "JOOR_ALERT_SMTP_TO": "ops@example.com, not-an-address",
                "JOOR_ALERT_SMTP_USER": "joor",
                "JOOR_ALERT_TIMEOUT": "nan",
            }
        )
    message = str(info.value)
    for name in (
        "JOOR_ALERT_WEBHOOK_URL",
        "JOOR_ALERT_SMTP_PORT",
        "JOOR_ALERT_SMTP_FROM",
        "'not-an-address'",
        "JOOR_ALERT_SMTP_USER and JOOR_ALERT_SMTP_PASSWORD go together",
        "JOOR_ALERT_TIMEOUT",
    ):
        assert name in message
    assert "hunter2" not in message and "\n" not in message
    with pytest.raises(ConfigError, match="JOOR_ALERT_FRESHNESS=on needs an alert channel"):
        load_alert_settings({"JOOR_ALERT_FRESHNESS": "on"})
    with pytest.raises(ConfigError, match="would send JOOR_ALERT_SMTP_PASSWORD unencrypted"):
        load_alert_settings(
            {**channels(smtp_port=25), "JOOR_ALERT_SMTP_USER": "u", "JOOR_ALERT_SMTP_PASSWORD": SMTP_PASSWORD}
        )
    with pytest.raises(ConfigError, match="JOOR_ALERT_SMTP_TO set without JOOR_ALERT_SMTP_HOST"):
        load_alert_settings({"JOOR_ALERT_SMTP_TO": "ops@example.com"})
    settings = load_alert_settings({**channels("https://hooks.example.com", 2525), "JOOR_ALERT_SMTP_SECURITY": "SSL"})
    assert settings.channels == ["webhook", "email"] and settings.webhook_host == "hooks.example.com"
    assert (settings.smtp_security, settings.smtp_port, settings.smtp_to) == ("ssl", 2525, RECIPIENTS)
    assert HOOK_SECRET not in repr(settings)
    assert load_alert_settings({"JOOR_ALERT_SMTP_SECURITY": "ssl"}).smtp_port == 465
    # An account file is no place for them: they belong to the whole deployment.
    accounts = tmp_path / "accounts.toml"
    accounts.write_text('[accounts.a]\napi_token_env = "T"\nalert_timeout = 5\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"alert_timeout is set for the whole deployment.*JOOR_ALERT_TIMEOUT"):
        account_environments({"JOOR_ACCOUNTS_FILE": str(accounts), "T": "x"})


def test_scrub_masks_secrets_queries_and_user_info(tmp_path: Path) -> None:
    accounts = tmp_path / "accounts.toml"
    accounts.write_text('[accounts.brand_a]\napi_token_env = "BRAND_A_TOKEN"\n', encoding="utf-8")
    environ = {
        "JOOR_API_TOKEN": TOKEN,
        "JOOR_ACCOUNTS_FILE": str(accounts),
        "BRAND_A_TOKEN": "brand-a-token-77",
        "JOOR_PASSWORD": "abc",  # too short to search for: it would mask ordinary words
    }
    secrets = secret_values(environ)
    assert {TOKEN, "brand-a-token-77"} <= secrets and "abc" not in secrets
    text = (
        f"token {TOKEN} and brand-a-token-77 failed at GET https://u:p@api.example.com/v2/x/?start_from=0&token=t2 "
        "and https://h.example.com/a#frag; the abc of it"
    )
    cleaned = scrub(text, secrets)
    assert scrub(cleaned, secrets) == cleaned
    assert cleaned == (
        "token ******** and ******** failed at GET https://***@api.example.com/v2/x/?... "
        "and https://h.example.com/a?...; the abc of it"
    )


# ---- the CLI: one failed run, one alert ------------------------------------------------------------------------


def test_a_failed_cli_run_sends_one_webhook_post_and_one_email(tmp_path: Path, monkeypatch, capsys, caplog) -> None:
    """A run failing at the fetch, with a token in the environment and a URL with a query in its root cause: one POST
    and one email naming the account, the date, the step, the cause line the CLI prints and the run's UI link, and
    carrying none of the secrets nor the query."""
    caplog.set_level(logging.INFO, logger="joor_pipeline.alerts")
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    with (
        webhook_receiver() as hook,
        smtp_receiver() as mail,
        run_sandbox(connections=30, rate_limit_credits=0, api_token=TOKEN, faults=Faults(error_rate=1.0)) as sb,
    ):
        for name, value in {
            **channels(hook.url, mail.port),
            "JOOR_BASE_URL": sb.base_url,
            "JOOR_API_TOKEN": TOKEN,
            "JOOR_MAX_ATTEMPTS": "1",
        }.items():
            monkeypatch.setenv(name, value)
        code = main(["run", "--data-dir", str(tmp_path / "data")])
    out, err = capsys.readouterr()
    assert code == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: joor_raw_connections: GET http://127.0.0.1:") and "?start_from=0" in last
    printed_cause = last.removeprefix("error: joor_raw_connections: ")
    run_id = out.split("Dagster run ", 1)[1].split()[0]

    assert len(hook.posts) == 1
    post = hook.posts[0]
    assert post.path == f"/services/T0/B0?sig={HOOK_SECRET}" and post.headers["Content-Type"] == "application/json"
    assert set(post.json) == {"text"}
    text = post.json["text"]
    assert text.splitlines()[0] == f"joor-pipeline: run failed (account default, {TODAY})"
    fields = fields_of(text)
    assert fields["account"] == "default" and fields["date"] == TODAY.isoformat()
    assert fields["failed step"] == "joor_raw_connections"
    assert fields["cause"] == scrub(printed_cause) and fields["cause"].startswith("GET http://127.0.0.1:")
    assert "/v2/connection/?... failed after 1 attempt(s)" in fields["cause"]
    assert fields["run"] == run_id and fields["link"] == f"{UI}/runs/{run_id}"
    assert fields["launched by"].startswith("joor-pipeline run on ")

    assert len(mail.messages) == 1
    envelope, message = mail.messages[0]
    assert envelope.mail_from == "joor@example.com" and tuple(envelope.rcpt_tos) == RECIPIENTS
    assert message["Subject"] == text.splitlines()[0] and message["To"] == ", ".join(RECIPIENTS)
    assert message.get_content().replace("\r\n", "\n").strip() == text

    for secret in (TOKEN, HOOK_SECRET, "start_from="):
        assert secret not in post.body.decode() and secret not in str(message)
        assert secret not in caplog.text
    assert [r.getMessage().split(":")[0] for r in caplog.records if r.name == "joor_pipeline.alerts"] == [
        "alert sent by webhook to 127.0.0.1",
        "alert sent by email to 2 recipient(s) via 127.0.0.1",
    ]


def test_an_unreachable_webhook_is_logged_and_leaves_the_run_as_it_was(
    tmp_path: Path, monkeypatch, capsys, caplog
) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    with closed_port() as joor, closed_port() as hook:
        for name, value in {
            "JOOR_BASE_URL": f"http://127.0.0.1:{joor}",  # a JOOR that refuses: the run fails at the fetch
            "JOOR_API_TOKEN": TOKEN,
            "JOOR_MAX_ATTEMPTS": "1",
            "JOOR_ALERT_WEBHOOK_URL": f"http://127.0.0.1:{hook}/hook?sig={HOOK_SECRET}",
        }.items():
            monkeypatch.setenv(name, value)
        code = main(["run", "--data-dir", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert code == 1  # what a failed run exits with, alert or not
    assert err.strip().splitlines()[-1].startswith("error: joor_raw_connections: GET http://127.0.0.1:")
    warnings = [r.getMessage() for r in caplog.records if r.name == "joor_pipeline.alerts"]
    assert len(warnings) == 1
    assert warnings[0].startswith("alert NOT sent by webhook to 127.0.0.1 (ConnectError: ")
    assert HOOK_SECRET not in caplog.text + err


def test_a_bad_alert_setting_stops_the_cli_before_the_run(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("JOOR_API_TOKEN", TOKEN)
    monkeypatch.setenv("JOOR_ALERT_SMTP_HOST", "mail.example.com")
    code = main(["run", "--data-dir", str(tmp_path / "data"), "--allow-backdated"])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "error: invalid JOOR configuration: JOOR_ALERT_SMTP_FROM (the sender address) is required with "
        "JOOR_ALERT_SMTP_HOST; JOOR_ALERT_SMTP_TO (comma-separated recipients) is required with JOOR_ALERT_SMTP_HOST"
    )
    assert not (tmp_path / "data").exists()


def test_a_successful_run_alerts_its_failed_warning_checks_only_when_asked() -> None:
    with webhook_receiver() as hook:
        summary = RunSummary(run_id="r1", success=True, account="brand_a", snapshot_date="2026-03-02")
        summary.checks = [
            CheckOutcome("connections", "unique_keys", True, "ERROR", None),
            CheckOutcome("connections", "max_lengths", False, "WARN", 3),
        ]
        assert alert_for_failed_run(summary, channels(hook.url)) == []
        sent = alert_for_failed_run(summary, channels(hook.url, JOOR_ALERT_WARNINGS="on"))
    assert [d.ok for d in sent] == [True] and len(hook.posts) == 1
    text = hook.posts[0].json["text"]
    assert text.splitlines()[0] == "joor-pipeline: warning checks failed (account brand_a, 2026-03-02)"
    assert text.endswith("\n\nWARN connections.max_lengths (3 records)")


# ---- channels: bounded, and the shapes they take ---------------------------------------------------------------


def test_a_webhook_that_never_answers_is_given_up_on_and_logged(caplog) -> None:
    with silent_port() as port:
        settings = load_alert_settings(
            {"JOOR_ALERT_WEBHOOK_URL": f"http://127.0.0.1:{port}/h?sig={HOOK_SECRET}", "JOOR_ALERT_TIMEOUT": "0.3"}
        )
        deliveries = send_alert(Alert("run failed", "boom"), settings)
    assert len(deliveries) == 1 and not deliveries[0].ok
    assert "Timeout" in deliveries[0].detail or "no answer within 0.3 s" in deliveries[0].detail
    assert "alert NOT sent by webhook to 127.0.0.1" in caplog.text and HOOK_SECRET not in caplog.text


def test_a_refused_webhook_post_and_the_adaptive_card_shape() -> None:
    with webhook_receiver(status=403) as refusing:
        settings = AlertSettings(webhook_url=Secret(refusing.url + "/h"))
        (delivery,) = send_alert(Alert("run failed", "boom"), settings)
    assert not delivery.ok and delivery.detail == "HTTP 403: ok"
    alert = Alert("run failed", "boom", account="brand_a", snapshot_date="2026-03-02", step="joor_tables", run_id="r9")
    with webhook_receiver() as hook:
        settings = AlertSettings(webhook_url=Secret(hook.url + "/h"), webhook_format="adaptive-card", ui_url=UI)
        (delivery,) = send_alert(alert, settings)
    assert delivery.ok
    payload = hook.posts[0].json
    assert payload["type"] == "message" and len(payload["attachments"]) == 1
    attachment = payload["attachments"][0]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.2"
    facts = {fact["title"]: fact["value"] for fact in card["body"][1]["facts"]}
    assert facts == {
        "account": "brand_a",
        "date": "2026-03-02",
        "failed step": "joor_tables",
        "cause": "boom",
        "run": "r9",
        "link": f"{UI}/runs/r9",
    }
    assert card["actions"] == [{"type": "Action.OpenUrl", "title": "Open the run", "url": f"{UI}/runs/r9"}]


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_email_over_tls_with_a_login(security: str, tmp_path: Path, monkeypatch) -> None:
    """STARTTLS and TLS from the start, the server's certificate verified (trusted through SSL_CERT_FILE, as an
    operator would add a private CA), the login checked by the server; the password is in no message."""
    certificate = self_signed_certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    with smtp_receiver(security=security, certificate=certificate, login=("joor", SMTP_PASSWORD)) as mail:
        environ = {
            **channels(smtp_port=mail.port),
            "JOOR_ALERT_SMTP_SECURITY": security,
            "JOOR_ALERT_SMTP_USER": "joor",
            "JOOR_ALERT_SMTP_PASSWORD": SMTP_PASSWORD,
        }
        alert = Alert("run failed", f"it said {SMTP_PASSWORD}", account="brand_a")
        (delivery,) = send_alert(alert, load_alert_settings(environ), secrets=secret_values(environ))
    assert delivery.ok, delivery.detail
    assert mail.logins == [("joor", SMTP_PASSWORD)]
    ((_envelope, message),) = mail.messages
    assert SMTP_PASSWORD not in str(message) and "cause: it said ********" in message.get_content()


# ---- Dagster: the run-failure sensor ---------------------------------------------------------------------------


def _tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, cursor: str | None, **resources) -> str | None:
    """One evaluation of ``sensor`` on ``instance`` as the daemon makes it; returns the new cursor."""
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, definitions=dg.Definitions(sensors=[sensor]), resources=resources or None
    )
    data = sensor.evaluate_tick(context)
    for event in data.asset_events:  # what the daemon does with a sensor's asset events
        instance.report_runless_asset_event(event)
    return data.cursor


def test_the_failure_sensor_alerts_a_failed_run_once(tmp_path: Path) -> None:
    """A run launched through the code location (here: tagged as the schedule's) that fails gives one alert, with the
    same root-cause line as the CLI's; a run the CLI executed in-process, and a run already alerted, give none."""
    home, data = tmp_path / "home", tmp_path / "data"
    with webhook_receiver() as hook, smtp_receiver() as mail, open_instance({"DAGSTER_HOME": str(home)}) as instance:
        failure_sensor, _warnings = build_alert_sensors(channels(hook.url, mail.port))
        cursor = _tick(failure_sensor, instance, None)  # the first tick only starts the cursor
        defs = build_defs({}, resources={"joor": JoorApiResource(), "storage": DataDirResource(data_dir=str(data))})
        scheduled = (
            defs.resolve_job_def(JOB_NAME)
            .execute_in_process(
                partition_key=f"default|{TODAY}",
                instance=instance,
                raise_on_error=False,
                tags={"dagster/schedule_name": "joor_daily_schedule"},
            )
            .dagster_run
        )
        cli = run_batch([("default", TODAY)], {"DAGSTER_HOME": str(home), "JOOR_DATA_DIR": str(data)}).runs[0]
        assert scheduled.status == dg.DagsterRunStatus.FAILURE and not cli.success
        assert instance.get_run_by_id(cli.run_id).tags[ALERT_TAG] == IN_PROCESS  # type: ignore[union-attr]

        cursor = _tick(failure_sensor, instance, cursor)
        assert len(hook.posts) == 1 and len(mail.messages) == 1
        fields = fields_of(hook.posts[0].json["text"])
        assert fields == {
            "account": "default",
            "date": TODAY.isoformat(),
            "failed step": "joor_raw_connections",
            "cause": NOT_CONFIGURED,
            "launched by": "schedule joor_daily_schedule",
            "run": scheduled.run_id,
            "link": f"{UI}/runs/{scheduled.run_id}",
        }
        assert cli.cause == NOT_CONFIGURED  # the line the CLI prints last
        assert instance.get_run_by_id(scheduled.run_id).tags[ALERTED_TAG] == "webhook sent, email sent"  # type: ignore[union-attr]
        assert ALERTED_TAG not in instance.get_run_by_id(cli.run_id).tags  # type: ignore[union-attr]

        _tick(failure_sensor, instance, cursor)  # nothing new
        # A daemon that died after sending, before it saved its cursor, sees the same failures again: the tag holds.
        again = build_alert_sensors(channels(hook.url, mail.port))[0]
        _tick(again, instance, json.dumps({"__class__": "RunStatusSensorCursor", "record_id": 0}))
    assert len(hook.posts) == 1 and len(mail.messages) == 1


def test_the_warning_sensor_alerts_a_successful_run_whose_warnings_failed(tmp_path: Path) -> None:
    day = date(2026, 3, 2)
    connections = generate_connections(20, seed=4)
    connections[1]["customer_code"] = "X" * 51  # JOOR's field table: at most 50
    land(tmp_path, day, connections)
    with webhook_receiver() as hook, open_instance({"DAGSTER_HOME": str(tmp_path / "home")}) as instance:
        off, on = (build_alert_sensors(channels(hook.url, JOOR_ALERT_WARNINGS=w))[1] for w in ("off", "on"))
        cursors = {s: _tick(s, instance, None) for s in (off, on)}
        result = dg.materialize(
            [joor_raw_connections, joor_tables],
            partition_key=f"default|{day}",
            instance=instance,
            resources={"joor": JoorApiResource(), "storage": DataDirResource(data_dir=str(tmp_path))},
        )
        assert result.success
        _tick(off, instance, cursors[off])
        assert hook.posts == []
        _tick(on, instance, cursors[on])
    assert len(hook.posts) == 1
    text = hook.posts[0].json["text"]
    assert text.splitlines()[0] == "joor-pipeline: warning checks failed (account default, 2026-03-02)"
    assert "\nWARN connections.warning_rules: max_lengths (1 records)" in text
    assert fields_of(text)["run"] == result.run_id


# ---- freshness ---------------------------------------------------------------------------------------------------


def _publish(data_dir: Path, account: str, day: date, at: datetime) -> None:
    """Publish ``account``'s tables of ``day`` (a real flatten), then date the publication ``at`` in its manifest."""
    land(data_dir, day, generate_connections(10, seed=len(account)), account=account)
    flatten_snapshot(data_dir, snap(day, account), workers=1)
    stamp(data_dir, account, day, at)


def stamp(data_dir: Path, account: str, day: date, at: datetime) -> None:
    """Give the publication of ``account``'s ``day`` a known time (and a new id, as a new publication has)."""
    path = partition_dir(data_dir, "connections", day, account=account) / "_manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["published_at"] = at.isoformat()
    manifest["publication_id"] = f"pub-{at:%Y%m%d%H%M}"
    path.write_text(json.dumps(manifest), encoding="utf-8")


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_freshness_with_a_fake_clock_passes_then_fails_then_alerts_once_per_account(tmp_path: Path) -> None:
    day = date(2026, 3, 2)
    at = datetime(2026, 3, 2, 6, 10, tzinfo=UTC)
    _publish(tmp_path, "brand_a", day, at)
    _publish(tmp_path, "brand_b", day, at + timedelta(minutes=10))
    clock = FakeClock(at + timedelta(hours=6))
    storage = DataDirResource(data_dir=str(tmp_path))
    with webhook_receiver() as hook, open_instance({"DAGSTER_HOME": str(tmp_path / "home")}) as instance:
        sensor = build_freshness_sensor(["brand_a", "brand_b"], channels(hook.url, JOOR_ALERT_FRESHNESS="on"), clock)

        def tick(cursor: str | None) -> str | None:
            return _tick(sensor, instance, cursor, storage=storage)

        def history() -> list[bool]:
            records = instance.event_log_storage.get_asset_check_execution_history(FRESHNESS_CHECK_KEYS[0], limit=50)
            return [r.event.dagster_event.event_specific_data.passed for r in reversed(records)]  # type: ignore[union-attr]

        cursor = tick(None)  # 6 h after: fresh
        assert history() == [True] and hook.posts == []
        evaluation = instance.event_log_storage.get_asset_check_execution_history(FRESHNESS_CHECK_KEYS[3], limit=1)
        assert (
            evaluation[0]
            .event.dagster_event.event_specific_data.metadata[  # type: ignore[union-attr]
                "dagster/last_updated_timestamp"
            ]
            .value
            == at.timestamp()
        )
        cursor = tick(cursor)  # nothing changed: nothing recorded
        assert history() == [True]

        clock.now = at + timedelta(hours=26, minutes=5)  # brand_a over 26 h, brand_b not yet
        cursor = tick(cursor)
        assert history() == [True, False] and len(hook.posts) == 1
        first = hook.posts[0].json["text"]
        assert first.splitlines()[0] == "joor-pipeline: tables stale (account brand_a)"
        assert fields_of(first)["cause"] == (
            "brand_a: last publication 2026-03-02 at 2026-03-02T06:10+00:00, 26.1 h old, over the 26.0 h limit"
        )

        clock.now = at + timedelta(hours=27)  # brand_b stale too: its own one alert
        cursor = tick(cursor)
        clock.now = at + timedelta(hours=50)  # still stale: nothing new
        cursor = tick(cursor)
        assert history() == [True, False, False] and len(hook.posts) == 2
        assert hook.posts[1].json["text"].splitlines()[0] == "joor-pipeline: tables stale (account brand_b)"

        stamp(tmp_path, "brand_a", day, at + timedelta(hours=49))  # brand_a publishes again
        cursor = tick(cursor)
        assert history() == [True, False, False, False] and len(hook.posts) == 2  # brand_b still stale: no alert
        clock.now = at + timedelta(hours=49 + 27)  # brand_a stale again: a new episode, a new alert
        tick(cursor)
        assert len(hook.posts) == 3
        assert hook.posts[2].json["text"].splitlines()[0] == "joor-pipeline: tables stale (account brand_a)"
        stale = instance.event_log_storage.get_asset_check_execution_history(FRESHNESS_CHECK_KEYS[0], limit=1)[0]
        evaluation = stale.event.dagster_event.event_specific_data  # type: ignore[union-attr]
        assert evaluation.metadata["stale_accounts"].value == ["brand_a", "brand_b"]
        assert evaluation.severity == dg.AssetCheckSeverity.WARN


def test_freshness_without_opting_in_records_results_but_sends_nothing(tmp_path: Path) -> None:
    at = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
    _publish(tmp_path, "default", date(2026, 3, 2), at)
    report = evaluate(tmp_path, ["default", "never"], now=at + timedelta(hours=1), limit=timedelta(hours=26))
    assert [a.fresh for a in report.accounts] == [True, False]
    assert report.describe() == "stale: never: nothing published yet"
    with webhook_receiver() as hook, open_instance({"DAGSTER_HOME": str(tmp_path / "home")}) as instance:
        sensor = build_freshness_sensor(["default"], channels(hook.url), FakeClock(at + timedelta(days=3)))
        _tick(sensor, instance, None, storage=DataDirResource(data_dir=str(tmp_path)))
        latest = instance.get_latest_asset_check_evaluation_record(FRESHNESS_CHECK_KEYS[0])
        assert latest is not None and latest.status.value == "FAILED"
    assert hook.posts == []


def test_the_freshness_check_runs_from_the_ui_too(tmp_path: Path) -> None:
    """The check is an executable check (the UI's "Execute"), evaluated now: just published, it passes."""
    _publish(tmp_path, "default", TODAY, datetime.now(UTC))
    checks = build_freshness_checks(["default"], {})
    job = dg.define_asset_job("freshness", selection=dg.AssetSelection.checks(checks))
    defs = dg.Definitions(
        assets=[joor_tables],
        asset_checks=[checks],
        jobs=[job],
        resources={"storage": DataDirResource(data_dir=str(tmp_path))},
    )
    result = defs.resolve_job_def("freshness").execute_in_process()
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == 10 and all(e.passed for e in evaluations)
    assert {e.asset_check_key for e in evaluations} == set(FRESHNESS_CHECK_KEYS)


def test_render_names_what_is_known_and_nothing_else() -> None:
    rendered = render(Alert("run failed", "boom", run_id="r1"), None)
    assert rendered.text == "joor-pipeline: run failed\ncause: boom\nrun: r1"


# ---- the real daemon -------------------------------------------------------------------------------------------


def _ticks(instance: dg.DagsterInstance, name: str) -> list:
    for state in instance.all_instigator_state():
        if state.instigator_name == name:
            return list(instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=100))
    return []


@pytest.mark.deployment
def test_the_daemon_alerts_a_launched_run_and_leaves_the_cli_run_to_the_cli(tmp_path: Path, monkeypatch) -> None:
    """`dagster-daemon run` on a SQLite DAGSTER_HOME: a run launched through the code location fails and its sensor
    alerts it once; a failing `joor-pipeline run` on the same instance alerts itself and is not alerted again; the
    freshness sensor records the tables' check result."""
    from joor_pipeline_tests.deployment import service, venv_script, wait_for

    root = Path(__file__).resolve().parents[1]
    home, data = tmp_path / "home", tmp_path / "data"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))  # the one-machine dagster.yaml names its event log's home by it
    (home / "dagster.yaml").write_text(
        (root / "dagster_home.example" / "dagster.sqlite.yaml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    with webhook_receiver() as hook:
        env = {
            "PATH": f"{Path(venv_script('dagster')).parent}:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "DAGSTER_HOME": str(home),
            "JOOR_DATA_DIR": str(data),  # and no JOOR account: a launched run fails at the fetch
            **channels(hook.url),
        }
        with (
            service(
                "dagster-daemon",
                [venv_script("dagster-daemon"), "run", "-w", "workspace.yaml"],
                env,
                root,
                tmp_path / "daemon.log",
            ) as daemon,
            dg.DagsterInstance.from_config(str(home)) as instance,
        ):

            def started() -> bool | None:
                daemon.check_alive()
                return True if _ticks(instance, "joor_run_failure_alerts") else None

            wait_for("the failure sensor's first tick", started, timeout=300)
            launched = subprocess.run(
                [
                    venv_script("dagster"),
                    "job",
                    "launch",
                    "-w",
                    "workspace.yaml",
                    "-j",
                    JOB_NAME,
                    "--tags",
                    json.dumps(
                        {
                            "dagster/partition": f"default|{TODAY}",
                            "dagster/partition/account": "default",
                            "dagster/partition/date": TODAY.isoformat(),
                        }
                    ),
                ],
                cwd=root,
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert launched.returncode == 0, launched.stderr[-2000:]
            with closed_port() as joor:
                for name, value in {
                    **env,
                    "JOOR_BASE_URL": f"http://127.0.0.1:{joor}",
                    "JOOR_API_TOKEN": TOKEN,
                    "JOOR_MAX_ATTEMPTS": "1",
                }.items():
                    monkeypatch.setenv(name, value)
                assert main(["run"]) == 1

            def alerted() -> dg.DagsterRun | None:
                daemon.check_alive()
                runs = [r for r in instance.get_runs() if ALERT_TAG not in r.tags]
                return runs[0] if runs and ALERTED_TAG in runs[0].tags else None

            run = wait_for("the launched run's alert", alerted, timeout=300)
            ended = max(r.end_time or 0 for r in instance.get_run_records())

            def ticked_after_both() -> bool | None:
                done = [t for t in _ticks(instance, "joor_run_failure_alerts") if t.timestamp > ended + 1]
                return True if any(t.status.value in ("SKIPPED", "SUCCESS") for t in done) else None

            wait_for("a failure-sensor tick after both runs ended", ticked_after_both, timeout=300)
            freshness = wait_for(
                "the freshness check result",
                lambda: instance.get_latest_asset_check_evaluation_record(FRESHNESS_CHECK_KEYS[0]),
                timeout=300,
            )
    launched_by = sorted(fields_of(post.json["text"])["launched by"] for post in hook.posts)
    assert len(launched_by) == 2 and launched_by[0].startswith("joor-pipeline run on ")
    assert launched_by[1] == "the UI or the GraphQL API"
    assert run.tags[ALERTED_TAG] == "webhook sent" and run.status == dg.DagsterRunStatus.FAILURE
    assert freshness.status.value == "FAILED"
    assert freshness.event.dagster_event.event_specific_data.description == "stale: default: nothing published yet"  # type: ignore[union-attr]

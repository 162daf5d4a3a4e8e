"""Alerts: one message per failure, to a webhook (Slack, Teams) and/or by email; never a secret, never a hang.

An :class:`Alert` is a plain description of what went wrong (the account, the date, the failed step, the root-cause
line, the run); :func:`send_alert` sends it to every configured channel and reports what happened, never raising:
each channel runs on its own thread under ``JOOR_ALERT_TIMEOUT`` (socket timeouts inside, and a join that gives up
on the thread after that), so a channel that is down, refuses, or never answers is one warning line in the log and
changes nothing else. Every text of an alert is scrubbed before it leaves: the value of every secret setting (of
the environment and of every account of ``JOOR_ACCOUNTS_FILE``) is masked, and URLs lose their query string and
user info.

Who alerts which run (one failure, one alert):

- a run executed in-process by ``joor-pipeline run`` carries ``joor/alert=in-process`` from its launch, and the CLI
  alerts it itself when it ends (:func:`alert_for_failed_run`), whether or not a Dagster daemon is running;
- every other run (the schedule, a backfill, the UI, a sensor) is alerted by the run-failure sensor in the daemon
  (``assets/sensors.py``), which skips in-process runs and runs already tagged ``joor/alerted``, and tags each run
  it alerts so.

No Dagster import here: the CLI imports this module without loading Dagster, and the sensors translate a Dagster
run into an :class:`Alert`.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

from joor_pipeline.config import (
    SECRET_VARS,
    Secret,
    account_environments,
    raise_problems,
    read_setting,
)
from joor_pipeline.joor.errors import ConfigError

log = logging.getLogger(__name__)

#: Run tag set at launch: who alerts the run's failure. ``in-process``: the process that executes it (the CLI).
ALERT_TAG: Final = "joor/alert"
IN_PROCESS: Final = "in-process"
#: Run tag set once a run's alert was sent (by the CLI or a sensor): to which channels, and how it went.
ALERTED_TAG: Final = "joor/alerted"

#: What a masked secret reads as.
MASK: Final = "********"
#: Secrets shorter than this are not searched for in alert texts (they would mask ordinary words).
MIN_SECRET_CHARS: Final = 4
#: How long after ``JOOR_ALERT_TIMEOUT`` a channel's thread is given up on (its own socket timeouts fire first).
JOIN_GRACE_SECONDS: Final = 1.0
#: The most of a webhook's answer that is read (Slack answers "ok").
MAX_ANSWER_BYTES: Final = 65_536
DEFAULT_SMTP_PORTS: Final = {"starttls": 587, "ssl": 465, "none": 25}
ADAPTIVE_CARD: Final = "application/vnd.microsoft.card.adaptive"

_ADDRESS = re.compile(r"[^@\s,<>]+@[^@\s,<>]+\.[^@\s,<>]+|[^@\s,<>]+@localhost")
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<rest>[^\s'\"<>]+)")


class AlertError(Exception):
    """A channel that did not take the alert (its one-line reason)."""


# ---- settings -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertSettings:
    """Where alerts go and what alerts: the ``JOOR_ALERT_*`` settings, validated."""

    webhook_url: Secret | None = None
    webhook_format: str = "text"
    smtp_host: str | None = None
    smtp_port: int = DEFAULT_SMTP_PORTS["starttls"]
    smtp_security: str = "starttls"
    smtp_user: str | None = None
    smtp_password: Secret | None = None
    smtp_from: str | None = None
    smtp_to: tuple[str, ...] = ()
    timeout: float = 5.0
    warnings: bool = False
    freshness: bool = False
    ui_url: str | None = None

    @property
    def channels(self) -> list[str]:
        """The configured channels: ``webhook``, ``email``, both or none."""
        return [name for name, on in (("webhook", self.webhook_url), ("email", self.smtp_host)) if on]

    @property
    def webhook_host(self) -> str:
        """The webhook's host, the only part of its URL ever shown."""
        if self.webhook_url is None:
            return ""
        return urlsplit(self.webhook_url.reveal()).hostname or "?"


def _addresses(raw: str | None) -> list[str]:
    return [part.strip() for part in (raw or "").split(",") if part.strip()]


def load_alert_settings(environ: Mapping[str, str]) -> AlertSettings:
    """The alert settings in ``environ``; one ConfigError listing every problem (never quoting a secret)."""
    problems: list[str] = []

    def get(name: str) -> Any:
        return read_setting(environ, name, problems)

    webhook: Secret | None = get("JOOR_ALERT_WEBHOOK_URL")
    if webhook is not None:
        try:
            parts = urlsplit(webhook.reveal())
            valid = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
        except ValueError:
            valid = False
        if not valid or "@" in parts.netloc:
            problems.append(
                "JOOR_ALERT_WEBHOOK_URL must be an http:// or https:// URL with a host and no user:password@ "
                "(its value is a secret and is not shown)"
            )
            webhook = None
    host: str | None = get("JOOR_ALERT_SMTP_HOST")
    security: str = get("JOOR_ALERT_SMTP_SECURITY")
    port: int | None = get("JOOR_ALERT_SMTP_PORT")
    user: str | None = get("JOOR_ALERT_SMTP_USER")
    password: Secret | None = get("JOOR_ALERT_SMTP_PASSWORD")
    sender: str | None = get("JOOR_ALERT_SMTP_FROM")
    recipients = _addresses(get("JOOR_ALERT_SMTP_TO"))
    mail_vars = {
        "JOOR_ALERT_SMTP_PORT": port,
        "JOOR_ALERT_SMTP_USER": user,
        "JOOR_ALERT_SMTP_PASSWORD": password,
        "JOOR_ALERT_SMTP_FROM": sender,
        "JOOR_ALERT_SMTP_TO": recipients,
    }
    if host is None:
        given = [name for name, value in mail_vars.items() if value]
        if given:
            problems.append(f"{', '.join(given)} set without JOOR_ALERT_SMTP_HOST (the mail server)")
    else:
        if sender is None:
            problems.append("JOOR_ALERT_SMTP_FROM (the sender address) is required with JOOR_ALERT_SMTP_HOST")
        elif not _ADDRESS.fullmatch(sender):
            problems.append(f"JOOR_ALERT_SMTP_FROM is not an email address: {sender!r}")
        if not recipients:
            problems.append("JOOR_ALERT_SMTP_TO (comma-separated recipients) is required with JOOR_ALERT_SMTP_HOST")
        bad = [address for address in recipients if not _ADDRESS.fullmatch(address)]
        if bad:
            problems.append(f"JOOR_ALERT_SMTP_TO has what is not an email address: {', '.join(map(repr, bad))}")
        if (user is None) != (password is None):
            problems.append("JOOR_ALERT_SMTP_USER and JOOR_ALERT_SMTP_PASSWORD go together")
        if user is not None and security == "none":
            problems.append(
                "JOOR_ALERT_SMTP_SECURITY=none would send JOOR_ALERT_SMTP_PASSWORD unencrypted: use starttls or ssl"
            )
    warnings = get("JOOR_ALERT_WARNINGS") == "on"
    freshness = get("JOOR_ALERT_FRESHNESS") == "on"
    if (warnings or freshness) and webhook is None and host is None and not problems:
        opted = (("JOOR_ALERT_WARNINGS", warnings), ("JOOR_ALERT_FRESHNESS", freshness))
        which = " and ".join(name for name, on in opted if on)
        problems.append(f"{which}=on needs an alert channel: set JOOR_ALERT_WEBHOOK_URL or JOOR_ALERT_SMTP_HOST")
    settings = AlertSettings(
        webhook_url=webhook,
        webhook_format=get("JOOR_ALERT_WEBHOOK_FORMAT"),
        smtp_host=host,
        smtp_port=port or DEFAULT_SMTP_PORTS[security],
        smtp_security=security,
        smtp_user=user,
        smtp_password=password,
        smtp_from=sender,
        smtp_to=tuple(recipients),
        timeout=float(get("JOOR_ALERT_TIMEOUT")),
        warnings=warnings,
        freshness=freshness,
        ui_url=get("JOOR_UI_URL"),
    )
    raise_problems(problems)
    return settings


def secret_values(environ: Mapping[str, str]) -> frozenset[str]:
    """Every secret an alert must not carry: each secret setting's value in ``environ`` and in every account of
    ``JOOR_ACCOUNTS_FILE`` (read from the variables it names), and each one's base64 form (v2's header)."""
    environments: list[Mapping[str, str]] = [environ]
    # A broken accounts file: its secrets were never read, so none can be in a message.
    with suppress(ConfigError):
        environments += account_environments(environ).values()
    found = set()
    for env in environments:
        for name in SECRET_VARS:
            value = (env.get(name) or "").strip()
            if len(value) >= MIN_SECRET_CHARS:
                found.add(value)
                found.add(base64.b64encode(value.encode()).decode())
    return frozenset(found)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every secret masked, and every URL without its query, fragment or user info."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)

    def url(match: re.Match[str]) -> str:
        rest = match["rest"]
        cut = min((i for i in (rest.find("?"), rest.find("#")) if i >= 0), default=-1)
        if cut >= 0:  # the query goes, a sentence's punctuation after it stays (scrubbing twice changes nothing)
            rest = rest[:cut] + "?..." + (rest[-1] if rest[-1] in ",;:!)]}'" else "")
        authority, slash, path = rest.partition("/")
        if "@" in authority:
            authority = "***@" + authority.rsplit("@", 1)[1]
        return match["scheme"] + authority + slash + path

    return _URL.sub(url, text)


# ---- what an alert says -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alert:
    """A plain description of something that went wrong, as the alert tells it."""

    #: What happened, short: "run failed", "warning checks failed", "tables stale".
    what: str
    #: The root-cause line (the one ``joor-pipeline run`` prints last for a failed run).
    cause: str
    account: str | None = None
    #: The snapshot date (YYYY-MM-DD), or a range "D1..D2".
    snapshot_date: str | None = None
    step: str | None = None
    run_id: str | None = None
    #: Who started the run: "schedule joor_daily_schedule", "backfill abc", "joor-pipeline run on host", ...
    launched_by: str | None = None
    #: Further lines (failed checks, stale accounts).
    details: tuple[str, ...] = ()

    def scrubbed(self, secrets: Iterable[str]) -> Alert:
        """The same alert with every text scrubbed (see :func:`scrub`)."""
        secrets = list(secrets)

        def clean(value: str | None) -> str | None:
            return None if value is None else scrub(value, secrets)

        return Alert(
            what=scrub(self.what, secrets),
            cause=scrub(self.cause, secrets),
            account=clean(self.account),
            snapshot_date=clean(self.snapshot_date),
            step=clean(self.step),
            run_id=clean(self.run_id),
            launched_by=clean(self.launched_by),
            details=tuple(scrub(line, secrets) for line in self.details),
        )


@dataclass(frozen=True)
class Rendered:
    """An alert as its channels send it."""

    subject: str
    facts: tuple[tuple[str, str], ...]
    details: tuple[str, ...]
    link: str | None

    @property
    def text(self) -> str:
        """The plain text every channel carries: the subject, one ``name: value`` line per fact, the details."""
        lines = [self.subject, *(f"{name}: {value}" for name, value in self.facts)]
        if self.details:
            lines += ["", *self.details]
        return "\n".join(lines)


def run_link(ui_url: str | None, run_id: str | None) -> str | None:
    """The run's page in the Dagster UI, when its address is configured."""
    if not ui_url or not run_id:
        return None
    return f"{ui_url.rstrip('/')}/runs/{run_id}"


def render(alert: Alert, ui_url: str | None = None) -> Rendered:
    """The subject line, the facts and the link of an (already scrubbed) alert."""
    where = ", ".join(
        part
        for part in (
            f"account {alert.account}" if alert.account else "",
            alert.snapshot_date or "",
        )
        if part
    )
    subject = f"joor-pipeline: {alert.what}" + (f" ({where})" if where else "")
    link = run_link(ui_url, alert.run_id)
    facts = [
        ("account", alert.account),
        ("date", alert.snapshot_date),
        ("failed step", alert.step),
        ("cause", alert.cause),
        ("launched by", alert.launched_by),
        ("run", alert.run_id),
        ("link", link),
    ]
    return Rendered(subject, tuple((k, v) for k, v in facts if v), alert.details, link)


def webhook_payload(rendered: Rendered, fmt: str = "text") -> dict[str, Any]:
    """The JSON posted to the webhook.

    ``text``: ``{"text": ...}``, the payload Slack's incoming webhooks document, which Teams' incoming webhooks
    (Office 365 connectors) accept as well; plain text (both link a bare URL). ``adaptive-card``: a message with one
    Adaptive Card attachment, what a Teams Workflows webhook ("When a Teams webhook request is received") takes.
    """
    if fmt == "text":
        return {"text": rendered.text}
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": rendered.subject, "weight": "Bolder", "size": "Medium", "wrap": True},
        {"type": "FactSet", "facts": [{"title": name, "value": value} for name, value in rendered.facts]},
    ]
    body += [{"type": "TextBlock", "text": line, "wrap": True} for line in rendered.details]
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.2",
        "body": body,
    }
    if rendered.link:
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Open the run", "url": rendered.link}]
    return {
        "type": "message",
        "attachments": [{"contentType": ADAPTIVE_CARD, "contentUrl": None, "content": card}],
    }


def email_message(rendered: Rendered, settings: AlertSettings) -> EmailMessage:
    """The alert as a plain-text email from ``JOOR_ALERT_SMTP_FROM`` to ``JOOR_ALERT_SMTP_TO``."""
    message = EmailMessage()
    message["Subject"] = rendered.subject
    message["From"] = settings.smtp_from or ""
    message["To"] = ", ".join(settings.smtp_to)
    message["Date"] = formatdate(usegmt=True)
    # Not make_msgid()'s default domain: that asks the resolver for this host's name, which may hang.
    message["Message-ID"] = make_msgid("joor-pipeline", domain=(settings.smtp_from or "x@invalid").rsplit("@", 1)[1])
    message.set_content(rendered.text + "\n")
    return message


# ---- sending ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """How one channel took an alert."""

    channel: str
    ok: bool
    #: Where it went ("hooks.slack.com", "2 recipients via smtp.example.com"), or why it did not.
    detail: str


class Log(Protocol):
    def info(self, msg: str, *args: Any) -> Any: ...
    def warning(self, msg: str, *args: Any) -> Any: ...


def _post_webhook(settings: AlertSettings, payload: dict[str, Any]) -> None:
    import httpx

    assert settings.webhook_url is not None
    body = json.dumps(payload).encode()
    timeout = httpx.Timeout(settings.timeout)
    with (
        httpx.Client(timeout=timeout, follow_redirects=False) as client,
        client.stream(
            "POST", settings.webhook_url.reveal(), content=body, headers={"Content-Type": "application/json"}
        ) as response,
    ):
        answer = b""
        for chunk in response.iter_bytes():
            answer += chunk
            if len(answer) >= MAX_ANSWER_BYTES:
                break
    if not 200 <= response.status_code < 300:
        said = " ".join(answer[:200].decode("utf-8", "replace").split())
        raise AlertError(f"HTTP {response.status_code}" + (f": {said}" if said else ""))


def _send_email(settings: AlertSettings, message: EmailMessage) -> None:
    import smtplib
    import ssl

    assert settings.smtp_host is not None
    context = ssl.create_default_context()
    server: smtplib.SMTP
    if settings.smtp_security == "ssl":
        server = smtplib.SMTP_SSL(settings.smtp_host, settings.smtp_port, timeout=settings.timeout, context=context)
    else:
        server = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=settings.timeout)
    with server:
        if settings.smtp_security == "starttls":
            server.starttls(context=context)
        if settings.smtp_user is not None and settings.smtp_password is not None:
            server.login(settings.smtp_user, settings.smtp_password.reveal())
        refused = server.send_message(message)
    if refused:
        raise AlertError(f"the mail server refused {', '.join(sorted(refused))}")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, AlertError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _bounded(jobs: Mapping[str, Callable[[], None]], timeout: float) -> dict[str, str | None]:
    """Run each job on a thread of its own; None for a job that finished, else why not (its error, or that it
    was given up on after ``timeout`` and the grace)."""
    outcome: dict[str, str | None] = {name: f"no answer within {timeout:g} s (JOOR_ALERT_TIMEOUT)" for name in jobs}

    def run(name: str, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:  # whatever a channel raises is its failure, never the caller's
            outcome[name] = _one_line(exc)
        else:
            outcome[name] = None

    threads = [
        threading.Thread(target=run, args=(name, job), name=f"joor-alert-{name}", daemon=True)
        for name, job in jobs.items()
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout + JOIN_GRACE_SECONDS
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    # A thread given up on keeps its "no answer" entry; it ends by its own socket timeouts, a daemon meanwhile.
    return dict(outcome)


def send_alert(
    alert: Alert,
    settings: AlertSettings,
    *,
    secrets: Iterable[str] = (),
    logger: Log | None = None,
) -> list[Delivery]:
    """Send ``alert`` to every configured channel, at once, each within ``settings.timeout``; never raises.

    Every text is scrubbed first (``secrets``, URL queries and user info). Each delivery is logged: sent at info
    level, failed at warning level with its reason (the webhook named by its host only).
    """
    logger = logger or log
    secrets = frozenset(secrets) | {s.reveal() for s in (settings.webhook_url, settings.smtp_password) if s}
    rendered = render(alert.scrubbed(secrets), settings.ui_url)
    jobs: dict[str, Callable[[], None]] = {}
    where: dict[str, str] = {}
    if settings.webhook_url is not None:
        payload = webhook_payload(rendered, settings.webhook_format)
        jobs["webhook"] = lambda: _post_webhook(settings, payload)
        where["webhook"] = settings.webhook_host
    if settings.smtp_host is not None:
        message = email_message(rendered, settings)
        jobs["email"] = lambda: _send_email(settings, message)
        where["email"] = f"{len(settings.smtp_to)} recipient(s) via {settings.smtp_host}"
    if not jobs:
        return []
    deliveries = []
    for channel, problem in _bounded(jobs, settings.timeout).items():
        if problem is None:
            deliveries.append(Delivery(channel, True, where[channel]))
            logger.info("alert sent by %s to %s: %s", channel, where[channel], rendered.subject)
        else:
            reason = scrub(problem, secrets)
            deliveries.append(Delivery(channel, False, reason))
            logger.warning(
                "alert NOT sent by %s to %s (%s): %s; nothing else is affected",
                channel,
                where[channel],
                reason,
                rendered.subject,
            )
    return deliveries


def delivered(deliveries: Sequence[Delivery]) -> str:
    """The deliveries in a few words, for the ``joor/alerted`` run tag: ``webhook sent, email failed``."""
    return ", ".join(f"{d.channel} {'sent' if d.ok else 'failed'}" for d in deliveries) or "no channel"


# ---- the CLI's runs -----------------------------------------------------------------------------------------------


class _Check(Protocol):
    asset: str
    check: str
    severity: str
    failures: int | None

    @property
    def failed_rules(self) -> Sequence[str]: ...


class FinishedRun(Protocol):
    """What :func:`alert_for_failed_run` reads of a run's summary (``batch.RunSummary``)."""

    run_id: str
    success: bool
    failure: str | None

    @property
    def failed_checks(self) -> Sequence[_Check]: ...


def check_lines(checks: Iterable[_Check]) -> tuple[str, ...]:
    """One line per failed check: severity, asset.check and its failed rules (a table's ``blocking_rules`` or
    ``warning_rules``: each rule with its failing records), or how many records failed it (a dbt test)."""
    lines = []
    for c in checks:
        if c.failed_rules:
            lines.append(f"{c.severity} {c.asset}.{c.check}: {'; '.join(c.failed_rules)}")
        else:
            lines.append(f"{c.severity} {c.asset}.{c.check}" + (f" ({c.failures} records)" if c.failures else ""))
    return tuple(lines)


def alert_for_failed_run(
    summary: FinishedRun,
    environ: Mapping[str, str],
    *,
    launched_by: str | None = None,
    logger: Log | None = None,
) -> list[Delivery]:
    """Alert a finished run that ``joor-pipeline run`` executed in-process, if it calls for one; never raises.

    A failed run alerts (once: its run carries ``joor/alert=in-process``, which the daemon's sensor skips); a
    successful run alerts only when ``JOOR_ALERT_WARNINGS=on`` and one of its warning checks failed. The cause is
    the run's root-cause line, the one the CLI prints last. Returns the deliveries (empty: nothing to send, or no
    channel configured).
    """
    logger = logger or log
    try:
        settings = load_alert_settings(environ)
    except ConfigError as exc:  # the CLI checks them before the run; this is the safety net
        logger.warning("alert not sent: %s", exc)
        return []
    if not settings.channels:
        return []
    account = getattr(summary, "account", None)
    day = getattr(summary, "snapshot_date", None)
    snapshot_date = None if day is None else str(day)
    # A range's summary lists its runs' ids; the last is the one that failed (a range stops there).
    run_id = summary.run_id.rsplit(", ", 1)[-1] or None
    launched_by = launched_by or f"joor-pipeline run on {socket.gethostname()}"
    if summary.success:
        warned = [c for c in summary.failed_checks if c.severity == "WARN"]
        if not (settings.warnings and warned):
            return []
        alert = Alert(
            what="warning checks failed",
            cause=f"{len(warned)} warning check(s) failed; the run succeeded and its data is published",
            account=account,
            snapshot_date=snapshot_date,
            run_id=run_id,
            launched_by=launched_by,
            details=check_lines(warned),
        )
    else:
        cause = getattr(summary, "cause", None) or summary.failure or "run failed"
        alert = Alert(
            what="run failed",
            cause=cause,
            account=account,
            snapshot_date=snapshot_date,
            step=getattr(summary, "step", None),
            run_id=run_id,
            launched_by=launched_by,
            details=check_lines(summary.failed_checks),
        )
    return send_alert(alert, settings, secrets=secret_values(environ), logger=logger)

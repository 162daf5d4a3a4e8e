"""The operations the CLI and the Dagster assets share: connect to JOOR (or the built-in sandbox) and fetch.

Each function takes plain settings and paths and returns a report; neither knows who called it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from joor_pipeline import __version__, layout
from joor_pipeline.config import JoorSettings, Secret
from joor_pipeline.joor.client import ClientStats, JoorClient
from joor_pipeline.layout import SnapshotKey
from joor_pipeline.storage.access import uri
from joor_pipeline.storage.raw import open_raw_snapshot

log = logging.getLogger(__name__)

FetchProgress = Callable[[int, int], None]
"""Called after each landed page with (pages so far, connections so far)."""

FetchWait = Callable[[str, float], None]
"""Called with (reason, seconds) when the fetch is about to wait that long for JOOR's rate limit."""


@contextmanager
def connect(settings: JoorSettings, **client_options: Any) -> Iterator[JoorClient]:
    """A client for the configured JOOR, or for a built-in sandbox started here when the settings ask for one.

    Only ``JOOR_ENVIRONMENT=builtin`` (or ``joor-pipeline demo``) starts the sandbox: missing credentials are an
    error in :func:`~joor_pipeline.config.load_settings`, never a reason to serve synthetic data.
    """
    if not settings.builtin_sandbox:
        with JoorClient(settings, **client_options) as client:
            yield client
        return

    from joor_pipeline.sandbox import SandboxConfig, run_sandbox

    config = SandboxConfig(connections=settings.sandbox_connections, seed=settings.sandbox_seed)
    with run_sandbox(config) as sandbox:
        log.info(
            "JOOR_ENVIRONMENT=builtin: using the built-in sandbox at %s (%d synthetic connections)",
            sandbox.base_url,
            config.connections,
        )
        local = settings.with_endpoint(
            sandbox.base_url,
            sandbox.auth_url,
            api_token=Secret(config.api_token),
            account_id=config.account_id,
            client_id=config.client_id,
            client_secret=Secret(config.client_secret),
            username=config.username,
            password=Secret(config.password),
        )
        with JoorClient(local, **client_options) as client:
            yield client


def backdating_refusal(snapshot_date: date, today: date, *, allowed: bool, how_to_allow: str) -> str | None:
    """Why a fetch into ``snapshot_date`` must not run, or None: the one rule of the CLI and the fetch asset.

    JOOR serves only the current state, so a future date is refused, and a past one too unless the caller allowed
    storing today's connections under it (``how_to_allow`` says how, in the caller's terms).
    """
    if snapshot_date > today:
        return f"{snapshot_date} is in the future (today is {today}, UTC); JOOR serves only the present"
    if snapshot_date < today and not allowed:
        return (
            f"{snapshot_date} is in the past and JOOR serves only the current state, so a fetch now would store "
            f"today's connections under that date; {how_to_allow} to do it anyway"
        )
    return None


@dataclass
class FetchReport:
    """What one fetch landed and how it went."""

    key: SnapshotKey
    #: Where the raw snapshot is (a local path, or its URL on an object store).
    path: str
    pages: int
    connections: int
    log_ids: list[str]
    format: str
    api_version: str
    source: str
    started_at: datetime
    finished_at: datetime
    stats: ClientStats
    manifest: dict[str, Any] = field(repr=False)

    @property
    def snapshot_date(self) -> date:
        return self.key.snapshot_date

    @property
    def account(self) -> str:
        return self.key.account

    @property
    def duration_seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()


def fetch_snapshot(
    client: JoorClient,
    data_dir: Path,
    key: SnapshotKey,
    *,
    progress: FetchProgress | None = None,
    concurrency: int | None = None,
    on_wait: FetchWait | None = None,
) -> FetchReport:
    """Land every connection page of ``key``'s account and date, replacing that snapshot atomically.

    ``concurrency`` (default: the client's settings) is how many list pages may be in flight at once. Each wait
    for JOOR's rate limit is logged (so a Dagster run shows it, see ``assets/logs.py``) and told to ``on_wait``.
    """
    settings = client.settings
    # The client never runs more requests at once than its connection pool holds; the manifest says what ran.
    concurrency = min(settings.concurrency if concurrency is None else concurrency, client.max_connections)
    started_at = datetime.now(UTC)
    clock = time.monotonic()
    connections = 0
    log_ids: list[str] = []

    def waiting(reason: str, seconds: float) -> None:
        log.info("waiting %.0fs for %s", seconds, reason)
        if on_wait is not None:
            on_wait(reason, seconds)

    # closing(): a failure while landing stops the page requests still in flight before the snapshot is discarded.
    pages = closing(client.iter_connection_pages(concurrency=concurrency, canonical=False, on_wait=waiting))
    raw = open_raw_snapshot(data_dir, key, settings.format)
    with raw as writer, pages as fetched_pages:
        for fetched in fetched_pages:
            count = len(fetched.page.connections)
            writer.add_page(
                fetched.index,
                fetched.body,
                log_id=fetched.log_id,
                connections=count,
                start_from=fetched.start_from,
                url=fetched.url,
            )
            connections += count
            if fetched.log_id:
                log_ids.append(fetched.log_id)
            if progress is not None:
                progress(len(writer.pages), connections)
        finished_at = datetime.now(UTC)
        stats = client.stats
        manifest = writer.commit(
            {
                "api_version": settings.api_version,
                "source": settings.target,
                "page_size": settings.page_size,
                "concurrency": concurrency,
                "fetch_started_at": started_at.isoformat(),
                "fetch_finished_at": finished_at.isoformat(),
                "fetch_seconds": round(time.monotonic() - clock, 3),
                "requests": stats.requests,
                "retries": stats.retries,
                "throttled": stats.throttled,
                "joor_pipeline_version": __version__,
            }
        )
    return FetchReport(
        key=key,
        path=uri(data_dir, layout.raw_snapshot(key)),
        pages=len(writer.pages),
        connections=connections,
        log_ids=log_ids,
        format=settings.format,
        api_version=settings.api_version,
        source=settings.target,
        started_at=started_at,
        finished_at=finished_at,
        stats=stats,
        manifest=manifest,
    )

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
from typing import Any, Final

from joor_pipeline import __version__, layout
from joor_pipeline.config import JoorSettings, Secret
from joor_pipeline.joor.client import ClientStats, FetchedPage, JoorClient
from joor_pipeline.joor.errors import IncompleteSnapshot
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
    #: Walks of the list it took (2 when the first landed short of JOOR's total).
    walks: int = 1

    @property
    def snapshot_date(self) -> date:
        return self.key.snapshot_date

    @property
    def account(self) -> str:
        return self.key.account

    @property
    def duration_seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()


#: Walks of the list one fetch may make: the first, and one more when the first landed short of JOOR's total.
MAX_WALKS: Final = 2
#: Pages named in the error of a walk that landed short (each with its log_id); the rest are counted.
PAGES_NAMED: Final = 10


@dataclass
class WalkTally:
    """What one walk of the list landed: distinct connections (by ``customer_account_id``, the flatten's key),
    repeats, and JOOR's total as its last page reported it."""

    #: The dedup key of a ``customer_account_id``: the flatten's own (``flatten.coerce.account_id_key``).
    key: Callable[[Any], int | None]
    ids: set[int] = field(default_factory=set)
    #: Connections without a usable id: the flatten keeps each of them, so each counts as distinct.
    without_id: int = 0
    repeated: int = 0
    reported_total: int | None = None
    #: (page index, log_id) of the pages that repeated connections landed before, and of the last page.
    repeating_pages: list[tuple[int, str | None]] = field(default_factory=list)
    last_page: tuple[int, str | None] = (0, None)

    def add(self, fetched: FetchedPage) -> None:
        repeats = 0
        for connection in fetched.page.connections:
            key = self.key(connection.get("customer_account_id")) if isinstance(connection, dict) else None
            if key is None:
                self.without_id += 1
            elif key in self.ids:
                repeats += 1
            else:
                self.ids.add(key)
        self.repeated += repeats
        if repeats:
            self.repeating_pages.append((fetched.index, fetched.log_id))
        self.reported_total = fetched.page.response.count
        self.last_page = (fetched.index, fetched.log_id)

    @property
    def distinct(self) -> int:
        return len(self.ids) + self.without_id

    @property
    def shortfall(self) -> int:
        """Connections JOOR reports that this walk did not land (0 when JOOR reports no total)."""
        return 0 if self.reported_total is None else max(0, self.reported_total - self.distinct)

    def describe(self) -> str:
        """The walk in one clause: what landed against JOOR's total, and which pages to ask JOOR about."""

        def named(pages: list[tuple[int, str | None]]) -> str:
            shown = ", ".join(f"{index} (log_id {log_id or 'none'})" for index, log_id in pages[:PAGES_NAMED])
            more = len(pages) - PAGES_NAMED
            return shown + (f" and {more} more" if more > 0 else "")

        text = (
            f"{self.distinct:,} distinct connection(s) in {self.last_page[0] + 1:,} page(s) against JOOR's total of "
            f"{self.reported_total:,} ({self.shortfall:,} short"
        )
        if self.repeated:
            text += f"; {self.repeated:,} repeated across pages, on page(s) {named(self.repeating_pages)}"
        return text + f"; last page {named([self.last_page])})"


class _ShortWalk(Exception):
    """One walk landed fewer connections than JOOR's total (internal: the fetch walks again or refuses)."""

    def __init__(self, tally: WalkTally) -> None:
        self.tally = tally
        super().__init__(tally.describe())


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

    **A walk is complete or refused.** After the last page, the distinct connections landed (by
    ``customer_account_id``) are compared with JOOR's total (the last page's ``response.count``). Fewer means
    the list shifted during the walk (a retailer connected ahead of the cursor, so a page repeated connections
    of the one before): the list is walked once more, with the same client, so the same credit budget and
    pacing. Short again, the fetch fails with :class:`IncompleteSnapshot` naming the shortfall, the pages and
    their ``log_id`` s, and publishes nothing. Repeats in a walk that is complete are kept (the flatten keeps
    each connection once and counts the repeats). A retailer that disconnects mid-walk shifts the rest of the
    list forward, unseen by offset paging: the count drops with it, so no comparison can see the connection
    skipped; the next day's snapshot has it again.
    """
    settings = client.settings
    # The client never runs more requests at once than its connection pool holds; the manifest says what ran.
    concurrency = min(settings.concurrency if concurrency is None else concurrency, client.max_connections)
    started_at = datetime.now(UTC)
    clock = time.monotonic()

    def waiting(reason: str, seconds: float) -> None:
        log.info("waiting %.0fs for %s", seconds, reason)
        if on_wait is not None:
            on_wait(reason, seconds)

    earlier: list[str] = []
    for walk in range(1, MAX_WALKS + 1):
        try:
            return _walk(
                client,
                data_dir,
                key,
                concurrency=concurrency,
                progress=progress,
                waiting=waiting,
                fetch_started=(started_at, clock),
                walk=walk,
            )
        except _ShortWalk as short:
            earlier.append(f"walk {walk}: {short.tally.describe()}")
            if walk < MAX_WALKS:
                log.warning(
                    "the walk of the connection list landed %s: the list shifted while it was walked (retailers "
                    "connecting or disconnecting); walking it once more",
                    short.tally.describe(),
                )
    raise IncompleteSnapshot(
        f"the connection list came back short on each of {MAX_WALKS} walks, so nothing was kept: {'; '.join(earlier)}. "
        "Either the list kept shifting while it was walked (retailers connecting or disconnecting) or JOOR repeats "
        "connections across pages; run the fetch again later, and if it stays short, give JOOR support the log_ids"
    )


def _walk(
    client: JoorClient,
    data_dir: Path,
    key: SnapshotKey,
    *,
    concurrency: int,
    progress: FetchProgress | None,
    waiting: FetchWait,
    fetch_started: tuple[datetime, float],
    walk: int,
) -> FetchReport:
    """One walk of the list, landed and published; :class:`_ShortWalk` (nothing kept) when it lands short."""
    # Imported here: the flatten package brings pyarrow, which `check` and the client never need.
    from joor_pipeline.flatten.coerce import account_id_key

    settings = client.settings
    started_at, clock = fetch_started
    connections = 0
    log_ids: list[str] = []
    tally = WalkTally(account_id_key)
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
            tally.add(fetched)
            connections += count
            if fetched.log_id:
                log_ids.append(fetched.log_id)
            if progress is not None:
                progress(len(writer.pages), connections)
        if tally.shortfall:
            # Raised inside the block: the staged pages are discarded, the published snapshot stays as it was.
            raise _ShortWalk(tally)
        if tally.reported_total is None:
            log.warning(
                "JOOR reported no total (response.count) on the connection list: the walk cannot be checked for "
                "completeness"
            )
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
                "walks": walk,
                "reported_total": tally.reported_total,
                "distinct_connections": tally.distinct,
                "repeated_connections": tally.repeated,
                # Names and last values as JOOR sent them (a secret of the client masked): never a credential.
                "rate_limit_headers": dict(stats.rate_limit_headers),
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
        walks=walk,
    )

"""Time the project's fetch against the sandbox: with 20 ms of latency per request, and under JOOR's credit limit.

The sandbox runs in a child process (:mod:`.sandbox_process`); the fetch runs here with the project's own client
and ``fetch_snapshot``, landing real raw pages in a scratch directory.

- Latency: every request waits ``LATENCY_MS`` in the server, metering off. Measured: pages per second, seconds
  per page and per connection, against one round trip (the median of single-page requests on the same server).
  When the settings have a ``concurrency`` field (``JOOR_CONCURRENCY``) the fetch runs at each of
  ``CONCURRENCY_LEVELS``; otherwise sequentially only.
- Rate limit: the sandbox meters ``RATE_CREDITS`` per ``RATE_WINDOW`` seconds and the client paces itself to the
  same budget; the snapshot is exactly ``RATE_WINDOWS`` budgets' worth of pages. Budget share = credits the
  server charged / (``RATE_CREDITS`` x windows elapsed), windows elapsed = ceil(fetch seconds / ``RATE_WINDOW``).
  A 429 from the server counts whether or not the client then retried.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bench.sandbox_process import SandboxProcess
from bench.snapshots import SNAPSHOT_DATE
from joor_pipeline.config import SETTINGS, JoorSettings, load_settings
from joor_pipeline.joor.client import JoorClient
from joor_pipeline.layout import DEFAULT_ACCOUNT, SnapshotKey
from joor_pipeline.pipeline import fetch_snapshot

PAGE_SIZE: Final = 100
LATENCY_MS: Final = 20.0
#: Fetch sizes above this are capped: a sandbox of 200,000 connections needs ~17 s and ~1.8 GB just to start.
FETCH_MAX_N: Final = 20_000
CONCURRENCY_LEVELS: Final = (1, 4, 8)
#: ``JOOR_CONCURRENCY``'s default until it became 1 (JOOR's one-request-at-a-time etiquette, issue 17).
OLD_DEFAULT_CONCURRENCY: Final = 4
ROUND_TRIP_SAMPLES: Final = 7
RATE_CREDITS: Final = 50
RATE_WINDOW: Final = 2.0
RATE_WINDOWS: Final = 5
#: Metering off in the latency bench: the client still needs a budget, so it gets the largest its setting takes
#: (100,000 credits a window, far beyond the bench's pages); a larger one is refused as a bad setting.
UNMETERED_CREDITS: Final = next(s.high for s in SETTINGS if s.name == "JOOR_RATE_LIMIT_CREDITS")


@dataclass(frozen=True)
class FetchRun:
    """One fetch: how long it took and what both ends counted."""

    seconds: float
    pages: int
    connections: int
    client: dict[str, Any]
    server: dict[str, Any]
    pacer: dict[str, Any]


@dataclass
class LatencyCase:
    """Every repetition of one (N, concurrency) fetch with latency; concurrency None means the option is absent."""

    n: int
    concurrency: int | None
    round_trip_seconds: float
    runs: list[FetchRun] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def median_seconds(self) -> float:
        return statistics.median(run.seconds for run in self.runs)

    @property
    def pages(self) -> int:
        return self.runs[0].pages

    @property
    def pages_per_second(self) -> float:
        return self.pages / self.median_seconds

    @property
    def seconds_per_page(self) -> float:
        return self.median_seconds / self.pages

    @property
    def seconds_per_connection(self) -> float:
        return self.median_seconds / self.n

    @property
    def max_in_flight(self) -> int:
        return max(int(run.server.get("max_concurrent", 0)) for run in self.runs)

    @property
    def throttled(self) -> int:
        return sum(int(run.server.get("throttled", 0)) for run in self.runs)


@dataclass
class RateLimitCase:
    """Every repetition of the rate-limited fetch at one concurrency."""

    concurrency: int | None  # None: the settings' default
    label: str
    credits: int
    window: float
    runs: list[FetchRun] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def windows_elapsed(self, run: FetchRun) -> int:
        return max(1, math.ceil(run.seconds / self.window))

    def budget_share(self, run: FetchRun) -> float:
        """Credits the server charged over the credits the elapsed windows allowed."""
        return int(run.server["credits_used"]) / (self.credits * self.windows_elapsed(run))

    @property
    def median_run(self) -> FetchRun:
        """The run with the median budget share (the lower middle one for an even count)."""
        ranked = sorted(self.runs, key=self.budget_share)
        return ranked[(len(ranked) - 1) // 2]

    @property
    def server_429s(self) -> int:
        return sum(int(run.server["throttled"]) for run in self.runs)

    @property
    def client_429s(self) -> int:
        return sum(int(run.client["throttled"]) for run in self.runs)


@dataclass
class FetchResults:
    """Everything the fetch bench measured."""

    concurrency_supported: bool
    default_concurrency: int | None
    latency: list[LatencyCase]
    rate_limit: list[RateLimitCase]
    capped_sizes: list[int]
    #: Failures outside any one fetch (a sandbox that did not start, say).
    errors: list[str] = field(default_factory=list)


def _settings(sandbox: SandboxProcess, credits: int, window: float, concurrency: int | None) -> JoorSettings:
    env = {
        "JOOR_ENVIRONMENT": "sandbox",
        "JOOR_BASE_URL": sandbox.base_url,
        "JOOR_API_TOKEN": sandbox.api_token,
        "JOOR_PAGE_SIZE": str(PAGE_SIZE),
        "JOOR_RATE_LIMIT_CREDITS": str(credits),
        "JOOR_RATE_LIMIT_WINDOW": str(window),
    }
    if concurrency is not None:
        env["JOOR_CONCURRENCY"] = str(concurrency)
    return load_settings(env)


def default_concurrency() -> int | None:
    """The settings' default ``concurrency`` (``JOOR_CONCURRENCY``); None in a build without the option."""
    probe = load_settings({"JOOR_BASE_URL": "http://127.0.0.1:1", "JOOR_API_TOKEN": "probe"})
    value = getattr(probe, "concurrency", None)
    return value if isinstance(value, int) else None


def _fetch(settings: JoorSettings, sandbox: SandboxProcess, data_dir: Path, expected: int, keep: bool) -> FetchRun:
    """One timed ``fetch_snapshot``; a fetch that lands other than ``expected`` connections is an error."""
    shutil.rmtree(data_dir, ignore_errors=True)
    sandbox.reset()
    try:
        with JoorClient(settings) as client:
            clock = time.perf_counter()
            report = fetch_snapshot(client, data_dir, SnapshotKey(DEFAULT_ACCOUNT, SNAPSHOT_DATE))
            seconds = time.perf_counter() - clock
            pacer = _as_dict(getattr(client, "pacer", None) and client.pacer.stats)
    finally:
        if not keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    if report.connections != expected:
        raise RuntimeError(f"the fetch landed {report.connections} connections, expected {expected}")
    return FetchRun(
        seconds=seconds,
        pages=report.pages,
        connections=report.connections,
        client=_as_dict(report.stats),
        server=sandbox.stats(),
        pacer=pacer,
    )


def _as_dict(stats: object) -> dict[str, Any]:
    """A stats object's counters as a dict, whatever kind of object the client keeps them in."""
    if stats is None:
        return {}
    if dataclasses.is_dataclass(stats) and not isinstance(stats, type):
        return dataclasses.asdict(stats)
    return dict(vars(stats))


def _round_trip(settings: JoorSettings) -> float:
    """Median seconds of one single-page request (latency, serving and parsing), sequentially."""
    samples = []
    with JoorClient(settings) as client:
        for _ in range(ROUND_TRIP_SAMPLES):
            clock = time.perf_counter()
            pages = client.iter_connection_pages()
            next(pages)
            samples.append(time.perf_counter() - clock)
            pages.close()
    return statistics.median(samples)


def run_latency_bench(
    workdir: Path, n: int, seed: int, repeat: int, supported: bool, keep: bool, log: Callable[[str], None]
) -> list[LatencyCase]:
    """Fetch ``n`` connections at each concurrency level ``repeat`` times (interleaved) from one sandbox."""
    levels: Sequence[int | None] = CONCURRENCY_LEVELS if supported else (None,)
    log(f"fetch N={n:,}: starting a sandbox with {LATENCY_MS:.0f} ms latency per request")
    with SandboxProcess(connections=n, seed=seed, latency_ms=LATENCY_MS) as sandbox:
        round_trip = _round_trip(_settings(sandbox, UNMETERED_CREDITS, 300.0, 1 if supported else None))
        log(f"fetch N={n:,}: one round trip (single page of {PAGE_SIZE}) {round_trip * 1000:.1f} ms")
        cases = {level: LatencyCase(n, level, round_trip) for level in levels}
        for rep in range(1, repeat + 1):
            for level in levels:
                settings = _settings(sandbox, UNMETERED_CREDITS, 300.0, level)
                data_dir = workdir / "runs" / f"fetch-n{n}-c{level or 'default'}-r{rep}"
                label = "sequential (no concurrency option)" if level is None else f"concurrency {level}"
                try:
                    run = _fetch(settings, sandbox, data_dir, n, keep)
                except Exception as exc:  # a failed fetch is a result to report, not a reason to stop
                    cases[level].errors.append(f"fetch N={n:,} {label} rep {rep}: {type(exc).__name__}: {exc}")
                    log(f"fetch N={n:,} {label} rep {rep}/{repeat}: FAILED: {type(exc).__name__}: {exc}")
                    continue
                cases[level].runs.append(run)
                log(
                    f"fetch N={n:,} {label} rep {rep}/{repeat}: {run.seconds:6.2f} s, {run.pages} pages, "
                    f"{run.pages / run.seconds:6.1f} pages/s, {run.server.get('max_concurrent')} in flight at most"
                )
    return list(cases.values())


def run_rate_limit_bench(
    workdir: Path, seed: int, repeat: int, default: int | None, keep: bool, log: Callable[[str], None]
) -> list[RateLimitCase]:
    """Fetch ``RATE_WINDOWS`` budgets' worth of pages under the limit; a fresh sandbox (and window) per run.

    Sequentially, and at the settings' default concurrency and the old default (4) when the option exists.
    """
    n = RATE_CREDITS * RATE_WINDOWS * PAGE_SIZE
    cases: dict[int | None, RateLimitCase] = {}
    if default is None:
        cases[None] = RateLimitCase(None, "sequential (no concurrency option)", RATE_CREDITS, RATE_WINDOW)
    else:
        label = "concurrency 1" + (" (the default)" if default == 1 else "")
        cases[1] = RateLimitCase(1, label, RATE_CREDITS, RATE_WINDOW)
        if default != 1:
            cases[None] = RateLimitCase(None, f"default concurrency ({default})", RATE_CREDITS, RATE_WINDOW)
        if default != OLD_DEFAULT_CONCURRENCY:
            cases[OLD_DEFAULT_CONCURRENCY] = RateLimitCase(
                OLD_DEFAULT_CONCURRENCY,
                f"concurrency {OLD_DEFAULT_CONCURRENCY} (the default before issue 17)",
                RATE_CREDITS,
                RATE_WINDOW,
            )
    levels = list(cases)
    log(
        f"rate limit: {RATE_CREDITS} credits per {RATE_WINDOW:g} s on both ends, {n:,} connections "
        f"({n // PAGE_SIZE} pages, {RATE_WINDOWS} budgets)"
    )
    for rep in range(1, repeat + 1):
        for level in levels:
            case = cases[level]
            try:
                with SandboxProcess(
                    connections=n, seed=seed, rate_limit_credits=RATE_CREDITS, rate_limit_window=RATE_WINDOW
                ) as sandbox:
                    settings = _settings(sandbox, RATE_CREDITS, RATE_WINDOW, level)
                    data_dir = workdir / "runs" / f"fetch-ratelimit-c{level or 'default'}-r{rep}"
                    run = _fetch(settings, sandbox, data_dir, n, keep)
            except Exception as exc:  # a failed fetch is a result to report, not a reason to stop
                case.errors.append(f"rate limit, {case.label}, rep {rep}: {type(exc).__name__}: {exc}")
                log(f"rate limit, {case.label}, rep {rep}/{repeat}: FAILED: {type(exc).__name__}: {exc}")
                continue
            case.runs.append(run)
            log(
                f"rate limit, {case.label}, rep {rep}/{repeat}: {run.seconds:5.2f} s, "
                f"{run.server['credits_used']} credits over {case.windows_elapsed(run)} windows = "
                f"{case.budget_share(run):.0%} of the budget, "
                f"429s: server {run.server['throttled']}, client {run.client['throttled']}"
            )
    return list(cases.values())


def run_fetch_bench(
    workdir: Path, sizes: Sequence[int], seed: int, repeat: int, keep: bool, log: Callable[[str], None]
) -> FetchResults:
    """The latency bench for each size (capped at ``FETCH_MAX_N``), then the rate-limit bench."""
    default = default_concurrency()
    supported = default is not None
    if not supported:
        log("fetch: the settings have no `concurrency` field (JOOR_CONCURRENCY) yet: sequential fetch only")
    fetch_sizes = sorted({min(n, FETCH_MAX_N) for n in sizes})
    results = FetchResults(supported, default, [], [], [n for n in sizes if n > FETCH_MAX_N])
    for n in fetch_sizes:
        try:
            results.latency.extend(run_latency_bench(workdir, n, seed, repeat, supported, keep, log))
        except Exception as exc:
            results.errors.append(f"fetch N={n:,}: {type(exc).__name__}: {exc}")
            log(f"fetch N={n:,}: FAILED: {type(exc).__name__}: {exc}")
    results.rate_limit = run_rate_limit_bench(workdir, seed, repeat, default, keep, log)
    return results

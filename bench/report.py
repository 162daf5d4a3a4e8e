"""Render the measurements as ``bench/results.md``: machine, command, targets met or not, then every table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from bench.fetch_bench import (
    FETCH_MAX_N,
    LATENCY_MS,
    PAGE_SIZE,
    RATE_CREDITS,
    RATE_WINDOW,
    RATE_WINDOWS,
    FetchResults,
    LatencyCase,
    RateLimitCase,
)
from bench.flatten_bench import CORE_TABLES, FlattenCase, row_mismatches

#: The issue's targets (2-core machine, ratios measured in one run).
MAX_OURS_OVER_DUCKDB: Final = 1.0
MAX_OURS_OVER_PANDAS: Final = 0.5
MAX_XML_OVER_JSON: Final = 1.5
MAX_RSS_MB_AT_LARGEST: Final = 400.0
RSS_TARGET_N: Final = 200_000
FLAT_RSS_FROM_N: Final = 20_000
#: "Roughly flat": peak RSS at 200,000 connections at most this many times the peak at 20,000.
MAX_RSS_GROWTH: Final = 1.25
MIN_BUDGET_SHARE: Final = 0.90
#: "Well below one round trip": seconds per page at most this share of one single-page round trip.
MAX_PAGE_TIME_OVER_ROUND_TRIP: Final = 0.5

TABLE_COUNT: Final = {"ours": 10, "pandas": 5, "duckdb": 5}
APPROACH_LABEL: Final = {
    "ours": "ours (`flatten_snapshot`)",
    "pandas": "pandas `json_normalize`",
    "duckdb": "DuckDB `read_json` + `unnest`",
}


@dataclass(frozen=True)
class Target:
    """One target of the issue, what was measured against it, and whether it was met."""

    name: str
    measured: str
    met: bool | None  # None: not measured in this run

    @property
    def status(self) -> str:
        return "not measured" if self.met is None else "met" if self.met else "**not met**"


def _case(cases: Sequence[FlattenCase], n: int, fmt: str, approach: str) -> FlattenCase | None:
    return next((c for c in cases if (c.n, c.fmt, c.approach) == (n, fmt, approach) and c.runs), None)


def _sizes(cases: Sequence[FlattenCase]) -> list[int]:
    return sorted({c.n for c in cases})


def flatten_targets(cases: Sequence[FlattenCase]) -> list[Target]:
    """The flatten targets, one line per N where a ratio applies."""
    targets: list[Target] = []
    for n in _sizes(cases):
        ours = _case(cases, n, "json", "ours")
        for baseline, limit in (("duckdb", MAX_OURS_OVER_DUCKDB), ("pandas", MAX_OURS_OVER_PANDAS)):
            other = _case(cases, n, "json", baseline)
            name = f"JSON flatten, all ten tables, at most {limit:.1f}x {baseline} (five tables), N={n:,}"
            if ours is None or other is None:
                failed = "ours" if ours is None else baseline
                # Ours failing misses the target; a baseline failing leaves nothing to compare with.
                targets.append(Target(name, f"{failed} failed (see Failures)", False if ours is None else None))
            else:
                ratio = ours.median_seconds / other.median_seconds
                targets.append(
                    Target(
                        name,
                        f"{ratio:.2f}x ({ours.median_seconds:.2f} s / {other.median_seconds:.2f} s)",
                        ratio <= limit,
                    )
                )
        xml = _case(cases, n, "xml", "ours")
        if ours and xml:
            ratio = xml.median_seconds / ours.median_seconds
            targets.append(
                Target(
                    f"XML flatten at most {MAX_XML_OVER_JSON:.1f}x our JSON flatten, N={n:,}",
                    f"{ratio:.2f}x ({xml.median_seconds:.2f} s / {ours.median_seconds:.2f} s)",
                    ratio <= MAX_XML_OVER_JSON,
                )
            )
    formats = sorted({c.fmt for c in cases})
    for fmt in formats:
        big = _case(cases, RSS_TARGET_N, fmt, "ours")
        name = f"Peak RSS of our {fmt.upper()} flatten under {MAX_RSS_MB_AT_LARGEST:.0f} MB at N={RSS_TARGET_N:,}"
        if big is not None:
            targets.append(Target(name, f"{big.peak_rss_mb:.0f} MB", big.peak_rss_mb < MAX_RSS_MB_AT_LARGEST))
        elif RSS_TARGET_N in _sizes(cases):
            targets.append(Target(name, "ours failed (see Failures)", False))
        else:
            targets.append(Target(name, f"N={RSS_TARGET_N:,} not in this run", None))
        small = _case(cases, FLAT_RSS_FROM_N, fmt, "ours")
        growth = big.peak_rss_mb / small.peak_rss_mb if big and small else None
        targets.append(
            Target(
                f"Peak RSS of our {fmt.upper()} flatten roughly flat from N={FLAT_RSS_FROM_N:,} to "
                f"N={RSS_TARGET_N:,} (at most {MAX_RSS_GROWTH:.2f}x)",
                f"{growth:.2f}x" if growth is not None else "needs both sizes in one run",
                growth <= MAX_RSS_GROWTH if growth is not None else None,
            )
        )
    return targets


def fetch_targets(fetch: FetchResults) -> list[Target]:
    """The fetch targets: budget share and 429s under the limit; page time below a round trip with concurrency."""
    targets: list[Target] = []
    for case in fetch.rate_limit:
        if not case.runs:
            targets.append(Target(f"Rate limit ({case.label})", "every run failed (see Failures)", False))
            continue
        run = case.median_run
        share = case.budget_share(run)
        targets.append(
            Target(
                f"Rate limit ({case.label}): at least {MIN_BUDGET_SHARE:.0%} of the credit budget used",
                f"{share:.1%} (median of {len(case.runs)})",
                share >= MIN_BUDGET_SHARE,
            )
        )
        total = case.server_429s + case.client_429s
        targets.append(
            Target(
                f"Rate limit ({case.label}): zero 429s",
                f"server sent {case.server_429s}, client saw {case.client_429s} (all {len(case.runs)} runs)",
                total == 0,
            )
        )
    measured_latency = [c for c in fetch.latency if c.runs]
    if measured_latency:
        largest = max(c.n for c in measured_latency)
        at_largest = [c for c in measured_latency if c.n == largest]
        best = min(at_largest, key=lambda c: c.seconds_per_page)
        ratio = best.seconds_per_page / best.round_trip_seconds
        concurrent = [c for c in at_largest if c.concurrency is not None and c.concurrency > 1]
        measured = (
            f"{ratio:.2f} of a round trip ({best.seconds_per_page * 1000:.1f} ms per page at "
            f"{_concurrency_label(best.concurrency)}, round trip {best.round_trip_seconds * 1000:.1f} ms), "
            f"N={largest:,}"
        )
        if not fetch.concurrency_supported:
            measured += "; no concurrency option (JOOR_CONCURRENCY) in this build"
        targets.append(
            Target(
                f"Fetch with {LATENCY_MS:.0f} ms latency: time per page at most {MAX_PAGE_TIME_OVER_ROUND_TRIP:.1f} "
                "of one round trip with concurrency on",
                measured,
                bool(concurrent) and ratio <= MAX_PAGE_TIME_OVER_ROUND_TRIP,
            )
        )
    elif fetch.latency or fetch.errors:
        targets.append(Target(f"Fetch with {LATENCY_MS:.0f} ms latency", "every run failed (see Failures)", False))
    return targets


def _one_line(error: str) -> str:
    """The first line of an error and, for a child's traceback, its last (the exception itself)."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    return lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1]}"


def _concurrency_label(level: int | None) -> str:
    return "sequential (no concurrency option)" if level is None else f"concurrency {level}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, numeric: bool = True) -> list[str]:
    """A Markdown table; with ``numeric`` every column but the first is right-aligned."""
    align = ["---:" if i and numeric else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines.extend("| " + " | ".join(row) + " |" for row in rows)
    return lines


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x"


def _flatten_section(cases: Sequence[FlattenCase]) -> list[str]:
    out = ["## Flatten", ""]
    out += [
        "Raw pages of 100 connections on disk, the same files for every approach. *Work s* is timed inside the",
        "child process (the read, the flatten and the Parquet writes; no interpreter start, no imports); *process s*",
        "is the whole child as the parent saw it. Peak RSS is the higher of the child's `ru_maxrss` (from `os.wait4`)",
        "and the peak of the PSS summed over the child and all its descendants (the forkserver and the flatten",
        "workers it forks), sampled every 50 ms, so a",
        "flatten shared between processes counts all of them at once (shared library pages once).",
        "*ours / this* is our median work time over this approach's (below 1 means ours is faster).",
        "Ours runs with its defaults, as a user gets it: one flatten worker process per usable core",
        "(`JOOR_FLATTEN_WORKERS`, at most one per 8 pages), started by a forkserver inside the work time;",
        "DuckDB uses its default threads, one per core.",
        "",
    ]
    for n in _sizes(cases):
        out += [f"### N = {n:,}", ""]
        rows = []
        ours_json = _case(cases, n, "json", "ours")
        for fmt in ("json", "xml"):
            for approach in ("ours", "pandas", "duckdb"):
                case = _case(cases, n, fmt, approach)
                if case is None:
                    if any(c.errors for c in cases if (c.n, c.fmt, c.approach) == (n, fmt, approach)):
                        rows.append([fmt.upper(), APPROACH_LABEL[approach], "-", "failed (see Failures)"] + [""] * 5)
                    continue
                if ours_json is None or fmt != "json":
                    versus = "-"
                else:
                    versus = _ratio(ours_json.median_seconds, case.median_seconds)
                rows.append(
                    [
                        fmt.upper(),
                        APPROACH_LABEL[approach],
                        str(TABLE_COUNT[approach]),
                        f"{case.median_seconds:.2f}",
                        f"{case.min_seconds:.2f}",
                        f"{case.median_process_seconds:.2f}",
                        f"{case.connections_per_second:,.0f}",
                        f"{case.peak_rss_mb:.0f}",
                        versus,
                    ]
                )
            if fmt == "xml" and _case(cases, n, "xml", "ours"):
                rows.append(["XML", "pandas, DuckDB", "-", "no XML reader", "", "", "", "", "-"])
        header = ["format", "approach", "tables", "work s (median)", "work s (min)", "process s", "conn/s"]
        out += _md_table([*header, "peak RSS MB", "ours / this"], rows)
        out += ["", *_row_count_lines(cases, n), ""]

    out += ["### Ours: XML against JSON", ""]
    rows = []
    for n in _sizes(cases):
        js, xml = _case(cases, n, "json", "ours"), _case(cases, n, "xml", "ours")
        if js and xml:
            rows.append(
                [
                    f"{n:,}",
                    f"{js.median_seconds:.2f}",
                    f"{xml.median_seconds:.2f}",
                    _ratio(xml.median_seconds, js.median_seconds),
                ]
            )
    out += [*(_md_table(["N", "JSON s", "XML s", "XML / JSON"], rows) if rows else ["Not measured."]), ""]

    out += ["### Ours: peak RSS across N", ""]
    rows = []
    for n in _sizes(cases):
        cells = [f"{n:,}"]
        for fmt in ("json", "xml"):
            case = _case(cases, n, fmt, "ours")
            cells.append(f"{case.peak_rss_mb:.0f}" if case else "-")
        for baseline in ("pandas", "duckdb"):
            case = _case(cases, n, "json", baseline)
            cells.append(f"{case.peak_rss_mb:.0f}" if case else "-")
        rows.append(cells)
    out += [*_md_table(["N", "ours JSON MB", "ours XML MB", "pandas MB", "DuckDB MB"], rows), ""]
    return out


def _row_count_lines(cases: Sequence[FlattenCase], n: int) -> list[str]:
    present = [a for a in ("ours", "pandas", "duckdb") if _case(cases, n, "json", a)]
    xml = _case(cases, n, "xml", "ours")
    header = ["core table", *[f"{a} (JSON)" for a in present]] + (["ours (XML)"] if xml else [])
    rows = []
    for table in CORE_TABLES:
        cells = [table]
        for approach in present:
            case = _case(cases, n, "json", approach)
            cells.append(f"{case.rows.get(table, 0):,}" if case else "-")
        if xml:
            cells.append(f"{xml.rows.get(table, 0):,}")
        rows.append(cells)
    problems = row_mismatches(cases, n, "json") + row_mismatches(cases, n, "xml")
    verdict = (
        "Row counts of the five core tables agree across approaches, formats and repetitions."
        if not problems
        else "**Row counts disagree:** " + "; ".join(problems)
    )
    return ["Rows written:", "", *_md_table(header, rows), "", verdict]


def _fetch_section(fetch: FetchResults) -> list[str]:
    out = ["## Fetch", ""]
    out += [
        "The project's `JoorClient` and `fetch_snapshot` against the sandbox on loopback, the sandbox in a process",
        f"of its own; every fetch lands its raw pages (fsync per page) in a scratch directory. Pages of {PAGE_SIZE}.",
        "",
        f"### With {LATENCY_MS:.0f} ms of latency per request",
        "",
        "One round trip: the median time of a single-page request (latency, serving, parsing) on the same server.",
    ]
    if not fetch.concurrency_supported:
        out.append("The settings have no `concurrency` field (`JOOR_CONCURRENCY`) in this build: sequential only.")
    if fetch.capped_sizes:
        capped = ", ".join(f"{n:,}" for n in fetch.capped_sizes)
        out.append(
            f"Sizes above {FETCH_MAX_N:,} ({capped}) are fetched at {FETCH_MAX_N:,}: a larger sandbox is slow to start."
        )
    out.append("")
    rows = []
    for case in fetch.latency:
        if case.runs:
            rows.append(_latency_row(case))
    header = ["N", "concurrency", "pages", "median s", "pages/s", "ms per page", "µs per connection"]
    header += ["round trip ms", "page time / round trip", f"page time / {LATENCY_MS:.0f} ms", "most in flight", "429s"]
    out += _md_table(header, rows)
    out += [
        "",
        "### Under the credit rate limit",
        "",
        f"Sandbox and client both set to {RATE_CREDITS} credits per {RATE_WINDOW:g} s window; "
        f"{RATE_CREDITS * RATE_WINDOWS} pages (exactly {RATE_WINDOWS} budgets), so the fastest possible fetch spends "
        f"{RATE_WINDOWS - 1} full windows waiting ({(RATE_WINDOWS - 1) * RATE_WINDOW:g} s) plus the last burst.",
        "**Budget share** = credits the server charged / (credits per window x windows elapsed), windows elapsed =",
        "ceil(fetch seconds / window). A fresh sandbox (fresh window) per run; the median run by budget share is",
        "shown, 429s are summed over all runs.",
        "",
    ]
    rows = []
    for rl in fetch.rate_limit:
        if rl.runs:
            rows.append(_rate_limit_row(rl))
    header = ["concurrency", "runs", "pages", "fetch s", "pages/s", "credits charged", "windows elapsed"]
    header += ["budget share", "pacer windows", "pacer waits s (all workers)", "429s server", "429s client"]
    out += [*_md_table(header, rows), ""]
    return out


def _latency_row(case: LatencyCase) -> list[str]:
    return [
        f"{case.n:,}",
        "1 (no option)" if case.concurrency is None else str(case.concurrency),
        str(case.pages),
        f"{case.median_seconds:.2f}",
        f"{case.pages_per_second:.1f}",
        f"{case.seconds_per_page * 1000:.1f}",
        f"{case.seconds_per_connection * 1e6:.0f}",
        f"{case.round_trip_seconds * 1000:.1f}",
        f"{case.seconds_per_page / case.round_trip_seconds:.2f}",
        f"{case.seconds_per_page * 1000 / LATENCY_MS:.2f}",
        str(case.max_in_flight),
        str(case.throttled),
    ]


def _rate_limit_row(case: RateLimitCase) -> list[str]:
    run = case.median_run
    return [
        case.label,
        str(len(case.runs)),
        str(run.pages),
        f"{run.seconds:.2f}",
        f"{run.pages / run.seconds:.1f}",
        str(run.server["credits_used"]),
        str(case.windows_elapsed(run)),
        f"{case.budget_share(run):.1%}",
        str(run.pacer.get("windows", "-")),
        f"{float(run.pacer.get('waited_seconds', 0.0)):.2f}",
        str(case.server_429s),
        str(case.client_429s),
    ]


def render(
    *,
    machine: dict[str, str],
    command: str,
    repeat: int,
    started: datetime,
    seconds: float,
    flatten: Sequence[FlattenCase],
    fetch: FetchResults | None,
) -> str:
    """The whole results file."""
    out = [
        "# Benchmark results",
        "",
        f"Generated {started.astimezone(UTC):%Y-%m-%d %H:%M} UTC by `{command}` in {seconds / 60:.1f} min; "
        "regenerate rather than edit.",
        "",
        "> The machine is shared and noisy: absolute times move from run to run. The ratios are what to read:",
        "> every approach ran in the same run, on the same files, with its repetitions interleaved with the others'.",
        f"> {repeat} repetition(s) per measurement; times quoted are medians, peak RSS the highest of the repetitions.",
        "",
        "## Machine",
        "",
        *_md_table(["", ""], [[key, value] for key, value in machine.items()], numeric=False),
        "",
        "## Targets",
        "",
    ]
    targets = flatten_targets(flatten) + (fetch_targets(fetch) if fetch else [])
    if targets:
        rows = [[t.name, t.measured, t.status] for t in targets]
        out += [*_md_table(["target", "measured", "status"], rows, numeric=False), ""]
    else:
        out += ["Nothing measured.", ""]
    if flatten:
        out += _flatten_section(flatten)
    if fetch:
        out += _fetch_section(fetch)
    errors = [e for c in flatten for e in c.errors]
    if fetch:
        errors += [e for c in fetch.latency for e in c.errors] + [e for c in fetch.rate_limit for e in c.errors]
        errors += fetch.errors
    if errors:
        out += ["## Failures", "", *[f"- {_one_line(e)}" for e in errors], ""]
    out += [
        "## Notes",
        "",
        "- pandas and DuckDB produce five tables (connections, addresses, payment_methods, discounts, doors), ours",
        "  all ten, with the contract's types, provenance columns and `extra` / `invalid_values`.",
        "- Neither baseline has a schema. Ids JOOR sends sometimes as numbers and sometimes as strings become text in",
        "  pandas (object columns Arrow will not write otherwise) and DuckDB's `JSON` type in DuckDB.",
        "- XML: neither pandas nor DuckDB reads JOOR's nested XML; only ours is timed on it.",
        "- DuckDB runs with its default threads; pandas and our flatten use one core for the Python work.",
        "- Work time excludes imports for every approach. pyarrow imports pandas on its first `pa.array()` of a",
        "  Python list, so our child makes that call before the clock starts; the import (about 50 MB of RSS, and",
        "  a second or so of *process s* when the bytecode cache is off) still counts in our peak RSS and process",
        "  time, as it does for any real run.",
        "- *pacer waits s* adds up the waits of every worker thread, so it can exceed the fetch's wall time.",
        "",
    ]
    return "\n".join(out)

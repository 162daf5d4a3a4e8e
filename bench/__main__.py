"""``python -m bench``: flatten and fetch benchmarks, written to ``bench/results.md``."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.snapshots import FORMATS, PROJECT_ROOT, ensure_snapshots

DEFAULT_SIZES = "2000,20000,200000"
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "joor-pipeline-bench"


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return sizes


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Time our flatten against pandas and DuckDB on the same raw pages, and the fetch against the "
        "sandbox with latency and under the rate limit; write the results as Markdown.",
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=_sizes(DEFAULT_SIZES),
        help=f"connections per snapshot (default {DEFAULT_SIZES})",
    )
    parser.add_argument("--repeat", type=_positive, default=3, help="repetitions per measurement (default 3)")
    parser.add_argument("--only", choices=("flatten", "fetch"), help="run one half only")
    parser.add_argument(
        "--out",
        type=Path,
        default=PROJECT_ROOT / "bench" / "results.md",
        help="results file (default bench/results.md)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=DEFAULT_WORKDIR,
        help=f"snapshots (cached by N, format and seed) and scratch outputs (default {DEFAULT_WORKDIR})",
    )
    parser.add_argument("--seed", type=int, default=7, help="sandbox data seed (default 7)")
    parser.add_argument(
        "--keep", action="store_true", help="keep every run's Parquet and fetched pages under WORKDIR/runs"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    # Imported here, after argument parsing, so --help stays instant; none of these imports pandas or DuckDB.
    from bench.fetch_bench import FetchResults, run_fetch_bench
    from bench.flatten_bench import BenchError, FlattenCase, run_flatten_bench
    from bench.machine import describe
    from bench.report import fetch_targets, flatten_targets, render

    started, clock = datetime.now(UTC), time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - clock:7.1f}s] {message}", flush=True)

    machine = describe()
    workdir: Path = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    log(f"bench: sizes {', '.join(f'{n:,}' for n in args.sizes)}, {args.repeat} repetition(s), workdir {workdir}")

    flatten: list[FlattenCase] = []
    fetch: FetchResults | None = None
    try:
        if args.only in (None, "flatten"):
            ensure_snapshots(workdir, args.sizes, FORMATS, args.seed, log)
            flatten = run_flatten_bench(workdir, args.sizes, FORMATS, args.seed, args.repeat, args.keep, log)
        if args.only in (None, "fetch"):
            fetch = run_fetch_bench(workdir, args.sizes, args.seed, args.repeat, args.keep, log)
    except (BenchError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    command = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
    text = render(
        machine=machine,
        command=command,
        repeat=args.repeat,
        started=started,
        seconds=time.perf_counter() - clock,
        flatten=flatten,
        fetch=fetch,
    )
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    log(f"wrote {out}")
    for target in flatten_targets(flatten) + (fetch_targets(fetch) if fetch else []):
        print(f"  {target.status.strip('*'):12} {target.name}: {target.measured}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

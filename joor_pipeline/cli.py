"""The ``joor-pipeline`` command: fetch, flatten, run the Dagster graph, or serve the JOOR sandbox."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from joor_pipeline import __version__
from joor_pipeline.config import ENV_VARS, V4_VARS, JoorSettings, flatten_workers_setting, load_settings
from joor_pipeline.joor.errors import ConfigError, JoorError

if TYPE_CHECKING:
    from joor_pipeline.assets.run import RunSummary

EXIT_ERROR = 1
EXIT_CONFIG = 2


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date in YYYY-MM-DD form: {text!r}") from None


def _today() -> date:
    """Today in UTC: snapshot dates are UTC days, as are the Dagster partitions."""
    return datetime.now(UTC).date()


def _env_help() -> str:
    width = max(len(name) for name in ENV_VARS)
    lines = [f"  {name:<{width}}  {meaning}" for name, meaning in ENV_VARS.items()]
    return (
        "configuration (environment variables):\n"
        + "\n".join(lines)
        + "\n\nWith no credentials and no JOOR_BASE_URL set, every command runs against the built-in sandbox."
    )


class Progress:
    """One status line on stderr: rewritten in place on a terminal, printed now and then otherwise."""

    def __init__(self, label: str, stream: TextIO | None = None, every: float = 2.0) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every = every
        self._last = 0.0
        self._text = ""

    def update(self, text: str) -> None:
        self._text = text
        now = time.monotonic()
        if self.tty:
            self.stream.write(f"\r{self.label}: {text}\x1b[K")
            self.stream.flush()
        elif now - self._last >= self.every:
            self._last = now
            print(f"{self.label}: {text}", file=self.stream, flush=True)

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")
        elif self._text:
            print(f"{self.label}: {self._text}", file=self.stream, flush=True)


def _settings(args: argparse.Namespace) -> JoorSettings:
    env = dict(os.environ)
    if getattr(args, "data_dir", None):
        env["JOOR_DATA_DIR"] = str(args.data_dir)
    return load_settings(env)


def cmd_fetch(args: argparse.Namespace) -> int:
    from joor_pipeline.pipeline import connect, fetch_snapshot

    settings = _settings(args)
    if args.date < _today():
        print(
            f"note: JOOR serves only the current state; this stores today's connections under {args.date}",
            file=sys.stderr,
        )
    progress = Progress(f"fetch {args.date}")
    with connect(settings) as client:
        print(
            f"fetching connections from {settings.target} ({settings.api_version}, {settings.format})", file=sys.stderr
        )
        report = fetch_snapshot(
            client,
            settings.data_dir,
            args.date,
            progress=lambda pages, conns: progress.update(f"{pages} pages, {conns} connections"),
        )
    progress.done()
    print(
        f"landed {report.connections} connections in {report.pages} pages at {report.path} "
        f"({report.duration_seconds:.1f}s, {report.stats.requests} requests, {report.stats.retries} retries)"
    )
    return 0


def cmd_flatten(args: argparse.Namespace) -> int:
    from joor_pipeline.storage.parquet import flatten_snapshot

    settings = _settings(args)
    workers = flatten_workers_setting(os.environ)
    progress = Progress(f"flatten {args.date}")
    report = flatten_snapshot(
        settings.data_dir,
        args.date,
        progress=lambda done, total, conns: progress.update(f"{done}/{total} pages, {conns} connections"),
        workers=workers,
    )
    progress.done()
    stats = report.stats
    processes = f" by {report.workers} processes" if report.workers > 1 else ""
    print(
        f"wrote {report.connections} connections to {settings.data_dir / 'parquet'}{processes} "
        f"in {report.duration_seconds:.1f}s:"
    )
    for table, rows in report.rows.items():
        print(f"  {table:<17} {rows:>9} rows")
    if stats.unknown_fields:
        print(f"unknown fields kept in 'extra': {dict(stats.unknown_fields)}")
    if stats.coercion_problems:
        print(f"values that could not be typed (kept in 'invalid_values'): {dict(stats.coercion_problems)}")
    if stats.duplicate_connections:
        print(f"connections repeated across pages (kept once): {stats.duplicate_connections}")
    return 0


def _run_environ(args: argparse.Namespace, *, builtin: bool) -> dict[str, str]:
    env = dict(os.environ)
    if getattr(args, "data_dir", None):
        env["JOOR_DATA_DIR"] = str(args.data_dir)
    if builtin:
        for name in ("JOOR_BASE_URL", "JOOR_AUTH_URL", "JOOR_API_TOKEN", *V4_VARS):
            env.pop(name, None)
    load_settings(env)  # one clear message for a bad setting, before Dagster starts
    return env


def _print_run(summary: RunSummary, data_dir: Path) -> None:
    status = "succeeded" if summary.success else "FAILED"
    print(f"Dagster run {summary.run_id} {status}")
    for asset, rows in summary.rows.items():
        print(f"  {asset:<22} {rows:>9} rows")
    passed = sum(c.passed for c in summary.checks)
    print(f"checks: {passed}/{len(summary.checks)} passed")
    for check in summary.failed_checks:
        detail = f" ({check.failures} records)" if check.failures else ""
        print(f"  {check.severity:<5} {check.asset}.{check.check}{detail}")
    if summary.failure:
        print(f"error: {summary.failure}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    from joor_pipeline.assets.run import run_graph

    env = _run_environ(args, builtin=False)
    if args.from_date or args.to_date:
        from joor_pipeline.assets.run import run_range

        if not (args.from_date and args.to_date) or args.allow_backdated:
            raise ConfigError("--from and --to go together, and never with --allow-backdated")
        summary = run_range(args.from_date, args.to_date, env)
    else:
        summary = run_graph(args.date, env, allow_backdated=args.allow_backdated)
    _print_run(summary, load_settings(env).data_dir)
    return 0 if summary.success else EXIT_ERROR


def cmd_demo(args: argparse.Namespace) -> int:
    from joor_pipeline.assets.run import run_graph

    env = _run_environ(args, builtin=True)
    data_dir = load_settings(env).data_dir
    print(f"demo: the whole graph for {args.date} on the built-in JOOR sandbox, data in {data_dir}/", flush=True)
    summary = run_graph(args.date, env, allow_backdated=True)
    _print_run(summary, data_dir)
    if not summary.success:
        return EXIT_ERROR
    print(
        f"""
files:
  raw pages    {data_dir}/raw/connections/snapshot_date={args.date}/
  parquet      {data_dir}/parquet/<table>/snapshot_date={args.date}/part-*.parquet
  duckdb       {data_dir}/joor.duckdb
next:
  make ui      # the Dagster UI at http://127.0.0.1:3000 (assets, checks, backfills, schedule)
  uv run python -c "import duckdb; print(duckdb.connect('{data_dir}/joor.duckdb', read_only=True)\\
    .sql('select * from payment_terms'))"
  uv run joor-pipeline --help"""
    )
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from joor_pipeline.sandbox import Faults, SandboxConfig, serve_forever

    faults = Faults(
        latency_ms=args.latency_ms,
        error_rate=args.error_rate,
        drop_rate=args.drop_rate,
        truncate_rate=args.truncate_rate,
        rate_limit_storm=args.rate_limit_storm,
    )
    config = SandboxConfig(
        connections=args.connections,
        seed=args.seed,
        host=args.host,
        port=args.port,
        rate_limit_credits=args.rate_limit_credits,
        rate_limit_window=args.rate_limit_window,
        token_ttl=args.token_ttl,
        faults=faults,
    )
    serve_forever(config)
    return 0


def _snapshot_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--date", type=_date, default=_today(), help="snapshot date, YYYY-MM-DD (default: today, UTC)")
    parser.add_argument("--data-dir", type=Path, help="overrides JOOR_DATA_DIR")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="joor-pipeline",
        description="Get a brand's JOOR connections (retailers) into partitioned Parquet and DuckDB.",
        epilog=_env_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request and decision (debug level)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=_env_help(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        return p

    fetch = add("fetch", cmd_fetch, "land one raw snapshot of every connection, exactly as JOOR sends it")
    _snapshot_options(fetch)

    flatten = add("flatten", cmd_flatten, "flatten one raw snapshot into the ten Parquet tables (atomically)")
    _snapshot_options(flatten)

    run = add("run", cmd_run, "materialize the whole Dagster graph (fetch, tables, checks, models) for one date")
    _snapshot_options(run)
    run.add_argument(
        "--allow-backdated",
        action="store_true",
        help="fetch today's JOOR state into a past date that has no raw snapshot (JOOR serves only the present)",
    )
    run.add_argument("--from", dest="from_date", type=_date, help="re-flatten and check the kept raw snapshots from")
    run.add_argument(
        "--to", dest="to_date", type=_date, help="... to this date (inclusive), then build the models once"
    )

    demo = add("demo", cmd_demo, "run the whole graph on the built-in sandbox for today and summarise it")
    _snapshot_options(demo)

    sandbox = add("sandbox", cmd_sandbox, "serve the JOOR sandbox (an emulator of JOOR's API) until interrupted")
    sandbox.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sandbox.add_argument("--port", type=int, default=8765, help="port to listen on (default 8765; 0 picks one)")
    sandbox.add_argument("--connections", type=int, default=500, help="connections to serve (default 500)")
    sandbox.add_argument("--seed", type=int, default=7, help="seed of the generated retailers (default 7)")
    sandbox.add_argument(
        "--rate-limit-credits",
        type=int,
        default=300,
        help="credits per window per account, 0 switches the limit off (default 300)",
    )
    sandbox.add_argument(
        "--rate-limit-window", type=float, default=300.0, help="seconds in a rate-limit window (default 300)"
    )
    sandbox.add_argument("--token-ttl", type=int, default=36000, help="lifetime of v4 access tokens in seconds")
    sandbox.add_argument("--latency-ms", type=float, default=0.0, help="fault: added latency per request")
    sandbox.add_argument("--error-rate", type=float, default=0.0, help="fault: share of requests answered 5xx")
    sandbox.add_argument("--drop-rate", type=float, default=0.0, help="fault: share of connections dropped")
    sandbox.add_argument("--truncate-rate", type=float, default=0.0, help="fault: share of bodies cut short")
    sandbox.add_argument("--rate-limit-storm", type=int, default=0, help="fault: answer the next N requests with 429")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Our own progress and decisions at INFO; the libraries' chatter (alembic, httpx) only with --verbose.
    logging.getLogger("joor_pipeline").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (JoorError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted; nothing partial was kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

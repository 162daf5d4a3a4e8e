"""The ``joor-pipeline`` command: fetch, flatten, run the Dagster graph, or serve the JOOR sandbox."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import TextIO

from joor_pipeline import __version__
from joor_pipeline.config import ENV_VARS, JoorSettings, load_settings
from joor_pipeline.joor.errors import ConfigError, JoorError

EXIT_ERROR = 1
EXIT_CONFIG = 2


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date in YYYY-MM-DD form: {text!r}") from None


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
        faults=faults,
    )
    serve_forever(config)
    return 0


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
    fetch.add_argument("--date", type=_date, default=date.today(), help="snapshot date, YYYY-MM-DD (default: today)")
    fetch.add_argument("--data-dir", type=Path, help="overrides JOOR_DATA_DIR")

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
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.DEBUG if args.verbose else logging.WARNING)
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

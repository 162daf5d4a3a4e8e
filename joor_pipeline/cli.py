"""The ``joor-pipeline`` command: fetch, flatten, run the Dagster graph, or serve the JOOR sandbox.

Every failure ends in one ``error: ...`` line on stderr and an exit code: 2 for a configuration or usage problem
(a bad or missing setting, an unusable data directory, a date that cannot be fetched), 1 for anything else.
``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn, TextIO

from joor_pipeline import __version__
from joor_pipeline.config import (
    BUILTIN,
    DEFAULT_ACCOUNT,
    ENDPOINT_VARS,
    JoorSettings,
    UnknownAccount,
    account_names,
    check_data_dir,
    first_snapshot_date,
    help_text,
    load_account,
    raise_problems,
    read_setting,
)
from joor_pipeline.joor.errors import ConfigError, JoorError
from joor_pipeline.layout import SnapshotKey

if TYPE_CHECKING:
    from joor_pipeline.batch import BatchSummary, RunSummary

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
    return (
        help_text()
        + "\n\nThe built-in sandbox (synthetic retailers) runs only on request: JOOR_ENVIRONMENT=builtin, or the demo"
        "\ncommand. With no JOOR configured, every other command stops with exit code 2 and says what to set."
        "\nExit codes: 0 done, 1 failed, 2 configuration or usage problem (one 'error:' line; --debug for more)."
    )


class UsageError(Exception):
    """A request the CLI refuses before doing anything (a date it cannot fetch): exit code 2."""


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


def _environ(args: argparse.Namespace) -> dict[str, str]:
    """A copy of the process environment with the command line's overrides (``--data-dir``): os.environ stays."""
    env = dict(os.environ)
    if getattr(args, "data_dir", None):
        env["JOOR_DATA_DIR"] = str(args.data_dir)
    return env


def _data_dir(args: argparse.Namespace, path: Path) -> Path:
    """The data directory, absolute, or a ConfigError naming the option or variable that set it."""
    return check_data_dir(path, "--data-dir" if getattr(args, "data_dir", None) else "JOOR_DATA_DIR", _environ(args))


def _accounts(args: argparse.Namespace, env: dict[str, str]) -> list[str]:
    """The accounts a command acts on: ``--account``'s (checked against the configured ones), else all of them."""
    names = account_names(env)
    chosen = getattr(args, "account", None)
    if chosen is None:
        return names
    if chosen not in names:
        raise UnknownAccount(chosen, names)
    return [chosen]


def _one_account(args: argparse.Namespace, env: dict[str, str]) -> str:
    """The one account fetch and flatten act on: ``--account``, required when several are configured."""
    names = _accounts(args, env)
    if len(names) > 1:
        raise UsageError(f"{len(names)} accounts are configured ({', '.join(names)}): choose one with --account NAME")
    return names[0]


def _settings(args: argparse.Namespace, account: str) -> JoorSettings:
    settings = load_account(_environ(args), account)
    return replace(settings, data_dir=_data_dir(args, settings.data_dir))


def _check_fetch_date(snapshot_date: date, allow_backdated: bool) -> None:
    """Refuse a future date, and a past one unless asked: JOOR serves only the current state."""
    from joor_pipeline.pipeline import backdating_refusal

    refusal = backdating_refusal(snapshot_date, _today(), allowed=allow_backdated, how_to_allow="add --allow-backdated")
    if refusal is not None:
        raise UsageError(refusal)


def cmd_fetch(args: argparse.Namespace) -> int:
    from joor_pipeline.pipeline import connect, fetch_snapshot

    account = _one_account(args, _environ(args))
    settings = _settings(args, account)
    _check_fetch_date(args.date, args.allow_backdated)
    if args.date < _today():
        print(
            f"note: JOOR serves only the current state; this stores today's connections under {args.date}",
            file=sys.stderr,
        )
    progress = Progress(f"fetch {args.date}" + (f" {account}" if account != DEFAULT_ACCOUNT else ""))
    with connect(settings) as client:
        print(
            f"fetching connections of account {account} from {settings.target} ({settings.api_version}, "
            f"{settings.format})",
            file=sys.stderr,
        )
        report = fetch_snapshot(
            client,
            settings.data_dir,
            SnapshotKey(account, args.date),
            progress=lambda pages, conns: progress.update(f"{pages} pages, {conns} connections"),
            on_wait=lambda reason, seconds: progress.update(f"waiting {seconds:.0f}s for {reason}"),
        )
    progress.done()
    walks = f", {report.walks} walks of the list: it shifted during the first" if report.walks > 1 else ""
    print(
        f"landed {report.connections} connections in {report.pages} pages at {report.path} "
        f"({report.duration_seconds:.1f}s, {report.stats.requests} requests, {report.stats.retries} retries{walks})"
    )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """``check``: the connection test of each account (or ``--account``'s), reading and writing no data."""
    from joor_pipeline.config import accounts_file
    from joor_pipeline.joor.check import CHECK_RETRY, check_connection
    from joor_pipeline.pipeline import connect

    env = _environ(args)
    accounts = _accounts(args, env)
    # Every account's settings are checked before the first request: a configuration problem is exit 2.
    settings = {account: load_account(env, account) for account in accounts}
    in_file = accounts_file(env) is not None
    failed: list[str] = []
    for account, account_settings in settings.items():
        with connect(account_settings, retry=CHECK_RETRY) as client:
            found = check_connection(client, account=account, in_accounts_file=in_file)
        print("\n".join(found.lines()), flush=True)
        if found.problem:
            failed.append(f"account {account}: {found.problem}" if len(accounts) > 1 else found.problem)
    if failed:
        raise CheckFailed("; ".join(failed))
    return 0


class CheckFailed(Exception):
    """The connection test found a problem (exit 1): the line says what to do."""


def cmd_flatten(args: argparse.Namespace) -> int:
    env = _environ(args)
    problems: list[str] = []  # the flatten needs no JOOR account: only its own two settings are read
    workers = read_setting(env, "JOOR_FLATTEN_WORKERS", problems)
    data_dir = read_setting(env, "JOOR_DATA_DIR", problems)
    raise_problems(problems)
    data_dir = _data_dir(args, data_dir)
    account = _one_account(args, env)
    if workers != 1:
        from joor_pipeline.flatten.forkserver import start_forkserver

        # Its imports run while this process makes its own; this module too, which the workers would each import
        # again otherwise (they run the joor-pipeline script as they start).
        start_forkserver(__name__)
    from joor_pipeline.flatten.runner import flatten_snapshot
    from joor_pipeline.quality import blocking_failures

    progress = Progress(f"flatten {args.date}")
    report = flatten_snapshot(
        data_dir,
        SnapshotKey(account, args.date),
        progress=lambda done, total, conns: progress.update(f"{done}/{total} pages, {conns} connections"),
        workers=workers,
        audit=lambda staged: blocking_failures(data_dir, staged),
    )
    progress.done()
    stats = report.stats
    processes = f" by {report.workers} processes" if report.workers > 1 else ""
    print(
        f"wrote {report.connections} connections of account {account} to {report.paths['connections']} and the nine "
        f"other tables{processes} "
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
    if stats.conflicting_duplicates:
        shown = ", ".join(map(str, stats.conflicting_duplicates[:20]))
        print(
            f"warning: {len(stats.conflicting_duplicates)} customer_account_id(s) shared by connections that differ "
            f"(only the first of each was kept; the raw reconciliation fails): {shown}",
            file=sys.stderr,
        )
    return 0


def _run_environ(
    args: argparse.Namespace, *, builtin: bool, accounts: Sequence[str] = (DEFAULT_ACCOUNT,)
) -> tuple[dict[str, str], Path]:
    """The run's variables and its data directory, every account's settings checked before Dagster starts (one
    clear message if bad)."""
    env = _environ(args)
    if builtin:
        for name in (*ENDPOINT_VARS, "JOOR_ACCOUNTS_FILE"):
            env.pop(name, None)
        env["JOOR_ENVIRONMENT"] = BUILTIN
    data_dir = Path("data")
    for account in accounts:
        data_dir = load_account(env, account).data_dir
    data_dir = _data_dir(args, data_dir)
    env["JOOR_DATA_DIR"] = str(data_dir)
    return env, data_dir


def _check_run_date(snapshot_date: date) -> None:
    """A date the daily partitions hold: from JOOR_FIRST_SNAPSHOT_DATE to today (UTC)."""
    today, first = _today(), first_snapshot_date()
    if snapshot_date > today:
        raise UsageError(f"{snapshot_date} is in the future (today is {today}, UTC); JOOR serves only the present")
    if snapshot_date < first:
        raise UsageError(f"{snapshot_date} is before the first snapshot date {first} (JOOR_FIRST_SNAPSHOT_DATE)")


#: Python's cyclic garbage collector thresholds for the Dagster commands (``run``, ``demo``): its default first
#: threshold (700 allocations) has it walk the young objects of a process holding Dagster, dbt and their imports
#: a few thousand times per run; at 100,000 a daily run at 500 retailers took 10% less CPU (bench/run_cost.py).
#: Nearly all of a run's objects are freed by reference counting anyway; cycles wait a little longer.
GC_THRESHOLDS: Final = (100_000, 50, 100)


@contextmanager
def _fewer_collections() -> Iterator[None]:
    saved = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*saved)


def report_run(summary: RunSummary, *, debug: bool) -> None:
    """A finished Dagster run of ``run`` or ``demo``, printed as it ends: what it published and checked.

    The one place where the CLI sees each finished run (a landing run of an account's day, or the model build),
    success or failure; its root cause is printed once, last, by :func:`_conclude`. An alert for a failed run
    launched from the command line belongs here.
    """
    status = "succeeded" if summary.success else "FAILED"
    print(f"{summary.label}: Dagster run {summary.run_id} {status}")
    if summary.rows:
        width = max(len(name) for name in summary.rows)
        for asset, rows in summary.rows.items():
            print(f"  {asset:<{width}}  {rows:>9} rows")
    if summary.checks:
        passed = sum(c.passed for c in summary.checks)
        print(f"  checks: {passed}/{len(summary.checks)} passed")
    for check in summary.failed_checks:
        if check.failed_rules:
            detail = ": " + "; ".join(check.failed_rules)
        else:
            detail = f" ({check.failures} records)" if check.failures else ""
        print(f"  {check.severity:<5} {check.asset}.{check.check}{detail}")
    if debug and summary.failure_detail:
        sys.stdout.flush()
        print(summary.failure_detail, file=sys.stderr)
    sys.stdout.flush()


def _reporter(env: Mapping[str, str], *, debug: bool) -> Callable[[RunSummary], None]:
    """What the CLI does with each finished run of a batch: its one alert if it failed (the daemon's alert sensor
    skips runs launched in-process), then its report."""

    def finished(summary: RunSummary) -> None:
        from joor_pipeline.alerts import alert_for_failed_run

        alert_for_failed_run(summary, env)
        report_run(summary, debug=debug)

    return finished


def _conclude(batch: BatchSummary) -> int:
    """The batch's exit code, after one ``error:`` line naming every failed run and its root cause."""
    if batch.models is None and batch.runs:
        print("models: not built, as no partition was published")
    failed = batch.failed
    if not failed:
        return 0
    sys.stdout.flush()  # the cause is the last line, also when both streams go to one file
    landings = [run for run in batch.runs if not run.is_models]
    if len(landings) == 1 and len(failed) == 1:  # one account's day: its landing or its build failed
        print(f"error: {failed[0].failure}", file=sys.stderr)
    else:
        causes = "; ".join(f"{run.label}: {run.failure}" for run in failed)
        published = len([run for run in batch.runs if run.success and not run.is_models])
        built = batch.models is not None and batch.models.success
        outcome = f"{published} other(s) published" + (" and the models built" if built else "")
        print(f"error: {len(failed)} run(s) failed ({outcome}): {causes}", file=sys.stderr)
    return EXIT_ERROR


def cmd_run(args: argparse.Namespace) -> int:
    from joor_pipeline.storage.raw import raw_snapshot_exists

    if args.from_date or args.to_date:
        return _run_range(args)
    accounts = _accounts(args, _environ(args))
    env, data_dir = _run_environ(args, builtin=False, accounts=accounts)
    _check_run_date(args.date)
    from joor_pipeline.pipeline import backdating_refusal

    def refusal() -> str | None:
        return backdating_refusal(
            args.date, _today(), allowed=args.allow_backdated, how_to_allow="add --allow-backdated"
        )

    why = refusal() if args.refetch else None
    if why is not None:
        raise UsageError(f"--refetch fetches today's JOOR state: {why}")
    for account in accounts:
        if raw_snapshot_exists(data_dir, SnapshotKey(account, args.date)):
            continue
        # The fetch asset refuses the same; saying it here spares a failed run and names the CLI's option.
        why = refusal()
        if why is not None:
            of = f" of account {account}" if len(accounts) > 1 else ""
            raise UsageError(f"no raw snapshot{of} is kept for {args.date}: {why}")
    from joor_pipeline.alerts import load_alert_settings

    load_alert_settings(env)  # a wrong alert setting is exit 2 before the run, not a lost alert after it
    from joor_pipeline.batch import run_batch

    # Each account's day is landed in a run of its own, one after the other (its own JOOR credits), then the
    # models are built once over every account that published: a failed account does not stop the others.
    with _fewer_collections():
        batch = run_batch(
            [(account, args.date) for account in accounts],
            env,
            allow_backdated=args.allow_backdated,
            refetch=args.refetch,
            debug=args.debug,
            on_finished=_reporter(env, debug=args.debug),
        )
    return _conclude(batch)


def _run_range(args: argparse.Namespace) -> int:
    """``run --from D1 --to D2``: re-flatten the kept raw snapshots, then build the models once. It never talks to
    JOOR, so it needs no JOOR account: only the data directory and the flatten's settings."""
    if not (args.from_date and args.to_date) or args.allow_backdated or args.refetch:
        raise UsageError(
            "--from and --to go together, and never with --allow-backdated or --refetch (a range never fetches)"
        )
    if args.to_date < args.from_date:
        raise UsageError(f"--to {args.to_date} is before --from {args.from_date}")
    _check_run_date(args.from_date)
    _check_run_date(args.to_date)
    env = _environ(args)
    problems: list[str] = []
    read_setting(env, "JOOR_FLATTEN_WORKERS", problems)
    data_dir = read_setting(env, "JOOR_DATA_DIR", problems)
    raise_problems(problems)
    data_dir = _data_dir(args, data_dir)
    env["JOOR_DATA_DIR"] = str(data_dir)
    accounts = tuple(_accounts(args, env))
    from joor_pipeline.alerts import load_alert_settings

    load_alert_settings(env)
    from joor_pipeline.batch import RANGE_TAG, range_partitions, run_batch

    partitions = range_partitions(args.from_date, args.to_date, data_dir, accounts)
    with _fewer_collections():
        batch = run_batch(
            partitions,
            env,
            fetch=False,
            debug=args.debug,
            tags={RANGE_TAG: f"{args.from_date.isoformat()}..{args.to_date.isoformat()}"},
            on_finished=_reporter(env, debug=args.debug),
        )
    return _conclude(batch)


def cmd_demo(args: argparse.Namespace) -> int:
    if os.environ.get("JOOR_ACCOUNTS_FILE", "").strip():
        # The Dagster partitions are the accounts configured when the definitions load, here those of the file;
        # the demo's one account, `default`, is a partition only in a process started without it.
        import subprocess

        argv = ["demo", "--date", args.date.isoformat(), *(["--data-dir", str(args.data_dir)] if args.data_dir else [])]
        argv += [flag for flag, on in (("--debug", args.debug), ("-v", args.verbose)) if on]
        child = {name: value for name, value in os.environ.items() if name != "JOOR_ACCOUNTS_FILE"}
        return subprocess.run([sys.executable, "-m", "joor_pipeline.cli", *argv], env=child, check=False).returncode
    env, data_dir = _run_environ(args, builtin=True)
    _check_run_date(args.date)
    from joor_pipeline.batch import run_batch

    home = env.get("DAGSTER_HOME") or "a throwaway Dagster instance (DAGSTER_HOME is not set)"
    print(
        f"demo: the whole graph for {args.date} on the built-in JOOR sandbox (synthetic retailers), data in "
        f"{data_dir}/, runs recorded in {home}",
        flush=True,
    )
    with _fewer_collections():
        batch = run_batch(
            [(DEFAULT_ACCOUNT, args.date)],
            env,
            allow_backdated=True,
            debug=args.debug,
            on_finished=_reporter(env, debug=args.debug),
        )
    code = _conclude(batch)
    if code:
        return code
    print(
        f"""
files:
  raw pages    {data_dir}/raw/connections/account=default/snapshot_date={args.date}/
  parquet      {data_dir}/parquet/<table>/account=default/snapshot_date={args.date}/part-*.parquet
  duckdb       {data_dir}/joor.duckdb
next:
  make ui      # the Dagster UI at http://127.0.0.1:3000: these runs, assets, checks, backfills, schedule
  uv run joor-pipeline sql --data-dir {data_dir} "select * from payment_terms"   # or no query: a prompt
  uv run joor-pipeline --help"""
    )
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    from joor_pipeline.sql import run_sql

    given = args.data_dir or os.environ.get("JOOR_DATA_DIR", "").strip() or None
    option = "--data-dir" if args.data_dir else "JOOR_DATA_DIR"
    return run_sql(args.query, data_dir=given, option=option, fmt=args.format)


def cmd_prune(args: argparse.Namespace) -> int:
    """``prune``: delete the snapshots past their retention (see :mod:`joor_pipeline.prune`)."""
    from joor_pipeline.prune import (
        PruneFailed,
        PrunePlan,
        Removal,
        failure_line,
        kept_line,
        load_retention,
        prune,
        removal_line,
        total_line,
    )

    env = _environ(args)
    problems: list[str] = []
    data_dir = read_setting(env, "JOOR_DATA_DIR", problems)
    raise_problems(problems)
    retention = load_retention(env)
    data_dir = _data_dir(args, data_dir)
    configured = account_names(env)  # the names only: pruning needs no JOOR credentials

    def removed(removal: Removal, plan: PrunePlan) -> None:
        print(removal_line(removal, dry_run=args.dry_run, width=plan.account_width), flush=True)

    report = prune(
        data_dir,
        retention,
        today=_today(),
        configured=configured,
        account=args.account,
        dry_run=args.dry_run,
        on_removed=removed,
    )
    for name in report.plan.unconfigured:
        print(
            f"note: account {name} is not configured but has data here: pruned by the same rules (its latest "
            "snapshot stays)",
            file=sys.stderr,
        )
    for kept in report.plan.kept:
        print(kept_line(kept), file=sys.stderr)
    print(total_line(report), flush=True)
    if report.failed:
        raise PruneFailed(failure_line(report))
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from joor_pipeline.sandbox import Faults, SandboxConfig, serve_forever

    faults = Faults(
        latency_ms=args.latency_ms,
        error_rate=args.error_rate,
        drop_rate=args.drop_rate,
        truncate_rate=args.truncate_rate,
        rate_limit_storm=args.rate_limit_storm,
        competing_rate=args.competing_rate,
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
        require_content_type=not args.lenient_content_type,
        rate_limit_header_prefix=args.rate_limit_headers,
    )
    serve_forever(config)
    return 0


def _snapshot_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--date", type=_date, default=_today(), help="snapshot date, YYYY-MM-DD (default: today, UTC)")
    parser.add_argument("--data-dir", type=Path, help="overrides JOOR_DATA_DIR")


def _account_option(parser: argparse.ArgumentParser, without: str) -> None:
    parser.add_argument("--account", metavar="NAME", help=f"one account of JOOR_ACCOUNTS_FILE (default: {without})")


def _backdated_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-backdated",
        action="store_true",
        help="store today's JOOR state under a past date (JOOR serves only the present)",
    )


def _common_options(parser: argparse.ArgumentParser, default: object) -> None:
    """-v and --debug, accepted before or after the command (a command's own default must not undo the first)."""
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="log every request and decision (debug level)"
    )
    parser.add_argument(
        "--debug", action="store_true", default=default, help="print tracebacks, and Dagster's full output for run"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="joor-pipeline",
        description="Get a brand's JOOR connections (retailers) into partitioned Parquet and DuckDB.",
        epilog=_env_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _common_options(parser, False)
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
        _common_options(p, argparse.SUPPRESS)
        return p

    fetch = add("fetch", cmd_fetch, "land one raw snapshot of every connection, exactly as JOOR sends it")
    _snapshot_options(fetch)
    _account_option(fetch, "the only one; required when several are configured")
    _backdated_option(fetch)

    check = add(
        "check",
        cmd_check,
        "test the connection to JOOR in at most 4 requests (token included): credentials, the list endpoint, JOOR's "
        "total, rate-limit headers, and how long a full fetch would take; writes nothing",
    )
    _account_option(check, "every configured account")

    flatten = add("flatten", cmd_flatten, "flatten one raw snapshot into the ten Parquet tables (atomically)")
    _snapshot_options(flatten)
    _account_option(flatten, "the only one; required when several are configured")

    run = add(
        "run",
        cmd_run,
        "land one date of every account through Dagster (fetch, flatten, check, publish: a run each), then build "
        "the models once",
    )
    _snapshot_options(run)
    _account_option(run, "every configured account, one after the other, then the models once")
    _backdated_option(run)
    run.add_argument(
        "--refetch",
        action="store_true",
        help="fetch again although a raw snapshot of the date is kept (otherwise reused: no JOOR credits spent)",
    )
    run.add_argument("--from", dest="from_date", type=_date, help="re-flatten and check the kept raw snapshots from")
    run.add_argument(
        "--to", dest="to_date", type=_date, help="... to this date (inclusive), then build the models once"
    )

    demo = add("demo", cmd_demo, "run the whole graph on the built-in sandbox for today and summarise it")
    _snapshot_options(demo)

    sql = add(
        "sql",
        cmd_sql,
        "SQL on the models and the ten tables, read-only: a query, or a prompt (statements from stdin when piped)",
    )
    sql.add_argument(
        "query",
        nargs="?",
        help="the SQL to run (several statements: separate them with ';'); without it, a prompt (.help inside)",
    )
    sql.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output (default: table)")
    sql.add_argument("--data-dir", help="overrides JOOR_DATA_DIR (a directory, or an s3://, gs:// or az:// URL)")
    sql.epilog = (
        "Names: the models of the newest published joor.duckdb by name (dim_retailers, retailer_history,\n"
        "payment_terms, discount_summary, retailer_addresses, data_quality_issues), the staging ones as\n"
        "staging.stg_<table>; the ten Parquet tables as tables.<name> (tables.connections, tables.addresses,\n"
        "tables.payment_methods, tables.shipping_methods, tables.discounts, tables.doors, tables.price_types,\n"
        "tables.buyers, tables.warehouses, tables.tax_ids): every published snapshot of every account.\n"
        "Each statement reads the newest build and partitions published by then; nothing is written and no run\n"
        "waits for it. Examples:\n"
        '  joor-pipeline sql "select * from payment_terms"\n'
        "  joor-pipeline sql --format csv \"select * from tables.addresses where country = 'US'\" > us.csv\n"
        "  joor-pipeline sql < report.sql\n\n" + _env_help()
    )

    prune = add(
        "prune",
        cmd_prune,
        "delete the raw snapshots older than JOOR_RETAIN_RAW_DAYS and the Parquet partitions older than "
        "JOOR_RETAIN_PARQUET_DAYS (unset: kept), never what a build still needs; crash-safe",
    )
    prune.add_argument("--dry-run", action="store_true", help="list what would be deleted; delete nothing")
    prune.add_argument(
        "--account",
        metavar="NAME",
        help="one account, configured or found in the data (default: every configured account and every account "
        "found in the data)",
    )
    prune.add_argument("--data-dir", type=Path, help="overrides JOOR_DATA_DIR")
    prune.epilog = (
        "Kept whatever their age: today's snapshot, each account's latest raw snapshot and latest Parquet, a raw\n"
        "snapshot whose Parquet is not published (the only copy of its date), and a date in quarantine. One line\n"
        "per snapshot deleted (account, date, kind, files, bytes), then a total; what a rule keeps past retention\n"
        "on stderr.\n\n" + _env_help()
    )

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
    sandbox.add_argument(
        "--rate-limit-headers",
        metavar="PREFIX",
        help="send PREFIX-Limit, PREFIX-Remaining and PREFIX-Reset on metered answers, e.g. X-RateLimit "
        "(default: none)",
    )
    sandbox.add_argument(
        "--lenient-content-type",
        action="store_true",
        help="answer calls without a Content-Type too (JOOR does not process them: refused by default)",
    )
    sandbox.add_argument("--latency-ms", type=float, default=0.0, help="fault: added latency per request")
    sandbox.add_argument("--error-rate", type=float, default=0.0, help="fault: share of requests answered 5xx")
    sandbox.add_argument("--drop-rate", type=float, default=0.0, help="fault: share of connections dropped")
    sandbox.add_argument("--truncate-rate", type=float, default=0.0, help="fault: share of bodies cut short")
    sandbox.add_argument("--rate-limit-storm", type=int, default=0, help="fault: answer the next N requests with 429")
    sandbox.add_argument(
        "--competing-rate",
        type=float,
        default=0.0,
        help="fault: another integration of the account spends this many credits per second (default 0)",
    )
    return parser


def main(argv: Sequence[str] | None = None, *, exit_process: bool = False) -> int:
    """The command line's commands; ``exit_process`` (the ``joor-pipeline`` program itself, never a caller that
    goes on): a Dagster command ends its process itself, see :func:`_exit_process`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    code = _main(args)
    if exit_process and args.func in (cmd_run, cmd_demo):
        _exit_process(code)
    return code


def _main(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Our own progress and decisions at INFO; the libraries' chatter (alembic, httpx) only with --verbose.
    logging.getLogger("joor_pipeline").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted; nothing partial was kept", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_CONFIG if isinstance(exc, ConfigError | UsageError) else EXIT_ERROR


def _exit_process(code: int) -> NoReturn:
    """End the process of ``run`` or ``demo`` with ``code``, doing what Python's own exit does except tearing the
    interpreter down.

    Python's exit, after ``main`` returns, (1) waits for the other non-daemon threads, (2) runs the ``atexit``
    functions, then (3) frees every module and object one by one: Dagster's, dbt's, DuckDB's, a few hundred
    thousand objects, 0.8 s of a daily run at 500 retailers (bench/run_cost.py). Here (1) and (2) are done as
    Python does them: ``atexit`` flushes and closes every ``logging`` handler, stops multiprocessing's forkserver
    and runs the pending ``weakref.finalize`` callbacks (temporary directories); then stdout and stderr are
    flushed, and ``os._exit`` skips (3). Nothing is lost by skipping it, as nothing the command wrote waits for an
    object to be freed: every file it publishes is written, fsynced and closed by the publish code before its
    rename (``storage/``, ``warehouse.py``); dbt's log file and dbt-duckdb's database are closed after each dbt
    command (``warehouse._close_dbt_duckdb``); the warehouse reads close their DuckDB connections; the Dagster
    instance is disposed when the batch ends (``run_batch``), its SQLite event log committed event by event. It
    also keeps DuckDB's bindings (nanobind) from printing "leaked instance" lines at teardown.
    """
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: Python's exit would fail the same way
            code = code or EXIT_ERROR
    os._exit(code)


def entry() -> None:
    """The ``joor-pipeline`` program."""
    sys.exit(main(exit_process=True))


def _one_line(exc: BaseException) -> str:
    """The error as one line: our own errors by their message, anything else with its type in front."""
    text = " ".join(str(exc).split())
    if isinstance(exc, JoorError | UsageError) or type(exc).__module__.startswith("joor_pipeline."):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


if __name__ == "__main__":
    entry()

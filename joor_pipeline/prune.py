"""Retention: delete raw snapshots (and, if asked, Parquet partitions) past their age, never what a build needs.

``joor-pipeline prune`` and the Dagster job ``joor_prune`` call :func:`prune`. Two settings of the whole
deployment (never per account) say how long to keep: ``JOOR_RETAIN_RAW_DAYS`` and ``JOOR_RETAIN_PARQUET_DAYS``,
unset by default (everything is kept). A snapshot is *past retention* when it is more than N days old (today, UTC,
minus its date > N: with N = 30 on 2026-11-23, 2026-10-24 stays and 2026-10-23 goes). Past retention, it is still
kept when:

- it is today's: never past retention, as N is at least 1 (a future date, from a clock behind, neither);
- it is the account's latest raw snapshot, or the date of its latest Parquet partitions: the models' "latest"
  marts and the next build read them;
- (raw) its date's Parquet is not published: the raw snapshot is the only copy of that date (a flatten that
  failed, or never ran);
- its date waits in quarantine (``_work/quarantine/``) for a re-flatten, which needs the raw snapshot, and whose
  Parquet stays until then.

The Parquet retention is at least the raw one (a configuration error otherwise): a raw snapshot whose Parquet went
first would be the only copy of its date, and kept forever by the rule above.

Every account is pruned: the configured ones and every account found in the data (an account removed from the
accounts file keeps its data until pruned by the same rules; its latest snapshot stays, so the models keep its last
state). Each date goes in one withdrawal (:func:`~joor_pipeline.storage.publish.withdraw`: its raw snapshot and
its ten tables' partitions together, crash-safe), under the date's lock; while Parquet goes, the warehouse build's
lock is held, so a build never loses a partition it is reading. A date another process holds is skipped and named
in the error at the end; the others go.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Final

from joor_pipeline import layout
from joor_pipeline.config import raise_problems, read_setting
from joor_pipeline.joor.errors import ConfigError, JoorError
from joor_pipeline.layout import SnapshotKey
from joor_pipeline.storage.access import exclusive, location
from joor_pipeline.storage.inventory import PARQUET, RAW, StoredSnapshot, accounts_in, stored_snapshots
from joor_pipeline.storage.migrate import migrate_legacy_layout
from joor_pipeline.storage.publish import PublishError, quarantine_dir, recover, withdraw
from joor_pipeline.storage.store import SnapshotBusy, StoreError

log = logging.getLogger(__name__)

RAW_DAYS: Final = "JOOR_RETAIN_RAW_DAYS"
PARQUET_DAYS: Final = "JOOR_RETAIN_PARQUET_DAYS"


class PruneFailed(JoorError):
    """Some dates could not be pruned (another process held them, the store failed); the others were."""


@dataclass(frozen=True)
class Retention:
    """How many days of each kind to keep; None keeps everything of that kind."""

    raw_days: int | None = None
    parquet_days: int | None = None

    def days(self, kind: str) -> int | None:
        return self.raw_days if kind == RAW else self.parquet_days

    @property
    def keeps_everything(self) -> bool:
        return self.raw_days is None and self.parquet_days is None

    def __str__(self) -> str:
        return ", ".join(
            f"{name}={days}" if days is not None else f"{name} unset"
            for name, days in ((RAW_DAYS, self.raw_days), (PARQUET_DAYS, self.parquet_days))
        )


def load_retention(env: Mapping[str, str]) -> Retention:
    """The retention settings of ``env``; one ConfigError naming every problem (exit 2 on the command line)."""
    problems: list[str] = []
    raw_days = read_setting(env, RAW_DAYS, problems)
    parquet_days = read_setting(env, PARQUET_DAYS, problems)
    if not problems and raw_days is not None and parquet_days is not None and parquet_days < raw_days:
        problems.append(
            f"{PARQUET_DAYS} ({parquet_days}) must be at least {RAW_DAYS} ({raw_days}): a raw snapshot whose "
            "Parquet is gone is the only copy of its date, so prune would keep it forever"
        )
    raise_problems(problems)
    return Retention(raw_days, parquet_days)


@dataclass(frozen=True)
class Removal:
    """One snapshot that goes (or would go): an account's raw snapshot of a date, or its date's Parquet."""

    key: SnapshotKey
    kind: str
    files: int
    bytes: int
    #: The account is in the configuration (else it was found only in the data).
    configured: bool
    targets: tuple[str, ...] = ()


@dataclass(frozen=True)
class Kept:
    """A snapshot past retention that a rule keeps, and why."""

    key: SnapshotKey
    kind: str
    reason: str


@dataclass
class PrunePlan:
    """What a prune deletes, and what it keeps past retention."""

    today: date
    retention: Retention
    #: Every account pruned, configured or found in the data.
    accounts: list[str]
    #: The accounts found in the data that the configuration does not name.
    unconfigured: list[str]
    removals: list[Removal]
    kept: list[Kept]

    @property
    def account_width(self) -> int:
        """The longest account name's length, to align the lines."""
        return max(map(len, self.accounts), default=0)


@dataclass
class PruneReport:
    """What a prune did (a dry run: what it would do)."""

    plan: PrunePlan
    dry_run: bool
    removed: list[Removal] = field(default_factory=list)
    #: One line per date that could not be pruned.
    failed: list[str] = field(default_factory=list)

    @property
    def files(self) -> int:
        return sum(removal.files for removal in self.removed)

    @property
    def bytes(self) -> int:
        return sum(removal.bytes for removal in self.removed)


def _keep_reason(snapshot: StoredSnapshot, *, latest: date, parquet_dates: set[date], quarantined: bool) -> str | None:
    """Why a snapshot past retention stays; None when it goes. (Today's is never past retention: N >= 1.)"""
    day = snapshot.key.snapshot_date
    if day == latest:
        what = "raw snapshot" if snapshot.kind == RAW else "Parquet partitions (the models' latest snapshot)"
        return f"the account's latest {what}"
    if snapshot.kind == RAW and day not in parquet_dates:
        return "its Parquet is not published: the raw snapshot is the only copy of the date"
    if quarantined:
        return "a flatten of it waits in quarantine for a re-flatten"
    return None


def plan_prune(
    data_dir: Path,
    retention: Retention,
    *,
    today: date,
    configured: Sequence[str],
    account: str | None = None,
) -> PrunePlan:
    """What :func:`prune` deletes and keeps, read from the store (nothing written). ``configured``: the accounts
    of the configuration; ``account``: only that one (a ConfigError when neither configured nor in the data)."""
    snapshots = [snapshot for snapshot in stored_snapshots(data_dir) if snapshot.published]
    found = accounts_in(snapshots)
    known = sorted(set(configured) | set(found))
    if account is not None and account not in known:
        raise ConfigError(
            f"unknown account {account!r}: it is not configured ({', '.join(configured) or 'none'}) and "
            f"{location(data_dir)} holds no snapshot of it"
        )
    accounts = [account] if account is not None else known
    removals: list[Removal] = []
    kept: list[Kept] = []
    for name in accounts:
        mine = [snapshot for snapshot in snapshots if snapshot.key.account == name]
        parquet_dates = {s.key.snapshot_date for s in mine if s.kind == PARQUET}
        for kind in (RAW, PARQUET):
            days = retention.days(kind)
            of_kind = [s for s in mine if s.kind == kind]
            if days is None or not of_kind:
                continue
            latest = max(s.key.snapshot_date for s in of_kind)
            for snapshot in of_kind:
                if (today - snapshot.key.snapshot_date).days <= days:
                    continue
                reason = _keep_reason(
                    snapshot,
                    latest=latest,
                    parquet_dates=parquet_dates,
                    quarantined=quarantine_dir(data_dir, snapshot.key).is_dir(),
                )
                if reason is not None:
                    kept.append(Kept(snapshot.key, kind, reason))
                    continue
                removals.append(
                    Removal(snapshot.key, kind, snapshot.files, snapshot.bytes, name in configured, snapshot.targets)
                )
    removals.sort(key=lambda r: (r.key.account, r.key.snapshot_date, r.kind != RAW))
    kept.sort(key=lambda k: (k.key.account, k.key.snapshot_date, k.kind != RAW))
    unconfigured = [name for name in accounts if name not in configured]
    return PrunePlan(today, retention, accounts, unconfigured, removals, kept)


def prune(
    data_dir: Path,
    retention: Retention,
    *,
    today: date,
    configured: Sequence[str],
    account: str | None = None,
    dry_run: bool = False,
    on_removed: Callable[[Removal, PrunePlan], None] | None = None,
) -> PruneReport:
    """Delete what :func:`plan_prune` says, one date at a time (a dry run deletes, locks and writes nothing).

    ``today`` is the caller's (UTC) day: the tests pass one. ``on_removed`` hears of each snapshot as it goes
    (with the plan). A date that cannot be pruned (another process holds it, the store failed) is in the report's
    ``failed``; the caller turns that into one error line.
    """
    if not dry_run and not retention.keeps_everything:
        recover(data_dir)  # a dead prune (or fetch, or flatten) first: finished or rolled back
        migrate_legacy_layout(data_dir)
    plan = plan_prune(data_dir, retention, today=today, configured=configured, account=account)
    report = PruneReport(plan, dry_run)
    if dry_run:
        report.removed = list(plan.removals)
        for removal in plan.removals:
            if on_removed is not None:
                on_removed(removal, plan)
        return report
    by_date: dict[SnapshotKey, list[Removal]] = {}
    for removal in plan.removals:
        by_date.setdefault(removal.key, []).append(removal)
    with ExitStack() as stack:
        if any(removal.kind == PARQUET for removal in plan.removals):
            # A build reads the partitions it planned on until it publishes: it never loses one midway.
            stack.enter_context(exclusive(data_dir, layout.WAREHOUSE_LOCK, "the warehouse build", wait=None))
        for key, removals in by_date.items():
            targets = [target for removal in removals for target in removal.targets]
            try:
                deleted = withdraw(data_dir, key, targets)
            except (SnapshotBusy, StoreError, PublishError) as exc:
                kinds = " and ".join(removal.kind for removal in removals)
                report.failed.append(f"{kinds} {key}: {exc}")
                continue
            for removal in removals:
                files = {name: size for name, size in deleted.items() if name.rpartition("/")[0] in removal.targets}
                if not files:
                    continue  # gone meanwhile (another prune)
                done = Removal(
                    removal.key, removal.kind, len(files), sum(files.values()), removal.configured, removal.targets
                )
                report.removed.append(done)
                log.debug("pruned the %s snapshot %s (%d files, %d bytes)", removal.kind, key, done.files, done.bytes)
                if on_removed is not None:
                    on_removed(done, plan)
    return report


# ---- words ------------------------------------------------------------------------------------------------------


def size_text(count: int) -> str:
    """Bytes for people: ``85,312,101 bytes (85.3 MB)``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count:,} bytes ({count / scale:.1f} {unit})"
    return f"{count:,} bytes"


def removal_line(removal: Removal, *, dry_run: bool, width: int = 0) -> str:
    """One snapshot that went: ``deleted  brand_a  2026-10-01  raw      201 files  85,312,101 bytes (85.3 MB)``."""
    verb = "would delete" if dry_run else "deleted"
    note = "" if removal.configured else "  (account not configured)"
    return (
        f"{verb}  {removal.key.account:<{width}}  {removal.key.snapshot_date}  {removal.kind:<7}  "
        f"{removal.files:>5} files  {size_text(removal.bytes)}{note}"
    )


def kept_line(kept: Kept) -> str:
    """A snapshot past retention that stays, and why."""
    return f"kept {kept.key.account} {kept.key.snapshot_date} {kept.kind}: {kept.reason}"


def total_line(report: PruneReport) -> str:
    """The last line: what went in all, under which settings."""
    plan = report.plan
    settings = f"{plan.retention}; today {plan.today} UTC"
    if plan.retention.keeps_everything:
        return f"nothing to delete: {RAW_DAYS} and {PARQUET_DAYS} are unset, so every snapshot is kept"
    if not report.removed:
        return f"nothing to delete ({settings})"
    raw = sum(removal.kind == RAW for removal in report.removed)
    accounts = len({removal.key.account for removal in report.removed})
    verb = "would delete" if report.dry_run else "deleted"
    return (
        f"{verb} {len(report.removed)} snapshot(s) ({raw} raw, {len(report.removed) - raw} Parquet) of {accounts} "
        f"account(s): {report.files:,} files, {size_text(report.bytes)} ({settings})"
    )


def failure_line(report: PruneReport) -> str:
    """The error line of the dates that could not be pruned (the others were)."""
    return (
        f"{len(report.failed)} date(s) could not be pruned (the others were; the next prune tries again): "
        + "; ".join(report.failed)
    )

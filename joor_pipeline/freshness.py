"""How fresh each account's tables are: the age of its last publication, read from the published manifests.

No Dagster here: ``assets/sensors.py`` turns a :class:`FreshnessReport` into the tables' ``freshness`` check results
and, when asked, an alert. The published manifests are the truth, not Dagster's event log: ``joor-pipeline
flatten``, and ``joor-pipeline run`` on a throwaway instance, publish without the daemon's instance ever hearing of
it.

An account's *last publication* is the publication of its newest published snapshot date (the ten tables of a date
are published together, under one publication id, so the ``connections`` table's manifest stands for all ten). Its
age is measured from the ``published_at`` time that manifest records. The account is fresh while that age is within
the limit (``JOOR_FRESHNESS_HOURS``, 26 h by default: a daily run plus two hours' slack); an account that never
published is not fresh.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Final

from joor_pipeline.config import raise_problems, read_setting
from joor_pipeline.layout import SnapshotKey
from joor_pipeline.storage.parquet import published_dates, published_manifest

#: The table whose manifest dates a publication (all ten are published together).
DATED_BY: Final = "connections"


@dataclass(frozen=True)
class Publication:
    """An account's last publication: its newest published snapshot date and when that was published."""

    snapshot_date: date
    published_at: datetime
    publication_id: str


@dataclass(frozen=True)
class AccountFreshness:
    """One account's freshness at one moment."""

    account: str
    last: Publication | None
    fresh: bool
    #: How old the last publication is (None when there is none).
    age: timedelta | None
    #: When a fresh account becomes stale unless it publishes again (None when stale already).
    fresh_until: datetime | None

    def describe(self, limit: timedelta) -> str:
        """One line: the account, its last publication and its age against the limit."""
        if self.last is None:
            return f"{self.account}: nothing published yet"
        assert self.age is not None
        state = "within" if self.fresh else "over"
        return (
            f"{self.account}: last publication {self.last.snapshot_date} at "
            f"{self.last.published_at.isoformat(timespec='minutes')}, {_hours(self.age)} old, {state} the "
            f"{_hours(limit)} limit"
        )


@dataclass(frozen=True)
class FreshnessReport:
    """Every account's freshness at ``now`` against ``limit``."""

    now: datetime
    limit: timedelta
    accounts: tuple[AccountFreshness, ...]

    @property
    def passed(self) -> bool:
        return all(a.fresh for a in self.accounts)

    @property
    def stale(self) -> list[AccountFreshness]:
        return [a for a in self.accounts if not a.fresh]

    def describe(self) -> str:
        """One line for a check result: which accounts are stale, or that all are fresh."""
        if self.passed:
            oldest = max(self.accounts, key=lambda a: a.age or timedelta(0), default=None)
            tail = f" (oldest: {oldest.describe(self.limit)})" if oldest is not None else ""
            return f"every account published within {_hours(self.limit)}{tail}"
        return "stale: " + "; ".join(a.describe(self.limit) for a in self.stale)


def _hours(delta: timedelta) -> str:
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f} h" if hours < 100 else f"{hours:.0f} h"


def freshness_limit(environ: Mapping[str, str]) -> timedelta:
    """``JOOR_FRESHNESS_HOURS`` as a timedelta (ConfigError naming the variable if it is wrong)."""
    problems: list[str] = []
    hours = read_setting(environ, "JOOR_FRESHNESS_HOURS", problems)
    raise_problems(problems)
    return timedelta(hours=float(hours))


def last_publication(data_dir: Path, account: str) -> Publication | None:
    """The account's newest published snapshot date and when it was published; None when nothing is.

    A manifest that records no publication time (written by hand) counts as published at the epoch: stale.
    """
    dates = published_dates(data_dir, DATED_BY, account=account)
    if not dates:
        return None
    day = dates[-1]
    manifest = published_manifest(data_dir, DATED_BY, SnapshotKey(account, day)) or {}
    stamp = manifest.get("published_at")
    if isinstance(stamp, str):
        published_at = datetime.fromisoformat(stamp)
        if published_at.tzinfo is None:
            published_at = published_at.replace(tzinfo=UTC)
        return Publication(day, published_at.astimezone(UTC), str(manifest.get("publication_id") or ""))
    return Publication(day, datetime.fromtimestamp(0, UTC), str(manifest.get("publication_id") or ""))


def evaluate(data_dir: Path, accounts: Sequence[str], *, now: datetime, limit: timedelta) -> FreshnessReport:
    """Every account's freshness at ``now`` (timezone-aware) against ``limit``."""
    found = []
    for account in accounts:
        last = last_publication(data_dir, account)
        if last is None:
            found.append(AccountFreshness(account, None, False, None, None))
            continue
        age = max(now - last.published_at, timedelta(0))
        fresh = age <= limit
        found.append(AccountFreshness(account, last, fresh, age, last.published_at + limit if fresh else None))
    return FreshnessReport(now, limit, tuple(found))

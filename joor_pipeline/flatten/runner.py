"""Flatten one raw snapshot into the ten Parquet tables, audit them staged, and publish all ten at once.

The pages are written by :mod:`~joor_pipeline.flatten.parts` (one part file per table), shared out between
processes by :mod:`~joor_pipeline.flatten.workers`. If two workers kept the same connection (pages that overlap
across the cut, which JOOR's offset pagination makes rare), the snapshot is flattened again in one process, so
the first occurrence wins as always.

Everything is written to a local staging area first (write), where the caller may check it (audit: the blocking
checks read the staged files through :meth:`StagedFlatten.files`); only then are the ten partitions published
together by :mod:`~joor_pipeline.storage.publish`, which survives a SIGKILL at any point, on any backend. A failed
audit keeps the staged tables in ``_work/quarantine/`` instead. Either way a failure leaves the previous
partitions untouched. A re-run of the same raw snapshot with the same number of workers writes byte-identical
Parquet (published under names that carry the publication id).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from joor_pipeline import layout
from joor_pipeline.flatten import TABLES, FlattenStats
from joor_pipeline.flatten.parts import flatten_part, partition_path
from joor_pipeline.flatten.recount import RawRecount, merge_tallies
from joor_pipeline.flatten.workers import (
    WORKER_STALL_SECONDS,
    flatten_parallel,
    flatten_workers,
    overlapping,
    split_pages,
)
from joor_pipeline.joor.errors import JoorError
from joor_pipeline.layout import SnapshotKey
from joor_pipeline.storage.access import uri
from joor_pipeline.storage.parquet import staged_files, write_partition_manifest
from joor_pipeline.storage.publish import Publication, publication
from joor_pipeline.storage.raw import read_raw_snapshot


class AuditFailed(JoorError):
    """A staged flatten failed its blocking checks; nothing was published, the staged tables were kept aside."""


Audit = Callable[["StagedFlatten"], list[str]]
"""Checks a staged flatten; returns what failed, in words (nothing: publish it)."""


FlattenProgress = Callable[[int, int, int], None]
"""Called after each page with (pages done, pages in the snapshot, connections read so far)."""


@dataclass(frozen=True)
class FlattenReport:
    """What one flatten wrote and what it saw."""

    key: SnapshotKey
    format: str
    pages: int
    rows: dict[str, int]
    stats: FlattenStats
    #: Each table's published partition, where it is (its files: ``storage.parquet.published_files``).
    paths: dict[str, str]
    #: Processes that wrote the partition (one file each per table).
    workers: int
    duration_seconds: float
    #: The id every table's manifest carries once published (see ``storage.parquet.publication_id``).
    publication_id: str

    @property
    def snapshot_date(self) -> date:
        return self.key.snapshot_date

    @property
    def account(self) -> str:
        return self.key.account

    @property
    def connections(self) -> int:
        """Connections written (after deduplication)."""
        return self.rows["connections"]


def audit_failure(key: SnapshotKey, failures: list[str], kept: Path) -> str:
    """The one line that says a flatten failed its blocking checks, and what that left where."""
    return (
        f"blocking check(s) failed on the flatten of {key}: {'; '.join(failures)}. Nothing was published: the "
        f"previous tables of that date and the models are unchanged. The staged tables are kept in {kept}"
    )


@dataclass
class StagedFlatten:
    """A flattened snapshot in staging: its report, its files for the audit, and the way to publish it."""

    report: FlattenReport
    #: The staged Parquet root (``<root>/<table>/account=A/snapshot_date=D/`` with manifests, like the published).
    root: Path
    publication: Publication
    #: What the raw pages say each table should hold, counted by the flatten's processes from the pages as they
    #: read them (apart from the flatten itself); None when an id repeats, and the audit must read the pages.
    raw_recount: RawRecount | None = None

    def files(self, table: str) -> list[str]:
        """The staged files of one table, in row order."""
        return staged_files(self.root, table, self.report.key)

    def publish(self) -> FlattenReport:
        """Replace the ten published partitions of the date by the staged ones, all at once."""
        self.publication.publish()
        return self.report

    def quarantine(self, reason: dict[str, Any]) -> Path:
        """Publish nothing; keep the staged tables (and ``reason``) in ``_work/quarantine/account=A/...``."""
        return self.publication.quarantine(reason)

    def refuse(self, failures: list[str]) -> AuditFailed:
        """Publish nothing: quarantine the staged tables with ``failures`` (a failed audit), and the error to raise."""
        key = self.report.key
        reason = {"account": key.account, "snapshot_date": key.snapshot_date.isoformat(), "failed_checks": failures}
        return AuditFailed(audit_failure(key, failures, self.quarantine(reason)))


@contextmanager
def stage_snapshot(
    data_dir: Path,
    key: SnapshotKey,
    *,
    progress: FlattenProgress | None = None,
    workers: int | None = None,
    worker_stall_seconds: float = WORKER_STALL_SECONDS,
    recount: bool = True,
) -> Iterator[StagedFlatten]:
    """Flatten the raw snapshot of ``key`` into staging, under the date's lock; publish nothing.

    With ``recount`` the flatten's processes also count the raw pages as they read them, for the audit
    (:attr:`StagedFlatten.raw_recount`).

    The block decides: :meth:`StagedFlatten.publish` or :meth:`StagedFlatten.quarantine`; otherwise the
    staging is deleted when the block ends. ``SnapshotBusy`` when another process fetches or flattens the date.
    """
    clock = time.monotonic()
    snapshot_date, account = key.snapshot_date, key.account
    targets = [layout.table_partition(table, key) for table in TABLES]
    with publication(data_dir, key, "parquet", targets) as pub:
        snapshot = read_raw_snapshot(data_dir, key)
        total = len(snapshot.pages)
        parts = flatten_workers(workers, total)
        done = connections = 0

        def on_page(count: int) -> None:
            nonlocal done, connections
            done += 1
            connections += count
            if progress is not None:
                progress(done, total, connections)

        new_root = pub.staged(layout.PARQUET)
        parts_stats: list[FlattenStats] = []
        raw_recount: RawRecount | None = None
        if parts > 1:
            runs = split_pages(snapshot.pages, parts)
            reports = flatten_parallel(
                snapshot,
                runs,
                new_root,
                snapshot_date,
                on_page,
                stall_seconds=worker_stall_seconds,
                recount=recount,
                account=account,
            )
            if overlapping(reports):
                # A connection repeated across two workers' pages: only one process can keep the first.
                shutil.rmtree(new_root)
                done = connections = 0
            else:
                parts_stats = [report.stats for report in reports]
                tallies = [report.tally for report in reports if report.tally is not None]
                raw_recount = merge_tallies(tallies) if recount else None
        if not parts_stats:
            part = flatten_part(
                snapshot, snapshot.pages, new_root, snapshot_date, 0, on_page, recount=recount, account=account
            )
            parts_stats = [part.stats]
            raw_recount = merge_tallies([part.tally.sent()]) if part.tally is not None else None
        for table in TABLES:
            write_partition_manifest(
                partition_path(new_root, table, snapshot_date, account=account), table, key, pub.id
            )
        stats = FlattenStats()
        for part_stats in parts_stats:
            stats.merge(part_stats)
        report = FlattenReport(
            key=key,
            format=snapshot.format,
            pages=total,
            rows=dict(stats.rows),
            stats=stats,
            paths={table: uri(data_dir, target) for table, target in zip(TABLES, targets, strict=True)},
            workers=len(parts_stats),
            duration_seconds=time.monotonic() - clock,
            publication_id=pub.id,
        )
        yield StagedFlatten(report, new_root, pub, raw_recount)


def flatten_snapshot(
    data_dir: Path,
    key: SnapshotKey,
    *,
    progress: FlattenProgress | None = None,
    workers: int | None = None,
    audit: Audit | None = None,
    worker_stall_seconds: float = WORKER_STALL_SECONDS,
) -> FlattenReport:
    """Flatten the raw snapshot of ``key`` into the ten Parquet tables and publish them at once.

    ``workers`` processes share the pages (see :func:`flatten_workers`; None picks the default, 1 flattens in
    this process). ``progress`` is called in this process after each page, whichever worker flattened it. A
    worker silent for ``worker_stall_seconds`` fails the flatten (see :func:`flatten_parallel`).
    ``audit`` (e.g. ``quality.blocking_failures``) checks the staged tables first: if it reports failures,
    nothing is published, the staged tables go to quarantine and :class:`AuditFailed` says why and where.
    """
    with stage_snapshot(
        data_dir,
        key,
        progress=progress,
        workers=workers,
        worker_stall_seconds=worker_stall_seconds,
        recount=audit is not None,
    ) as staged:
        failures = audit(staged) if audit is not None else []
        if failures:
            raise staged.refuse(failures)
        return staged.publish()

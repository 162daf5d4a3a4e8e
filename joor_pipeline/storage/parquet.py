"""Flatten one raw snapshot into partitioned Parquet, audit it staged, and publish all ten tables at once.

Layout::

    $JOOR_DATA_DIR/parquet/<table>/account=<name>/snapshot_date=YYYY-MM-DD/part-00000.parquet  (all ten tables)
                                                                          part-00001.parquet  (one per worker)
                                                                          _manifest.json      (at publish)

``account`` and ``snapshot_date`` are stored in the files as well as in the directory names, so a file read on
its own still says which snapshot it belongs to; DuckDB's ``read_parquet(..., hive_partitioning = true)`` gives
one ``account`` and one ``snapshot_date DATE`` column either way (the partition value wins when both are
present, and they agree).

The pages are written by :mod:`~joor_pipeline.storage.parts` (one part file per table), shared out between
processes by :mod:`~joor_pipeline.storage.workers`. If two workers kept the same connection (pages that
overlap across the cut, which JOOR's offset pagination makes rare), the snapshot is flattened again in one
process, so the first occurrence wins as always.

Everything is written to a staging area under ``$JOOR_DATA_DIR/_work/`` first (write), where the caller may
check it (audit: the blocking checks read the staged files through :meth:`StagedFlatten.files`); only then are
the ten partition directories published together by :mod:`~joor_pipeline.storage.publish`, which survives a
SIGKILL at any point. A failed audit keeps the staged tables in ``_work/quarantine/`` instead. Either way a
failure leaves the previous partitions untouched. A re-run of the same raw snapshot with the same number of
workers writes byte-identical Parquet.

**Readers go through the manifest.** Each partition's ``_manifest.json`` lists its files (name, rows, bytes,
sha256) and the publication id: :func:`published_files` returns exactly those, so a file copied into the
folder by hand is never read, and a list is never stale. A file whose size differs from its manifest entry
(truncated on disk) is reported by name, with the way out: flatten that date again.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path, PurePosixPath
from typing import Any, Final

import pyarrow.parquet as pq

from joor_pipeline.flatten import TABLES, FlattenStats
from joor_pipeline.joor.errors import JoorError
from joor_pipeline.storage import objectstore
from joor_pipeline.storage.locks import DEFAULT_ACCOUNT, account_key, of_account
from joor_pipeline.storage.parts import PART_FILE, flatten_part, partition_path
from joor_pipeline.storage.publish import Publication, publication, write_durably
from joor_pipeline.storage.raw import read_raw_snapshot
from joor_pipeline.storage.recount import RawRecount, merge_tallies
from joor_pipeline.storage.workers import (
    WORKER_STALL_SECONDS,
    flatten_parallel,
    flatten_workers,
    overlapping,
    split_pages,
)

PARQUET_DIR: Final = Path("parquet")
#: Every published partition's list of files, written at publish (a name hive readers skip: it starts with _).
PARTITION_MANIFEST: Final = "_manifest.json"
_PARTITION_DIR: Final = re.compile(r"snapshot_date=(\d{4}-\d{2}-\d{2})")
_ACCOUNT_DIR: Final = re.compile(r"account=([a-z0-9][a-z0-9_-]{0,39})")
_LEGACY_PART: Final = re.compile(r"part-\d{5}\.parquet")


class DamagedPartition(JoorError):
    """A published partition's files do not match its manifest (truncated, deleted or unreadable)."""


class AuditFailed(JoorError):
    """A staged flatten failed its blocking checks; nothing was published, the staged tables were kept aside."""


Audit = Callable[["StagedFlatten"], list[str]]
"""Checks a staged flatten; returns what failed, in words (nothing: publish it)."""


FlattenProgress = Callable[[int, int, int], None]
"""Called after each page with (pages done, pages in the snapshot, connections read so far)."""


@dataclass(frozen=True)
class FlattenReport:
    """What one flatten wrote and what it saw."""

    snapshot_date: date
    format: str
    pages: int
    rows: dict[str, int]
    stats: FlattenStats
    #: Each table's published partition directory (its files: :func:`published_files`).
    paths: dict[str, Path]
    #: Processes that wrote the partition (one file each per table).
    workers: int
    duration_seconds: float
    #: The id every table's manifest carries once published (see :func:`publication_id`).
    publication_id: str
    account: str = DEFAULT_ACCOUNT

    @property
    def connections(self) -> int:
        """Connections written (after deduplication)."""
        return self.rows["connections"]


def partition_dir(data_dir: Path, table: str, snapshot_date: date, *, account: str = DEFAULT_ACCOUNT) -> Path:
    """The directory of one table's published partition for one account's snapshot."""
    return partition_path(data_dir / PARQUET_DIR, table, snapshot_date, account=account)


def partition_target(table: str, snapshot_date: date, *, account: str = DEFAULT_ACCOUNT) -> Path:
    """One table's partition directory relative to the data directory."""
    return partition_path(PARQUET_DIR, table, snapshot_date, account=account)


def parquet_path(data_dir: Path, table: str, snapshot_date: date, *, account: str = DEFAULT_ACCOUNT) -> Path:
    """The first Parquet file of one table's partition (the only one when a single worker wrote it)."""
    return partition_dir(data_dir, table, snapshot_date, account=account) / PART_FILE


# ---- the manifest: what readers read ---------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_partition_manifest(
    directory: Path, table: str, snapshot_date: date, publication_id: str, *, account: str = DEFAULT_ACCOUNT
) -> None:
    """List a staged partition's part files, in row order, in its ``_manifest.json``."""
    files = []
    for path in sorted(directory.glob("part-*.parquet")):
        files.append(
            {
                "name": path.name,
                "rows": pq.ParquetFile(path).metadata.num_rows,
                "bytes": path.stat().st_size,
                "sha256": _sha256(path),
            }
        )
    manifest = {
        "table": table,
        "account": account,
        "snapshot_date": snapshot_date.isoformat(),
        "publication_id": publication_id,
        "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "rows": sum(int(f["rows"]) for f in files),  # type: ignore[call-overload]
        "files": files,
    }
    write_durably(directory / PARTITION_MANIFEST, json.dumps(manifest, indent=2).encode() + b"\n")


def _read_partition_manifest(directory: Path) -> dict[str, Any] | None:
    """The manifest of a partition directory; None when there is none (no partition, or a pre-manifest one)."""
    path = directory / PARTITION_MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DamagedPartition(f"cannot read {path}: {exc}; {_way_out(directory)}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise DamagedPartition(f"{path} has no list of files; {_way_out(directory)}")
    return manifest


def _way_out(directory: Path) -> str:
    day = directory.name.removeprefix("snapshot_date=")
    account = directory.parent.name.removeprefix("account=")
    option = f" --account {account}" if account != DEFAULT_ACCOUNT else ""
    return f"flatten that date again to rewrite it: joor-pipeline flatten{option} --date {day}"


def partition_files_under(root: Path, table: str, snapshot_date: date, *, account: str = DEFAULT_ACCOUNT) -> list[Path]:
    """The files of one table's partition under a Parquet root (published, or a staged one), in row order.

    From the partition's manifest, each checked against the size it was published with. A directory written
    before manifests existed is read as its ``part-00000.parquet``, ``part-00001.parquet``... files.
    """
    directory = partition_path(root, table, snapshot_date, account=account)
    manifest = _read_partition_manifest(directory)
    if manifest is None:
        if not directory.is_dir():
            return []
        return sorted(path for path in directory.iterdir() if _LEGACY_PART.fullmatch(path.name))
    files: list[Path] = []
    for entry in manifest["files"]:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".parquet"):
            raise DamagedPartition(f"{directory / PARTITION_MANIFEST} lists {name!r}; {_way_out(directory)}")
        path = directory / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise DamagedPartition(f"{path} is missing (its manifest lists it); {_way_out(directory)}") from None
        if size != entry.get("bytes"):
            raise DamagedPartition(
                f"{path} is damaged: {size} bytes where {entry.get('bytes')} were published; {_way_out(directory)}"
            )
        files.append(path)
    return files


def published_files(
    data_dir: Path, table: str, snapshot_date: date, *, account: str = DEFAULT_ACCOUNT
) -> list[Path | str]:
    """Exactly the files of one published partition, in row order (never a stray file, never a stale list).

    With an object-store data directory, their ``s3://`` URLs, from the partition's manifest in the store.
    """
    store = objectstore.store_of(data_dir)
    if store is not None:
        return [*(objectstore.published_uris(store, partition_target(table, snapshot_date, account=account)) or [])]
    return [*partition_files_under(data_dir / PARQUET_DIR, table, snapshot_date, account=account)]


#: The name this had before partitions carried manifests; the same function.
partition_parquet_files = published_files


def _is_published(directory: Path) -> bool:
    if (directory / PARTITION_MANIFEST).is_file():
        return True
    return any(_LEGACY_PART.fullmatch(path.name) for path in directory.iterdir())


def published_accounts(data_dir: Path, table: str = "connections") -> list[str]:
    """Accounts with a directory under ``table`` (published partitions or not), sorted."""
    store = objectstore.store_of(data_dir)
    if store is not None:
        return sorted({account for account, _day in published_partitions(data_dir, table)})
    table_dir = data_dir / PARQUET_DIR / table
    if not table_dir.is_dir():
        return []
    found = (_ACCOUNT_DIR.fullmatch(path.name) for path in table_dir.iterdir() if path.is_dir())
    return sorted(match.group(1) for match in found if match)


def published_partitions(data_dir: Path, table: str = "connections") -> list[tuple[str, date]]:
    """Every published (account, snapshot date) of ``table``, sorted."""
    store = objectstore.store_of(data_dir)
    if store is not None:  # one listing of the table's prefix: account=A/snapshot_date=D/_manifest.json
        found = set()
        for rel in store.list(PARQUET_DIR / table):
            parts = PurePosixPath(rel).parts
            if len(parts) < 3 or parts[-1] != PARTITION_MANIFEST:
                continue
            account, day = _ACCOUNT_DIR.fullmatch(parts[-3]), _PARTITION_DIR.fullmatch(parts[-2])
            if account and day and PurePosixPath(*parts[:-3]) == PurePosixPath(PARQUET_DIR / table):
                found.add((account.group(1), date.fromisoformat(day.group(1))))
        return sorted(found)
    return [
        (account, day)
        for account in published_accounts(data_dir, table)
        for day in published_dates(data_dir, table, account=account)
    ]


def published_dates(data_dir: Path, table: str = "connections", *, account: str = DEFAULT_ACCOUNT) -> list[date]:
    """Dates with a published partition of ``table`` for ``account``, oldest first."""
    store = objectstore.store_of(data_dir)
    if store is not None:
        parent = partition_target(table, date.min, account=account).parent
        names = objectstore.published_targets(store, parent, _PARTITION_DIR)
        return sorted(date.fromisoformat(name.removeprefix("snapshot_date=")) for name in names)
    table_dir = data_dir / PARQUET_DIR / table / account_key(account)
    if not table_dir.is_dir():
        return []
    days = []
    for directory in table_dir.iterdir():
        found = _PARTITION_DIR.fullmatch(directory.name)
        if found and directory.is_dir() and _is_published(directory):
            days.append(date.fromisoformat(found.group(1)))
    return sorted(days)


def publication_id(data_dir: Path, snapshot_date: date, *, account: str = DEFAULT_ACCOUNT) -> str | None:
    """An id that changes every time the snapshot's partitions are (re)published; None if unpublished.

    All ten tables of a snapshot are published together and carry the same id; the connections table's is
    returned. A partition from before manifests existed gets an id from its files' modification times.
    """
    store = objectstore.store_of(data_dir)
    if store is not None:
        found = objectstore.read_manifest(store, partition_target("connections", snapshot_date, account=account))
        return None if found is None or not found.get("publication_id") else str(found["publication_id"])
    directory = partition_dir(data_dir, "connections", snapshot_date, account=account)
    manifest = _read_partition_manifest(directory)
    if manifest is not None:
        value = manifest.get("publication_id")
        return str(value) if value else None
    legacy = partition_files_under(data_dir / PARQUET_DIR, "connections", snapshot_date, account=account)
    if not legacy:
        return None
    return "legacy-" + str(max(path.stat().st_mtime_ns for path in legacy))


def partition_rows(files: Sequence[Path | str]) -> int:
    """Rows in some Parquet files (from their footers); a damaged file is named, with the way out."""
    rows = 0
    for path in files:
        try:
            rows += objectstore.parquet_file(path).metadata.num_rows
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise DamagedPartition(f"{path} cannot be read ({exc}); {_way_out(Path(path).parent)}") from None
    return rows


# ---- write, audit, publish -------------------------------------------------------------------------------------


@dataclass
class StagedFlatten:
    """A flattened snapshot in staging: its report, its files for the audit, and the way to publish it."""

    report: FlattenReport
    #: The staged Parquet root (``<root>/<table>/snapshot_date=D/`` with manifests, like the published one).
    root: Path
    publication: Publication
    #: What the raw pages say each table should hold, counted by the flatten's processes from the pages as they
    #: read them (apart from the flatten itself); None when an id repeats, and the audit must read the pages.
    raw_recount: RawRecount | None = None

    def files(self, table: str) -> list[Path]:
        """The staged files of one table, in row order."""
        return partition_files_under(self.root, table, self.report.snapshot_date, account=self.report.account)

    def publish(self) -> FlattenReport:
        """Replace the ten published partitions of the date by the staged ones, all at once."""
        day, account = self.report.snapshot_date, self.report.account
        self.publication.publish([partition_target(table, day, account=account) for table in TABLES])
        return self.report

    def quarantine(self, reason: dict[str, Any]) -> Path:
        """Publish nothing; keep the staged tables (and ``reason``) in ``_work/quarantine/account=A/...``."""
        return self.publication.quarantine(reason)


@contextmanager
def stage_snapshot(
    data_dir: Path,
    snapshot_date: date,
    *,
    progress: FlattenProgress | None = None,
    workers: int | None = None,
    worker_stall_seconds: float = WORKER_STALL_SECONDS,
    recount: bool = True,
    account: str = DEFAULT_ACCOUNT,
) -> Iterator[StagedFlatten]:
    """Flatten the raw snapshot of ``snapshot_date`` into staging, under the date's lock; publish nothing.

    With ``recount`` the flatten's processes also count the raw pages as they read them, for the audit
    (:attr:`StagedFlatten.raw_recount`).

    The block decides: :meth:`StagedFlatten.publish` or :meth:`StagedFlatten.quarantine`; otherwise the
    staging is deleted when the block ends. ``SnapshotBusy`` when another process fetches or flattens the date.
    """
    clock = time.monotonic()
    with publication(data_dir, snapshot_date, "parquet", account=account) as pub:
        snapshot = read_raw_snapshot(data_dir, snapshot_date, account=account)
        total = len(snapshot.pages)
        parts = flatten_workers(workers, total)
        done = connections = 0

        def on_page(count: int) -> None:
            nonlocal done, connections
            done += 1
            connections += count
            if progress is not None:
                progress(done, total, connections)

        new_root = pub.staged(PARQUET_DIR)
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
                partition_path(new_root, table, snapshot_date, account=account),
                table,
                snapshot_date,
                pub.id,
                account=account,
            )
        stats = FlattenStats()
        for part_stats in parts_stats:
            stats.merge(part_stats)
        report = FlattenReport(
            snapshot_date=snapshot_date,
            format=snapshot.format,
            pages=total,
            rows=dict(stats.rows),
            stats=stats,
            paths={table: partition_dir(data_dir, table, snapshot_date, account=account) for table in TABLES},
            workers=len(parts_stats),
            duration_seconds=time.monotonic() - clock,
            publication_id=pub.id,
            account=account,
        )
        yield StagedFlatten(report, new_root, pub, raw_recount)


def flatten_snapshot(
    data_dir: Path,
    snapshot_date: date,
    *,
    progress: FlattenProgress | None = None,
    workers: int | None = None,
    audit: Audit | None = None,
    worker_stall_seconds: float = WORKER_STALL_SECONDS,
    account: str = DEFAULT_ACCOUNT,
) -> FlattenReport:
    """Flatten the raw snapshot of ``snapshot_date`` into the ten Parquet tables and publish them at once.

    ``workers`` processes share the pages (see :func:`flatten_workers`; None picks the default, 1 flattens in
    this process). ``progress`` is called in this process after each page, whichever worker flattened it. A
    worker silent for ``worker_stall_seconds`` fails the flatten (see :func:`flatten_parallel`).
    ``audit`` (e.g. ``quality.blocking_failures``) checks the staged tables first: if it reports failures,
    nothing is published, the staged tables go to quarantine and :class:`AuditFailed` says why and where.
    """
    with stage_snapshot(
        data_dir,
        snapshot_date,
        progress=progress,
        workers=workers,
        worker_stall_seconds=worker_stall_seconds,
        recount=audit is not None,
        account=account,
    ) as staged:
        failures = audit(staged) if audit is not None else []
        if failures:
            reason = {"account": account, "snapshot_date": snapshot_date.isoformat(), "failed_checks": failures}
            kept = staged.quarantine(reason)
            raise AuditFailed(
                f"blocking check(s) failed on the flatten of {snapshot_date}{of_account(account)}: "
                f"{'; '.join(failures)}. Nothing was "
                f"published: the previous tables of that date are unchanged. The staged tables are kept in {kept}"
            )
        return staged.publish()

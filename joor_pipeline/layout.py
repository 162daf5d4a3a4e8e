"""Where everything lives: the account rule, the key of one snapshot, and every path the project writes.

The ground floor: this module imports nothing of the project, and everything that names a place asks it. Paths
are *keys*: ``/``-separated, relative to the data directory's root (a local directory or a bucket's prefix), the
same on every backend::

    raw/connections/account=<a>/snapshot_date=<d>/page-00000-<id>.json  _manifest.json   a raw snapshot
    parquet/<table>/account=<a>/snapshot_date=<d>/part-00000-<id>.parquet  _manifest.json  a table partition
    joor.duckdb                                                          the warehouse
    _work/locks/account=<a>/snapshot_date=<d>.lock                       one writer per account and date
    _work/journals/<id>.pending.json  <id>.json                          a publication's pending record, journal
    _work/damaged/                                                       objects that did not parse, set aside
    _work/staging/<id>/  _work/quarantine/account=<a>/snapshot_date=<d>/  local scratch: staging, quarantine
    _work/warehouse/  _work/store-cache/  _work/store.json               builds, downloaded copies, the binding

A :class:`SnapshotKey` names one snapshot (account, date, dataset): it is validated when made, and every function
that reads or writes a snapshot takes one, so an account is never a default that a caller forgot to pass. Only
the command line and the Dagster resources fall back to :data:`DEFAULT_ACCOUNT`, when no accounts file is set.
A second dataset (JOOR's orders, styles) adds its name to :data:`DATASETS`; the raw keys carry the dataset, the
locks and the quarantine are per account and date.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from pathlib import PurePosixPath
from typing import Final

#: The account of the JOOR_* variables when no accounts file is set, and of data from before accounts existed.
DEFAULT_ACCOUNT: Final = "default"
#: What an account name may be: it names directories (``account=<name>``), Dagster partitions and run tags.
ACCOUNT_NAME: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
#: The JOOR datasets a snapshot can be of.
DATASETS: Final = ("connections",)

RAW: Final = "raw"
PARQUET: Final = "parquet"
#: Every published folder's list of files (a name hive readers skip: it starts with ``_``).
MANIFEST: Final = "_manifest.json"
#: The published warehouse.
DATABASE: Final = "joor.duckdb"
#: Never data: what is being written, and how it is kept safe.
WORK: Final = "_work"
LOCKS: Final = f"{WORK}/locks"
JOURNALS: Final = f"{WORK}/journals"
DAMAGED: Final = f"{WORK}/damaged"
STAGING: Final = f"{WORK}/staging"
QUARANTINE: Final = f"{WORK}/quarantine"
WAREHOUSE_WORK: Final = f"{WORK}/warehouse"
WAREHOUSE_LOCK: Final = f"{WAREHOUSE_WORK}/build.lock"
STORE_CACHE: Final = f"{WORK}/store-cache"
#: In a cloud data directory's local work directory: the URL it belongs to.
BINDING: Final = f"{WORK}/store.json"
#: Written once the data directory's layout is current (the one-time migrations are done).
LAYOUT_MARKER: Final = f"{WORK}/layout.json"
MIGRATION_LOCK: Final = f"{LOCKS}/migration.lock"

_ACCOUNT_DIR: Final = re.compile(r"account=([a-z0-9][a-z0-9_-]{0,39})")
_DATE_DIR: Final = re.compile(r"snapshot_date=(\d{4}-\d{2}-\d{2})")
_PUBLICATION_ID: Final = re.compile(r"[0-9a-f]{32}")


def check_account(name: object) -> str:
    """``name`` if it is a valid account name; ValueError otherwise."""
    if not isinstance(name, str) or not ACCOUNT_NAME.fullmatch(name):
        raise ValueError(
            f"account name {name!r} must be 1 to 40 lowercase letters, digits, '_' or '-', starting with a letter "
            "or digit"
        )
    return name


@dataclass(frozen=True)
class SnapshotKey:
    """One snapshot: an account's day of one JOOR dataset. Checked when made (ValueError)."""

    account: str
    snapshot_date: date
    dataset: str = "connections"

    def __post_init__(self) -> None:
        check_account(self.account)
        if type(self.snapshot_date) is not date:
            raise ValueError(f"snapshot_date must be a date, got {self.snapshot_date!r}")
        if self.dataset not in DATASETS:
            raise ValueError(f"unknown dataset {self.dataset!r}; known: {', '.join(DATASETS)}")

    @property
    def partition(self) -> str:
        """``account=<a>/snapshot_date=<d>``: the hive directories of this snapshot."""
        return f"{account_dir(self.account)}/{date_dir(self.snapshot_date)}"

    def __str__(self) -> str:
        """For messages: the date, and the account unless it is the default one (the single-account wording)."""
        day = self.snapshot_date.isoformat()
        return day if self.account == DEFAULT_ACCOUNT else f"{day} of account {self.account}"


def account_dir(account: str) -> str:
    """The hive directory name of an account: ``account=<name>``."""
    return f"account={account}"


def date_dir(snapshot_date: date) -> str:
    """The hive directory name of a snapshot date: ``snapshot_date=YYYY-MM-DD``."""
    return f"snapshot_date={snapshot_date.isoformat()}"


# ---- published data ------------------------------------------------------------------------------------------


def raw_snapshot(key: SnapshotKey) -> str:
    """The folder of a raw snapshot: its pages and its manifest."""
    return f"{RAW}/{key.dataset}/{key.partition}"


def table_dir(table: str) -> str:
    """The folder of every partition of one table."""
    return f"{PARQUET}/{table}"


def table_partition(table: str, key: SnapshotKey) -> str:
    """The folder of one table's partition of a snapshot."""
    return f"{table_dir(table)}/{key.partition}"


def manifest(folder: str) -> str:
    """A published folder's manifest: the only list of its files."""
    return f"{folder}/{MANIFEST}"


def staged_manifest(folder: str, publication_id: str) -> str:
    """The manifest a publication will swap in, uploaded beside the live one before its commit point."""
    return f"{folder}/_manifest-{publication_id}.json"


def unique_name(name: str, publication_id: str) -> str:
    """``part-00000.parquet`` -> ``part-00000-<id>.parquet``: a file name no other publication writes."""
    path = PurePosixPath(name)
    return f"{path.stem}-{publication_id}{path.suffix}"


def partition_of(folder: str) -> tuple[str, date] | None:
    """(account, date) of a folder key ending in ``account=<a>/snapshot_date=<d>``; None for any other."""
    parts = PurePosixPath(folder).parts
    if len(parts) < 2:
        return None
    account, day = _ACCOUNT_DIR.fullmatch(parts[-2]), _DATE_DIR.fullmatch(parts[-1])
    if account is None or day is None:
        return None
    try:
        return account.group(1), date.fromisoformat(day.group(1))
    except ValueError:
        return None


# ---- work: locks, publications, scratch ----------------------------------------------------------------------


def lock(key: SnapshotKey) -> str:
    """The lock of an account's date: one fetch or flatten of it at a time."""
    return f"{LOCKS}/{account_dir(key.account)}/{date_dir(key.snapshot_date)}.lock"


def journal(publication_id: str) -> str:
    """A publication's journal: created at its commit point, deleted once it is finished."""
    return f"{JOURNALS}/{publication_id}.json"


def pending(publication_id: str) -> str:
    """A publication's pending record: what it may upload, created before its first upload."""
    return f"{JOURNALS}/{publication_id}.pending.json"


def journal_entry(name: str) -> tuple[str, str] | None:
    """(publication id, 'journal' or 'pending') of a file name under :data:`JOURNALS`; None for anything else."""
    for kind, suffix in (("pending", ".pending.json"), ("journal", ".json")):
        if name.endswith(suffix) and _PUBLICATION_ID.fullmatch(name.removesuffix(suffix)):
            return name.removesuffix(suffix), kind
    return None


def damaged(name: str, stamp: str) -> str:
    """Where an object that did not parse is set aside (``stamp`` keeps two of the same name apart)."""
    return f"{DAMAGED}/{stamp}-{name}"


def quarantine(key: SnapshotKey) -> str:
    """Where the last staged flatten of a snapshot that failed a blocking check is kept (local scratch)."""
    return f"{QUARANTINE}/{key.partition}"

"""``joor.duckdb``: built by the dbt project in ``dbt_project/`` (dbt-duckdb), published by atomic rename.

A build never writes the warehouse that analysts have open. It copies ``joor.duckdb`` into
``$JOOR_DATA_DIR/_work/warehouse/build/joor.duckdb`` (the file keeps its name because dbt-duckdb names the catalog
after it, and views refer to ``joor.<schema>.<name>``), lets dbt run there, checkpoints it and renames it over
``joor.duckdb``. A reader's open connection keeps the file it opened; a new reader (:func:`read`, ``joor-pipeline
sql``, an in-memory connection that attaches the file) sees the new build, but not a new connection to the file's
path in a process that still has one open (DuckDB's instance cache: see "reading" below). A failed build leaves
the published warehouse exactly as it was. Builds are serialised by a lock file.

Incremental by partition, an (account, snapshot date) pair: the warehouse records, per published partition, the
``publication_id`` it was built from (``joor_meta.publications``). A build processes exactly the partitions whose
id changed (new, republished or withdrawn), which it writes into ``joor_meta.refresh_dates`` (with their
``partition_key``, ``account/YYYY-MM-DD``) for the incremental models to delete then insert.
So a daily build reads one day of Parquet whatever the history, a backfill of N dates builds once, and dates
may arrive in any order. The sources (schema ``published``) are views over exactly the ``published_files`` of
those partitions plus each account's latest date (which the "latest snapshot" marts read); once built, they are
narrowed to each account's latest date, so the ``stg_*`` views of the published warehouse show the latest snapshot.

The models materialized as views (``stg_*``, ``int_addresses``) are only created by the build that creates the
file: a view is its query, which only a change of the dbt project changes (and that is a full refresh), so an
incremental build leaves the copy's views as they are (``dbt build --exclude config.materialized:view``), and
runs every test on them, on the new data, as before (``--indirect-selection empty``: excluding a view does not
exclude its tests). If one of them is missing from the copy, the build creates them all again.

A full refresh (asked for, or when the warehouse is missing, unreadable or built by a different dbt project)
starts from an empty file and processes every published date. DuckDB's ``memory_limit`` and ``temp_directory``
are set for every build so that it spills to disk instead of growing.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import json
import logging
import os
import shutil
import struct
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from joor_pipeline import layout
from joor_pipeline.config import check_data_dir
from joor_pipeline.flatten.dictionary import duckdb_type
from joor_pipeline.flatten.schema import TABLES, arrow_schema
from joor_pipeline.joor.errors import JoorError
from joor_pipeline.layout import SnapshotKey
from joor_pipeline.storage.access import exclusive, pull, push, register, uri
from joor_pipeline.storage.migrate import migrate_legacy_layout
from joor_pipeline.storage.parquet import publication_id, published_files, published_partitions
from joor_pipeline.storage.store import SnapshotBusy

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

#: One published partition of the ten tables: (account, snapshot date).
Partition = tuple[str, date]

DBT_PROJECT_DIR: Final = Path(__file__).resolve().parent / "dbt_project"
DATABASE_FILE: Final = layout.DATABASE
WORK_DIR: Final = Path(layout.WAREHOUSE_WORK)
SOURCE_SCHEMA: Final = "published"
META_SCHEMA: Final = "joor_meta"
#: The models analysts query, in the main schema of ``joor.duckdb``.
ANALYST_MODELS: Final = (
    "dim_retailers",
    "retailer_history",
    "retailer_addresses",
    "payment_terms",
    "discount_summary",
    "data_quality_issues",
)
#: A build processes at most this many snapshot dates per dbt run (a full refresh runs dbt once per batch).
BATCH_DATES: Final = 30
#: dbt threads of a build. One: with 4, nodes whose parents are built run side by side on dbt-duckdb's database,
#: but a small build's time is dbt's Python (the GIL), not DuckDB's, and 4 threads measured slower (dbt's node
#: time 1.9 s against 1.7 s for the 49 nodes of a daily build at 500 retailers; bench/results.md, run cost).
DBT_THREADS: Final = 1
#: DuckDB's memory cap for a build: past it, joins and aggregations spill to the build's temp directory.
DEFAULT_MEMORY_LIMIT: Final = "1GB"
#: The data-quality rules, a dbt macro file in plain Jinja, shared with the per-partition checks.
RULES_FILE: Final = DBT_PROJECT_DIR / "macros" / "joor_rules.sql"
_PROJECT_FILES: Final = ("dbt_project.yml", "profiles.yml")
_PROJECT_DIRS: Final = ("models", "macros", "tests")


class WarehouseError(JoorError):
    """The warehouse could not be built or read (the message says what and where)."""


class WarehouseInUse(WarehouseError):
    """A read-write session holds the published warehouse: a build stops rather than publish beside its WAL."""


def database_path(data_dir: Path) -> Path:
    """Where the published warehouse lives."""
    return data_dir / DATABASE_FILE


def work_dir(data_dir: Path) -> Path:
    """The builds' private directory (outside ``raw/`` and ``parquet/``)."""
    return data_dir / WORK_DIR


def project_files() -> list[Path]:
    """Every file of the dbt project that changes what a build produces."""
    found = [DBT_PROJECT_DIR / name for name in _PROJECT_FILES]
    for directory in _PROJECT_DIRS:
        found += sorted(
            p for p in (DBT_PROJECT_DIR / directory).rglob("*") if p.is_file() and p.suffix in {".sql", ".yml"}
        )
    return found


def project_hash() -> str:
    """A hash of the dbt project and the DuckDB version (the fingerprints use DuckDB's ``hash``): a warehouse
    built by another version of either is rebuilt in full."""
    digest = hashlib.sha256(duckdb.__version__.encode() + b"\0")
    for path in project_files():
        digest.update(path.relative_to(DBT_PROJECT_DIR).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _sql_string(text: str) -> str:
    """``text`` as a SQL string literal, for view definitions (which cannot take bound parameters)."""
    return "'" + text.replace("'", "''") + "'"


def _identifier(name: str) -> str:
    if not name.replace("_", "").isalnum() or not name[:1].isalpha():
        raise ValueError(f"not an identifier: {name!r}")
    return f'"{name}"'


def contract_file(data_dir: Path, table: str) -> Path:
    """An empty Parquet file with ``table``'s contract schema, read first by its source view so that every
    contract column exists, typed and in order, even when a partition predates a column."""
    directory = work_dir(data_dir) / "contract"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{table}.parquet"
    if not path.is_file():
        scratch = directory / f".{table}.{os.getpid()}.tmp"
        # from_batches rather than Schema.empty_table(), which imports pandas (0.6 s) for the same bytes.
        pq.write_table(pa.Table.from_batches([], schema=arrow_schema(table)), scratch)
        os.replace(scratch, path)
    return path


def source_view_sql(data_dir: Path, table: str, partitions: Sequence[Partition]) -> str:
    """The ``published.<table>`` view over exactly the published files of ``partitions`` (account, date)."""
    files = [
        path
        for account, day in sorted(partitions)
        for path in published_files(data_dir, table, SnapshotKey(account, day))
    ]
    return files_view_sql(data_dir, table, files)


def files_view_sql(data_dir: Path, table: str, files: Sequence[Path | str]) -> str:
    """A ``published.<table>`` view: the contract file, then exactly ``files`` (e.g. a staged partition's).

    The file paths come from the publish manifests, never from user text; they are the one place a value is
    written into SQL, as quoted literals. The ``account=`` and ``snapshot_date=`` directories are authoritative
    (a file written before the ``account`` column existed takes its account from its directory).
    """
    contract = f"select * from read_parquet({_sql_string(str(contract_file(data_dir, table)))})"
    return f"create or replace view {SOURCE_SCHEMA}.{_identifier(table)} as\n{files_select(contract, files)}"


def files_select(contract: str, files: Sequence[Path | str]) -> str:
    """``contract`` (a query giving the contract's columns, typed and in order), then the rows of exactly
    ``files``, by column name."""
    if not files:
        return contract
    listed = ", ".join(_sql_string(str(f)) for f in files)
    return (
        f"{contract}\nunion all by name\n"
        "select * replace (cast(account as varchar) as account, cast(snapshot_date as date) as snapshot_date)\n"
        f"from read_parquet([{listed}], hive_partitioning = true, union_by_name = true)"
    )


def contract_select(table: str) -> str:
    """A query of no rows with ``table``'s contract columns, typed and in order (written nowhere, unlike
    :func:`contract_file`: readers may have no right to write in the data directory)."""
    columns = ", ".join(f"cast(null as {duckdb_type(c)}) as {_identifier(c.name)}" for c in TABLES[table].columns)
    return f"select {columns} where false"


@dataclass
class BuildPlan:
    """One build: the copy dbt writes to and the snapshot dates it processes."""

    data_dir: Path
    database: Path
    target_dir: Path
    temp_dir: Path
    memory_limit: str
    full_refresh: bool
    reason: str
    published: dict[Partition, str]
    #: The (account, snapshot date) partitions this build processes.
    refresh_partitions: list[Partition]
    #: Each account's latest published snapshot date.
    latest_dates: dict[str, date]
    batch_dates: int = BATCH_DATES
    started: float = field(default_factory=time.monotonic)
    #: The view models in place in the copy, left as they are by this build's dbt (empty: dbt creates them), by
    #: unique id, each after the views it reads.
    kept_views: list[str] = field(default_factory=list)

    @property
    def refresh_dates(self) -> list[date]:
        """The snapshot dates of the partitions this build processes (of any account)."""
        return sorted({day for _account, day in self.refresh_partitions})

    @property
    def latest_partitions(self) -> set[Partition]:
        return set(self.latest_dates.items())

    def dbt_vars(self) -> dict[str, str]:
        """The profile's variables; constant for a data directory, so dbt's partial parse stays valid."""
        return self.dbt_vars_for(self.data_dir, self.memory_limit)

    @staticmethod
    def dbt_vars_for(data_dir: Path, memory_limit: str = DEFAULT_MEMORY_LIMIT) -> dict[str, str]:
        """The profile's variables of every build in ``data_dir``."""
        build_dir = work_dir(data_dir) / "build"
        return {
            "database": str(build_dir / DATABASE_FILE),
            "memory_limit": memory_limit,
            "temp_directory": str(build_dir / "tmp"),
            "data_dir": str(data_dir),  # the profile's plugin lets dbt's connection read the store's files
        }

    def batches(self) -> Iterator[list[Partition]]:
        """The refresh partitions in batches of at most ``batch_dates``, the copy prepared for each as it comes.

        Run dbt once per batch: a full refresh of a year is then a dozen builds of a month each, bounded in
        memory and temp space, instead of one query over every snapshot at once.
        """
        partitions = self.refresh_partitions
        for start in range(0, max(len(partitions), 1), self.batch_dates):
            batch = partitions[start : start + self.batch_dates]
            try:
                _prepare(self, batch, sorted(set(batch) & self.published.keys() | self.latest_partitions))
            except duckdb.Error as error:
                if _no_space(error):
                    raise _build_failure(error, "while preparing it", self.database.parent) from error
                raise WarehouseError(f"the published Parquet could not be read: {error}") from error
            yield batch

    def dbt_args(self) -> list[str]:
        """``dbt build`` on this plan's copy (the project and profile dirs are the package's); the views in place
        are left out, not their tests (see the module docstring)."""
        args = ["build", "--threads", str(DBT_THREADS), "--vars", json.dumps(self.dbt_vars(), sort_keys=True)]
        if self.kept_views:
            args += ["--exclude", "config.materialized:view", "--indirect-selection", "empty"]
        return args


@contextmanager
def _build_lock(data_dir: Path, timeout: float | None) -> Iterator[None]:
    """One build of a data directory at a time (across machines on an object store), waiting up to ``timeout``."""
    try:
        with exclusive(data_dir, layout.WAREHOUSE_LOCK, "the warehouse build", wait=timeout):
            yield
    except SnapshotBusy as busy:
        where = uri(data_dir, layout.WAREHOUSE_LOCK)
        raise WarehouseError(f"another warehouse build held {where} for {timeout} s: {busy}") from None


def _recorded(database: Path) -> tuple[dict[Partition, str], str | None]:
    """The publications a warehouse was built from, and the dbt project hash that built it."""
    con = duckdb.connect(str(database))
    try:
        found = con.execute(
            "select count(*) from duckdb_tables() where schema_name = ? and table_name in ('publications', 'build')",
            [META_SCHEMA],
        ).fetchone()
        if not found or found[0] < 2:
            return {}, None
        rows = con.execute(f"select account, snapshot_date, publication_id from {META_SCHEMA}.publications")
        publications = {(account, day): pid for account, day, pid in rows.fetchall()}
        built_by = con.execute(f"select value from {META_SCHEMA}.build where key = 'project_hash'").fetchone()
        return publications, built_by[0] if built_by else None
    finally:
        con.close()


@functools.cache
def load_manifest(path: Path) -> Mapping[str, Any]:
    """The dbt manifest at ``path`` (:func:`manifest_path`), read once per process; not to be changed."""
    return dict(json.loads(path.read_text()))


def view_models() -> dict[str, tuple[str, str]]:
    """The dbt models materialized as views, by unique id, each after the views it reads: their (schema, name)
    in the warehouse."""
    nodes = load_manifest(manifest_path())["nodes"]
    views = {
        unique_id: node
        for unique_id, node in nodes.items()
        if node["resource_type"] == "model" and node["config"].get("materialized") == "view"
    }
    ordered: dict[str, tuple[str, str]] = {}
    while len(ordered) < len(views):
        for unique_id, node in sorted(views.items()):
            parents = set(node["depends_on"]["nodes"]) & views.keys()
            if unique_id not in ordered and parents <= ordered.keys():
                ordered[unique_id] = (node["schema"], node["alias"] or node["name"])
    return ordered


def _views_in_place(database: Path, views: Mapping[str, tuple[str, str]]) -> bool:
    """Whether every one of ``views`` is a view in ``database``."""
    con = duckdb.connect(str(database))
    try:
        found = set(con.execute("select schema_name, view_name from duckdb_views() where not internal").fetchall())
    finally:
        con.close()
    return bool(views) and set(views.values()) <= found


def _prepare(plan: BuildPlan, batch: Sequence[Partition], partitions: Sequence[Partition]) -> None:
    """Write ``batch`` as the refresh partitions and point the source views at exactly the published files of
    ``partitions``."""
    con = duckdb.connect(str(plan.database))
    try:
        register(con, plan.data_dir)
        for schema in (SOURCE_SCHEMA, META_SCHEMA):
            con.execute(f"create schema if not exists {schema}")
        con.execute(
            f"create or replace table {META_SCHEMA}.refresh_dates "
            "(account varchar, snapshot_date date, partition_key varchar primary key)"
        )
        for account, day in batch:
            con.execute(f"insert into {META_SCHEMA}.refresh_dates values (?, ?, ?)", [account, day, f"{account}/{day}"])
        for table in TABLES:
            con.execute(source_view_sql(plan.data_dir, table, partitions))
    finally:
        con.close()


def _finish(plan: BuildPlan) -> None:
    """Record what the copy was built from, narrow its sources to the latest date and checkpoint it."""
    con = duckdb.connect(str(plan.database))
    try:
        register(con, plan.data_dir)
        con.begin()
        for schema in (SOURCE_SCHEMA, META_SCHEMA):
            con.execute(f"create schema if not exists {schema}")
        for table in TABLES:
            con.execute(source_view_sql(plan.data_dir, table, sorted(plan.latest_partitions)))
        con.execute(
            f"create or replace table {META_SCHEMA}.publications "
            "(account varchar, snapshot_date date, publication_id varchar, primary key (account, snapshot_date))"
        )
        con.executemany(
            f"insert into {META_SCHEMA}.publications values (?, ?, ?)",
            [[account, day, pid] for (account, day), pid in sorted(plan.published.items())],
        )
        con.execute(f"create or replace table {META_SCHEMA}.build (key varchar primary key, value varchar)")
        con.executemany(
            f"insert into {META_SCHEMA}.build values (?, ?)",
            [["project_hash", project_hash()], ["built_at_unix", str(int(time.time()))]],
        )
        con.commit()
        con.execute("checkpoint")
    finally:
        con.close()


#: ``struct flock`` on Linux (l_type, l_whence, l_start, l_len, l_pid), for DuckDB's whole-file locks.
_FLOCK: Final = "hhqqi"
#: Open-file-description locks (Linux): owned by the file we open, so closing it never drops a lock that a DuckDB
#: connection of this same process holds on the file (as a POSIX lock would).
_OFD_LOCKS: Final = hasattr(fcntl, "F_OFD_SETLK")
#: The errors of a full disk (EFBIG: a file-size limit, which fails a write as a full disk does).
_NO_SPACE_ERRNOS: Final = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})
_NO_SPACE_TEXTS: Final = ("No space left on device", "File too large", "Disk quota exceeded")


def _writer_of(path: Path) -> int | None:
    """The PID of the process holding ``path`` open read-write (DuckDB's exclusive lock), or None: none does, or
    this platform cannot tell (the lock taken by :func:`_no_writer` still finds it)."""
    if not _OFD_LOCKS:
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        query = struct.pack(_FLOCK, fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0)
        kind, _whence, _start, _length, pid = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_OFD_GETLK, query))
    except OSError:
        return None
    finally:
        os.close(fd)
    return pid if kind == fcntl.F_WRLCK and pid > 0 else None


def _in_use(path: Path, pid: int | None) -> WarehouseInUse:
    who = "another process"
    if pid is not None:
        try:
            command = " ".join(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0"))
        except OSError:
            command = ""
        command = " ".join(command.split())
        who = f"PID {pid}" + (f" ({command if len(command) <= 60 else command[:57] + '...'})" if command else "")
    return WarehouseInUse(
        f"the warehouse {path} is in use by {who}, a read-write session: nothing was published. Ask its owner to "
        "close it (analysts open the warehouse read-only: duckdb -readonly), then run again"
    )


def _refuse_writer(path: Path) -> None:
    """Fail at once, naming the process, when a read-write session holds the published warehouse."""
    pid = _writer_of(path)
    if pid is not None:
        raise _in_use(path, pid)


@contextmanager
def _no_writer(path: Path) -> Iterator[None]:
    """Hold a shared lock on the published warehouse (if there is one) for the block: read-only readers share it,
    but a read-write session (DuckDB's exclusive lock) can be neither there (:class:`WarehouseInUse`) nor start."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        yield
        return
    try:
        try:
            if _OFD_LOCKS:
                fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack(_FLOCK, fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0))
            else:  # pragma: no cover - not Linux
                fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise _in_use(path, _writer_of(path)) from None
        yield
    finally:
        os.close(fd)


def _set_aside_wal(target: Path, set_aside: Path) -> None:
    """Move a WAL beside the published warehouse out of the way, with the warehouse it belongs to.

    Called under :func:`_no_writer`, so the read-write session that wrote it is gone (killed, or crashed): its
    changes are not lost (the pair opens in ``set_aside``), and a new build is never paired with them (DuckDB
    would replay them into it, and fail every reader with "checkpoint iteration does not match")."""
    wal = target.with_name(target.name + ".wal")
    if not wal.exists():
        return
    where = set_aside / datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    where.mkdir(parents=True)
    if target.is_file():
        try:
            os.link(target, where / target.name)  # a link: no space taken, and the rename below unlinks only the name
        except OSError:
            shutil.copyfile(target, where / target.name)
    os.replace(wal, where / wal.name)
    log.warning(
        "a read-write session of %s that is gone left changes in %s: set aside with the warehouse they belong to in "
        "%s (open it there to recover them), so the new build is not paired with them",
        target,
        wal.name,
        where,
    )


def _publish(built: Path, target: Path, set_aside: Path) -> None:
    """Rename the checkpointed build over the published warehouse, durably, never beside a WAL it did not write.

    A read-write session of the published warehouse stops the publication (:class:`WarehouseInUse`); a WAL that a
    gone session left is set aside first (:func:`_set_aside_wal`). Read-only readers are never disturbed.
    """
    if built.with_name(built.name + ".wal").exists():
        raise WarehouseError(f"the build {built} still has a WAL after its checkpoint: not published")
    with open(built, "rb") as handle:
        os.fsync(handle.fileno())
    with _no_writer(target):
        _set_aside_wal(target, set_aside)
        os.replace(built, target)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _no_space(error: BaseException) -> bool:
    """True for the errors of a full disk (or a file-size limit), from the OS or from DuckDB."""
    if isinstance(error, OSError) and error.errno in _NO_SPACE_ERRNOS:
        return True
    return isinstance(error, duckdb.Error) and any(text in str(error) for text in _NO_SPACE_TEXTS)


def _build_failure(error: BaseException, doing: str, build_dir: Path) -> WarehouseError:
    """An OS or DuckDB error of the build as one line; a full disk said as such."""
    if _no_space(error):
        reason = next((text for text in _NO_SPACE_TEXTS if text in str(error)), None)
        if reason is None and isinstance(error, OSError):
            reason = error.strerror
        return WarehouseError(
            f"the warehouse build ran out of disk space {doing} ({reason}, in {build_dir}): the published warehouse "
            "is unchanged and the partial build was removed; free some space and run again"
        )
    text = " ".join(str(error).split())
    return WarehouseError(
        f"the warehouse build failed {doing}: {type(error).__name__}: {text}; the published warehouse is unchanged"
    )


@contextmanager
def _removed_on_failure(build_dir: Path, doing: str) -> Iterator[None]:
    """Remove the partial build when the block fails (it may hold the last free bytes), and say an OS or DuckDB
    error in one line (:func:`_build_failure`)."""
    try:
        yield
    except BaseException as error:
        shutil.rmtree(build_dir, ignore_errors=True)
        if isinstance(error, OSError | duckdb.Error):
            raise _build_failure(error, doing, build_dir) from error
        raise


@contextmanager
def warehouse_build(
    data_dir: Path,
    *,
    full_refresh: bool = False,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
    lock_timeout: float | None = None,
    batch_dates: int = BATCH_DATES,
) -> Iterator[BuildPlan]:
    """Prepare a copy of the warehouse for dbt, and publish it if the block ends without raising.

    Raises :class:`WarehouseError` at once when no snapshot is published yet (there is nothing to build on).
    """
    data_dir = data_dir.resolve()
    work = work_dir(data_dir)
    migrate_legacy_layout(data_dir)
    with _build_lock(data_dir, lock_timeout):
        partitions = published_partitions(data_dir)
        if not partitions:
            raise WarehouseError(
                f"no published snapshot under {uri(data_dir, layout.PARQUET)}: flatten one first "
                "(materialize the ten table assets, or `joor-pipeline run`)"
            )
        published = {key: publication_id(data_dir, SnapshotKey(*key)) or "" for key in partitions}
        latest_dates: dict[str, date] = {}
        for account, day in partitions:
            latest_dates[account] = max(day, latest_dates.get(account, day))
        build_dir = work / "build"
        database = build_dir / DATABASE_FILE
        current = database_path(data_dir)
        # Refused at once, before any work: what stands where the warehouse belongs, a read-write session of it.
        if current.is_dir() or (current.exists() and not current.is_file()):
            kind = "a directory" if current.is_dir() else "not a regular file"
            raise WarehouseError(
                f"{current} is {kind}, where the warehouse file belongs: move it away and run again (nothing was built)"
            )
        _refuse_writer(current)
        if build_dir.exists():
            shutil.rmtree(build_dir)
        recorded: dict[Partition, str] = {}
        kept_views: list[str] = []
        reason = "asked for"
        with _removed_on_failure(build_dir, "while preparing it"):
            (build_dir / "tmp").mkdir(parents=True)
            pull(data_dir, DATABASE_FILE, current)  # on an object store, build on a local copy of its warehouse
            if not full_refresh:
                if not current.is_file():
                    full_refresh, reason = True, f"no warehouse at {current} yet"
                else:
                    shutil.copyfile(current, database)
                    try:
                        recorded, built_by = _recorded(database)
                    except duckdb.Error as error:
                        if _no_space(error):
                            raise
                        full_refresh, reason = True, f"{current} could not be read ({error}); rebuilt from the Parquet"
                        log.warning(
                            "warehouse %s could not be read, rebuilding it from the Parquet: %s", current, error
                        )
                    else:
                        if built_by != project_hash():
                            full_refresh, reason = True, "the dbt project changed since the last build"
                        elif _views_in_place(database, views := view_models()):
                            kept_views = list(views)
            if full_refresh:
                for stale in (database, database.with_name(database.name + ".wal")):
                    stale.unlink(missing_ok=True)
                recorded = {}
        refresh = sorted(
            {key for key, pid in published.items() if recorded.get(key) != pid} | (recorded.keys() - published.keys())
        )
        plan = BuildPlan(
            data_dir=data_dir,
            database=database,
            target_dir=work / "dbt-target",
            temp_dir=build_dir / "tmp",
            memory_limit=memory_limit,
            full_refresh=full_refresh,
            reason=reason if full_refresh else "incremental",
            published=published,
            refresh_partitions=refresh,
            latest_dates=latest_dates,
            batch_dates=batch_dates,
            kept_views=kept_views,
        )
        log.info(
            "building the warehouse on %d partition(s) (account, snapshot date) of %d published (%s)",
            len(refresh),
            len(partitions),
            plan.reason,
        )
        try:
            yield plan
        except BaseException:
            shutil.rmtree(build_dir, ignore_errors=True)  # a failed build leaves no partial file behind
            raise
        with _removed_on_failure(build_dir, "while finishing it"):
            _finish(plan)
        with _removed_on_failure(build_dir, "while publishing it"):
            _publish(database, current, work / "set-aside")
        push(data_dir, current, DATABASE_FILE)
        shutil.rmtree(build_dir, ignore_errors=True)


def run_dbt(args: Sequence[str], target_dir: Path) -> dict[str, Any]:
    """Run one dbt command on the project in this process; returns ``run_results.json`` (empty for ``parse``).

    In process rather than as a subprocess: importing dbt costs seconds, paid once per process instead of once
    per build. Raises :class:`WarehouseError` with dbt's error lines when the command fails.

    A ``build`` skips dbt's JSON artifacts (``--no-write-json``: dbt writes ``manifest.json``, the whole project,
    twice per build, a sixth of a small build's time) and writes ``run_results.json`` itself, from the result.
    """
    from dbt.cli.main import dbtRunner

    target_dir.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    build = args[0] == "build"
    run_results = target_dir / "run_results.json"
    if build:
        run_results.unlink(missing_ok=True)  # never read a previous build's

    def collect(event: Any) -> None:
        if event.info.level == "error":
            errors.append(event.info.msg)

    try:
        result = dbtRunner(callbacks=[collect]).invoke(
            [
                *args,
                *(["--no-write-json"] if build else []),
                "--project-dir",
                str(DBT_PROJECT_DIR),
                "--profiles-dir",
                str(DBT_PROJECT_DIR),
                "--target-path",
                str(target_dir),
                "--log-path",
                str(target_dir),
                # dbt.log at INFO: each node's result and every warning and error, without the SQL of every
                # statement dbt runs (DEBUG, its default: 0.9 MB a daily build at 500 retailers, 0.15 s of its time)
                "--log-level-file",
                "info",
                "--quiet",
                "--no-use-colors",
                "--no-send-anonymous-usage-stats",
            ]
        )
        if build and hasattr(result.result, "write"):
            result.result.write(str(run_results))  # type: ignore[union-attr]
    finally:
        _close_dbt_duckdb()
    results: dict[str, Any] = (
        json.loads(run_results.read_text()) if run_results.is_file() and args[0] != "parse" else {}
    )
    if not result.success:
        detail = "\n".join(errors[-12:]) or str(result.exception or "no detail (see dbt.log)")
        raise DbtFailed(f"dbt {args[0]} failed (log in {target_dir / 'dbt.log'}):\n{detail}", results)
    return results


def _close_dbt_duckdb() -> None:
    """Close what dbt keeps open in this process after a command: its log file, and dbt-duckdb's database.

    The database above all: dbt-duckdb would keep the build's file open (and locked) after it is renamed into
    place, and a later build at the same path would write into that file, the published warehouse.
    """
    from dbt.adapters.duckdb.connections import DuckDBConnectionManager
    from dbt_common.events.event_manager_client import get_event_manager

    manager = get_event_manager()
    for logger in manager.loggers:
        python_logger = getattr(logger, "_python_logger", None)
        for handler in list(getattr(python_logger, "handlers", [])):
            handler.close()
            python_logger.removeHandler(handler)  # type: ignore[union-attr]
    manager.loggers.clear()
    manager.callbacks.clear()

    environment = DuckDBConnectionManager._ENV
    if environment is not None:
        environment.close()
    DuckDBConnectionManager.close_all_connections()


class DbtFailed(WarehouseError):
    """dbt reported a failed model or test; ``results`` is its ``run_results.json`` (empty if it never ran)."""

    def __init__(self, message: str, results: dict[str, Any]) -> None:
        super().__init__(message)
        self.results = results


def manifest_path() -> Path:
    """The dbt manifest of this version of the project, parsed offline on first use into a per-user cache.

    Keyed by :func:`project_hash`, so it is never stale and never written into the source tree; dagster-dbt
    reads it when the definitions load (``make setup`` parses it ahead).
    """
    cache = Path(os.environ.get("XDG_CACHE_HOME", "").strip() or Path.home() / ".cache")
    target = cache / "joor-pipeline" / f"dbt-{project_hash()}"
    manifest = target / "manifest.json"
    if not manifest.is_file():
        run_dbt(["parse"], target)
    return manifest


@dataclass(frozen=True)
class BuildReport:
    """What a build did."""

    refresh_partitions: list[Partition]
    full_refresh: bool
    reason: str
    seconds: float

    @property
    def refresh_dates(self) -> list[date]:
        """The snapshot dates of the partitions the build processed (of any account)."""
        return sorted({day for _account, day in self.refresh_partitions})


def build_warehouse(
    data_dir: Path,
    *,
    full_refresh: bool = False,
    memory_limit: str = DEFAULT_MEMORY_LIMIT,
    lock_timeout: float | None = None,
    batch_dates: int = BATCH_DATES,
) -> BuildReport:
    """Build and publish the warehouse with dbt, outside Dagster (the CLI's ``--full-refresh``, tests, bench)."""
    with warehouse_build(
        data_dir,
        full_refresh=full_refresh,
        memory_limit=memory_limit,
        lock_timeout=lock_timeout,
        batch_dates=batch_dates,
    ) as plan:
        for _batch in plan.batches():
            run_dbt(plan.dbt_args(), plan.target_dir)
    return BuildReport(plan.refresh_partitions, plan.full_refresh, plan.reason, time.monotonic() - plan.started)


def model_columns(scratch: Path) -> dict[str, list[tuple[str, str]]]:
    """Every model's columns, ``(name, DuckDB type)`` in order, by model name: the dbt project run on no data in
    ``scratch`` (a directory of its own; nothing is published). What the generated column docs are checked
    against."""
    scratch = scratch.resolve()
    build_dir = work_dir(scratch) / "build"
    (build_dir / "tmp").mkdir(parents=True, exist_ok=True)
    plan = BuildPlan(
        data_dir=scratch,
        database=build_dir / DATABASE_FILE,
        target_dir=work_dir(scratch) / "dbt-target",
        temp_dir=build_dir / "tmp",
        memory_limit=DEFAULT_MEMORY_LIMIT,
        full_refresh=True,
        reason="no data: the models' columns",
        published={},
        refresh_partitions=[],
        latest_dates={},
    )
    _prepare(plan, [], [])
    run_dbt(["run", "--vars", json.dumps(plan.dbt_vars(), sort_keys=True)], plan.target_dir)
    con = reader_connection(scratch)
    try:
        attach_warehouse(con, plan.database)
        rows = con.execute(
            "select table_name, column_name, data_type from duckdb_columns() where database_name = $db"
            " and list_contains($schemas, schema_name) order by table_name, column_index",
            {"db": CATALOG, "schemas": list(MODEL_SCHEMAS)},
        ).fetchall()
    finally:
        con.close()
    found: dict[str, list[tuple[str, str]]] = {}
    for model, column, data_type in rows:
        found.setdefault(model, []).append((column, data_type))
    return found


def default_data_dir() -> Path:
    """``$JOOR_DATA_DIR``, else ``./data``, as the CLI and the Dagster resources read it."""
    return check_data_dir(Path(os.environ.get("JOOR_DATA_DIR", "").strip() or "data"))


# ---- reading: always the newest published build ------------------------------------------------------------------
#
# DuckDB keeps one database instance per file in each process (its instance cache): ``duckdb.connect(path)`` while
# any connection to that file is still open in the process returns a connection to the instance already open, and
# that instance still reads the file it opened, the build before the last rename (a ``config`` that differs is
# refused rather than opening the new file). Readers here therefore never connect to the warehouse's path: each
# opens an in-memory database (never cached) and ATTACHes the published file read-only, which opens it as it is
# now. Such a reader keeps the build it attached, whole, until it is closed; a build never waits for it.

#: The warehouse's catalog in a reader's connection: the name dbt-duckdb gave it (its views refer to it).
CATALOG: Final = "joor"
#: The catalog of the ten Parquet tables in a reader's connection: ``tables.connections``, ``tables.addresses``...
TABLES_CATALOG: Final = "tables"
#: The schemas of the warehouse that hold models (``joor_meta`` and ``published`` are the build's own).
MODEL_SCHEMAS: Final = ("main", "staging")


def reader_data_dir(data_dir: Path | str | None = None) -> Path:
    """The local data directory a reader reads: ``data_dir`` (a path or a URL), else ``$JOOR_DATA_DIR`` (default
    ``./data``). A URL (``s3://``, ``gs://``, ``az://``) gives its local work directory (``JOOR_WORK_DIR``), bound to
    the URL."""
    if data_dir is None:
        return default_data_dir().resolve()
    return check_data_dir(Path(str(data_dir))).resolve()


def published_database(data_dir: Path) -> Path | None:
    """The newest published warehouse as a local file (on an object store, downloaded when it changed); None when
    none is published yet."""
    path = database_path(data_dir)
    pull(data_dir, DATABASE_FILE, path)
    return path if path.is_file() else None


def reader_connection(data_dir: Path) -> duckdb.DuckDBPyConnection:
    """A new in-memory DuckDB connection (a database instance of its own) that can read the data directory's
    published files, in UTC."""
    con = duckdb.connect()
    try:
        con.execute("set TimeZone = 'UTC'")
        register(con, data_dir)
    except BaseException:
        con.close()
        raise
    return con


def attach_warehouse(con: duckdb.DuckDBPyConnection, database: Path) -> None:
    """Attach a published warehouse file to ``con`` read-only, as ``joor``, and make it the default catalog (so
    ``dim_retailers`` and ``staging.stg_connections`` resolve as in the file)."""
    con.execute(f"attach {_sql_string(str(database))} as {CATALOG} (read_only)")
    con.execute(f"use {CATALOG}")


def table_files(data_dir: Path, table: str) -> list[Path | str]:
    """Exactly the files of every published partition of ``table``, as their manifests list them."""
    return [
        path
        for account, day in published_partitions(data_dir, table)
        for path in published_files(data_dir, table, SnapshotKey(account, day))
    ]


def table_select(table: str, files: Sequence[Path | str]) -> str:
    """A query of ``table``'s rows in ``files`` (see :func:`table_files`) under its contract columns."""
    return files_select(contract_select(table), files)


def read(name: str, data_dir: Path | str | None = None) -> pd.DataFrame:
    """Any model of ``joor.duckdb`` (e.g. ``"dim_retailers"``) or any of the ten Parquet tables (every published
    snapshot), as a pandas DataFrame with Arrow-backed dtypes.

    ``data_dir`` is a path or a URL: ``s3://``, ``gs://``, ``az://`` (default ``$JOOR_DATA_DIR``, else ``./data``).
    Every call reads the newest published build and the partitions published by then (see above: never a cached
    instance), read-only, so it never blocks a build and never sees a half-built warehouse or a partition being
    written.
    """
    import pandas as pd

    directory = reader_data_dir(data_dir)
    arrow = _read_table(directory, name) if name in TABLES else _read_model(directory, name)
    return arrow.to_pandas(types_mapper=pd.ArrowDtype)


def _read_table(data_dir: Path, table: str) -> pa.Table:
    for attempt in (1, 2):
        files = table_files(data_dir, table)
        if not files:
            raise WarehouseError(
                f"nothing is published for {table} under {uri(data_dir, layout.PARQUET)}: run "
                "the pipeline first (`joor-pipeline run`), or point JOOR_DATA_DIR (or data_dir=) at the data directory"
            )
        con = reader_connection(data_dir)
        try:
            return con.sql(table_select(table, files)).to_arrow_table()
        except duckdb.IOException as error:
            # A publication replaced a partition between the read of its manifest and of its files (the old files
            # go once the new manifest is in place): read the manifests again, once.
            if attempt == 2:
                raise WarehouseError(f"{table} could not be read: {' '.join(str(error).split())}") from None
        finally:
            con.close()
    raise AssertionError("unreachable")


def _read_model(data_dir: Path, name: str) -> pa.Table:
    database = published_database(data_dir)
    if database is None:
        shown = uri(data_dir, DATABASE_FILE)
        raise WarehouseError(f"no warehouse at {shown}: run the pipeline first (`joor-pipeline run`)")
    con = reader_connection(data_dir)
    try:
        attach_warehouse(con, database)
        found = con.execute(
            "select schema_name, table_name from duckdb_tables() where database_name = $db and table_name = $name"
            " and list_contains($schemas, schema_name)"
            " union all select schema_name, view_name from duckdb_views() where database_name = $db"
            " and view_name = $name and list_contains($schemas, schema_name) order by 1",
            {"db": CATALOG, "name": name, "schemas": list(MODEL_SCHEMAS)},
        ).fetchall()
        if not found:
            known = sorted([*TABLES, *ANALYST_MODELS])
            raise WarehouseError(f"no model or table named {name!r} in {database}; try one of: {', '.join(known)}")
        [(schema, relation), *_] = found
        return con.sql(f"select * from {CATALOG}.{_identifier(schema)}.{_identifier(relation)}").to_arrow_table()
    finally:
        con.close()


def rule_issues_sql(relations: Mapping[str, str]) -> str:
    """The query of the data-quality rules over ``relations`` (table name -> relation), rendered from the same dbt
    macro that ``data_quality_issues`` uses (``macros/joor_rules.sql``, plain Jinja), so the per-partition checks
    and the model can never disagree."""
    import jinja2

    missing = sorted(set(TABLES) - relations.keys())
    if missing:
        raise ValueError(f"no relation given for table(s) {', '.join(missing)}")
    template = jinja2.Environment(autoescape=False).from_string(RULES_FILE.read_text(encoding="utf-8"))  # noqa: S701
    return str(template.module.joor_quality_rules(dict(relations)))  # type: ignore[attr-defined]


#: The dbt docs page that opens from disk: ``index.html`` with the manifest and the catalog inlined (``--static``).
STATIC_DOCS_PAGE: Final = "static_index.html"


def generate_docs(data_dir: Path) -> Path:
    """``dbt docs generate --static`` (offline) for the published warehouse; returns the page that opens from disk
    (``static_index.html``: dbt's ``index.html`` with the manifest and the catalog inlined, so a browser needs no
    server; the ``index.html`` beside it loads ``manifest.json`` and ``catalog.json`` and needs one).

    dbt-duckdb opens its database read-write, so the catalog is read from a private copy: the published file
    stays free for readers and builds.
    """
    data_dir = data_dir.resolve()
    current = published_database(data_dir)
    if current is None:
        shown = uri(data_dir, DATABASE_FILE)
        raise WarehouseError(f"no warehouse at {shown}: run the pipeline first (`joor-pipeline run`)")
    target = work_dir(data_dir) / "docs"
    scratch = work_dir(data_dir) / "docs-build"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        shutil.copyfile(current, scratch / DATABASE_FILE)
        variables = json.dumps({"database": str(scratch / DATABASE_FILE), "data_dir": str(data_dir)})
        run_dbt(["docs", "generate", "--static", "--vars", variables], target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target / STATIC_DOCS_PAGE


MODELS_SECTION_BEGIN: Final = "<!-- models: generated by python -m joor_pipeline.warehouse from the dbt manifest -->"
MODELS_SECTION_END: Final = "<!-- /models -->"
DICTIONARY_PATH: Final = Path(__file__).resolve().parents[1] / "docs" / "data-dictionary.md"


def models_markdown() -> str:
    """The data dictionary's section on the dbt project: every model, its schema, how it is built, its tests."""
    manifest = json.loads(manifest_path().read_text())
    tests: dict[str, list[str]] = {}
    for node in manifest["nodes"].values():
        if node["resource_type"] == "test" and node.get("attached_node"):
            meta = node.get("test_metadata") or {}
            column = node.get("column_name")
            tests.setdefault(node["attached_node"], []).append(
                f"`{meta.get('name', node['name'])}`" + (f" on `{column}`" if column else "")
            )
    lines = [
        MODELS_SECTION_BEGIN,
        "## Models: the dbt project",
        "",
        "The SQL models are a dbt project run by dbt-duckdb: `joor_pipeline/dbt_project/` (it ships inside the",
        "package). Each model is a Dagster asset (dagster-dbt), downstream of the table assets, and each dbt test",
        "an asset check. The ten tables above are its sources (`source('joor', <table>)`), read from exactly the",
        "published files of each partition. `joor.duckdb` keeps the analysts' models in `main` and the staging and",
        "intermediate ones in `staging`; `joor_meta` records what the warehouse was built from.",
        "",
        "Every model carries `account`, and its keys are unique within an account. Incremental models (`delete`",
        "then `insert` by (`account`, `snapshot_date`)) process only the partitions that changed since the last",
        "build; `retailer_history` is derived from one compact fingerprint per retailer and snapshot, so any order",
        "of snapshots gives the same history. The `latest` marts read each account's latest snapshot.",
        "",
        "| model | schema | built as | what it is (grain) | dbt tests |",
        "| --- | --- | --- | --- | --- |",
    ]
    models = sorted(
        (node for node in manifest["nodes"].values() if node["resource_type"] == "model"),
        key=lambda node: (node["schema"] != "main", node["original_file_path"]),
    )
    for node in models:
        description = node["description"].replace("|", "\\|")
        lines.append(
            f"| `{node['name']}` | `{node['schema']}` | {node['config']['materialized']} | {description} "
            f"| {', '.join(sorted(tests.get(node['unique_id'], []))) or '—'} |"
        )
    lines += [
        "",
        "### The models' columns",
        "",
        "A column a model passes through has the description of the table or model column it comes from (named",
        "under *from*); the others are described in the model's `_models.yml` (see `joor_pipeline/column_docs.py`).",
    ]
    for node in models:
        lines += [
            "",
            f"#### `{node['name']}`",
            "",
            "| column | type | description | from |",
            "| --- | --- | --- | --- |",
        ]
        for name, column in node["columns"].items():
            origin = (column.get("meta") or {}).get("description_from")
            description = column.get("description", "").replace("|", "\\|")
            lines.append(
                f"| `{name}` | {column.get('data_type') or ''} | {description} | {f'`{origin}`' if origin else '—'} |"
            )
    lines += ["", MODELS_SECTION_END]
    return "\n".join(lines) + "\n"


def write_models_section(path: Path = DICTIONARY_PATH) -> None:
    """Put :func:`models_markdown` into the data dictionary, replacing the previous section if there is one."""
    text = path.read_text(encoding="utf-8")
    section = models_markdown()
    if MODELS_SECTION_BEGIN in text and MODELS_SECTION_END in text:
        before, rest = text.split(MODELS_SECTION_BEGIN, 1)
        text = before + section + rest.split(MODELS_SECTION_END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    write_models_section()

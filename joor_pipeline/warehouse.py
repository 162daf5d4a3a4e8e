"""Build ``joor.duckdb`` from the partitioned Parquet tables by running the SQL models in ``models/``.

Staging models are views: each ``stg_<table>`` reads
``read_parquet(<partition files>, hive_partitioning = true, union_by_name = true)``, so ``joor.duckdb`` holds no
copy of the Parquet data however many snapshots accumulate, and the marts are tables built from the views. A
view takes no bound parameters, so the file paths are the one place a value is written into SQL, as literals
made by :func:`sql_string` (tested on quotes); the paths come from the file system, never from user text. The
views hold absolute paths: move the data directory and rebuild (every run does). The file list is fixed per
build, so every model of a build sees the same partitions even if the flattener lands a new one meanwhile.

An empty Parquet file with the table's contract schema (:func:`~joor_pipeline.flatten.schema.arrow_schema`) is
kept at ``parquet/_contract/<table>.parquet`` and read first, so a staging view always has every contract
column, typed and in contract order: when a column is newer than the old partitions, and when a table has no
partition yet (the file list is then that file alone). With ``hive_partitioning`` the ``snapshot_date=``
directory wins over the column stored in the file and is read as a DATE; staging casts it anyway. Any other
``key=value`` directory above the Parquet root would become a column too, so keep ``=`` out of the data
directory's path.

Writes are serialised by an exclusive ``fcntl.flock`` on ``joor.duckdb.lock``; readers (:func:`query`) take it
shared. A build runs in one transaction: if any model fails, everything rolls back and the previous warehouse
stays exactly as it was.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Final

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from joor_pipeline.flatten.schema import TABLES, arrow_schema
from joor_pipeline.storage.parquet import PARQUET_DIR, partition_files_under

log = logging.getLogger(__name__)

MODELS_DIR: Final = Path(__file__).resolve().parent / "models"
DATABASE_FILE: Final = "joor.duckdb"
LOCK_FILE: Final = "joor.duckdb.lock"
CONTRACT_DIR: Final = "_contract"

_NAME: Final = re.compile(r"[a-z][a-z0-9_]*")
_PARTITION_DIR: Final = re.compile(r"snapshot_date=\d{4}-\d{2}-\d{2}")
_DEPENDS_ON: Final = "depends_on:"
_SOURCE: Final = "source:"


class WarehouseLockTimeout(TimeoutError):
    """Another process kept the warehouse lock longer than the caller was willing to wait."""


@dataclass(frozen=True)
class Model:
    """One SQL model: a query whose result becomes the table ``name``.

    ``depends_on`` names the models it reads; ``source_table`` is the Parquet table a staging model reads
    (None for every other model). ``description`` is the file's comment header.
    """

    name: str
    path: Path
    sql: str
    depends_on: tuple[str, ...]
    description: str
    source_table: str | None = None


def _split_names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def load_model(path: Path) -> Model:
    """Read one ``.sql`` file and parse its comment header (see :mod:`joor_pipeline.models`)."""
    name = path.stem
    if not _NAME.fullmatch(name):
        raise ValueError(f"{path.name}: a model name must be a lowercase identifier")
    sql = path.read_text(encoding="utf-8").strip().rstrip(";").rstrip()
    header: list[str] = []
    for line in sql.splitlines():
        if not line.startswith("--"):
            break
        header.append(line[2:])
    if not header or not header[0].strip().startswith(f"{name}:"):
        raise ValueError(f"{path.name}: the first line must be '-- {name}: <what the model is>'")

    description: list[str] = [header[0].strip().removeprefix(f"{name}:").strip()]
    depends_on: tuple[str, ...] = ()
    source_table: str | None = None
    in_depends_on = False
    for content in header[1:]:
        text = content.strip()
        if in_depends_on and content.startswith("  "):
            depends_on += _split_names(text)
            continue
        in_depends_on = False
        if text.startswith(_DEPENDS_ON):
            depends_on += _split_names(text.removeprefix(_DEPENDS_ON))
            in_depends_on = True
        elif text.startswith(_SOURCE):
            source_table = text.removeprefix(_SOURCE).strip()
        else:
            description.append(text)

    if source_table is not None and source_table not in TABLES:
        raise ValueError(f"{path.name}: unknown source table {source_table!r}")
    if "grain:" not in "\n".join(description):
        raise ValueError(f"{path.name}: the header must state the model's grain ('-- grain: ...')")
    return Model(name, path, sql, depends_on, "\n".join(description), source_table)


def discover_models(directory: Path = MODELS_DIR) -> list[Model]:
    """Every model in ``directory``, in dependency order (ties broken by name, so the order is fixed)."""
    found = {model.name: model for model in map(load_model, sorted(directory.glob("*.sql")))}
    for model in found.values():
        unknown = [name for name in model.depends_on if name not in found]
        if unknown:
            raise ValueError(f"{model.name} depends on unknown model(s): {', '.join(unknown)}")
    ordered: list[Model] = []
    done: set[str] = set()
    pending = dict(found)
    while pending:
        ready = sorted(name for name, model in pending.items() if set(model.depends_on) <= done)
        if not ready:
            raise ValueError(f"dependency cycle among models: {', '.join(sorted(pending))}")
        for name in ready:
            ordered.append(pending.pop(name))
            done.add(name)
    return ordered


#: Every model of the warehouse, in the order a build runs them.
MODELS: Final[list[Model]] = discover_models()
MODELS_BY_NAME: Final[dict[str, Model]] = {model.name: model for model in MODELS}


def database_path(data_dir: Path) -> Path:
    """Where the warehouse file lives."""
    return data_dir / DATABASE_FILE


def parquet_root(data_dir: Path) -> Path:
    """Where the partitioned Parquet tables live (``<root>/<table>/snapshot_date=YYYY-MM-DD/*.parquet``)."""
    return data_dir / PARQUET_DIR


def partition_files(root: Path, table: str, snapshot_dates: Collection[date] | None = None) -> list[Path]:
    """The published Parquet files of every snapshot partition of ``table`` (or only of ``snapshot_dates``), oldest
    first: each partition's files as its manifest lists them, so a stray file in a folder is never read.

    ``root`` is a Parquet root: ``data_dir/parquet``, or a staged one whose partitions carry manifests too.
    """
    table_dir = root / table
    if not table_dir.is_dir():
        return []
    days = sorted(
        date.fromisoformat(path.name.removeprefix("snapshot_date="))
        for path in table_dir.iterdir()
        if _PARTITION_DIR.fullmatch(path.name) and path.is_dir()
    )
    wanted = None if snapshot_dates is None else set(snapshot_dates)
    return [path for day in days if wanted is None or day in wanted for path in partition_files_under(root, table, day)]


@contextmanager
def _flock(path: Path, operation: int, timeout: float | None) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as handle:
        if timeout is None:
            fcntl.flock(handle, operation)
        else:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(handle, operation | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise WarehouseLockTimeout(f"{path} stayed locked for {timeout} s") from None
                    time.sleep(0.02)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def writer_lock(data_dir: Path, *, timeout: float | None = None) -> Iterator[None]:
    """Hold the exclusive warehouse lock: no other writer or :func:`query` runs meanwhile."""
    with _flock(data_dir / LOCK_FILE, fcntl.LOCK_EX, timeout):
        yield


@contextmanager
def open_warehouse(data_dir: Path, *, lock_timeout: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-write connection inside one transaction, under the writer lock.

    Committed when the block ends, rolled back (leaving the previous warehouse intact) when it raises.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    with writer_lock(data_dir, timeout=lock_timeout):
        con = duckdb.connect(str(database_path(data_dir)))
        try:
            # change_hash hashes timestamps as text; fix the zone so the text never depends on the machine
            con.execute("set TimeZone = 'UTC'")
            con.begin()
            try:
                yield con
            except BaseException:
                con.rollback()
                raise
            con.commit()
        finally:
            con.close()


def _quoted(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a model name: {name!r}")
    return f'"{name}"'


def sql_string(text: str) -> str:
    """``text`` as a SQL string literal (quotes doubled), for the view definitions that cannot take parameters."""
    return "'" + text.replace("'", "''") + "'"


def contract_file(parquet_root: Path, table: str) -> Path:
    """An empty Parquet file with ``table``'s contract schema, (re)written atomically; staging views read it."""
    directory = parquet_root / CONTRACT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{table}.parquet"
    scratch = directory / f".{table}.{os.getpid()}.tmp"
    # from_batches rather than Schema.empty_table(), which imports pandas (0.6 s) for the same bytes.
    pq.write_table(pa.Table.from_batches([], schema=arrow_schema(table)), scratch)
    os.replace(scratch, path)
    return path


def run_model(
    con: duckdb.DuckDBPyConnection,
    model: Model,
    parquet_root: Path,
    *,
    snapshot_dates: Collection[date] | None = None,
) -> int:
    """Create or replace ``model.name`` (a view for staging, a table otherwise); returns its row count.

    Run it inside :func:`open_warehouse` so the replacement is atomic and serialised with other writers, or on
    an in-memory connection with ``snapshot_dates`` to evaluate the models on some partitions only (checks).
    """
    started = time.perf_counter()
    if model.source_table is None:
        con.execute(f"create or replace table {_quoted(model.name)} as\n{model.sql}\n")
    else:
        contract = str(contract_file(parquet_root, model.source_table))
        files = [str(path) for path in partition_files(parquet_root, model.source_table, snapshot_dates)]
        body = model.sql.replace("$contract_file", sql_string(contract)).replace(
            "$parquet_files", "[" + ", ".join(sql_string(f) for f in files or [contract]) + "]"
        )
        # A warehouse built before staging became views holds a table of that name; a view cannot replace it.
        found = con.execute(
            "select count(*) from duckdb_tables() where table_name = ? and schema_name = current_schema()",
            [model.name],
        ).fetchone()
        if found and found[0]:
            con.execute(f"drop table {_quoted(model.name)}")
        con.execute(f"create or replace view {_quoted(model.name)} as\n{body}\n")
    row = con.execute(f"select count(*) from {_quoted(model.name)}").fetchone()
    rows = int(row[0]) if row else 0
    log.debug("model %s: %d rows in %.2f s", model.name, rows, time.perf_counter() - started)
    return rows


def build_warehouse(
    data_dir: Path, *, models: Sequence[str] | None = None, lock_timeout: float | None = None
) -> dict[str, int]:
    """Run the models (all, or those named, always in :data:`MODELS` order) into ``data_dir/joor.duckdb``.

    Returns the row count of each model built. One transaction: on any failure nothing is changed.
    """
    if models is None:
        selected = list(MODELS)
    else:
        unknown = sorted(set(models) - MODELS_BY_NAME.keys())
        if unknown:
            raise ValueError(f"unknown model(s): {', '.join(unknown)}")
        wanted = set(models)
        selected = [model for model in MODELS if model.name in wanted]
    root = parquet_root(data_dir)
    counts: dict[str, int] = {}
    with open_warehouse(data_dir, lock_timeout=lock_timeout) as con:
        for model in selected:
            counts[model.name] = run_model(con, model, root)
    return counts


def query(
    data_dir: Path,
    sql: str,
    params: Sequence[Any] | Mapping[str, Any] | None = None,
    *,
    lock_timeout: float | None = None,
) -> list[tuple[Any, ...]]:
    """Run one query on a read-only connection to the warehouse (waits while a build is writing)."""
    path = database_path(data_dir)
    if not path.is_file():
        raise FileNotFoundError(f"no warehouse at {path}; build it first")
    with _flock(data_dir / LOCK_FILE, fcntl.LOCK_SH, lock_timeout):
        con = duckdb.connect(str(path), read_only=True)
        try:
            con.execute("set TimeZone = 'UTC'")
            return con.execute(sql, params).fetchall()
        finally:
            con.close()

"""``joor-pipeline sql``: SQL on the warehouse's models and the ten Parquet tables, read-only, with nothing more to
install (DuckDB's Python package runs it; no DuckDB CLI needed).

A session is one in-memory DuckDB connection (a database instance of its own: see "reading" in
:mod:`joor_pipeline.warehouse` for why never a connection to the file's path):

- the published ``joor.duckdb`` attached **read-only** as ``joor``, the default catalog: the models by name
  (``dim_retailers``, ``retailer_history``...), the staging ones as ``staging.stg_connections``...;
- the ten tables as views ``tables.<name>`` (``tables.connections``, ``tables.addresses``...): every published
  snapshot of every account, exactly the files each partition's ``_manifest.json`` lists.

Before each statement the session looks again: a newer published build is attached in place of the one it had,
and the tables the statement names are pointed at the partitions published since. It never writes the data
directory and never blocks a build or a flatten (both replace files; they never write one a reader has open).
What a session creates (``create table``, ``create view``) lives in memory until it ends.

With a query, ``sql`` runs it and prints the result(s); without one it reads statements (ending in ``;``) from
the terminal with a prompt and line editing, or from standard input when that is not a terminal (stopping at the
first one that fails). A failed statement is one ``error:`` line naming the problem; exit code 1.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, TextIO
from uuid import UUID

import duckdb

from joor_pipeline.flatten.dictionary import column_description
from joor_pipeline.flatten.schema import TABLES
from joor_pipeline.joor.errors import ConfigError, JoorError
from joor_pipeline.storage.access import location, uri
from joor_pipeline.storage.store import StoreError
from joor_pipeline.warehouse import (
    CATALOG,
    DATABASE_FILE,
    MODEL_SCHEMAS,
    TABLES_CATALOG,
    attach_warehouse,
    published_database,
    reader_connection,
    reader_data_dir,
    table_files,
    table_select,
)

FORMATS: Final = ("table", "csv", "json")
#: Longest value the ``table`` format shows whole (``csv`` and ``json`` never cut anything).
TABLE_CELL_WIDTH: Final = 60
#: Rows the ``table`` format prints (it must hold them to align the columns); the rest are counted.
TABLE_MAX_ROWS: Final = 10_000
HISTORY_LENGTH: Final = 2000
PROMPT: Final = "joor> "
CONTINUATION: Final = "  ...> "
BATCH_ROWS: Final = 2048

HELP: Final = f"""\
Statements end with ';' and may span lines. Read-only: what you create lives in memory for the session.
  dim_retailers, retailer_history, ...   the models ({CATALOG}.duckdb, the newest published build)
  staging.stg_connections, ...           the staging and intermediate models
  tables.connections, tables.addresses   the ten Parquet tables: every published snapshot of every account
Commands:
  .tables              every model and table, with its description
  .schema NAME         the columns of a model or table, with their types and descriptions
  .format FORMAT       table, csv or json
  .help                this text
  .quit                leave (or Ctrl-D)"""


class SqlFailed(Exception):
    """A statement failed: ``str()`` is the one-line reason."""


def one_line(error: BaseException) -> str:
    """A DuckDB error as one line: its message, the caret line under the query dropped."""
    lines = [line for line in str(error).splitlines() if line.strip() and not set(line.strip()) <= {"^"}]
    return " ".join(" ".join(lines).split())


def history_path() -> Path:
    """Where the prompt keeps its history: ``$XDG_STATE_HOME/joor-pipeline/sql_history``."""
    state = os.environ.get("XDG_STATE_HOME", "").strip() or "~/.local/state"
    return Path(state).expanduser() / "joor-pipeline" / "sql_history"


# ---- statements ----------------------------------------------------------------------------------------------

_DOLLAR_TAG: Final = re.compile(r"\$[A-Za-z_][A-Za-z0-9_]*\$|\$\$")


def complete(text: str) -> bool:
    """True when ``text`` ends a statement: its last token is a ``;`` outside quotes and comments."""
    ended = False
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char in "'\"":
            end = text.find(char, i + 1)
            if end < 0:
                return False
            i, ended = end + 1, False  # a doubled quote inside is two strings back to back: same result
            continue
        if text.startswith("--", i):
            newline = text.find("\n", i)
            i = n if newline < 0 else newline + 1
            continue
        if text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                return False
            i = end + 2
            continue
        if char == "$":
            tag = _DOLLAR_TAG.match(text, i)
            if tag:
                end = text.find(tag.group(), tag.end())
                if end < 0:
                    return False
                i, ended = end + len(tag.group()), False
                continue
        if char == ";":
            ended = True
        elif not char.isspace():
            ended = False
        i += 1
    return ended


_COMMENTS: Final = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)


def blank(text: str) -> bool:
    """True when ``text`` holds nothing but whitespace and complete comments."""
    return not _COMMENTS.sub(" ", text).strip()


_WORD: Final = re.compile(r'"((?:[^"]|"")*)"|([A-Za-z_][A-Za-z0-9_$]*)')
_SKIPPED: Final = re.compile(r"'(?:[^']|'')*'|--[^\n]*|/\*.*?\*/|(\$[A-Za-z_]*\$).*?\1", re.S)


def referenced_tables(statement: str) -> set[str]:
    """The ten tables a statement may read: those whose name it spells outside strings and comments (a stray
    match, such as a column of that name, only costs a look at that table's manifests)."""
    words = _WORD.findall(_SKIPPED.sub(" ", statement))
    return {name for quoted, bare in words if (name := quoted.replace('""', '"') or bare.lower()) in TABLES}


# ---- the session ---------------------------------------------------------------------------------------------


def _identity(path: Path) -> tuple[int, int, int, int]:
    found = path.stat()
    return found.st_dev, found.st_ino, found.st_mtime_ns, found.st_size


@dataclass
class Session:
    """One read-only connection on a data directory's newest build and published tables (see the module)."""

    data_dir: Path
    con: duckdb.DuckDBPyConnection = field(init=False)
    #: The attached warehouse file's identity (device, inode, mtime, size); None while there is none.
    attached: tuple[int, int, int, int] | None = field(init=False, default=None)
    #: Each table's files, as its view reads them (a table missing here has not been looked at yet).
    files: dict[str, list[Path | str]] = field(init=False, default_factory=dict)
    #: Between the user's BEGIN and COMMIT (or ROLLBACK): the attached build stays.
    in_transaction: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.con = reader_connection(self.data_dir)
        try:
            self.con.execute(f"attach ':memory:' as {TABLES_CATALOG}")
            for table in TABLES:  # the contract's columns, no rows, until a statement reads the table
                self._define(table, [])
            self.refresh_warehouse()
        except BaseException:
            self.con.close()
            raise

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def has_warehouse(self) -> bool:
        return self.attached is not None

    def _define(self, table: str, files: list[Path | str]) -> None:
        view = f"{TABLES_CATALOG}.main.{table}"
        self.con.execute(f"create or replace view {view} as {table_select(table, files)}")
        spec = TABLES[table]
        self.con.execute(f"comment on view {view} is {_literal(spec.description)}")
        for column in spec.columns:
            self.con.execute(f'comment on column {view}."{column.name}" is {_literal(column_description(column))}')

    def refresh_warehouse(self) -> None:
        """Attach the newest published build if it is not the one attached."""
        database = published_database(self.data_dir)
        identity = _identity(database) if database is not None else None
        if identity == self.attached:
            return
        if self.attached is not None:
            self.con.execute("use memory")
            self.con.execute(f"detach {CATALOG}")
            self.attached = None
        if database is not None:
            attach_warehouse(self.con, database)
            self.attached = identity

    def refresh_tables(self, tables: Iterable[str]) -> None:
        """Point the views of ``tables`` at the partitions published now."""
        for table in sorted(set(tables)):
            files = table_files(self.data_dir, table)
            if files != self.files.get(table):
                self._define(table, files)
                self.files[table] = files

    def execute(self, statement: duckdb.Statement) -> duckdb.DuckDBPyConnection:
        """Run one statement on the newest build and the tables as published now."""
        try:
            if not self.in_transaction:  # inside the user's transaction: the build it began on
                self.refresh_warehouse()
            # the tables it names, and those read before (a view the user made over them reads them again)
            self.refresh_tables(referenced_tables(statement.query) | self.files.keys())
        except JoorError as error:  # a damaged partition, the store out of reach: named, with the way out
            raise SqlFailed(str(error)) from None
        except duckdb.Error as error:
            raise SqlFailed(f"the published warehouse could not be attached: {one_line(error)}") from None
        try:
            cursor = self.con.execute(statement)
            if statement.type == duckdb.StatementType.TRANSACTION:
                word = (statement.query.split(None, 1) or [""])[0].lower()
                self.in_transaction = word in ("begin", "start")
                if word in ("rollback", "abort"):
                    self.files.clear()  # the views it defined meanwhile are undone: define them again
            return cursor
        except duckdb.Error as error:
            message = one_line(error)
            if not self.has_warehouse and isinstance(error, duckdb.CatalogException):
                shown = uri(self.data_dir, DATABASE_FILE)
                message += f" (no warehouse at {shown} yet: only the tables.* are here; run the pipeline first)"
            raise SqlFailed(message) from None

    def statements(self, text: str) -> list[duckdb.Statement]:
        try:
            return duckdb.extract_statements(text)
        except duckdb.Error as error:
            raise SqlFailed(one_line(error)) from None

    def catalog(self) -> list[tuple[str, str, str]]:
        """Every model and table: (its name in SQL, what it is, its description)."""
        rows = self.con.execute(
            "select database_name, schema_name, table_name, 'table', comment from duckdb_tables()"
            " union all select database_name, schema_name, view_name, 'view', comment from duckdb_views()"
            " where not internal"
        ).fetchall()
        found = []
        for database, schema, name, kind, comment in rows:
            if database == TABLES_CATALOG:
                found.append((2, f"{TABLES_CATALOG}.{name}", "table (every published snapshot)", comment or ""))
            elif database == CATALOG and schema in MODEL_SCHEMAS:
                shown = name if schema == "main" else f"{schema}.{name}"
                found.append((0 if schema == "main" else 1, shown, f"model ({kind})", comment or ""))
        return [(name, kind, comment) for _rank, name, kind, comment in sorted(found)]

    def schema(self, name: str) -> list[tuple[str, str, str]]:
        """The columns of one model or table: (name, type, description)."""
        self.refresh_tables(referenced_tables(name))
        try:
            columns = self.con.execute(f"describe {name}").fetchall()
        except duckdb.Error as error:
            raise SqlFailed(one_line(error)) from None
        comments = self._comments(name)
        return [(column, data_type, comments.get(column, "")) for column, data_type, *_rest in columns]

    def _comments(self, name: str) -> dict[str, str]:
        parts = [quoted.replace('""', '"') or bare.lower() for quoted, bare in _WORD.findall(name)]
        if not parts:
            return {}
        where = {"relation": parts[-1]}
        if len(parts) >= 2 and parts[-2] == TABLES_CATALOG:
            where["database"] = TABLES_CATALOG
        else:
            where["database"] = CATALOG
            where["schema"] = parts[-2] if len(parts) >= 2 else "main"
        conditions = " and ".join(
            {
                "relation": "table_name = $relation",
                "database": "database_name = $database",
                "schema": "schema_name = $schema",
            }[key]
            for key in where
        )
        rows = self.con.execute(f"select column_name, comment from duckdb_columns() where {conditions}", where)
        return {column: comment or "" for column, comment in rows.fetchall()}


def connect(data_dir: Path | str | None = None) -> duckdb.DuckDBPyConnection:
    """A new read-only DuckDB connection as ``joor-pipeline sql`` opens it: the newest published build attached as
    ``joor`` (models by name, ``staging.stg_<table>``) and the ten tables as ``tables.<name>`` over every partition
    published now. It keeps what it saw, whole, until closed: connect again to see a newer build.

    ``data_dir`` is a path or a URL: ``s3://``, ``gs://``, ``az://`` (default ``$JOOR_DATA_DIR``, else ``./data``).
    """
    session = Session(reader_data_dir(data_dir))
    try:
        session.refresh_tables(TABLES)
    except BaseException:
        session.close()
        raise
    return session.con


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# ---- output --------------------------------------------------------------------------------------------------


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value) if value.is_finite() else str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    return value


def _text(value: Any) -> str:
    """A value as text, for ``csv`` and ``table``: dates in ISO form, booleans in SQL's spelling."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime | date | time):
        return value.isoformat(sep=" ") if isinstance(value, datetime) else value.isoformat()
    if isinstance(value, dict | list | tuple):
        return json.dumps(_json_value(value), ensure_ascii=False)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return str(value)


def _batches(cursor: duckdb.DuckDBPyConnection) -> Iterator[list[tuple[Any, ...]]]:
    while batch := cursor.fetchmany(BATCH_ROWS):
        yield batch


@dataclass(frozen=True)
class Result:
    """A statement's columns (name, DuckDB type) and its rows, fetched in batches as they are written."""

    columns: list[tuple[str, str]]
    batches: Iterable[list[tuple[Any, ...]]]


def write_csv(result: Result, out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([name for name, _type in result.columns])
    for batch in result.batches:
        writer.writerows([_text(value) for value in row] for row in batch)


def write_json(result: Result, out: TextIO) -> None:
    """A JSON array of one object per row (keys in column order)."""
    names = [name for name, _type in result.columns]
    out.write("[")
    first = True
    for batch in result.batches:
        for row in batch:
            record = {name: _json_value(value) for name, value in zip(names, row, strict=True)}
            out.write(("\n" if first else ",\n") + json.dumps(record, ensure_ascii=False))
            first = False
    out.write("\n]\n" if not first else "]\n")


_NUMERIC: Final = re.compile(r"^(U?(TINY|SMALL|BIG|HUGE)?INT(EGER)?|FLOAT|DOUBLE|REAL|DECIMAL.*)$")


def write_table(result: Result, out: TextIO) -> None:
    """Aligned columns under a header; NULL spelled out, long values cut (``…``), numbers to the right."""

    def cell(value: Any) -> str:
        if value is None:
            return "NULL"
        text = " ".join(_text(value).split("\n"))
        return text if len(text) <= TABLE_CELL_WIDTH else text[: TABLE_CELL_WIDTH - 1] + "…"

    names = [name for name, _type in result.columns]
    numeric = [bool(_NUMERIC.match(data_type.upper())) for _name, data_type in result.columns]
    rows: list[list[str]] = []
    total = 0
    for batch in result.batches:
        total += len(batch)
        rows += [[cell(value) for value in row] for row in batch[: max(TABLE_MAX_ROWS - len(rows), 0)]]
    widths = [max([len(name), *(len(row[i]) for row in rows)]) for i, name in enumerate(names)]

    def line(cells: Sequence[str]) -> str:
        padded = (c.rjust(w) if right else c.ljust(w) for c, w, right in zip(cells, widths, numeric, strict=True))
        return " | ".join(padded).rstrip()

    out.write(line(names) + "\n")
    out.write("-+-".join("-" * w for w in widths) + "\n")
    for row in rows:
        out.write(line(row) + "\n")
    more = f"; {total - len(rows)} more not shown (--format csv or json shows every row)" if total > len(rows) else ""
    out.write(f"({total} row{'' if total == 1 else 's'}{more})\n")


WRITERS: Final[dict[str, Callable[[Result, TextIO], None]]] = {
    "table": write_table,
    "csv": write_csv,
    "json": write_json,
}


# ---- running text --------------------------------------------------------------------------------------------


@dataclass
class Runner:
    """Runs statements on a session and writes their results in the chosen format."""

    session: Session
    format: str
    out: TextIO
    err: TextIO
    results: int = 0

    def run(self, text: str) -> None:
        """Every statement of ``text``, in order; raises :class:`SqlFailed` at the first that fails."""
        for statement in self.session.statements(text):
            cursor = self.session.execute(statement)
            description = cursor.description
            if not description or [d[0] for d in description] == ["Success"]:
                continue  # a statement without rows (set, use, ...)
            columns = [(str(d[0]), str(d[1])) for d in description]
            if self.results and self.format == "table":
                self.out.write("\n")
            try:
                WRITERS[self.format](Result(columns, _batches(cursor)), self.out)
            except duckdb.Error as error:  # raised while fetching (a file gone, a cast failing on a late row)
                raise SqlFailed(one_line(error)) from None
            self.out.flush()
            self.results += 1

    def command(self, line: str) -> bool:
        """A dot command; False for ``.quit``."""
        name, _, argument = line.strip().partition(" ")
        argument = argument.strip().rstrip(";").strip()
        if name in (".quit", ".exit", ".q"):
            return False
        if name == ".help":
            print(HELP, file=self.out)
        elif name == ".tables":
            catalog = self.session.catalog()
            if not self.session.has_warehouse:
                shown = uri(self.session.data_dir, DATABASE_FILE)
                print(f"note: no warehouse at {shown} yet: only the tables.* are here", file=self.err)
            listed = [("name", "VARCHAR"), ("kind", "VARCHAR"), ("description", "VARCHAR")]
            WRITERS[self.format](Result(listed, [catalog]), self.out)
        elif name == ".schema":
            if not argument:
                raise SqlFailed(".schema needs a name, e.g. .schema dim_retailers")
            schema = self.session.schema(argument)
            described = [("column", "VARCHAR"), ("type", "VARCHAR"), ("description", "VARCHAR")]
            WRITERS[self.format](Result(described, [schema]), self.out)
        elif name == ".format":
            if argument not in FORMATS:
                raise SqlFailed(f".format takes one of {', '.join(FORMATS)}")
            self.format = argument
        else:
            raise SqlFailed(f"unknown command {name!r}: .help lists them")
        self.out.flush()
        return True


LineReader = Callable[[bool], "str | None"]
"""Reads the next line (the argument: a statement is being continued); None at the end of the input."""


def stream_reader(stream: TextIO) -> LineReader:
    lines = iter(stream)

    def read(_continued: bool) -> str | None:
        line = next(lines, None)
        return None if line is None else line.rstrip("\n")

    return read


@contextmanager
def prompt_reader(out: TextIO) -> Iterator[LineReader]:
    """Lines typed at the prompt, with line editing and a history kept between sessions (:func:`history_path`)."""
    import readline

    path = history_path()
    with suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(HISTORY_LENGTH)

    def read(continued: bool) -> str | None:
        try:
            return input(CONTINUATION if continued else PROMPT)
        except EOFError:
            print(file=out)
            return None

    try:
        yield read
    finally:
        with suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)


def repl(runner: Runner, read: LineReader, *, interactive: bool) -> int:
    """Run each statement once its last line (ending in ``;``) arrives, and dot commands at once. A failure ends a
    script (exit 1); at the prompt it is reported and the session goes on, and Ctrl-C drops the statement being
    typed or stops the one running."""
    buffer: list[str] = []
    failed = False
    while True:
        try:
            line = read(bool(buffer))
            if line is None:
                break
            if not buffer and line.lstrip().startswith("."):
                if not runner.command(line):
                    break
                continue
            buffer.append(line)
            text = "\n".join(buffer)
            if blank(text):
                buffer.clear()  # comments before a statement (or a dot command) are not its start
                continue
            if not complete(text):
                continue
            buffer.clear()
            runner.run(text)
        except SqlFailed as failure:
            runner.out.flush()
            print(f"error: {failure}", file=runner.err, flush=True)
            if not interactive:
                return 1
            failed = True
        except KeyboardInterrupt:
            if not interactive:
                raise
            buffer.clear()
            print("^C", file=runner.err, flush=True)
    rest = "\n".join(buffer).strip()
    if rest:  # the last statement of a script may lack its ';'
        try:
            runner.run(rest)
        except SqlFailed as failure:
            print(f"error: {failure}", file=runner.err, flush=True)
            return 1
    return 1 if failed and not interactive else 0


def data_dir_of(given: Path | str | None, option: str) -> Path:
    """The data directory to read, or a ConfigError naming ``option`` when a local one does not exist."""
    try:
        directory = reader_data_dir(given)
    except StoreError as error:
        raise ConfigError(f"{option}: {error}") from None
    if not directory.is_dir():
        raise ConfigError(f"{option} {directory} is not a directory (nothing has been written there yet?)")
    return directory


def run_sql(
    query: str | None,
    *,
    data_dir: Path | str | None = None,
    option: str = "JOOR_DATA_DIR",
    fmt: str = "table",
    stdin: TextIO | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """``joor-pipeline sql``: run ``query``, or statements from the prompt or standard input; the exit code."""
    stdin, out, err = stdin or sys.stdin, out or sys.stdout, err or sys.stderr
    directory = data_dir_of(data_dir, option)
    with Session(directory) as session:
        runner = Runner(session, fmt, out, err)
        try:
            if query is not None:
                try:
                    runner.run(query)
                except SqlFailed as failure:
                    out.flush()
                    print(f"error: {failure}", file=err, flush=True)
                    return 1
                return 0
            if stdin.isatty():
                shown = location(directory)
                print(f"joor-pipeline sql on {shown}, read-only. .help for help, .quit or Ctrl-D to leave.", file=out)
                if not session.has_warehouse:
                    where = uri(directory, DATABASE_FILE)
                    print(f"note: no warehouse at {where} yet: only the tables.* are here", file=err)
                with prompt_reader(out) as read:
                    return repl(runner, read, interactive=True)
            return repl(runner, stream_reader(stdin), interactive=False)
        except BrokenPipeError:
            # the reader of the output went away (`| head`): stop quietly, as other commands do
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 0

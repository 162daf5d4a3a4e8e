"""Flatten canonical JOOR connections (one parsed page) into the ten tables of the contract. Pure: no I/O.

How it stays fast: the field maps are compiled once from the specs in :mod:`.schema`. Each list item becomes
one tuple of its raw leaves, taken with a single ``itemgetter`` call when its keys are exactly the expected
ones (nearly always); the tuples are transposed with ``zip`` and each column is coerced in one pass
(:func:`~.coerce.coerce_column`) and handed to Arrow once. Only items with unknown fields, aliases or a
wrong shape take the slow path, and only they allocate the per-row dicts behind ``extra`` and
``invalid_values``.

Faster still for a clean JSON page (every object has only the contract's fields, every list is a list of
objects): msgspec decodes it straight into records (:func:`decode_records`), whose row tuples are read whole
(``astuple``), and each list's rows are gathered for the page at once by calls in C. No dict is built for an
object. A page that is not clean is declined and parsed into dicts; both paths give the same rows
(``test_records_flatten_and_count_exactly_like_dicts``). A worker's 10,000 connections take a quarter to a
third less time (bench/results.md).

What it never does: drop a row or fail a run over a value. Unknown fields go to ``extra``, values that
cannot be coerced go to ``invalid_values`` (the column is null), a list that is not a list is recorded in the
connection's ``invalid_values``, a value nested too deep is kept as text, and every such event is counted in
:class:`FlattenStats`. A connection whose customer_account_id came earlier in the snapshot is skipped (the first
wins) and counted; whether it was an identical repeat or a different connection under the same id is for the
caller to find (:func:`conflicting_repeats`). The only error is a connection that is not an object at all,
which the parser already rejects (:class:`PayloadError`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from itertools import chain, compress, repeat
from operator import itemgetter
from typing import Any, Final

import msgspec
import pyarrow as pa
import pyarrow.compute as pc
from msgspec.structs import astuple

from joor_pipeline.flatten.coerce import (
    INVALID,
    account_id_key,
    canonical_value,
    coerce_column,
    coerce_value,
    compact_json,
    fingerprint,
    original_text,
)
from joor_pipeline.flatten.schema import INT64, TABLES, ListSource, TableSpec, arrow_schema
from joor_pipeline.joor.errors import PayloadError
from joor_pipeline.joor.parse import as_list

Item = dict[str, Any]


@dataclass
class FlattenStats:
    """Counts of what flattening saw: rows written, and every field or value it could not place."""

    #: Connections read, duplicates included.
    connections: int = 0
    #: Rows per table (every table present, zero included).
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    #: Fields written to ``extra``, as ``table.field`` (unknown fields and aliases that disagree).
    unknown_fields: Counter[str] = field(default_factory=Counter)
    #: Values written to ``invalid_values`` (column left null), as ``table.column``.
    coercion_problems: Counter[str] = field(default_factory=Counter)
    #: Connections skipped because their customer_account_id was already seen (the first one is kept).
    duplicate_connections: int = 0
    #: The customer_account_ids repeated by a connection that differs from the first one kept (sorted, each
    #: once). Only the first is written, so data was lost: the raw reconciliation fails on these.
    conflicting_duplicates: list[int] = field(default_factory=list)
    #: Connections kept with a null customer_account_id (missing or invalid).
    missing_customer_account_id: int = 0

    def merge(self, other: FlattenStats) -> None:
        """Add ``other``'s counts to these."""
        self.connections += other.connections
        for table, count in other.rows.items():
            self.rows[table] = self.rows.get(table, 0) + count
        self.unknown_fields.update(other.unknown_fields)
        self.coercion_problems.update(other.coercion_problems)
        self.duplicate_connections += other.duplicate_connections
        if other.conflicting_duplicates:
            self.conflicting_duplicates = sorted({*self.conflicting_duplicates, *other.conflicting_duplicates})
        self.missing_customer_account_id += other.missing_customer_account_id


@dataclass(frozen=True)
class FlatBatch:
    """One page flattened: a table per name in :data:`~.schema.TABLES`, each exactly its contract schema."""

    tables: dict[str, pa.Table]
    stats: FlattenStats
    #: The customer_account_ids of the connections skipped as repeats, for the caller to compare with the
    #: connection it kept (:func:`~.coerce.fingerprint`; only the caller has every page at hand).
    repeated_ids: list[int] = field(default_factory=list)


# --- field maps, compiled once from the specs -------------------------------------------------------------


class _Reader:
    """How to read one kind of JOOR object (a connection, or an item of one list) into a row tuple."""

    __slots__ = (
        "accepted",
        "aliases",
        "canonical",
        "columns",
        "fields",
        "getter",
        "nulls",
        "positions",
        "source",
        "structure",
        "table",
        "width",
    )

    def __init__(
        self,
        table: str,
        columns: Sequence[str],
        fields: Sequence[str],
        aliases: dict[str, int],
        structure: frozenset[str] = frozenset(),
        source: ListSource | None = None,
    ) -> None:
        self.table = table
        self.columns = tuple(columns)  # the table's columns this object feeds, in row-tuple order
        self.fields = tuple(fields)  # the canonical JOOR field of each
        self.aliases = aliases  # alias field -> row-tuple position
        self.structure = structure  # keys that are neither fields nor unknown (a connection's lists, groups)
        self.source = source
        self.width = len(self.fields)
        self.positions = {name: i for i, name in enumerate(self.fields)}
        self.canonical = frozenset(self.fields)
        self.accepted = self.canonical | structure
        self.nulls: tuple[Any, ...] = (None,) * self.width
        first = self.fields[0]
        self.getter: Callable[[Item], tuple[Any, ...]] = (
            itemgetter(*self.fields) if self.width > 1 else lambda item: (item[first],)
        )

    @property
    def list_source(self) -> ListSource:
        """The JOOR list this reader reads the items of."""
        assert self.source is not None, f"{self.table} is not read from a list"
        return self.source

    def row(self, item: Item) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
        """The row tuple of ``item`` and the fields it leaves over for ``extra`` (None when nothing)."""
        keys = item.keys()
        if keys <= self.accepted:
            if len(keys) == self.width and keys <= self.canonical:
                return self.getter(item), None
            return tuple(map(item.get, self.fields)), None
        return self._slow_row(item)

    def _slow_row(self, item: Item) -> tuple[tuple[Any, ...], dict[str, Any] | None]:
        values: list[Any] = [None] * self.width
        filled: set[int] = set()
        extra: dict[str, Any] = {}
        aliased: list[tuple[str, Any]] = []
        for key, value in item.items():
            position = self.positions.get(key)
            if position is not None:
                values[position] = value
                filled.add(position)
            elif key in self.aliases:
                aliased.append((key, value))
            elif key not in self.structure:
                extra[key] = value
        for key, value in aliased:
            position = self.aliases[key]
            if position not in filled:
                values[position] = value
                filled.add(position)
            elif canonical_value(value) != canonical_value(values[position]):
                # Both spellings present and disagreeing: the canonical one wins, the other is kept.
                extra[key] = value
        return tuple(values), extra or None


def _list_reader(spec: TableSpec, source: ListSource) -> _Reader:
    columns: list[str] = []
    fields: list[str] = []
    aliases: dict[str, int] = {}
    for column in spec.field_columns:
        sources = source.fields_of(column)
        if sources:
            aliases.update(dict.fromkeys(sources[1:], len(columns)))
            columns.append(column.name)
            fields.append(sources[0])
    return _Reader(spec.name, columns, fields, aliases, source=source)


def _connection_reader() -> _Reader:
    columns = [c for c in TABLES["connections"].field_columns if c.name != "customer_account_id"]
    lists_and_groups = {source.path[0] for spec in TABLES.values() for source in spec.lists}
    return _Reader(
        "connections",
        [c.name for c in columns],
        [c.sources[0] for c in columns],
        {alias: i for i, c in enumerate(columns) for alias in c.sources[1:]},
        frozenset({"customer_account_id", *lists_and_groups}),
    )


_CONNECTION: Final = _connection_reader()
_LISTS: Final[tuple[_Reader, ...]] = tuple(
    _list_reader(spec, source) for spec in TABLES.values() for source in spec.lists
)


def _group_layout() -> tuple[tuple[str | None, frozenset[str], tuple[int, ...]], ...]:
    """Per group (None: the connection itself): the list keys it holds and their indexes into ``_LISTS``."""
    layout: dict[str | None, list[int]] = {}
    for index, reader in enumerate(_LISTS):
        path = reader.list_source.path
        layout.setdefault(path[0] if len(path) > 1 else None, []).append(index)
    return tuple(
        (group, frozenset(_LISTS[i].list_source.key for i in indexes), tuple(indexes))
        for group, indexes in layout.items()
    )


_GROUPS: Final = _group_layout()
#: The JOOR list key each of ``_LISTS`` reads, looked up once per connection and list.
_LIST_KEYS: Final = tuple(reader.list_source.key for reader in _LISTS)


# --- typed records: a clean JSON page decoded straight into row tuples ------------------------------------
#
# msgspec decodes a connection into a record (a Struct) whose fields are exactly the readers' fields, in their
# order, so a list item's row tuple is ``astuple(item)``: no dict per object, no lookup per field. Every leaf is
# ``Any``, left as JSON gave it (coercion is the flatten's, on both paths). A record forbids unknown fields,
# and a list field takes only a list of objects or null: an unknown field, an alias, a list spelled as a lone
# object or "", an item that is not an object, a group that is not an object, all make msgspec refuse the page,
# which is then parsed into dicts and read with every rule above. The rows are the same either way.


def _record_type(name: str, fields: Sequence[tuple[str, Any]]) -> type[msgspec.Struct]:
    for field_name, _type in fields:
        assert field_name.isidentifier(), f"{name}: {field_name!r} cannot be a record field"
    return msgspec.defstruct(
        name, [(field_name, field_type, None) for field_name, field_type in fields], forbid_unknown_fields=True
    )


def _list_of(item: type[msgspec.Struct]) -> Any:
    """A list field of records: a list of ``item`` objects, or null."""
    return list[item] | None  # type: ignore[valid-type]


#: Where the lists are in a connection record's row tuple: ``(position, index into _LISTS)`` of each list on the
#: connection, and ``(group position, ((position in the group, index into _LISTS), ...))`` of each group.
_RecordLayout = tuple[tuple[tuple[int, int], ...], tuple[tuple[int, tuple[tuple[int, int], ...]], ...]]


def _record_types() -> tuple[type[msgspec.Struct], _RecordLayout]:
    """The connection's record type, and where each of ``_LISTS`` sits in its row tuple (see _RecordLayout)."""
    items = [
        _record_type(f"{reader.table}_{'_'.join(reader.list_source.path)}", [(f, Any) for f in reader.fields])
        for reader in _LISTS
    ]
    fields: list[tuple[str, Any]] = [("customer_account_id", Any), *((f, Any) for f in _CONNECTION.fields)]
    top: list[tuple[int, int]] = []
    groups: list[tuple[int, tuple[tuple[int, int], ...]]] = []
    for group, _keys, indexes in _GROUPS:
        if group is None:
            for index in indexes:
                top.append((len(fields), index))
                fields.append((_LIST_KEYS[index], _list_of(items[index])))
        else:
            members = [(_LIST_KEYS[index], _list_of(items[index])) for index in indexes]
            groups.append((len(fields), tuple((position, index) for position, index in enumerate(indexes))))
            fields.append((group, _record_type(f"connection_{group}", members) | None))
    return _record_type("connection", fields), (tuple(top), tuple(groups))


_RECORD, (_RECORD_TOP, _RECORD_GROUPS) = _record_types()
#: The connection's own fields in its record's row tuple: customer_account_id, then the reader's fields.
_RECORD_FIELDS: Final = slice(1, 1 + _CONNECTION.width)


class _Page(msgspec.Struct):
    # Other top-level keys are ignored, as the dict path ignores them.
    connections: list[_RECORD]  # type: ignore[valid-type]
    response: Any = None


_PAGE_DECODER: Final = msgspec.json.Decoder(_Page)


def decode_records(body: bytes) -> tuple[Any, list[Any]] | None:
    """A JSON page's response block and its connections as records, or None where the page is not clean (it is
    then parsed into dicts: :func:`~joor_pipeline.joor.parse.parse_json`)."""
    try:
        page = _PAGE_DECODER.decode(body)
    except (msgspec.DecodeError, RecursionError):  # ValidationError included: a field or shape records do not take
        return None
    return page.response, page.connections


def is_record(connection: Any) -> bool:
    """A connection decoded by :func:`decode_records`, rather than parsed into a dict."""
    return type(connection) is _RECORD


# --- row accumulation -------------------------------------------------------------------------------------


class _Rows:
    """Rows gathered by one reader: value tuples, their owning connection and ordinal, and rare extras."""

    __slots__ = ("extra", "invalid", "ordinals", "owners", "reader", "record_lists", "record_owners", "rows")

    def __init__(self, reader: _Reader) -> None:
        self.reader = reader
        self.rows: list[tuple[Any, ...]] = []
        self.owners: list[int] = []
        self.ordinals: list[int] = []
        self.extra: dict[int, dict[str, Any]] = {}
        self.invalid: dict[int, dict[str, str]] = {}
        # Lists of records and their owners, appended as they come and made rows all at once by settle().
        self.record_lists: list[list[Any]] = []
        self.record_owners: list[int] = []

    def add(self, item: Item, stats: FlattenStats) -> None:
        """Append one object's row; its leftover fields go to ``extra``."""
        row, extra = self.reader.row(item)
        if extra is not None:
            self.extra[len(self.rows)] = extra
            stats.unknown_fields.update(f"{self.reader.table}.{key}" for key in extra)
        self.rows.append(row)

    def add_items(self, items: list[Any], owner: int, stats: FlattenStats) -> None:
        """Append the rows of one connection's list."""
        if self.record_lists:
            self.settle()  # rows stay in the order they came
        reader = self.reader
        rows = self.rows
        width = reader.width
        getter = reader.getter
        for item in items:
            if type(item) is dict:
                # The common case, inlined: as many keys as fields and every field present means exactly the
                # expected fields, so one itemgetter call makes the row.
                if len(item) == width:
                    try:
                        rows.append(getter(item))
                        continue
                    except KeyError:
                        pass
                self.add(item, stats)
            else:
                tag = reader.list_source.item_tag
                self.invalid[len(rows)] = {tag: original_text(item)}
                stats.coercion_problems[f"{reader.table}.{tag}"] += 1
                rows.append(reader.nulls)
        self.owners.extend([owner] * len(items))
        self.ordinals.extend(range(len(items)))

    def add_record_lists(self, lists: list[Any], owners: Sequence[int]) -> None:
        """Gather one list of records per connection of ``owners`` (None or empty where it has none)."""
        self.record_lists.extend(filter(None, lists))
        self.record_owners.extend(compress(owners, lists))

    def settle(self) -> None:
        """Append the rows of the lists of records gathered so far (see :meth:`_PageFlattener.add_records`), with
        their owners and ordinals: a few calls in C for the whole batch, where a call per list would cost more
        than its rows."""
        if self.record_lists:
            lists, owners = self.record_lists, self.record_owners
            lengths = list(map(len, lists))
            self.rows.extend(map(astuple, chain.from_iterable(lists)))
            self.owners.extend(chain.from_iterable(map(repeat, owners, lengths)))
            self.ordinals.extend(chain.from_iterable(map(range, lengths)))
            self.record_lists, self.record_owners = [], []


class _PageFlattener:
    """The state of flattening one page, or a run of pages flattened together."""

    def __init__(self, stats: FlattenStats, seen: set[int]) -> None:
        self.stats = stats
        self.seen = seen
        self.connections = _Rows(_CONNECTION)
        self.ids: list[int | None] = []
        self.repeated: list[int] = []
        # The page each kept connection came from, and its log_id (several pages may be flattened at once).
        self.pages: list[int] = []
        self.log_ids: list[str | None] = []
        self.lists = [_Rows(reader) for reader in _LISTS]

    def _flag_connection(self, owner: int, key: str, value: Any) -> None:
        self.connections.invalid.setdefault(owner, {})[key] = original_text(value)
        self.stats.coercion_problems[f"connections.{key}"] += 1

    def _extra_connection(self, owner: int, key: str, value: Any) -> None:
        self.connections.extra.setdefault(owner, {})[key] = value
        self.stats.unknown_fields[f"connections.{key}"] += 1

    def add_page(self, connections: Sequence[Item], source_page: int, log_id: str | None) -> None:
        """Flatten one page's connections (a connection that is not an object is a PayloadError)."""
        self.stats.connections += len(connections)
        kept = len(self.ids)
        if connections and type(connections[0]) is _RECORD:
            self.add_records(connections)
            connections = ()
        for index, connection in enumerate(connections):
            if type(connection) is not dict:
                raise PayloadError(
                    f"connection #{index} is a {type(connection).__name__}, not an object",
                    source=f"page {source_page}",
                    log_id=log_id,
                )
            self.add(connection)
        kept = len(self.ids) - kept
        self.pages.extend([source_page] * kept)
        self.log_ids.extend([log_id] * kept)

    def _keep(self, raw_id: Any) -> bool:
        """The dedup of both paths: False for a connection whose customer_account_id came earlier (counted as a
        repeat); otherwise its id (None when missing or invalid, which is flagged) is taken, and True."""
        account_id = account_id_key(raw_id)
        if account_id is None:
            if coerce_value(raw_id, INT64) is INVALID:
                self._flag_connection(len(self.ids), "customer_account_id", raw_id)
            self.stats.missing_customer_account_id += 1
        elif account_id in self.seen:
            self.stats.duplicate_connections += 1
            self.repeated.append(account_id)
            return False
        else:
            self.seen.add(account_id)
        self.ids.append(account_id)
        return True

    def add(self, connection: Item) -> None:
        """Flatten one connection, unless its customer_account_id was seen already."""
        owner = len(self.ids)
        if not self._keep(connection.get("customer_account_id")):
            return
        self.connections.add(connection, self.stats)
        self.connections.owners.append(owner)

        for group, list_keys, indexes in _GROUPS:
            container: Any = connection
            if group is not None:
                container = connection.get(group)
                if type(container) is not dict:
                    if container is not None and container != "":
                        self._flag_connection(owner, group, container)
                    continue
                for key in container.keys() - list_keys:
                    self._extra_connection(owner, f"{group}.{key}", container[key])
            for index in indexes:
                rows = self.lists[index]
                key = _LIST_KEYS[index]
                raw = container.get(key)
                if type(raw) is list:
                    items: list[Any] | None = raw
                else:
                    items = as_list(key, raw)
                    if items is None:
                        self._flag_connection(owner, ".".join(rows.reader.list_source.path), raw)
                        continue
                if items:
                    rows.add_items(items, owner, self.stats)

    def add_records(self, records: Sequence[Any]) -> None:
        """Flatten one page's connections decoded as records: what :meth:`add` does to each, a list at a time.

        The dedup is per connection, as in :meth:`add`; the rows of each list are then gathered for the whole
        page by calls in C (``map``, ``filter``, ``compress``), since each connection has only one or two items
        in most of its lists.
        """
        kept: list[tuple[Any, ...]] = []
        for record in records:
            values = astuple(record)
            if self._keep(values[0]):
                kept.append(values)
        if not kept:
            return
        owners = range(len(self.ids) - len(kept), len(self.ids))
        self.connections.rows.extend(map(itemgetter(_RECORD_FIELDS), kept))
        self.connections.owners.extend(owners)
        lists = self.lists
        for position, index in _RECORD_TOP:
            lists[index].add_record_lists(list(map(itemgetter(position), kept)), owners)
        for group_position, members in _RECORD_GROUPS:
            groups = list(map(itemgetter(group_position), kept))
            present = list(map(astuple, filter(None, groups)))  # a record is always true, None false
            if present:
                group_owners = list(compress(owners, groups))
                for position, index in members:
                    lists[index].add_record_lists(list(map(itemgetter(position), present)), group_owners)

    def tables(self, snapshot_date: date, account: str) -> dict[str, pa.Table]:
        """The ten Arrow tables of everything added."""
        for rows in self.lists:
            rows.settle()
        common = _Common(
            snapshot_date, pa.array(self.pages, type=pa.int32()), pa.array(self.log_ids, type=pa.string()), account
        )
        ids = pa.array(self.ids, type=pa.int64())
        connections = _build(TABLES["connections"], [self.connections], common, self.stats, ids, None)
        owning = connections.select(["customer_account_id", "customer_code", "source_page", "log_id"])
        owning = owning.combine_chunks()
        out = {"connections": connections}
        by_table: dict[str, list[_Rows]] = {}
        for rows in self.lists:
            by_table.setdefault(rows.reader.table, []).append(rows)
        for name, spec in TABLES.items():
            if spec.is_child:
                out[name] = _build(spec, by_table[name], common, self.stats, ids, owning)
        for name, table in out.items():
            self.stats.rows[name] += table.num_rows
        return out


@dataclass(frozen=True)
class _Common:
    snapshot_date: date
    #: Per connection (in ``ids`` order): its page and log_id.
    source_pages: pa.Array
    log_ids: pa.Array
    account: str


def _build(
    spec: TableSpec,
    parts: list[_Rows],
    common: _Common,
    stats: FlattenStats,
    ids: pa.Array,
    owning: pa.Table | None,
) -> pa.Table:
    """One table from its gathered rows (several parts for addresses), coerced and in schema order.

    ``owning`` holds each connection's customer_account_id, customer_code, source_page and log_id, which a child
    table's rows take from their owner; None for the connections table itself.
    """
    counts = [len(part.rows) for part in parts]
    n = sum(counts)
    invalid: dict[int, dict[str, str]] = {}
    extra: dict[int, dict[str, Any]] = {}
    offset = 0
    for part, count in zip(parts, counts, strict=True):
        for row, flagged in part.invalid.items():
            invalid.setdefault(offset + row, {}).update(flagged)
        for row, unknown in part.extra.items():
            extra[offset + row] = unknown
        offset += count

    # The field columns first: coercing them adds to ``invalid``.
    # Every row tuple is its reader's width by construction; strict=False spares a check per row.
    transposed = [list(zip(*part.rows, strict=False)) for part in parts]
    arrays: dict[str, pa.Array] = {}
    for column in spec.field_columns:
        if spec.is_child or column.name != "customer_account_id":
            values = _column_values(column.name, parts, counts, transposed)
            arrays[column.name], bad = coerce_column(values, column.type)
            for position in bad:
                invalid.setdefault(position, {})[column.name] = original_text(values[position])
            if bad:
                stats.coercion_problems[f"{spec.name}.{column.name}"] += len(bad)

    owners = pa.array(_concat([part.owners for part in parts]), type=pa.int32())
    arrays["account"] = pa.repeat(pa.scalar(common.account, pa.string()), n)
    arrays["snapshot_date"] = pa.repeat(pa.scalar(common.snapshot_date, pa.date32()), n)
    if owning is None:
        arrays["customer_account_id"] = ids
        arrays["source_page"] = common.source_pages
        arrays["log_id"] = common.log_ids
    else:
        # The owning connection's id, code, page and log_id, all in one take.
        owned = owning.take(owners)
        for name in ("customer_account_id", "customer_code", "source_page", "log_id"):
            arrays[name] = owned.column(name)
    arrays["extra"] = _json_column(extra, n)
    arrays["invalid_values"] = _json_column(invalid, n)
    if spec.is_child:
        arrays["ordinal"] = pa.array(_concat([part.ordinals for part in parts]), type=pa.int32())
    if spec.name == "addresses":
        types = [[part.reader.list_source.address_type] * count for part, count in zip(parts, counts, strict=True)]
        arrays["address_type"] = pa.array(_concat(types), type=pa.string())

    schema = arrow_schema(spec.name)
    table = pa.Table.from_arrays([arrays[name] for name in schema.names], schema=schema)
    if len(parts) > 1 and n:
        # Parts are gathered list by list; a stable sort on the owner puts each connection's rows together,
        # in list order (billing, shipping, location) and then by ordinal.
        table = table.take(pc.sort_indices(owners))
    return table


def _concat(chunks: list[list[Any]]) -> list[Any]:
    return chunks[0] if len(chunks) == 1 else [value for chunk in chunks for value in chunk]


def _column_values(
    name: str, parts: list[_Rows], counts: list[int], transposed: list[list[tuple[Any, ...]]]
) -> Sequence[Any]:
    """One column's raw values across the parts; None for a part whose JOOR list lacks the field."""
    chunks: list[Sequence[Any]] = []
    for part, count, columns in zip(parts, counts, transposed, strict=True):
        if name in part.reader.columns and count:
            chunks.append(columns[part.reader.columns.index(name)])
        else:
            chunks.append((None,) * count)
    if len(chunks) == 1:
        return chunks[0]
    return [value for chunk in chunks for value in chunk]


def _json_column(rows: dict[int, dict[str, Any]], n: int) -> pa.Array:
    if not rows:
        return pa.nulls(n, type=pa.string())
    values: list[str | None] = [None] * n
    for row, payload in rows.items():
        values[row] = compact_json(payload)
    return pa.array(values, type=pa.string())


def conflicting_repeats(connections: Iterable[Any], repeated: Collection[int]) -> list[int]:
    """Of the ``repeated`` customer_account_ids, those whose connections (in order, first included) differ.

    A second pass over the pages, taken only when a snapshot has repeats, so the flatten does not have to
    fingerprint every connection it keeps for the rare one that comes back.
    """
    first: dict[int, bytes] = {}
    conflicting: set[int] = set()
    for connection in connections:
        key = account_id_key(connection.get("customer_account_id")) if type(connection) is dict else None
        if key is None or key not in repeated:
            continue
        digest = fingerprint(connection)
        if first.setdefault(key, digest) != digest:
            conflicting.add(key)
    return sorted(conflicting)


def flatten_page(
    connections: Sequence[Item],
    *,
    snapshot_date: date,
    source_page: int,
    log_id: str | None,
    seen_account_ids: set[int] | None = None,
    account: str,
) -> FlatBatch:
    """Flatten one page of canonical connections into the ten tables of the contract.

    ``seen_account_ids`` carries the customer_account_ids of earlier pages so a snapshot is deduplicated
    across pages (the first occurrence wins); it is updated in place. Without it, only this page is deduped.
    """
    return flatten_pages(
        [(connections, source_page, log_id)],
        snapshot_date=snapshot_date,
        seen_account_ids=seen_account_ids,
        account=account,
    )


def flatten_pages(
    pages: Sequence[tuple[Sequence[Item], int, str | None]],
    *,
    snapshot_date: date,
    seen_account_ids: set[int] | None = None,
    account: str,
) -> FlatBatch:
    """Flatten several pages, each ``(connections, source_page, log_id)``, into one set of ten tables.

    The same rows, in the same order, as :func:`flatten_page` page after page and the tables concatenated:
    every row keeps its own page's ``source_page`` and ``log_id``. Fewer, larger Arrow conversions make it
    faster for a run of small pages.
    """
    stats = FlattenStats()
    flattener = _PageFlattener(stats, set() if seen_account_ids is None else seen_account_ids)
    for connections, source_page, log_id in pages:
        flattener.add_page(connections, source_page, log_id)
    return FlatBatch(flattener.tables(snapshot_date, account), stats, flattener.repeated)

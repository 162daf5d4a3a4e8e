"""What the raw pages say each table should hold: the recount that the flatten's audit reconciles against.

It counts connections and the items of their JOOR lists straight from the parsed pages, never from what the
flatten wrote, with the flatten's one dedup key (:func:`~joor_pipeline.flatten.coerce.account_id_key`): an
identical repeat counts once, a repeat that differs counts as a record of its own (and names its id).

Two ways to count, with the same code:

- :func:`raw_recount` reads and parses every page of a landed snapshot (the Dagster asset checks);
- a :class:`RawTally` is fed the pages that a flatten worker has just read and parsed for its own work, and
  the worker sends it home beside its report, so the audit before publishing needs no second pass over the
  raw pages. :func:`merge_tallies` adds the workers' tallies up; where a connection's id repeats (within a
  worker, or across two), it gives None and the audit counts with :func:`raw_recount` instead: repeats are
  rare, and telling an identical repeat from a conflicting one needs the pages again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc

from joor_pipeline.flatten.coerce import account_id_key, fingerprint
from joor_pipeline.flatten.schema import TABLES
from joor_pipeline.joor.parse import as_list
from joor_pipeline.joor.shapes import CONNECTION_LISTS
from joor_pipeline.layout import SnapshotKey
from joor_pipeline.storage.raw import iter_raw_pages

#: Which JOOR list feeds which table (the connections table is fed by the connections themselves).
LIST_TABLE: Final[dict[str, str]] = {
    "warehouses": "warehouses",
    "billing_addresses": "addresses",
    "shipping_addresses": "addresses",
    "customer_locations": "addresses",
    "payment_methods": "payment_methods",
    "shipping_methods": "shipping_methods",
    "price_types": "price_types",
    "doors": "doors",
    "buyers": "buyers",
    "tax_id_numbers": "tax_ids",
    "discounts": "discounts",
}


#: The lists straight on a connection, and those one group down (``billing``, ``shipping``), with their tables:
#: flat tuples for the hot loop (CONNECTION_LISTS has no deeper list).
_TOP_LISTS: Final = tuple((key, LIST_TABLE[key]) for path, key in CONNECTION_LISTS if not path)
_GROUP_LISTS: Final = tuple((path[0], key, LIST_TABLE[key]) for path, key in CONNECTION_LISTS if len(path) == 1)
assert len(_TOP_LISTS) + len(_GROUP_LISTS) == len(CONNECTION_LISTS), "a JOOR list nested deeper than one group"


def _add(counts: dict[str, int], table: str, key: str, value: Any) -> None:
    if type(value) is list:  # the common case, without a call
        counts[table] += len(value)
    elif value is not None:  # missing and null are empty
        items = as_list(key, value)
        counts[table] += 0 if items is None else len(items)


def _count(counts: dict[str, int], connection: dict[str, Any]) -> None:
    """Add one connection and the items of its lists to ``counts``."""
    counts["connections"] += 1
    get = connection.get
    for key, table in _TOP_LISTS:
        value = get(key)
        if type(value) is list:  # the common case inline: this runs for every list of every connection
            counts[table] += len(value)
        elif value is not None:
            _add(counts, table, key, value)
    for group, key, table in _GROUP_LISTS:
        node = get(group)
        if isinstance(node, dict):
            value = node.get(key)
            if type(value) is list:
                counts[table] += len(value)
            elif value is not None:
                _add(counts, table, key, value)


#: The same lists, read by attribute from connections decoded as records (lists of objects, or None).
_RECORD_TOP_LISTS: Final = tuple((attrgetter(key), table) for key, table in _TOP_LISTS)
_RECORD_GROUP_LISTS: Final = tuple(
    (attrgetter(group), tuple((attrgetter(key), table) for g, key, table in _GROUP_LISTS if g == group))
    for group in dict.fromkeys(group for group, _key, _table in _GROUP_LISTS)
)


_record_id: Final = attrgetter("customer_account_id")


def _dict_id(connection: dict[str, Any]) -> Any:
    return connection.get("customer_account_id")


def _count_records(counts: dict[str, int], records: list[Any]) -> None:
    """:func:`_count` of each of ``records`` (connections decoded as records), a list at a time."""
    counts["connections"] += len(records)
    for get, table in _RECORD_TOP_LISTS:
        counts[table] += sum(map(len, filter(None, map(get, records))))
    for get_group, members in _RECORD_GROUP_LISTS:
        groups = list(filter(None, map(get_group, records)))
        for get, table in members:
            counts[table] += sum(map(len, filter(None, map(get, groups))))


@dataclass(frozen=True)
class RawRecount:
    """What the raw pages say the tables should hold."""

    #: Rows per table: every connection once per customer_account_id, plus each connection that repeats an id
    #: with different content (a distinct record the flatten cannot keep), and their list items.
    counts: dict[str, int]
    #: customer_account_ids repeated by connections that differ from the first (sorted): a non-empty list fails
    #: the reconciliation, and names the ids.
    conflicting_ids: list[int]


@dataclass
class RawTally:
    """The first pass of :func:`raw_recount`, fed page by page: counts, the ids seen, and whether one repeated."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    seen: set[int] = field(default_factory=set)
    #: Ids seen again after their first connection.
    repeated: set[int] = field(default_factory=set)

    def add(self, connections: Sequence[Any]) -> None:
        """Count one page's connections (as parsed from the raw page: dicts, or records)."""
        records = bool(connections) and type(connections[0]) is not dict
        raw_id = _record_id if records else _dict_id
        seen = self.seen
        kept = []
        for connection in connections:
            key = account_id_key(raw_id(connection))
            if key is not None:
                if key in seen:
                    self.repeated.add(key)
                    continue
                seen.add(key)
            kept.append(connection)
        if records:
            _count_records(self.counts, kept)
        else:
            for connection in kept:
                _count(self.counts, connection)

    def sent(self) -> SentTally:
        """What a worker sends home: the counts, and its ids as one int64 array (8 bytes each, not a set)."""
        return SentTally(dict(self.counts), pa.array(sorted(self.seen), type=pa.int64()), bool(self.repeated))


@dataclass(frozen=True)
class SentTally:
    """A :class:`RawTally` as it travels from a worker to the parent."""

    counts: dict[str, int]
    seen: pa.Array
    repeated: bool


def merge_tallies(tallies: Sequence[SentTally]) -> RawRecount | None:
    """The recount of a whole snapshot from its workers' tallies; None where an id repeats (see the module)."""
    if any(tally.repeated for tally in tallies):
        return None
    ids = pa.chunked_array([tally.seen for tally in tallies], type=pa.int64())
    if len(pc.unique(ids)) < len(ids):
        return None
    counts = dict.fromkeys(TABLES, 0)
    for tally in tallies:
        for table, rows in tally.counts.items():
            counts[table] += rows
    return RawRecount(counts, [])


def raw_recount(data_dir: Path, snapshot: SnapshotKey) -> RawRecount:
    """Rows each table should hold, counted from the raw pages with the flatten's own dedup key
    (:func:`~joor_pipeline.flatten.coerce.account_id_key`); an identical repeat counts once."""
    tally = RawTally()
    for _entry, connections, _log_id in iter_raw_pages(data_dir, snapshot):
        tally.add(connections)
    counts = tally.counts
    if not tally.repeated:
        return RawRecount(dict(counts), [])
    # Repeats are rare: a second pass compares them with the first, and counts each different version once.
    versions: dict[int, set[bytes]] = {}
    for _entry, connections, _log_id in iter_raw_pages(data_dir, snapshot):
        for connection in connections:
            key = account_id_key(connection.get("customer_account_id"))
            if key in tally.repeated:
                digest = fingerprint(connection)
                seen_versions = versions.setdefault(key, set())
                if seen_versions and digest not in seen_versions:
                    _count(counts, connection)
                seen_versions.add(digest)
    conflicting = sorted(key for key, seen_versions in versions.items() if len(seen_versions) > 1)
    return RawRecount(dict(counts), conflicting)

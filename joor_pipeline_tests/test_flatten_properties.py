"""Property-based checks of the flattener: any payload flattens to the contract, nothing lost, no crash."""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import date
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from joor_pipeline.flatten import TABLES, FlattenStats, arrow_schema, flatten_page, flatten_pages
from joor_pipeline.flatten.coerce import INVALID, account_id_key, coerce_column, coerce_value
from joor_pipeline.flatten.flatten import decode_records, is_record
from joor_pipeline.flatten.recount import RawTally
from joor_pipeline.flatten.runner import flatten_snapshot
from joor_pipeline.flatten.schema import BOOL, FLOAT64, INT64, STRING, TIMESTAMP_UTC
from joor_pipeline.joor.errors import PayloadError
from joor_pipeline.joor.parse import leaf_text, parse_page
from joor_pipeline.layout import DEFAULT_ACCOUNT
from joor_pipeline.quality import published_counts, raw_recount
from joor_pipeline.sandbox.data import generate_connections, load_seed_connection
from joor_pipeline_tests.raw_fixtures import land, snap

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TYPES = [STRING, INT64, FLOAT64, BOOL, TIMESTAMP_UTC]

numeric_text = st.from_regex(r"\s?[+-]?[0-9]{0,20}(\.[0-9]{0,3})?([eE][+-]?[0-9]{1,3})?\s?", fullmatch=True)
plain_ids = st.integers(-(2**64), 2**64).map(str)
spellings = st.sampled_from(
    ["True", "False", "true", "false", "TRUE", "1", "0", "yes", "no", "", " ", "4.0", "-6", "0x1F", "1_0", "nan",
     "inf", "2014-01-30T13:21:43+00:00", "2014-01-30", "2014-01-30T13:21:43Z", "\u0663", "Kraków", "東京"]
)  # fmt: skip
scalars = st.one_of(
    st.none(),
    st.text(max_size=12),
    numeric_text,
    plain_ids,
    spellings,
    st.integers(-(2**65), 2**65),
    st.floats(),
    st.booleans(),
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)


def expected(value: Any) -> Any:
    return None if value is INVALID else value


@SETTINGS
@given(
    arrow_type=st.sampled_from(TYPES),
    values=st.one_of(
        st.lists(scalars, max_size=20),
        st.lists(st.one_of(st.none(), plain_ids, st.just("")), max_size=20),
        st.lists(
            st.one_of(plain_ids, st.sampled_from(["\u0663", "\u00b2", "1_0", "-", "--1", "1-2", "+5", "007", "-0"])),
            max_size=20,
        ),
        st.lists(st.one_of(st.none(), numeric_text), max_size=20),
        st.lists(st.one_of(st.none(), st.integers(-(2**64), 2**64)), max_size=20),
        # Ids as JOOR sends them: native ints mixed with digit strings and empty strings.
        st.lists(st.one_of(st.none(), st.just(""), st.integers(-(2**64), 2**64), plain_ids), max_size=20),
        st.lists(st.one_of(st.none(), st.sampled_from(["True", "False", "true", "false", ""])), max_size=20),
        st.lists(json_values, max_size=5),
    ),
)
def test_column_fast_paths_agree_with_the_reference(arrow_type: pa.DataType, values: list[Any]) -> None:
    array, invalid = coerce_column(values, arrow_type)
    reference = [coerce_value(v, arrow_type) for v in values]
    assert array.type == arrow_type and len(array) == len(values)
    assert invalid == [i for i, r in enumerate(reference) if r is INVALID]
    assert array.to_pylist() == [expected(r) for r in reference]


@SETTINGS
@given(value=st.one_of(st.integers(-(2**65), 2**65), st.floats(), st.booleans()), arrow_type=st.sampled_from(TYPES))
def test_native_values_coerce_like_their_text(value: Any, arrow_type: pa.DataType) -> None:
    native, text = coerce_value(value, arrow_type), coerce_value(leaf_text(value), arrow_type)
    assert native == text or (native is INVALID and text is INVALID)
    assert type(native) is type(text)


# --- whole payloads ---------------------------------------------------------------------------------------

BASES = [load_seed_connection(), *generate_connections(3, seed=9)[1:]]
LIST_PATHS = [source.path for spec in TABLES.values() for source in spec.lists]


class Mutator:
    """Random variants of canonical connections: extra keys, odd leaves, missing fields, lists that are not lists.

    Decisions come from a seeded ``random.Random`` and values from a pool drawn by Hypothesis, which keeps an
    example to a handful of draws instead of one per leaf.
    """

    def __init__(self, seed: int, pool: list[Any], names: list[str]) -> None:
        self.rng = random.Random(seed)
        self.pool = pool
        self.names = names

    def value(self) -> Any:
        return self.rng.choice(self.pool)

    def __call__(self, value: Any, injected: list[tuple[str, str]], table: str = "connections") -> Any:
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for key, child in value.items():
                roll = self.rng.randrange(40)
                child_table = _table_of(table, key)
                if roll == 0:
                    continue  # the field (or group, or list) is missing
                if roll == 1 and child_table != table:
                    out[key] = self.rng.choice(["", None, "oops", {"x": "1"}, 7, self.value()])
                else:
                    out[key] = self(child, injected, child_table)
            if self.rng.randrange(6) == 0:
                key = "zz_" + self.rng.choice(self.names)
                out[key] = self.value()
                injected.append((table, key))
            return out
        if isinstance(value, list):
            return [self(item, injected, table) for item in value]
        if self.rng.randrange(12) == 0:
            return self.value()
        return value


def _table_of(table: str, key: str) -> str:
    for spec in TABLES.values():
        for source in spec.lists:
            if source.key == key:
                return spec.name
    return table


def kept_indexes(connections: list[dict[str, Any]]) -> list[int]:
    """The connections a snapshot keeps: every one without a usable id, and the first of each id."""
    kept, seen = [], set()
    for index, connection in enumerate(connections):
        account_id = coerce_value(connection.get("customer_account_id"), INT64)
        if account_id is INVALID or account_id is None:
            kept.append(index)
        elif account_id not in seen:
            seen.add(account_id)
            kept.append(index)
    return kept


def expected_rows(connections: list[dict[str, Any]]) -> dict[str, int]:
    """Rows per table, from the payload alone: one per kept connection, one per list item."""
    kept = [connections[i] for i in kept_indexes(connections)]
    counts = Counter({"connections": len(kept)})
    for spec in TABLES.values():
        for source in spec.lists:
            for connection in kept:
                container = connection if len(source.path) == 1 else connection.get(source.path[0])
                value = container.get(source.key) if isinstance(container, dict) else None
                counts[spec.name] += len(value) if isinstance(value, list) else int(isinstance(value, dict))
    return {name: counts[name] for name in TABLES}


def check_batch(connections: list[dict[str, Any]], injected: list[list[tuple[str, str]]]) -> None:
    """Flatten and check the contract, the row counts, the stats, and that no injected field was lost."""
    batch = flatten_page(
        connections, snapshot_date=date(2024, 1, 1), account=DEFAULT_ACCOUNT, source_page=7, log_id="log"
    )
    assert batch.stats.rows == expected_rows(connections)
    extra_keys: dict[str, set[str]] = {name: set() for name in TABLES}
    invalid_entries = extra_entries = 0
    for name, table in batch.tables.items():
        assert table.schema.equals(arrow_schema(name)), name
        assert table.num_rows == batch.stats.rows[name]
        table.validate(full=True)
        invalid_column = table["invalid_values"].to_pylist()
        for extra_json in table["extra"].to_pylist():
            if extra_json is not None:
                extra = json.loads(extra_json)
                assert extra and isinstance(extra, dict)
                extra_keys[name].update(extra)
                extra_entries += len(extra)
        for invalid_json in invalid_column:
            if invalid_json is not None:
                invalid = json.loads(invalid_json)
                assert invalid and all(isinstance(text, str) for text in invalid.values())
                invalid_entries += len(invalid)
        for column in TABLES[name].field_columns:
            for value, invalid_json in zip(table[column.name].to_pylist(), invalid_column, strict=True):
                if invalid_json is not None and column.name in json.loads(invalid_json):
                    assert value is None
    assert sum(batch.stats.coercion_problems.values()) == invalid_entries
    assert sum(batch.stats.unknown_fields.values()) == extra_entries
    for index in kept_indexes(connections):
        for table, key in injected[index]:
            keys = extra_keys[table]
            assert key in keys or any(k.endswith("." + key) for k in keys), (table, key)


mutators = st.builds(
    Mutator,
    st.integers(0, 2**32),
    st.lists(json_values, min_size=1, max_size=8),
    st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=3),
)
picks = st.lists(st.sampled_from(range(len(BASES))), max_size=4)


@SETTINGS
@given(mutator=mutators, picks=picks)
def test_mutated_payloads_flatten_to_the_contract(mutator: Mutator, picks: list[int]) -> None:
    injected: list[list[tuple[str, str]]] = [[] for _ in picks]
    connections = [mutator(BASES[i], injected[n]) for n, i in enumerate(picks)]
    check_batch(connections, injected)


@SETTINGS
@given(mutator=mutators, picks=picks)
def test_mutated_json_bodies_parse_and_flatten_or_fail_clearly(mutator: Mutator, picks: list[int]) -> None:
    connections = [mutator(BASES[i], []) for i in picks]
    # The stdlib writes NaN and integers of any size, which a real body might also carry; parsing must cope.
    body = json.dumps({"response": {"code": 0, "log_id": "L"}, "connections": connections}).encode()
    try:
        page = parse_page(body, "json", source="page-00000.json")
    except PayloadError as exc:
        assert "page-00000.json" in str(exc)
        return
    check_batch(page.connections, [[] for _ in page.connections])


@SETTINGS
@given(mutator=mutators, picks=picks)
def test_json_fast_path_flattens_exactly_like_the_canonical_form(mutator: Mutator, picks: list[int]) -> None:
    """The flattener reads JSON as parsed (native leaves) to the same rows and stats as the text-leaf form."""
    connections = [mutator(BASES[i], []) for i in picks]
    body = json.dumps({"response": {"code": 0, "log_id": "L"}, "connections": connections}).encode()
    try:
        canonical = parse_page(body, "json", source="p")
    except PayloadError:
        with pytest.raises(PayloadError):
            parse_page(body, "json", source="p", canonical=False)
        return
    native = parse_page(body, "json", source="p", canonical=False)
    common = {"snapshot_date": date(2024, 1, 1), "source_page": 0, "log_id": "L", "account": DEFAULT_ACCOUNT}
    slow = flatten_page(canonical.connections, **common)
    fast = flatten_page(native.connections, **common)
    assert slow.stats == fast.stats
    for name in TABLES:
        assert fast.tables[name].equals(slow.tables[name]), name


class SameShapes(Mutator):
    """The Mutator's odd leaves and missing fields, but no unknown key and no list or group replaced: the pages
    msgspec decodes into records (the flatten's fast path) rather than declines."""

    def __call__(self, value: Any, injected: list[tuple[str, str]], table: str = "connections") -> Any:
        if isinstance(value, dict):
            out = {}
            for key, child in value.items():
                if self.rng.randrange(40) == 0 and not isinstance(child, list | dict):
                    continue  # a leaf field is missing
                out[key] = self(child, injected, _table_of(table, key))
            return out
        if isinstance(value, list):
            return [self(item, injected, table) for item in value]
        return self.value() if self.rng.randrange(12) == 0 else value


same_shapes = st.builds(
    SameShapes,
    st.integers(0, 2**32),
    st.lists(json_values, min_size=1, max_size=8),
    st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=3),
)


@SETTINGS
@given(mutator=st.one_of(same_shapes, mutators), picks=picks)
def test_records_flatten_and_count_exactly_like_dicts(mutator: Mutator, picks: list[int]) -> None:
    """A JSON page decoded into records (msgspec, the fast path) gives the same response block, the same tables,
    stats and raw tally as the same page parsed into dicts; a page the records cannot take is parsed into
    dicts all the same, and a body the parser refuses is refused either way."""
    connections = [mutator(BASES[i], []) for i in picks]
    # Repeats now and then (BASES is small), and ids spelled as the mutator's odd leaves: the dedup on both paths.
    body = json.dumps({"response": {"code": 0, "log_id": "L"}, "connections": connections}).encode()
    try:
        dicts = parse_page(body, "json", source="p", canonical=False)
    except PayloadError as exc:
        with pytest.raises(PayloadError) as refused:
            parse_page(body, "json", source="p", canonical=False, records=decode_records)
        assert str(refused.value) == str(exc)
        return
    typed = parse_page(body, "json", source="p", canonical=False, records=decode_records)
    assert typed.response == dicts.response
    if isinstance(mutator, SameShapes) and typed.connections:
        assert is_record(typed.connections[0])  # the fast path was taken
    common = {"snapshot_date": date(2024, 1, 1), "source_page": 0, "log_id": "L", "account": DEFAULT_ACCOUNT}
    fast = flatten_page(typed.connections, **common)
    slow = flatten_page(dicts.connections, **common)
    assert fast.stats == slow.stats
    assert fast.repeated_ids == slow.repeated_ids
    for name in TABLES:
        assert fast.tables[name].equals(slow.tables[name]), name
    fast_tally, slow_tally = RawTally(), RawTally()
    fast_tally.add(typed.connections)
    slow_tally.add(dicts.connections)
    assert fast_tally == slow_tally


def test_records_take_only_the_clean_shape() -> None:
    """What makes msgspec decline a page (it is then parsed into dicts): each shape the dict path reads with a rule
    of its own."""
    clean = generate_connections(2, seed=4)

    def body(connections: list[dict[str, Any]]) -> bytes:
        return json.dumps({"response": {"code": 0}, "connections": connections}).encode()

    decoded = decode_records(body(clean))
    assert decoded is not None and all(is_record(c) for c in decoded[1])
    assert decode_records(body([{**clean[0], "zz_new": 1}])) is None  # an unknown field
    variants = {
        "an unknown field in an item": lambda c: c["doors"][0].update(zz_new=1),
        "a list spelled as one object": lambda c: c.update(doors=c["doors"][0]),
        "a list spelled as an empty string": lambda c: c.update(doors=""),
        "an item that is not an object": lambda c: c["doors"].append("oops"),
        "a group that is not an object": lambda c: c.update(billing=[]),
        "a value nested past the recursion limit": lambda c: c.update(customer_name="DEEP"),
    }
    for what, spoil in variants.items():
        connection = json.loads(json.dumps(clean[0]))
        spoil(connection)
        assert decode_records(body([connection]).replace(b'"DEEP"', b"[" * 1500 + b"]" * 1500)) is None, what
    # Lists and groups that are missing or null are no lists at all, as on the dict path.
    connection = json.loads(json.dumps(clean[0]))
    connection.pop("doors")
    connection["billing"] = None
    decoded = decode_records(body([connection]))
    assert decoded is not None and decoded[1][0].doors is None


@SETTINGS
@given(
    mutator=mutators,
    pages=st.lists(picks, min_size=1, max_size=4),
    log_ids=st.lists(st.one_of(st.none(), st.text(max_size=5)), min_size=4, max_size=4),
)
def test_pages_flattened_together_give_the_rows_of_page_after_page(
    mutator: Mutator, pages: list[list[int]], log_ids: list[str | None]
) -> None:
    """flatten_pages (what the storage layer calls on a run of pages) is flatten_page page by page, concatenated:
    the same rows in the same order, each with its own page's source_page and log_id, and the same stats."""
    # Pages repeat connections now and then (BASES is small), so the dedup across pages is exercised too.
    runs = [([mutator(BASES[i], []) for i in picks], 10 + n, log_ids[n]) for n, picks in enumerate(pages)]
    day = date(2024, 1, 1)
    together = flatten_pages(runs, snapshot_date=day, account=DEFAULT_ACCOUNT, seen_account_ids=set())

    seen: set[int] = set()
    one_by_one = [
        flatten_page(
            connections,
            snapshot_date=day,
            account=DEFAULT_ACCOUNT,
            source_page=page,
            log_id=log_id,
            seen_account_ids=seen,
        )
        for connections, page, log_id in runs
    ]
    stats = FlattenStats()
    for batch in one_by_one:
        stats.merge(batch.stats)
    assert together.stats == stats
    for name in TABLES:
        expected = pa.concat_tables(batch.tables[name] for batch in one_by_one)
        assert together.tables[name].equals(expected), name


def test_a_connection_that_is_not_an_object_names_its_own_page_among_several() -> None:
    good = generate_connections(3, seed=9)
    with pytest.raises(PayloadError, match=r"connection #1 is a str, not an object in page 8 \(log_id L8\)"):
        flatten_pages(
            [(good, 7, "L7"), ([good[0], "oops"], 8, "L8")], snapshot_date=date(2024, 1, 1), account=DEFAULT_ACCOUNT
        )


DAY = date(2024, 5, 1)
id_spellings = st.one_of(
    st.none(),
    st.integers(-(2**65), 2**65),
    st.integers(0, 6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.sampled_from(["4", "4.0", " 4 ", "+4", "4.00", "4.5", "04", "-0", "0.0", "", "x", "1e2", "\u0664"]),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(ids=st.lists(id_spellings, min_size=1, max_size=40))
def test_the_raw_recount_and_the_flatten_dedup_with_one_rule(
    tmp_path_factory: pytest.TempPathFactory, ids: list[Any]
) -> None:
    """However an id is spelled ("4.0", " 4 ", 4.0, True, 2**64), the blocking reconciliation and the flatten
    read it alike: identical connections under ids that mean the same number dedupe the same on both sides."""
    data_dir = tmp_path_factory.mktemp("dedup")
    template = generate_connections(1, seed=3)[0]
    connections = []
    for raw_id in ids:
        connection = json.loads(json.dumps(template))
        connection["customer_account_id"] = raw_id
        connections.append(connection)
    land(data_dir, DAY, connections)
    report = flatten_snapshot(data_dir, snap(DAY), workers=1)
    recount = raw_recount(data_dir, snap(DAY))
    assert recount.counts == published_counts(data_dir, snap(DAY))
    keys = [account_id_key(raw) for raw in json.loads(json.dumps(ids))]
    assert report.connections == len({k for k in keys if k is not None}) + keys.count(None)
    # Only the id's spelling differs: the same connection, not a conflicting one.
    assert report.stats.conflicting_duplicates == recount.conflicting_ids == []


@given(value=id_spellings)
def test_the_dedup_key_is_what_the_int64_column_holds(value: Any) -> None:
    coerced = coerce_value(value, INT64)
    assert account_id_key(value) == (None if coerced is INVALID else coerced)

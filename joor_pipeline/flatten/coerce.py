"""Turn JOOR's text leaves into typed values, faithfully, without ever failing a row.

The rules, one per Arrow type of the contract:

* every type: ``None`` and ``""`` are null. That includes strings: JOOR renders an absent value as an empty
  element (``<billing_code />``) or ``""``, and the two formats must give the same table, so an empty string
  never survives as a value. Whitespace-only text is kept in string columns (and null elsewhere).
* int64: ASCII digits with an optional sign, surrounding whitespace ignored (``" 42 "``); a decimal with only
  zeros after the point is the integer (``"4.0"`` -> 4, ``"4.5"`` is invalid); outside int64 is invalid.
* float64: a decimal or exponent number (``"6"``, ``"4.0"``, ``"1e2"``); NaN and infinity are invalid.
* bool: ``true``/``false``, ``1``/``0``, ``yes``/``no`` in any case, surrounding whitespace ignored.
* timestamp: ISO 8601 (``2014-01-30T13:21:43+00:00``, ``...Z``), converted to UTC; a time without an offset is
  taken as UTC, because every timestamp JOOR documents carries ``+00:00``.
* string: kept verbatim.

Native ``int``/``float``/``bool`` values (a JSON fast path may skip the parser's stringification) give exactly
what their text spelling (:func:`~joor_pipeline.joor.parse.leaf_text`) gives. An object or a list where a
scalar belongs is invalid. A value that cannot be coerced becomes null, and the caller keeps its original text
(:func:`original_text`) in the row's ``invalid_values``.

:func:`coerce_value` is the reference; :func:`coerce_column` does a whole column at once with fast paths for
the common clean cases and must always agree with it (a property test holds it to that).
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from joor_pipeline.joor.parse import MAX_DEPTH, deep_text, leaf_text


class _Invalid(enum.Enum):
    """The type of :data:`INVALID`."""

    INVALID = "INVALID"


#: What :func:`coerce_value` returns for a value it cannot coerce.
INVALID: Final = _Invalid.INVALID

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_INT_TEXT: Final = re.compile(r"([+-]?[0-9]+)(?:\.0*)?", re.ASCII)
_FLOAT_TEXT: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)
_TRUE: Final = frozenset({"true", "1", "yes"})
_FALSE: Final = frozenset({"false", "0", "no"})
#: The spellings JOOR actually sends, looked up before any normalisation.
_BOOL_EXACT: Final[dict[str, bool]] = {"True": True, "False": False, "true": True, "false": False}

_JSON_OPTIONS: Final = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def canonical_value(value: Any, _depth: int = 0) -> Any:
    """``value`` with every scalar leaf spelled as text, as the parser would give it (for JSON dumps).

    An object or list nested past :data:`~joor_pipeline.joor.parse.MAX_DEPTH` is kept whole as one text leaf
    (:func:`~joor_pipeline.joor.parse.deep_text`): a value too deep for the contract is still kept, as text.
    """
    if isinstance(value, dict | list | tuple) and _depth >= MAX_DEPTH:
        return deep_text(value)
    if isinstance(value, dict):
        return {str(k): canonical_value(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [canonical_value(v, _depth + 1) for v in value]
    if value is None or isinstance(value, str | int | float):
        return leaf_text(value)
    return str(value)


def compact_json(value: Any) -> str:
    """Compact JSON with sorted keys and text leaves: the same data always gives the same string."""
    return orjson.dumps(canonical_value(value), option=_JSON_OPTIONS).decode()


def account_id_key(value: Any) -> int | None:
    """A connection's customer_account_id as the one dedup key: exactly what the INT64 column holds, None when
    missing or invalid (``"4.0"`` and ``4`` are both 4; ``True``, ``"4.5"`` and ids outside int64 are None).

    The flatten dedups on it and the raw recount (``quality.raw_counts``) counts with it, so they cannot differ.
    """
    key = _to_int(value) if value is not None else None
    return None if key is INVALID else key


def fingerprint(connection: dict[str, Any]) -> bytes:
    """A digest of a whole connection: equal for identical repeats, different for two connections that differ.

    The id is taken as its dedup key, so ``"4.0"`` and ``4`` with the same content are one connection.
    """
    connection = {**connection, "customer_account_id": account_id_key(connection.get("customer_account_id"))}
    try:
        data = orjson.dumps(connection, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # an integer outside 64 bits, a value nested past orjson's limit
        data = compact_json(connection).encode()
    return hashlib.blake2b(data, digest_size=16).digest()


def original_text(value: Any) -> str:
    """The text of a value as JOOR sent it, for ``invalid_values``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list | tuple):
        return compact_json(value)
    return str(canonical_value(value))


def _scalar_text(value: Any) -> str | None:
    """The text of a scalar leaf; None for objects and lists, which no column can hold."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return leaf_text(value)
    return None


def _to_string(value: Any) -> Any:
    text = _scalar_text(value)
    if text is None:
        return INVALID
    return text or None


def _to_int(value: Any) -> Any:
    if type(value) is int:
        return value if _INT64_MIN <= value <= _INT64_MAX else INVALID
    text = _scalar_text(value)
    if text is None:
        return INVALID
    text = text.strip()
    if not text:
        return None
    match = _INT_TEXT.fullmatch(text)
    if match is None:
        return INVALID
    number = int(match.group(1))
    return number if _INT64_MIN <= number <= _INT64_MAX else INVALID


def _to_float(value: Any) -> Any:
    text = _scalar_text(value)
    if text is None:
        return INVALID
    text = text.strip()
    if not text:
        return None
    if _FLOAT_TEXT.fullmatch(text) is None:
        return INVALID
    number = float(text)
    return number if math.isfinite(number) else INVALID


def _to_bool(value: Any) -> Any:
    text = _scalar_text(value)
    if text is None:
        return INVALID
    exact = _BOOL_EXACT.get(text)
    if exact is not None:
        return exact
    folded = text.strip().lower()
    if not folded:
        return None
    if folded in _TRUE:
        return True
    if folded in _FALSE:
        return False
    return INVALID


def _to_timestamp(value: Any) -> Any:
    text = _scalar_text(value)
    if text is None:
        return INVALID
    text = text.strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return INVALID
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        # An offset that pushes a time at the edge of year 1 or 9999 out of range.
        return INVALID


def _reference(arrow_type: pa.DataType) -> Any:
    if pa.types.is_string(arrow_type):
        return _to_string
    if pa.types.is_int64(arrow_type):
        return _to_int
    if pa.types.is_float64(arrow_type):
        return _to_float
    if pa.types.is_boolean(arrow_type):
        return _to_bool
    if pa.types.is_timestamp(arrow_type):
        return _to_timestamp
    raise TypeError(f"no coercion to {arrow_type}")


def coerce_value(value: Any, arrow_type: pa.DataType) -> Any:
    """One JOOR leaf as a Python value of ``arrow_type``, None for null, or :data:`INVALID`."""
    if value is None:
        return None
    return _reference(arrow_type)(value)


def coerce_column(values: Sequence[Any], arrow_type: pa.DataType) -> tuple[pa.Array, list[int]]:
    """A whole column as an Arrow array of ``arrow_type``, plus the positions of the invalid values.

    Invalid positions are null in the array. A fast path handles a column of clean values (all text, or all
    native numbers) in one pass; anything unusual sends the column to :func:`coerce_value`, value by value.
    """
    fast = _FAST_PATHS.get(arrow_type.id)
    array = None if fast is None else fast(values)
    if array is not None:
        return array, []
    convert = _reference(arrow_type)
    out = [None if v is None else convert(v) for v in values]
    invalid = [position for position, converted in enumerate(out) if converted is INVALID]
    for position in invalid:
        out[position] = None
    return pa.array(out, type=arrow_type), invalid


_TEXT_TYPES: Final = frozenset({str, type(None)})
_INT_TYPES: Final = frozenset({int, type(None)})
_NUMBER_TYPES: Final = frozenset({int, float, type(None)})
_MIXED_INT_TYPES: Final = frozenset({int, str, type(None)})
#: Deletes every character a plain decimal or exponent number can hold; what is left disqualifies a fast path.
_NUMBER_CHARS: Final = str.maketrans("", "", "0123456789+-.eE")


def _fast_strings(values: Sequence[Any]) -> pa.Array | None:
    # Arrow converts text and None as is, and refuses a number, a boolean, an object or a list (the parsers
    # give no other types; bytes, which Arrow would take, never come out of them).
    try:
        array = pa.array(values, type=pa.string())
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        return None
    if "" in values:
        return _empty_as_null(array)
    return array


def _empty_as_null(array: pa.Array) -> pa.Array:
    """A string array with each ``""`` made null."""
    return pc.if_else(pc.equal(array, ""), pa.scalar(None, pa.string()), array)


def _fast_ints(values: Sequence[Any]) -> pa.Array | None:
    """Plain decimal text (ids) or native ints, checked once over the whole column."""
    types = set(map(type, values))
    if types <= _INT_TYPES:
        if all(_INT64_MIN <= v <= _INT64_MAX for v in values if v is not None):
            return pa.array(values, type=pa.int64())
        return None
    if not types <= _TEXT_TYPES:
        return _mixed_ints(values) if types <= _MIXED_INT_TYPES else None
    texts = [v for v in values if v]
    if not texts:
        return pa.nulls(len(values), type=pa.int64())
    joined = "".join(texts).replace("-", "")
    # Arrow's cast would also read "0x1F"; restricted to ASCII digits and "-" (at most 18 digits, so no
    # overflow) it reads exactly what the reference reads, and a misplaced "-" raises, which sends the column
    # to the reference.
    if not (joined.isascii() and joined.isdigit()) or max(map(len, texts)) > 18:
        return None
    try:
        return pa.array([v or None for v in values], type=pa.string()).cast(pa.int64())
    except pa.ArrowInvalid:
        return None


def _mixed_ints(values: Sequence[Any]) -> pa.Array | None:
    """Native ints mixed with plain decimal text (JOOR sends some ids either way), in one pass."""
    out: list[int | None] = []
    append = out.append
    for v in values:
        if type(v) is str:
            if not v:
                append(None)
                continue
            digits = v[1:] if v[0] == "-" else v
            # The same restriction as the all-text path: what int() reads here, the reference reads alike.
            if len(digits) > 18 or not (digits.isascii() and digits.isdigit()):
                return None
            append(int(v))
        elif v is None or _INT64_MIN <= v <= _INT64_MAX:
            append(v)
        else:
            return None
    return pa.array(out, type=pa.int64())


def _fast_floats(values: Sequence[Any]) -> pa.Array | None:
    """Decimal text or native numbers, then one finiteness check."""
    types = set(map(type, values))
    if types <= _TEXT_TYPES:
        texts = [v for v in values if v]
        # Text made only of digits, signs, points and exponents is read by float() exactly as the reference's
        # pattern reads it, or rejected (ValueError); letters (nan, inf), "_" and spaces go to the reference.
        if "".join(texts).translate(_NUMBER_CHARS):
            return None
    elif not types <= _NUMBER_TYPES:
        return None
    try:
        out = [None if v is None or v == "" else float(v) for v in values]
    except (ValueError, OverflowError):
        return None
    if not all(math.isfinite(v) for v in out if v is not None):
        return None
    return pa.array(out, type=pa.float64())


def _fast_bools(values: Sequence[Any]) -> pa.Array | None:
    get = _BOOL_EXACT.get
    out: list[Any] = []
    for v in values:
        if v is None or v is True or v is False:
            out.append(v)
            continue
        if type(v) is not str:
            return None
        b = get(v)
        if b is None:
            if v:
                return None
            out.append(None)
        else:
            out.append(b)
    return pa.array(out, type=pa.bool_())


_FAST_PATHS: Final[dict[int, Callable[[Sequence[Any]], pa.Array | None]]] = {
    pa.string().id: _fast_strings,
    pa.int64().id: _fast_ints,
    pa.float64().id: _fast_floats,
    pa.bool_().id: _fast_bools,
}

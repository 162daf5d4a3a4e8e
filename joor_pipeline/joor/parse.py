"""Parse JOOR response bodies (JSON or XML) into one canonical Python structure.

The canonical connection is the JSON example's shape (``billing`` / ``shipping`` groups, every list a Python
list) with every leaf as *text*, exactly as the XML rendering would spell it: ``True``/``False`` for booleans,
``str(n)`` for integers, ``repr(x)`` for floats, an empty element as ``""``. Typing is the flattener's job, done
once for both formats, so JSON and XML of the same data parse to identical structures and flatten to identical
tables. The raw bytes are landed untouched elsewhere; this is a view on them, not a replacement.

XML is parsed by the standard library's C ElementTree over expat, the whole body fed at once, after a scan of
its prolog (:func:`refuse_doctype`): a document type declaration is refused before expat sees a byte of the
body. JOOR sends none, and every entity attack (billion laughs, quadratic blowup, external entities reading
files or URLs) needs entities declared in one. The prolog scan reads only what may come before the root element
(a BOM, the XML declaration, comments, processing instructions, whitespace), and refuses bodies it cannot read
that way: UTF-16 or UTF-32, or an XML declaration naming an encoding that is not ASCII-compatible. The tree
builder also refuses a declaration should one ever get past the scan, and expat at least
:data:`MIN_EXPAT_VERSION` (checked at import) caps entity amplification on its own. ElementTree never fetches
anything itself. That is the protection ``defusedxml`` gives with ``forbid_dtd=True`` over the same expat, at
about four times the speed (defusedxml hooks expat through the pure-Python parser and tree builder, which cost
twice our whole JSON flatten of a page).

No value is walked deeper than :data:`MAX_DEPTH`: an XML body nested deeper is refused, a deeper JSON value is
kept as one text leaf. JSON integers are kept exact at any size (see :func:`_load_json`).
"""

from __future__ import annotations

import json
import pyexpat
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final
from xml.etree.ElementTree import Element, ParseError, TreeBuilder, XMLParser

import orjson

from joor_pipeline.joor.errors import PayloadError, quoted
from joor_pipeline.joor.shapes import GROUP_TAGS, LIST_ITEM_TAGS

Leaf = str | None
Canonical = dict[str, Any]

#: How deep a value is walked. JOOR's own nest five deep (connection, group, list, item, field). A JSON value
#: deeper than this is kept whole as text (:func:`deep_text`), for the flattener to record; an XML body deeper
#: than this is refused. Either way no recursive walk can exhaust Python's stack.
MAX_DEPTH: Final = 64


class DoctypeForbidden(ValueError):
    """An XML body declared a document type, which JOOR never does and entities need."""


class _NoDoctypeTreeBuilder(TreeBuilder):
    """The C tree builder, refusing a document type declaration should one get past :func:`refuse_doctype`
    (defence in depth: expat calls this once it has read the whole declaration, internal subset included)."""

    def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
        raise DoctypeForbidden(f"document type declaration <!DOCTYPE {name} ...> refused")


#: Expat 2.4.0 brought its own limit on entity amplification (billion laughs); the releases up to 2.4.5 (early
#: 2022) closed the overflows reported right after it.
MIN_EXPAT_VERSION: Final = (2, 4, 5)
if pyexpat.version_info < MIN_EXPAT_VERSION:  # pragma: no cover - depends on how Python was built
    raise ImportError(
        f"joor_pipeline needs expat {'.'.join(map(str, MIN_EXPAT_VERSION))} or later to parse XML safely; this "
        f"Python links {pyexpat.EXPAT_VERSION}"
    )

#: What may precede the root element: a UTF-8 BOM, then whitespace, the XML declaration, comments and
#: processing instructions in any order. Always matches (possibly nothing); never backtracks, as every
#: alternative starts differently.
_PROLOG: Final = re.compile(rb"(?:\xef\xbb\xbf)?(?:[ \t\r\n]+|<\?.*?\?>|<!--.*?-->)*", re.DOTALL)
_DECLARED_ENCODING: Final = re.compile(rb"""\A(?:\xef\xbb\xbf)?<\?xml[^>]*?encoding\s*=\s*["']([A-Za-z0-9._-]+)""")
#: Encodings whose bytes spell ``<!DOCTYPE`` as ASCII does, so the prolog scan reads them right.
_ASCII_COMPATIBLE: Final = frozenset({"utf-8", "utf8", "us-ascii", "ascii", "iso-8859-1", "latin-1", "latin1"})


def refuse_doctype(body: bytes) -> None:
    """Raise DoctypeForbidden when ``body`` declares a document type (or may, in a form the scan cannot read).

    Reads the prolog only: whatever follows it must be the root element's ``<``, not ``<!``. Bodies in UTF-16
    or UTF-32 (a BOM or NUL bytes up front), or declaring an encoding outside :data:`_ASCII_COMPATIBLE`, are
    refused too: there the bytes of a declaration would not be the ASCII the scan looks for.
    """
    head = body[:4]
    if b"\x00" in head or head.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DoctypeForbidden("XML that is not UTF-8 (UTF-16 or UTF-32) refused")
    declared = _DECLARED_ENCODING.match(body)
    if declared is not None and declared.group(1).decode().lower() not in _ASCII_COMPATIBLE:
        raise DoctypeForbidden(f"XML in encoding {declared.group(1).decode()!r} refused (UTF-8 expected)")
    prolog = _PROLOG.match(body)
    end = prolog.end() if prolog is not None else 0
    if body.startswith(b"<!", end):
        raise DoctypeForbidden(f"document type declaration {body[end : end + 40]!r} refused")


def xml_fromstring(body: bytes) -> Element:
    """The root element of an XML body; ParseError when it is not XML, DoctypeForbidden when it declares a DTD."""
    refuse_doctype(body)
    # S314 warns of the stdlib parser on untrusted input: the prolog scan above is the answer (module doc).
    parser = XMLParser(target=_NoDoctypeTreeBuilder())  # noqa: S314
    parser.feed(body)
    root: Element = parser.close()
    return root


@dataclass(frozen=True)
class ResponseBlock:
    """JOOR's ``response`` block: status code, paging cursor and the support ``log_id``."""

    code: int
    comment: str = ""
    start_from: int | None = None
    next_start: int | None = None
    count: int | None = None
    log_id: str | None = None


@dataclass(frozen=True)
class Page:
    """One parsed response: its ``response`` block and its connections in canonical form."""

    response: ResponseBlock
    connections: list[Canonical] = field(default_factory=list)


def leaf_text(value: Any) -> Leaf:
    """The XML spelling of a JSON scalar."""
    if isinstance(value, str) or value is None:
        return value
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    raise TypeError(type(value).__name__)


def as_list(key: str, value: Any) -> list[Any] | None:
    """A JOOR list field's value as a list, however JSON spelled it; None when it is no list at all.

    Missing, null and ``""`` are empty; a lone object is a list of one; the XML shape rendered as JSON
    (``{"doors": {"door": [...]}}``) is unwrapped. The parser and the flattener share this one reading.
    """
    if type(value) is list:
        return value
    if value is None or value == "":
        return []
    if isinstance(value, dict):
        item = LIST_ITEM_TAGS.get(key)
        if item is not None and value.keys() == {item}:
            inner = value[item]
            if isinstance(inner, list):
                return inner
            return [inner] if isinstance(inner, dict) else None
        return [value]
    return None


def deep_text(value: Any) -> str:
    """Compact JSON of any value with sorted keys and text leaves, however deeply nested: written without
    recursion, for values past :data:`MAX_DEPTH` (where a recursive walk could exhaust Python's stack)."""
    out: list[str] = []
    # The stack holds values still to write and, as 1-tuples, punctuation (a parsed body holds no tuples).
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if type(item) is tuple:
            out.append(item[0])
        elif isinstance(item, dict):
            entries = sorted((str(k), v) for k, v in item.items())
            stack.append(("}",))
            for position in range(len(entries) - 1, -1, -1):
                key, child = entries[position]
                stack.append(child)
                stack.append((("," if position else "") + orjson.dumps(key).decode() + ":",))
            out.append("{")
        elif isinstance(item, list):
            stack.append(("]",))
            for position in range(len(item) - 1, -1, -1):
                stack.append(item[position])
                if position:
                    stack.append((",",))
            out.append("[")
        else:
            text = leaf_text(item) if item is None or isinstance(item, str | int | float) else str(item)
            out.append("null" if text is None else orjson.dumps(text).decode())
    return "".join(out)


def _canonical_json(value: Any, key: str, depth: int = 0) -> Any:
    if depth >= MAX_DEPTH and isinstance(value, dict | list):
        return deep_text(value)
    if key in LIST_ITEM_TAGS:
        items = as_list(key, value)
        if items is not None:
            return [_canonical_json(item, LIST_ITEM_TAGS[key], depth + 1) for item in items]
        # Not list-shaped: kept as it came, for the flattener to record as an invalid value.
    if isinstance(value, dict):
        return {k: _canonical_json(v, k, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical_json(v, key, depth + 1) for v in value]
    if key in GROUP_TAGS and value in (None, ""):
        return {}
    return leaf_text(value)


class _TooDeep(Exception):
    """An XML element nested deeper than :data:`MAX_DEPTH`."""


def _element_value(el: Element, depth: int = 0) -> Any:
    """The canonical value of an element: a list for JOOR's lists, an object for groups and items, else text."""
    if depth >= MAX_DEPTH:
        raise _TooDeep(el.tag)
    depth += 1
    tag = el.tag
    if tag in LIST_ITEM_TAGS:
        return [_element_value(child, depth) for child in el]
    if not len(el):
        return _childless_value(el)
    children = list(el)
    if tag not in GROUP_TAGS and _looks_like_list(tag, children):
        return [_element_value(child, depth) for child in children]
    out: dict[str, Any] = {}
    repeated: set[str] = set()
    for child in children:
        key = child.tag
        # Most children are leaves: read them inline, as _childless_value does, without a call per leaf.
        if len(child):
            value = _element_value(child, depth)
        elif key in LIST_ITEM_TAGS:
            value = []
        elif key in GROUP_TAGS:
            value = {}
        else:
            value = child.text or ""
        if key not in out:
            out[key] = value
            continue
        # An unknown element repeated inside an object: keep every occurrence.
        if key not in repeated:
            out[key] = [out[key]]
            repeated.add(key)
        out[key].append(value)
    return out


def _childless_value(el: Element) -> Any:
    """What :func:`_element_value` gives an element without children."""
    tag = el.tag
    if tag in LIST_ITEM_TAGS:
        return []
    if tag in GROUP_TAGS:
        return {}
    return el.text or ""


def _looks_like_list(tag: str, children: list[Element]) -> bool:
    """An unknown wrapper whose children all share the singular of its name is a list."""
    first = children[0].tag
    if any(child.tag != first for child in children):
        return False
    return len(children) > 1 or tag in (first + "s", first + "es") or (tag.endswith("ies") and first == tag[:-3] + "y")


#: The response block's integers (code, cursor, count) are 64-bit: anything larger is no JOOR answer, and would
#: overflow where it is used (``range``, ``len``), far from the page that sent it.
_RESPONSE_INT_LIMIT: Final = 2**63


def _as_int(value: Any, name: str, source: str, log_id: str | None) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        shown = quoted(deep_text(value) if isinstance(value, dict | list) else str(value))
        raise PayloadError(f"response.{name} is not an integer: {shown}", source=source, log_id=log_id)
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise PayloadError(
            f"response.{name} is not an integer: {quoted(str(value))}", source=source, log_id=log_id
        ) from None
    if not -_RESPONSE_INT_LIMIT <= number < _RESPONSE_INT_LIMIT:
        text = str(number)
        shown = text if len(text) <= 40 else f"{text[:20]}... ({len(text.lstrip('-')):,} digits)"
        raise PayloadError(f"response.{name} {shown} is out of range (beyond 64 bits)", source=source, log_id=log_id)
    return number


def _response_block(raw: Any, source: str) -> ResponseBlock:
    if not isinstance(raw, dict):
        raise PayloadError("envelope has no 'response' block", source=source)
    log_id = raw.get("log_id")
    log_id = None if log_id in (None, "") else str(log_id)
    code = _as_int(raw.get("code"), "code", source, log_id)
    if code is None:
        raise PayloadError("response.code is missing", source=source, log_id=log_id)
    comment = raw.get("comment")
    return ResponseBlock(
        code=code,
        comment="" if comment is None else str(comment),
        start_from=_as_int(raw.get("start_from"), "start_from", source, log_id),
        next_start=_as_int(raw.get("next_start"), "next_start", source, log_id),
        count=_as_int(raw.get("count"), "count", source, log_id),
        log_id=log_id,
    )


def _connections(items: Any, response: ResponseBlock, source: str) -> list[Canonical]:
    if not isinstance(items, list):
        raise PayloadError("'connections' is not a list", source=source, log_id=response.log_id)
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise PayloadError(
                f"connection #{index} is a {type(item).__name__}, not an object",
                source=source,
                log_id=response.log_id,
            )
    return items


#: Every digit as "0", every other byte as " ": a body holds a run of 19 digits, the shortest integer orjson
#: may read as a float (it reads integers between -2**63 and 2**64 - 1 exactly, and any other as the nearest
#: float), when its translation holds :data:`_LONG_RUN`. A translate and a find cost a few percent of the
#: parse; a regular expression for the same run cost four times the parse.
_DIGITS_AS_ZERO: Final = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_LONG_RUN: Final = b"0" * 19


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _load_json(body: bytes, source: str) -> Any:
    """The parsed body, every integer exact.

    orjson is fast but reads an integer outside 64 bits as a float (``1.2345678901234568e+29``), losing the
    digits JOOR sent. A body with a run of 19 digits anywhere (rare: ids are far shorter) is parsed by the
    standard library's json instead, which keeps every integer exact and rejects what orjson rejects: NaN and
    Infinity, and nesting past its recursion limit.
    """
    if _LONG_RUN not in body.translate(_DIGITS_AS_ZERO):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise PayloadError(f"invalid JSON ({exc})", source=source) from None
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise PayloadError("invalid JSON (nested too deeply)", source=source) from None
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, an integer past Python's digit limit
        raise PayloadError(f"invalid JSON ({exc})", source=source) from None


#: Decodes a clean page into the response block and records, or declines (None): the flatten's fast path.
RecordDecoder = Callable[[bytes], "tuple[Any, list[Any]] | None"]


def parse_json(
    body: bytes, *, source: str = "<response>", canonical: bool = True, records: RecordDecoder | None = None
) -> Page:
    """Parse a JSON envelope, with or without an outer ``connections`` wrapper.

    ``canonical=False`` leaves each connection as JSON gave it (native numbers and booleans, lists in any of
    the spellings :func:`as_list` reads): the flattener reads both forms to identical rows, and skipping the
    walk that spells every leaf as text makes a large snapshot flatten several times faster.

    ``records`` (with ``canonical=False``) first tries the flatten's typed decoder
    (:func:`~joor_pipeline.flatten.flatten.decode_records`): a clean page comes back as records, anything else
    (including every body msgspec refuses) is parsed here as usual. msgspec reads every value as this function
    does: integers exact at any size up to Python's digit limit (as the standard library's json, and as orjson
    below 19 digits), floats correctly rounded, and it refuses what both refuse (property-tested).
    """
    if records is not None and not canonical:
        decoded = records(body)
        if decoded is not None:
            raw_response, connections = decoded
            return Page(_response_block(raw_response, source), connections)
    doc = _load_json(body, source)
    if not isinstance(doc, dict):
        raise PayloadError(f"top level is a {type(doc).__name__}, not an object", source=source)
    if "response" not in doc and isinstance(doc.get("connections"), dict):
        doc = doc["connections"]
    response = _response_block(doc.get("response"), source)
    items = as_list("connections", doc.get("connections"))
    if items is None:
        kind = type(doc.get("connections")).__name__
        raise PayloadError(f"field 'connections' should be a list, got {kind}", source=source, log_id=response.log_id)
    connections = _connections(items, response, source)
    if canonical:
        connections = [_canonical_json(connection, "connection") for connection in connections]
    return Page(response, connections)


def parse_xml(body: bytes, *, source: str = "<response>") -> Page:
    """Parse an XML envelope (``<connections><response/><connections>...</connections></connections>``)."""
    try:
        root = xml_fromstring(body)
    except (ParseError, DoctypeForbidden) as exc:
        raise PayloadError(f"invalid XML ({type(exc).__name__}: {exc})", source=source) from None
    if root.tag != "connections":
        raise PayloadError(f"root element is <{root.tag}>, expected <connections>", source=source)
    try:
        response_el = root.find("response")
        response = _response_block(_element_value(response_el) if response_el is not None else None, source)
        inner = root.find("connections")
        connections = [] if inner is None else [_element_value(child) for child in inner]
    except _TooDeep as exc:
        raise PayloadError(f"XML nested deeper than {MAX_DEPTH} levels (at <{exc}>)", source=source) from None
    return Page(response, _connections(connections, response, source))


def parse_page(
    body: bytes,
    fmt: str,
    *,
    source: str = "<response>",
    canonical: bool = True,
    records: RecordDecoder | None = None,
) -> Page:
    """Parse one response body of the given format (``json`` or ``xml``); see :func:`parse_json` for ``canonical``
    and ``records`` (JSON only)."""
    if fmt == "json":
        return parse_json(body, source=source, canonical=canonical, records=records)
    if fmt == "xml":
        return parse_xml(body, source=source)
    raise ValueError(f"unknown format {fmt!r}; expected 'json' or 'xml'")

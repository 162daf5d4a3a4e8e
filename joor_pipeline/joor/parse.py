"""Parse JOOR response bodies (JSON or XML) into one canonical Python structure.

The canonical connection is the JSON example's shape (``billing`` / ``shipping`` groups, every list a Python
list) with every leaf as *text*, exactly as the XML rendering would spell it: ``True``/``False`` for booleans,
``str(n)`` for integers, ``repr(x)`` for floats, an empty element as ``""``. Typing is the flattener's job, done
once for both formats, so JSON and XML of the same data parse to identical structures and flatten to identical
tables. The raw bytes are landed untouched elsewhere; this is a view on them, not a replacement.

XML is parsed by the standard library's C ElementTree over expat, the whole body fed at once, with any
document type declaration refused the moment expat meets it: JOOR sends none, and every entity attack (billion
laughs, quadratic blowup, external entities reading files or URLs) needs entities declared in one.
ElementTree never fetches anything itself. That is the protection ``defusedxml`` gives with
``forbid_dtd=True`` over the same expat, at about four times the speed (defusedxml hooks expat through the
pure-Python parser and tree builder, which cost twice our whole JSON flatten of a page).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from xml.etree.ElementTree import Element, ParseError, TreeBuilder, XMLParser

import orjson

from joor_pipeline.joor.errors import PayloadError
from joor_pipeline.joor.shapes import GROUP_TAGS, LIST_ITEM_TAGS

Leaf = str | None
Canonical = dict[str, Any]


class DoctypeForbidden(ValueError):
    """An XML body declared a document type, which JOOR never does and entities need."""


class _NoDoctypeTreeBuilder(TreeBuilder):
    """The C tree builder, refusing a document type declaration the moment expat meets one (before any entity
    of its internal subset is declared)."""

    def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
        raise DoctypeForbidden(f"document type declaration <!DOCTYPE {name} ...> refused")


def xml_fromstring(body: bytes) -> Element:
    """The root element of an XML body; ParseError when it is not XML, DoctypeForbidden when it declares a DTD."""
    # S314 warns of the stdlib parser on untrusted input: the doctype refusal above is the answer (module doc).
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


def _canonical_json(value: Any, key: str) -> Any:
    if key in LIST_ITEM_TAGS:
        items = as_list(key, value)
        if items is not None:
            return [_canonical_json(item, LIST_ITEM_TAGS[key]) for item in items]
        # Not list-shaped: kept as it came, for the flattener to record as an invalid value.
    if isinstance(value, dict):
        return {k: _canonical_json(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical_json(v, key) for v in value]
    if key in GROUP_TAGS and value in (None, ""):
        return {}
    return leaf_text(value)


def _element_value(el: Element) -> Any:
    """The canonical value of an element: a list for JOOR's lists, an object for groups and items, else text."""
    tag = el.tag
    if tag in LIST_ITEM_TAGS:
        return [_element_value(child) for child in el]
    if not len(el):
        return _childless_value(el)
    children = list(el)
    if tag not in GROUP_TAGS and _looks_like_list(tag, children):
        return [_element_value(child) for child in children]
    out: dict[str, Any] = {}
    repeated: set[str] = set()
    for child in children:
        key = child.tag
        # Most children are leaves: read them inline, as _childless_value does, without a call per leaf.
        if len(child):
            value = _element_value(child)
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


def _as_int(value: Any, name: str, source: str, log_id: str | None) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise PayloadError(f"response.{name} is not an integer: {value!r}", source=source, log_id=log_id)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise PayloadError(f"response.{name} is not an integer: {value!r}", source=source, log_id=log_id) from None


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


def parse_json(body: bytes, *, source: str = "<response>", canonical: bool = True) -> Page:
    """Parse a JSON envelope, with or without an outer ``connections`` wrapper.

    ``canonical=False`` leaves each connection as JSON gave it (native numbers and booleans, lists in any of
    the spellings :func:`as_list` reads): the flattener reads both forms to identical rows, and skipping the
    walk that spells every leaf as text makes a large snapshot flatten several times faster.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"invalid JSON ({exc})", source=source) from None
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
    response_el = root.find("response")
    response = _response_block(_element_value(response_el) if response_el is not None else None, source)
    inner = root.find("connections")
    connections = [] if inner is None else [_element_value(child) for child in inner]
    return Page(response, _connections(connections, response, source))


def parse_page(body: bytes, fmt: str, *, source: str = "<response>", canonical: bool = True) -> Page:
    """Parse one response body of the given format (``json`` or ``xml``); see :func:`parse_json` for ``canonical``."""
    if fmt == "json":
        return parse_json(body, source=source, canonical=canonical)
    if fmt == "xml":
        return parse_xml(body, source=source)
    raise ValueError(f"unknown format {fmt!r}; expected 'json' or 'xml'")

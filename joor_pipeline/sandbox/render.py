"""Render JOOR envelopes as JSON or XML, carrying the same data in both.

Both renderers take the same document (``{"response": {...}, "connections": [...]}``). The XML text of every
leaf is ``leaf_text`` of the JSON value, so a client that reads each JSON scalar as its XML spelling gets
identical structures from either format. Lists become a wrapper element with singular children, named by
``LIST_ITEM_TAGS``; dicts become group elements; ``""`` becomes a self-closing element.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final
from xml.sax.saxutils import escape

from joor_pipeline.joor.parse import leaf_text
from joor_pipeline.joor.shapes import JSON_MEDIA_TYPE, LIST_ITEM_TAGS, XML_MEDIA_TYPE

JSON_CONTENT_TYPE: Final = f"{JSON_MEDIA_TYPE}; charset=utf-8"
XML_CONTENT_TYPE: Final = f"{XML_MEDIA_TYPE}; charset=utf-8"
XML_DECLARATION: Final = '<?xml version="1.0" encoding="UTF-8"?>\n'


def render_json(document: Mapping[str, Any]) -> bytes:
    """UTF-8 JSON, non-ASCII kept as is (JOOR does not escape it)."""
    return json.dumps(document, ensure_ascii=False, allow_nan=False).encode("utf-8")


def render_xml(document: Mapping[str, Any], root: str = "connections") -> bytes:
    """UTF-8 XML with ``root`` as the outer element."""
    parts: list[str] = [XML_DECLARATION, f"<{root}>"]
    _children(document, parts)
    parts.append(f"</{root}>")
    return "".join(parts).encode("utf-8")


def render(document: Mapping[str, Any], fmt: str) -> tuple[bytes, str]:
    """Body and Content-Type for ``fmt`` (``"json"`` or ``"xml"``)."""
    if fmt == "xml":
        return render_xml(document), XML_CONTENT_TYPE
    return render_json(document), JSON_CONTENT_TYPE


def _children(mapping: Mapping[str, Any], parts: list[str]) -> None:
    for tag, value in mapping.items():
        _element(tag, value, parts)


def _element(tag: str, value: Any, parts: list[str]) -> None:
    if isinstance(value, list):
        if not value:
            parts.append(f"<{tag} />")
            return
        item_tag = LIST_ITEM_TAGS[tag]
        parts.append(f"<{tag}>")
        for item in value:
            _element(item_tag, item, parts)
        parts.append(f"</{tag}>")
    elif isinstance(value, Mapping):
        if not value:
            parts.append(f"<{tag} />")
            return
        parts.append(f"<{tag}>")
        _children(value, parts)
        parts.append(f"</{tag}>")
    else:
        text = leaf_text(value) or ""
        parts.append(f"<{tag}>{escape(text)}</{tag}>" if text else f"<{tag} />")

"""Parsing JOOR envelopes: the seed examples, shape rules, and clear errors for bodies that are not JOOR's."""

from __future__ import annotations

from typing import Any
from xml.etree.ElementTree import Element

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from joor_pipeline.joor import parse
from joor_pipeline.joor.errors import PayloadError
from joor_pipeline.joor.parse import leaf_text, parse_page
from joor_pipeline.joor.shapes import GROUP_TAGS, LIST_ITEM_TAGS
from joor_pipeline.sandbox.data import generate_connections
from joor_pipeline.sandbox.render import render_xml


def test_seed_json_example(seeds_dir) -> None:
    page = parse_page((seeds_dir / "connection-example.json").read_bytes(), "json")
    assert page.response.code == 0
    assert page.response.count == 6  # "6" arrives as a string
    assert page.response.log_id == "854554c0-83e4-4409-8b8f-a6ef7daa7c4b"
    (c,) = page.connections
    assert c["customer_account_id"] == "24181"
    assert [a["billing_address_id"] for a in c["billing"]["billing_addresses"]] == ["115886", "115889"]
    assert c["billing"]["payment_methods"][0]["payment_method_is_default"] == "True"
    assert c["discounts"][2]["division_id"] == ""
    assert c["discounts"][0]["amount"] == "4"


def test_seed_xml_example(seeds_dir) -> None:
    page = parse_page((seeds_dir / "connection-example.xml").read_bytes(), "xml")
    assert page.response.log_id == "f57e7fb4-965a-4d7b-be5e-1f92be257e9d"
    (c,) = page.connections
    assert c["customer_code"] == "JBNY"
    assert [a["billing_address_id"] for a in c["billing"]["billing_addresses"]] == ["109958", "115886"]
    assert c["billing"]["billing_addresses"][0]["billing_code"] == ""
    assert c["shipping"]["shipping_methods"][2]["shipping_method_is_default"] == "true"
    assert c["tax_id_numbers"] == [{"tax_id_number": "testVAT", "name": "France"}]
    assert len(c["buyers"]) == 5 and c["buyers"][1]["buyer_name"] == ""


def test_seed_examples_share_one_shape(seeds_dir) -> None:
    j = parse_page((seeds_dir / "connection-example.json").read_bytes(), "json").connections[0]
    x = parse_page((seeds_dir / "connection-example.xml").read_bytes(), "xml").connections[0]

    def shape(value):
        if isinstance(value, dict):
            return {k: shape(v) for k, v in value.items()}
        if isinstance(value, list):
            return [shape(value[0])] if value else []
        return "leaf"

    assert shape(j) == shape(x)


@pytest.mark.parametrize(
    ("value", "text"), [(True, "True"), (False, "False"), (0, "0"), (-6, "-6"), (4.0, "4.0"), ("", ""), (None, None)]
)
def test_leaf_text(value, text) -> None:
    assert leaf_text(value) == text


def test_json_envelope_with_outer_wrapper() -> None:
    body = b'{"connections": {"response": {"code": 0, "log_id": "L"}, "connections": [{"customer_code": "A"}]}}'
    page = parse_page(body, "json")
    assert page.connections == [{"customer_code": "A"}]


def test_xml_single_child_wrapper_is_a_list_and_empty_wrapper_is_empty() -> None:
    body = (
        b"<connections><response><code>0</code><log_id>L</log_id></response><connections><connection>"
        b"<doors><door><door_id>1</door_id></door></doors><buyers /><billing><billing_addresses/></billing>"
        b"</connection></connections></connections>"
    )
    (c,) = parse_page(body, "xml").connections
    assert c == {"doors": [{"door_id": "1"}], "buyers": [], "billing": {"billing_addresses": []}}


def test_json_list_given_as_null_or_empty_string_is_empty() -> None:
    body = b'{"response": {"code": 0}, "connections": [{"doors": null, "buyers": "", "billing": ""}]}'
    (c,) = parse_page(body, "json").connections
    assert c == {"doors": [], "buyers": [], "billing": {}}


@pytest.mark.parametrize(
    ("fmt", "body", "message"),
    [
        ("json", b"<html>Bad gateway</html>", "invalid JSON"),
        ("json", b"[1, 2]", "not an object"),
        ("json", b'{"connections": []}', "no 'response' block"),
        ("json", b'{"response": {"code": "x", "log_id": "L9"}}', "response.code is not an integer"),
        ("json", b'{"response": {"code": 0, "log_id": "L9"}, "connections": [1]}', "connection #0"),
        ("json", b'{"response": {"code": 0, "log_id": "L9"}, "connections": 5}', "should be a list"),
        ("xml", b"<connections><response>", "invalid XML"),
        ("xml", b"<orders/>", "root element is <orders>"),
    ],
)
def test_malformed_bodies_are_clear_errors(fmt: str, body: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message) as info:
        parse_page(body, fmt, source="page-00003.json")
    assert "page-00003.json" in str(info.value)
    if b"L9" in body:
        assert info.value.log_id == "L9"


def test_xml_entity_expansion_is_refused() -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
        b"<connections><response><code>&lol2;</code></response></connections>"
    )
    with pytest.raises(PayloadError, match="invalid XML"):
        parse_page(bomb, "xml")


def test_xml_external_entity_is_refused() -> None:
    xxe = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        b"<connections><response><code>&e;</code></response></connections>"
    )
    with pytest.raises(PayloadError, match="invalid XML"):
        parse_page(xxe, "xml")


@pytest.mark.parametrize(
    "doctype",
    [
        b"<!DOCTYPE connections>",
        b'<!DOCTYPE connections SYSTEM "http://127.0.0.1:9/joor.dtd">',
        b"<!DOCTYPE connections [<!ELEMENT connections ANY>]>",
    ],
)
def test_any_xml_document_type_declaration_is_refused(doctype: bytes) -> None:
    """JOOR sends none, and entities need one: refused as it starts, before anything in it is read."""
    body = b'<?xml version="1.0"?>' + doctype + b"<connections><response><code>0</code></response></connections>"
    with pytest.raises(PayloadError, match=r"invalid XML \(DoctypeForbidden: document type declaration") as info:
        parse_page(body, "xml", source="page-00004.xml")
    assert "page-00004.xml" in str(info.value)


def test_an_undeclared_entity_is_refused() -> None:
    body = b"<connections><response><code>&lol;</code></response></connections>"
    with pytest.raises(PayloadError, match=r"invalid XML \(ParseError: undefined entity"):
        parse_page(body, "xml")


def test_broken_xml_names_the_place() -> None:
    body = render_xml({"response": {"code": 0, "log_id": "L1"}, "connections": generate_connections(3, seed=2)})
    assert len(parse_page(body, "xml").connections) == 3
    with pytest.raises(PayloadError, match=r"invalid XML \(ParseError: unclosed token: line 2"):
        parse_page(body[: len(body) // 2], "xml")


def _reference_element_value(el: Element) -> Any:
    """The XML reading before leaves were read inline: the canonical form must not change."""
    tag = el.tag
    children = list(el)
    if tag in LIST_ITEM_TAGS:
        return [_reference_element_value(child) for child in children]
    if not children:
        return {} if tag in GROUP_TAGS else el.text or ""
    if tag not in GROUP_TAGS and parse._looks_like_list(tag, children):
        return [_reference_element_value(child) for child in children]
    out: dict[str, Any] = {}
    repeated: set[str] = set()
    for child in children:
        value = _reference_element_value(child)
        if child.tag not in out:
            out[child.tag] = value
            continue
        if child.tag not in repeated:
            out[child.tag] = [out[child.tag]]
            repeated.add(child.tag)
        out[child.tag].append(value)
    return out


_XML_TAGS = sorted(
    {*LIST_ITEM_TAGS, *LIST_ITEM_TAGS.values(), *GROUP_TAGS, "x", "xs", "category", "categories", "box", "boxes"}
)


@st.composite
def xml_trees(draw: st.DrawFn, depth: int = 0) -> Element:
    element = Element(draw(st.sampled_from(_XML_TAGS)))
    if depth < 4 and draw(st.booleans()):
        for child in draw(st.lists(xml_trees(depth + 1), max_size=4)):  # type: ignore[call-arg]
            element.append(child)
    else:
        element.text = draw(st.one_of(st.none(), st.sampled_from(["", " ", "0", "True", "Kraków"])))
    return element


@settings(max_examples=300, deadline=None)
@given(tree=xml_trees())
def test_xml_elements_read_as_they_always_have(tree: Element) -> None:
    assert parse._element_value(tree) == _reference_element_value(tree)


def test_a_doctype_is_refused_before_expat_reads_any_of_it() -> None:
    """After the DOCTYPE comes what expat would reject on its own (an unclosed internal subset, bytes that are
    not UTF-8): the refusal comes from the prolog scan, not from expat, which never reads the body."""
    body = b'<?xml version="1.0"?>\n<!-- JOOR -->\n<?pi x?>\n<!DOCTYPE connections [<!ENTITY a "\xff\xfe' + b"x" * 10**6
    with pytest.raises(parse.DoctypeForbidden, match="document type declaration"):
        parse.refuse_doctype(body)
    with pytest.raises(PayloadError, match=r"invalid XML \(DoctypeForbidden: document type declaration"):
        parse_page(body, "xml", source="page-00005.xml")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('<?xml version="1.0" encoding="UTF-16"?><connections/>'.encode("utf-16"), "not UTF-8"),
        ('<?xml version="1.0" encoding="UTF-32"?><connections/>'.encode("utf-32-be"), "not UTF-8"),
        (b'<?xml version="1.0" encoding="cp037"?><connections/>', "encoding 'cp037' refused"),
    ],
)
def test_xml_the_prolog_scan_cannot_read_is_refused(body: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        parse_page(body, "xml", source="page-00006.xml")


def test_comments_instructions_and_a_bom_before_the_root_are_fine() -> None:
    body = (
        b'\xef\xbb\xbf<?xml version="1.0" encoding="utf-8"?>\n<!-- a comment with <!DOCTYPE x> inside -->\n'
        b"<?render x?>\n<connections><response><code>0</code></response><connections/></connections>"
    )
    page = parse_page(body, "xml")
    assert page.response.code == 0 and page.connections == []


def test_xml_nested_100000_levels_is_one_clear_error_naming_the_page() -> None:
    n = 100_000
    body = (
        b"<connections><response><code>0</code></response><connections><connection>"
        b"<customer_account_id>1</customer_account_id><notes>" + b"<a>" * n + b"x" + b"</a>" * n + b"</notes>"
        b"</connection></connections></connections>"
    )
    with pytest.raises(PayloadError, match=r"XML nested deeper than 64 levels \(at <a>\) in page-00007.xml"):
        parse_page(body, "xml", source="page-00007.xml")


def test_json_integers_beyond_64_bits_are_read_exactly() -> None:
    body = (
        b'{"response": {"code": 0}, "connections": [{"customer_account_id": 123456789012345678901234567890,'
        b' "a": -9223372036854775809, "b": 18446744073709551615, "c": 1.5, "d": "12345678901234567890123"}]}'
    )
    connection = parse_page(body, "json", canonical=False).connections[0]
    assert connection == {
        "customer_account_id": 123456789012345678901234567890,
        "a": -9223372036854775809,
        "b": 18446744073709551615,
        "c": 1.5,
        "d": "12345678901234567890123",
    }
    assert parse_page(body, "json").connections[0]["customer_account_id"] == "123456789012345678901234567890"


@pytest.mark.parametrize("body", [b'{"response": {"code": 0}, "x": NaN, "n": 12345678901234567890123}'])
def test_the_exact_integer_reader_refuses_what_orjson_refuses(body: bytes) -> None:
    with pytest.raises(PayloadError, match="invalid JSON"):
        parse_page(body, "json", source="page-00008.json")


def test_json_nested_deeper_than_the_limit_is_kept_as_text() -> None:
    deep = "[" * 900 + '"x"' + "]" * 900
    body = ('{"response": {"code": 0}, "connections": [{"customer_account_id": 1, "notes": ' + deep + "}]}").encode()
    raw = parse_page(body, "json", canonical=False).connections[0]
    canonical = parse_page(body, "json").connections[0]
    text, walked = canonical["notes"], 0
    while isinstance(text, list):
        assert len(text) == 1
        text, walked = text[0], walked + 1
    assert walked < parse.MAX_DEPTH  # the levels below the limit stay lists; the rest is one text leaf
    assert text == "[" * (900 - walked) + '"x"' + "]" * (900 - walked)
    assert parse.deep_text(raw["notes"]) == deep

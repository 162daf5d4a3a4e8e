"""Parsing JOOR envelopes: the seed examples, shape rules, and clear errors for bodies that are not JOOR's."""

from __future__ import annotations

import pytest

from joor_pipeline.joor.errors import PayloadError
from joor_pipeline.joor.parse import leaf_text, parse_page


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

"""The shape of JOOR's connection payload, shared by the parser and the sandbox's renderers.

JSON carries lists as arrays; XML carries them as a wrapper element holding repeated singular children
(``<doors><door/>...</doors>``). These tables are the one place that says which element is which, so a
wrapper with a single child (or none) still parses as a list.
"""

from __future__ import annotations

from typing import Final

#: List wrapper -> the element name of one item, for every list JOOR nests in a connection.
LIST_ITEM_TAGS: Final[dict[str, str]] = {
    "connections": "connection",
    "warehouses": "warehouse",
    "billing_addresses": "billing_address",
    "payment_methods": "payment_method",
    "shipping_addresses": "shipping_address",
    "shipping_methods": "shipping_method",
    "customer_locations": "customer_location",
    "price_types": "price_type",
    "doors": "door",
    "buyers": "buyer",
    "tax_id_numbers": "tax_id_number",
    "discounts": "discount",
}

#: Elements that group other elements (objects, never lists).
GROUP_TAGS: Final[frozenset[str]] = frozenset({"billing", "shipping", "response"})

#: Where each list sits inside one connection: (path of groups, list key).
CONNECTION_LISTS: Final[tuple[tuple[tuple[str, ...], str], ...]] = (
    ((), "warehouses"),
    (("billing",), "billing_addresses"),
    (("billing",), "payment_methods"),
    (("shipping",), "shipping_addresses"),
    (("shipping",), "shipping_methods"),
    ((), "customer_locations"),
    ((), "price_types"),
    ((), "doors"),
    ((), "buyers"),
    ((), "tax_id_numbers"),
    ((), "discounts"),
)

#: Fields of the ``response`` block JOOR documents.
RESPONSE_FIELDS: Final[tuple[str, ...]] = ("code", "comment", "start_from", "next_start", "count", "log_id")

JSON_MEDIA_TYPE: Final = "application/json"
XML_MEDIA_TYPE: Final = "application/xml"
MEDIA_TYPES: Final[dict[str, str]] = {"json": JSON_MEDIA_TYPE, "xml": XML_MEDIA_TYPE}

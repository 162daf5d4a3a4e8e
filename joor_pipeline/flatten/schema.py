"""The data contract: one explicit Arrow schema per flattened table, and where every column comes from.

Each table is a :class:`TableSpec`: its columns in order, each with its Arrow type, the JOOR field(s) it is
read from (the first is the canonical name, the others are aliases seen in JOOR's field table or examples),
the REQ and MAX columns of JOOR's field table, and a one-line description. The flattener compiles its field
maps from these specs and ``docs/data-dictionary.md`` is rendered from them, so nothing is written twice.

Every table starts with ``account, snapshot_date, customer_account_id, customer_code`` (child tables add ``ordinal``,
the 0-based position in the JOOR list) and ends with the provenance and drift columns ``source_page, log_id,
extra, invalid_values``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import pyarrow as pa

from joor_pipeline.joor.shapes import LIST_ITEM_TAGS

#: REQ values, as JOOR's field table spells them (the state rule shortened).
REQ_YES: Final = "Y"
REQ_NO: Final = "N"
REQ_IF_STATE_COUNTRY: Final = "Y if US/CA/JP/AU"
#: A field the examples carry but JOOR's field table does not list.
REQ_NOT_LISTED: Final = "not listed"
#: A column this pipeline derives (provenance, position, snapshot); not a JOOR field.
REQ_DERIVED: Final = "-"

STRING: Final = pa.string()
INT64: Final = pa.int64()
INT32: Final = pa.int32()
FLOAT64: Final = pa.float64()
BOOL: Final = pa.bool_()
DATE: Final = pa.date32()
TIMESTAMP_UTC: Final = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class Column:
    """One column of a table: its Arrow type, its JOOR source field(s), REQ, MAX and meaning."""

    name: str
    type: pa.DataType
    sources: tuple[str, ...]
    required: str
    max_length: int | None
    description: str
    nullable: bool = True

    @property
    def field(self) -> pa.Field:
        """The Arrow field of this column."""
        return pa.field(self.name, self.type, nullable=self.nullable)


@dataclass(frozen=True)
class ListSource:
    """One JOOR list feeding a child table.

    ``path`` leads from the connection to the list (``("billing", "billing_addresses")``). The addresses table
    is fed by three lists; a column's source fields are split between them by ``field_prefix`` (every JOOR
    address field starts with its list's ``billing``/``shipping``/``location``), and each row is tagged with
    ``address_type``. For the other tables there is one list, no prefix and no tag.
    """

    path: tuple[str, ...]
    field_prefix: str = ""
    address_type: str | None = None

    @property
    def key(self) -> str:
        """The list's own key (``billing_addresses``)."""
        return self.path[-1]

    @property
    def item_tag(self) -> str:
        """The XML element name of one item (``billing_address``)."""
        return LIST_ITEM_TAGS[self.key]

    def fields_of(self, column: Column) -> tuple[str, ...]:
        """The source fields of ``column`` that this list carries, canonical name first."""
        return tuple(f for f in column.sources if f.startswith(self.field_prefix))


@dataclass(frozen=True)
class TableSpec:
    """One flattened table: its columns in order, its key and the JOOR list(s) it is read from."""

    name: str
    description: str
    key: tuple[str, ...]
    columns: tuple[Column, ...]
    lists: tuple[ListSource, ...] = ()

    @property
    def is_child(self) -> bool:
        """True for tables with one row per item of a JOOR list (everything but ``connections``)."""
        return bool(self.lists)

    @property
    def field_columns(self) -> tuple[Column, ...]:
        """The columns read from JOOR fields of one item (for ``connections``: of the connection itself)."""
        skip = DERIVED_COLUMNS | ({"customer_account_id", "customer_code"} if self.is_child else set())
        return tuple(c for c in self.columns if c.name not in skip)

    def column(self, name: str) -> Column:
        """The column called ``name``."""
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"{self.name} has no column {name!r}")


def _string(name: str, source: str | tuple[str, ...], req: str, max_length: int | None, desc: str) -> Column:
    sources = (source,) if isinstance(source, str) else source
    return Column(name, STRING, sources, req, max_length, desc)


# --- columns every table shares ---------------------------------------------------------------------------

ACCOUNT: Final = Column(
    "account",
    STRING,
    (),
    REQ_DERIVED,
    None,
    "The configured name of the JOOR account the snapshot was fetched from (the partition; `default` without "
    "an accounts file).",
    False,
)
SNAPSHOT_DATE: Final = Column(
    "snapshot_date", DATE, (), REQ_DERIVED, None, "The day the snapshot was fetched (the partition).", False
)
ORDINAL: Final = Column(
    "ordinal", INT32, (), REQ_DERIVED, None, "0-based position of the item in its JOOR list.", False
)
_CONNECTION_ID_DESC: Final = (
    "JOOR's id of the connection (the connection_id of the connection endpoints); null when missing or invalid."
)
CUSTOMER_ACCOUNT_ID: Final = Column(
    "customer_account_id", INT64, ("customer_account_id",), REQ_NOT_LISTED, None, _CONNECTION_ID_DESC
)
CUSTOMER_CODE: Final = _string(
    "customer_code",
    "customer_code",
    REQ_YES,
    50,
    "Unique identifier supplied by the Brand to identify a connection on JOOR.",
)
_CHILD_ID: Final = Column(
    "customer_account_id",
    INT64,
    ("customer_account_id",),
    REQ_NOT_LISTED,
    None,
    "The owning connection's customer_account_id.",
)
_CHILD_CODE: Final = _string("customer_code", "customer_code", REQ_YES, 50, "The owning connection's customer_code.")
PROVENANCE: Final[tuple[Column, ...]] = (
    Column("source_page", INT32, (), REQ_DERIVED, None, "Number of the raw page the row was read from.", False),
    Column("log_id", STRING, (), REQ_DERIVED, None, "JOOR's log_id of that page (quote it to JOOR support)."),
    Column(
        "extra",
        STRING,
        (),
        REQ_DERIVED,
        None,
        "Compact JSON object of the fields the contract does not know (and conflicting aliases); null when none.",
    ),
    Column(
        "invalid_values",
        STRING,
        (),
        REQ_DERIVED,
        None,
        'Compact JSON {"column": "original text"} of values that could not be coerced; null when none.',
    ),
)

#: Columns this pipeline derives rather than reads from a JOOR field of the row's own item.
DERIVED_COLUMNS: Final = frozenset(
    {"account", "snapshot_date", "ordinal", "address_type", *(column.name for column in PROVENANCE)}
)


def _connection_table() -> TableSpec:
    columns = (
        ACCOUNT,
        SNAPSHOT_DATE,
        CUSTOMER_ACCOUNT_ID,
        CUSTOMER_CODE,
        Column("brand_account_id", INT64, ("brand_account_id",), REQ_NOT_LISTED, None, "JOOR's id of the brand."),
        _string(
            "customer_alias",
            "customer_alias",
            REQ_YES,
            150,
            "Custom name supplied by the Brand to identify a connection on JOOR.",
        ),
        _string("customer_name", "customer_name", REQ_NOT_LISTED, None, "The retailer's name on JOOR."),
        _string("customer_email", "customer_email", REQ_NOT_LISTED, None, "The retailer's email on JOOR."),
        _string(
            "customer_contact_name",
            "customer_contact_name",
            REQ_YES,
            1000,
            "The primary name of the retailer on JOOR.",
        ),
        _string(
            "customer_contact_email",
            "customer_contact_email",
            REQ_NO,
            50,
            "The email for the primary contact for the customer.",
        ),
        _string("customer_buyer_name", "customer_buyer_name", REQ_NO, 50, "The buyer's full name."),
        _string(
            "company_number_name",
            "company_number_name",
            REQ_NO,
            150,
            "The name of the group of retailers to which the customer belongs.",
        ),
        _string("company_number_code", "company_number_code", REQ_NO, 100, "The code associated with the company."),
        _string("customer_group_name", "customer_group_name", REQ_NO, 150, "The name of the customer group."),
        _string(
            "customer_group_code",
            "customer_group_code",
            REQ_NO,
            100,
            "The code associated with the customer group.",
        ),
        _string("sales_rep_code", "sales_rep_code", REQ_NO, 100, "The code associated with the assigned sales rep."),
        Column(
            "connection_modified",
            TIMESTAMP_UTC,
            ("connection_modified",),
            REQ_NOT_LISTED,
            None,
            "When the connection last changed in JOOR, in UTC.",
        ),
        *PROVENANCE,
    )
    return TableSpec(
        "connections",
        "One row per connection (a retailer account linked to the brand) in the snapshot.",
        ("account", "snapshot_date", "customer_account_id"),
        columns,
    )


def _child_table(name: str, description: str, lists: tuple[ListSource, ...], fields: tuple[Column, ...]) -> TableSpec:
    head: tuple[Column, ...] = (ACCOUNT, SNAPSHOT_DATE, _CHILD_ID, _CHILD_CODE)
    key: tuple[str, ...] = ("account", "snapshot_date", "customer_account_id", "ordinal")
    if name == "addresses":
        address_type = Column(
            "address_type",
            STRING,
            (),
            REQ_DERIVED,
            None,
            "Which JOOR list the address comes from: billing, shipping or location.",
            False,
        )
        head += (address_type,)
        key = ("account", "snapshot_date", "customer_account_id", "address_type", "ordinal")
    return TableSpec(name, description, key, (*head, ORDINAL, *fields, *PROVENANCE), lists)


_REQ_ADDRESS: Final = "Y (billing, shipping); N (location)"


def _child_tables() -> tuple[TableSpec, ...]:
    addresses = _child_table(
        "addresses",
        "Billing addresses, shipping addresses and customer locations of each connection, in one table.",
        (
            ListSource(("billing", "billing_addresses"), "billing", "billing"),
            ListSource(("shipping", "shipping_addresses"), "shipping", "shipping"),
            ListSource(("customer_locations",), "location", "location"),
        ),
        (
            Column(
                "address_id",
                INT64,
                ("billing_address_id", "shipping_address_id", "location_address_id"),
                REQ_NO,
                4,
                "JOOR's unique id of the address (billing, shipping or location).",
            ),
            _string(
                "code",
                ("billing_code", "shipping_code"),
                REQ_NO,
                50,
                "The alphanumeric code of a billing or shipping address.",
            ),
            _string(
                "name",
                ("billing_name", "shipping_name", "shipping _name"),
                REQ_NO,
                255,
                "The address' name (JOOR's field table spells the shipping one 'shipping _name').",
            ),
            _string(
                "phone",
                ("billing_phone", "shipping_phone", "location_phone"),
                REQ_NO,
                30,
                "Phone number associated with the address.",
            ),
            _string(
                "email",
                ("shipping_email",),
                REQ_NOT_LISTED,
                None,
                "Email associated with a shipping address.",
            ),
            _string(
                "address_1",
                ("billing_address_1", "shipping_address_1", "location_address_1"),
                REQ_NO,
                100,
                "First line of the address.",
            ),
            _string(
                "address_2",
                ("billing_address_2", "shipping_address_2", "location_address_2"),
                REQ_NO,
                100,
                "Second line of the address.",
            ),
            _string(
                "city",
                ("billing_city", "shipping_city", "location_city"),
                _REQ_ADDRESS,
                150,
                "City of the address.",
            ),
            _string(
                "state",
                ("billing_state", "shipping_state", "location_state"),
                REQ_IF_STATE_COUNTRY,
                40,
                "State of the address; required only for US, CA, JP and AU.",
            ),
            _string(
                "postal_code",
                ("billing_postal_code", "shipping_postal_code", "location_zip"),
                REQ_NO,
                30,
                "Postal (zip) code of the address.",
            ),
            _string(
                "country",
                ("billing_country", "shipping_country", "location_country"),
                _REQ_ADDRESS,
                100,
                "Country of the address, as JOOR sends it: an English name or an ISO code.",
            ),
        ),
    )
    payment_methods = _child_table(
        "payment_methods",
        "Payment methods offered to each connection.",
        (ListSource(("billing", "payment_methods")),),
        (
            Column(
                "payment_method_id",
                INT64,
                ("payment_method_id",),
                REQ_NOT_LISTED,
                None,
                "JOOR's id of the payment method (negative for JOOR's built-in methods).",
            ),
            _string(
                "payment_method_code",
                "payment_method_code",
                REQ_NO,
                255,
                "An alphanumeric code associated with a payment method.",
            ),
            _string("payment_method_name", "payment_method_name", REQ_NO, 255, "The name of the payment method."),
            Column(
                "payment_method_is_default",
                BOOL,
                ("payment_method_is_default",),
                REQ_NO,
                None,
                "True if this is the retailer's default payment method.",
            ),
        ),
    )
    shipping_methods = _child_table(
        "shipping_methods",
        "Shipping methods offered to each connection.",
        (ListSource(("shipping", "shipping_methods")),),
        (
            Column(
                "shipping_method_id",
                INT64,
                ("shipping_method_id",),
                REQ_NOT_LISTED,
                None,
                "JOOR's id of the shipping method (negative for JOOR's built-in methods).",
            ),
            _string(
                "shipping_method_code",
                "shipping_method_code",
                REQ_NO,
                255,
                "An alphanumeric code associated with a shipping method.",
            ),
            _string(
                "shipping_method_name",
                ("shipping_method_name", "shipping _method_name"),
                REQ_NO,
                255,
                "The name of the shipping method.",
            ),
            Column(
                "shipping_method_is_default",
                BOOL,
                ("shipping_method_is_default", "shipping _method_is_default"),
                REQ_NO,
                None,
                "True if this is the retailer's default shipping method.",
            ),
        ),
    )
    discounts = _child_table(
        "discounts",
        "Discounts applied automatically to each connection's orders.",
        (ListSource(("discounts",)),),
        (
            Column(
                "account_boutique_discount_id",
                INT64,
                ("account_boutique_discount_id",),
                REQ_NOT_LISTED,
                None,
                "JOOR's id of the discount.",
            ),
            Column(
                "amount",
                FLOAT64,
                ("amount", "discount"),
                REQ_NO,
                100,
                "Discount percentage automatically applied to orders placed by the customer.",
            ),
            _string("type", "type", REQ_NOT_LISTED, None, "Kind of discount (PERCENT in every example)."),
            Column(
                "division_id",
                INT64,
                ("division_id",),
                REQ_NOT_LISTED,
                None,
                "The division the discount is limited to; null for every division.",
            ),
            Column(
                "line_item_level",
                BOOL,
                ("line_item_level", "discount_line_item_level"),
                REQ_NO,
                None,
                "True: applied at the order line item level; false: at the order level.",
            ),
            Column(
                "style_id",
                INT64,
                ("style_id",),
                REQ_NOT_LISTED,
                None,
                "The style the discount is limited to; null for every style.",
            ),
        ),
    )
    doors = _child_table(
        "doors",
        "Doors (stores) of each connection.",
        (ListSource(("doors",)),),
        (
            Column("door_id", INT64, ("door_id",), REQ_YES, 4, "JOOR's unique id for a door."),
            Column(
                "shipping_address_id",
                INT64,
                ("door_shipping_address_id", "shipping_address_id"),
                REQ_YES,
                4,
                "The shipping address the door is assigned to; not always one of the connection's own.",
            ),
            _string("door_name", "door_name", REQ_YES, 150, "Name of the door."),
            _string("door_code", "door_code", REQ_NO, 15, "Code associated with the door."),
        ),
    )
    price_types = _child_table(
        "price_types",
        "Price types (currencies and terms) available to each connection.",
        (ListSource(("price_types",)),),
        (
            Column("price_type_id", INT64, ("price_type_id",), REQ_YES, 4, "JOOR's unique id for a price type."),
            _string("price_type_label", "price_type_label", REQ_NOT_LISTED, None, "Label of the price type."),
            _string(
                "price_type_currency_code",
                "price_type_currency_code",
                REQ_YES,
                3,
                "The 3 letter ISO designation of the price's currency.",
            ),
            _string(
                "price_type_currency_name",
                "price_type_currency_name",
                REQ_YES,
                100,
                "Label used to tell apart several prices of the same currency.",
            ),
            _string(
                "price_type_retail_currency_code",
                "price_type_retail_currency_code",
                REQ_NOT_LISTED,
                None,
                "ISO code of the retail price's currency.",
            ),
            _string(
                "price_type_retail_currency_name",
                "price_type_retail_currency_name",
                REQ_NOT_LISTED,
                None,
                "Name of the retail price's currency.",
            ),
            _string(
                "price_type_terms",
                "price_type_terms",
                REQ_YES,
                None,
                "Terms and conditions tied to the price type (currency).",
            ),
            _string(
                "connection_override_terms_name",
                "connection_override_terms_name",
                REQ_NO,
                255,
                "Name of the terms and conditions tied to this retailer for the price type.",
            ),
            _string(
                "connection_override_terms_value",
                "connection_override_terms_value",
                REQ_NO,
                None,
                "Text of the terms and conditions tied to this retailer for the price type.",
            ),
        ),
    )
    buyers = _child_table(
        "buyers",
        "Buyers (retailer-side users) of each connection.",
        (ListSource(("buyers",)),),
        (
            Column("buyer_id", INT64, ("buyer_id",), REQ_NOT_LISTED, None, "JOOR's id of the buyer."),
            _string("buyer_name", "buyer_name", REQ_NOT_LISTED, None, "The buyer's name."),
            _string("buyer_email", "buyer_email", REQ_NOT_LISTED, None, "The buyer's email."),
        ),
    )
    warehouses = _child_table(
        "warehouses",
        "Warehouses assigned to each connection.",
        (ListSource(("warehouses",)),),
        (
            _string(
                "warehouse_name",
                "warehouse_name",
                REQ_NO,
                150,
                "The name associated with the assigned warehouse.",
            ),
            _string(
                "warehouse_code",
                "warehouse_code",
                REQ_NO,
                100,
                "The code associated with the assigned warehouse.",
            ),
        ),
    )
    tax_ids = _child_table(
        "tax_ids",
        "Tax id numbers (VAT/GST) of each connection, one per country.",
        (ListSource(("tax_id_numbers",)),),
        (
            _string(
                "tax_id_number",
                "tax_id_number",
                REQ_NO,
                100,
                "Alphanumeric string specified for a retailer per country, used for VAT/GST.",
            ),
            _string("name", "name", REQ_NO, 255, "Country name associated with the tax id number."),
        ),
    )
    return (
        addresses,
        payment_methods,
        shipping_methods,
        discounts,
        doors,
        price_types,
        buyers,
        warehouses,
        tax_ids,
    )


#: Every table of the contract, by name, in a stable order (connections first).
TABLES: Final[dict[str, TableSpec]] = {spec.name: spec for spec in (_connection_table(), *_child_tables())}

_SCHEMAS: Final[dict[str, pa.Schema]] = {
    name: pa.schema([column.field for column in spec.columns]) for name, spec in TABLES.items()
}


def arrow_schema(table: str) -> pa.Schema:
    """The Arrow schema of one table of the contract."""
    try:
        return _SCHEMAS[table]
    except KeyError:
        raise KeyError(f"unknown table {table!r}; expected one of {', '.join(TABLES)}") from None

"""Deterministic JOOR connections for the sandbox: the seed example first, then generated variety.

Each generated connection is drawn from its own RNG, seeded from ``(seed, index)``, and every id is derived
from the index, so connection ``i`` is the same whatever the dataset size: ``generate_connections(10, s)``
is a prefix of ``generate_connections(1000, s)``, and ids stay unique without any global bookkeeping.

Values are stored the way they go over the wire. The quirks real JOOR payloads show (numeric ids as strings,
``""`` for a missing id, booleans as the strings ``"True"``/``"False"``) are baked into the data, never
added by a renderer, so the JSON and XML renderings of a connection always carry the same text.
"""

from __future__ import annotations

import functools
import gc
import itertools
import json
import random
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

_T = TypeVar("_T")

SEED_EXAMPLE_PATH: Final = Path(__file__).with_name("seed_connection_example.json")

BRAND_ACCOUNT_ID: Final = 24180

# Ranges are far above every id in the seed example, so generated ids never collide with it.
_CUSTOMER_ACCOUNT_BASE: Final = 30_000
_BILLING_ADDRESS_BASE: Final = 1_000_000
_SHIPPING_ADDRESS_BASE: Final = 3_000_000
_LOCATION_BASE: Final = 6_000_000
_BUYER_BASE: Final = 7_000_000
_DISCOUNT_BASE: Final = 8_000_000
_DOOR_BASE: Final = 100_000
_STYLE_BASE: Final = 4_000_000
# Slot 4 of each connection's shipping-id block is never assigned: it is the dangling door target.
_SHIPPING_STRIDE: Final = 5
_DANGLING_SLOT: Final = 4

_EPOCH_2014: Final = 1_388_534_400
_TWELVE_YEARS: Final = 12 * 365 * 24 * 3600
_UPPER: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def load_seed_connection() -> dict[str, Any]:
    """The connection from the seed document's JSON example, values untouched."""
    return json.loads(_seed_text())["connections"][0]


@functools.cache
def _seed_text() -> str:
    return SEED_EXAMPLE_PATH.read_text(encoding="utf-8")


# (country name, ISO code, state, city, postal codes, street templates with {n} for the house number)
_Place = tuple[str, str, str, str, tuple[str, ...], tuple[str, ...]]
_PLACES: Final[tuple[_Place, ...]] = (
    ("United States", "US", "NY", "New York", ("10005", "10012", "10001"), ("{n} Main St", "{n} Broadway")),
    ("United States", "US", "NY", "Brooklyn", ("11201", "11211"), ("{n} Bedford Ave",)),
    ("United States", "US", "CA", "Los Angeles", ("90012", "90028"), ("{n} Sunset Blvd", "{n} Melrose Ave")),
    ("United States", "US", "CA", "San Francisco", ("94103", "94110"), ("{n} Valencia St",)),
    ("Canada", "CA", "ON", "Toronto", ("M5V 2T6", "M4W 1A8"), ("{n} Queen St W", "{n} King St E")),
    ("Canada", "CA", "QC", "Montréal", ("H2X 1Y4", "H3B 4W8"), ("{n} Rue Sainte-Catherine O",)),
    ("Japan", "JP", "Tokyo", "Tokyo", ("150-0001", "104-0061"), ("{n}-2-3 Jingumae, Shibuya-ku",)),
    ("Japan", "JP", "Tokyo", "東京", ("106-0032",), ("六本木{n}-4-1",)),
    ("Australia", "AU", "NSW", "Sydney", ("2000", "2010"), ("{n} George St", "{n} Oxford St")),
    ("France", "FR", "", "Paris", ("75003", "75008"), ("{n} Rue de Rivoli", "{n} Avenue Montaigne")),
    ("France", "FR", "", "Lyon", ("69002",), ("{n} Rue de la République",)),
    ("Italy", "IT", "", "Milano", ("20121",), ("Via Montenapoleone {n}",)),
    ("United Kingdom", "GB", "", "London", ("EC1A 1BB", "W1F 9PE"), ("{n} Carnaby Street",)),
    ("Germany", "DE", "", "München", ("80331",), ("Maximilianstraße {n}",)),
    ("Germany", "DE", "", "Berlin", ("10115",), ("Friedrichstraße {n}",)),
    ("Switzerland", "CH", "", "Zürich", ("8001",), ("Bahnhofstrasse {n}",)),
    ("Sweden", "SE", "", "Malmö", ("211 22",), ("Södergatan {n}",)),
    ("Brazil", "BR", "", "São Paulo", ("01310-100",), ("Av. Paulista {n}",)),
    ("Denmark", "DK", "", "Ærø", ("5970",), ("Søndergade {n}",)),
    ("Poland", "PL", "", "Łódź", ("90-001",), ("ul. Piotrkowska {n}",)),
)
# Most retailers sit in the big four markets, the ones where JOOR requires a state.
_HOME_WEIGHTS: Final = (14, 4, 8, 4, 5, 3, 4, 2, 4, 5, 2, 3, 4, 2, 2, 2, 2, 2, 1, 1)
_HOME_POOL: Final = tuple(place for place, weight in zip(_PLACES, _HOME_WEIGHTS, strict=True) for _ in range(weight))

_TAX_FORMATS: Final[dict[str, str]] = {
    "FR": "FR{d11}",
    "DE": "DE{d9}",
    "GB": "GB{d9}",
    "IT": "IT{d11}",
    "CH": "CHE-{d3}.{d3}.{d3} MWST",
    "SE": "SE{d12}",
    "DK": "DK{d8}",
    "PL": "PL{d10}",
    "AU": "ABN {d11}",
    "JP": "T{d13}",
    "CA": "{d9}RT0001",
    "US": "{d2}-{d7}",
    "BR": "{d14}",
}

_NAME_FIRST: Final = (
    "Maison", "Boutique", "Atelier", "Nordic", "Sakura", "Harbour", "Kaufhaus", "Casa", "Galerie", "The",
    "Studio", "Bottega", "Søn", "Østerbro", "Île", "Café",
)  # fmt: skip
_NAME_SECOND: Final = (
    "Lumière", "Étoile", "Threads", "Select", "& Co", "Müller", "Moda", "Goods", "Verde", "Supply",
    "Złota", "Ærø Living", "Mercantile", "Paulista", "Concept", "Nord",
)  # fmt: skip
_FIRST_NAMES: Final = (
    "Kristen", "José", "Zoë", "Søren", "Björn", "Łukasz", "Yūko", "Amélie", "Giulia", "Oliver", "Chloé",
    "Hiroshi", "Maëlle", "Mia", "Noah", "Ana", "Luca", "François", "Ingrid", "Mateus", "Siobhán", "Emma",
)  # fmt: skip
_LAST_NAMES: Final = (
    "Leone", "Müller", "García", "Öberg", "Nowak", "Tanaka", "Dubois", "Rossi", "Smith", "O'Brien",
    "Ødegaard", "Kowalczyk", "Silva", "Nguyen", "Schäfer", "Friedel", "Brown", "Dvořák",
)  # fmt: skip
_DOMAINS: Final = ("example.com", "example.org", "example.net", "shop.example", "boutique.example")
_COMPANIES: Final = (
    ("Company1", "c1"),
    ("Galeries Group", "GG"),
    ("Nordic Retail AB", "NRAB"),
    ("Harbour Holdings", "HH-01"),
    ("Groupe Étoile", "GE"),
)
_GROUPS: Final = (
    ("Specialty", "SPC"),
    ("Department Store", "DEPT"),
    ("Online", "ONL"),
    ("Key Accounts", "KEY"),
    ("Concept Store", "CON"),
)
_SALES_REPS: Final = ("AB", "CD", "JL", "MK", "SR-01", "TW")
_WAREHOUSES: Final = (
    ("Main Warehouse", "MAIN"),
    ("EU Distribution", "EU-DC"),
    ("Tokyo DC", "JP1"),
    ("Test Warehouse", "Test Code"),
)
_ADDRESS_2: Final = ("Suite 5F", "Floor 2", "Unit 12", "Accts Payable", "c/o Receiving", "2e étage", "Hinterhaus")
_PAYMENT_METHODS: Final = (
    (-6, "net30", "Net 30 (Pending Approval)"),
    (-4, "cc", "Credit Card"),
    (-2, "wt", "Wire Transfer"),
    (-8, "net60", "Net 60"),
    (-3, "cod", "Cash on Delivery"),
    (26, "x30w", "X30W (Pending Approval)"),
    (27, "oth", "Other"),
    (28, "30pdc", "30 Days PDC"),
    (29, "pp", "Payment Plan"),
)
_SHIPPING_METHODS: Final = (
    (-12, "ups_ground", "UPS Ground"),
    (-11, "ups_2day", "UPS 2-Day"),
    (-10, "pickup", "Customer Pickup"),
    (14, "fedex_economy", "FedEx International Economy"),
    (15, "dhl_express", "DHL Express"),
    (16, "freight", "Freight Forwarder"),
)
# Price types belong to the brand, so their ids repeat across connections.
_PRICE_TYPES: Final = (
    (2980, "USA", "USD", "US Dollar"),
    (2982, "Europe", "EUR", "Euro"),
    (2985, "UK", "GBP", "British Pound"),
    (2987, "Japan", "JPY", "Japanese Yen"),
    (2989, "Australia", "AUD", "Australian Dollar"),
)
_OVERRIDE_TERMS: Final = (
    ("US Terms", "These terms and conditions apply to US retailers only."),
    ("Net 60 Terms", "Payment is due 60 days after shipment; 2% late fee <after> 90 days & up."),
)
_DIVISIONS: Final = (498, 755, 812, 903)
_DISCOUNT_AMOUNTS: Final = (2.5, 4.0, 5.0, 7.5, 10.0, 12.5, 15.0, 20.0, 33.33)
_DOOR_NAMES: Final = ("Flagship", "Outlet", "Pop-up", "Door1", "Concession", "Main Street")


class _Rng(random.Random):
    """``random.Random`` with cheap draws: generating 200,000 connections is dominated by these calls."""

    def below(self, n: int) -> int:
        """An int in ``range(n)``."""
        return int(self.random() * n)

    def between(self, low: int, high: int) -> int:
        """An int in ``[low, high]``."""
        return low + int(self.random() * (high - low + 1))

    def pick(self, seq: Sequence[_T]) -> _T:
        """One element of ``seq``."""
        return seq[int(self.random() * len(seq))]

    def subset(self, table: _Subsets[_T]) -> tuple[_T, ...]:
        """A random size, then a random subset of that size, from a precomputed table."""
        by_size = table[int(self.random() * len(table))]
        return by_size[int(self.random() * len(by_size))]


# For each allowed size (low..high), every subset of a pool of that size, in pool order.
_Subsets = tuple[tuple[tuple[_T, ...], ...], ...]


def _subsets(pool: Sequence[_T], low: int, high: int) -> _Subsets[_T]:
    return tuple(tuple(itertools.combinations(pool, size)) for size in range(low, high + 1))


_WAREHOUSE_SETS: Final = _subsets(_WAREHOUSES, 0, 2)
_PAYMENT_METHOD_SETS: Final = _subsets(_PAYMENT_METHODS, 1, 5)
_SHIPPING_METHOD_SETS: Final = _subsets(_SHIPPING_METHODS, 0, 3)
_PRICE_TYPE_SETS: Final = _subsets(_PRICE_TYPES, 1, 3)


def generate_connections(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` connections: the seed example first, then ``n - 1`` generated ones, all deterministic."""
    if n <= 0:
        return []
    rng = _Rng()
    out = [load_seed_connection()]
    # Millions of long-lived dicts would trigger collection after collection, none of which frees anything.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for index in range(1, n):
            # A fresh stream per index keeps connection i independent of n.
            rng.seed(seed * 2**40 + index)
            out.append(_connection(rng, index))
    finally:
        if gc_was_enabled:
            gc.enable()
    return out


def _digits(rng: _Rng, count: int) -> str:
    return str(rng.below(10**count)).zfill(count)


class _Quirks:
    """Per-connection odds of the wire quirks: most connections are clean, a few are messy."""

    __slots__ = ("bool_as_text", "id_as_text", "rng")

    def __init__(self, rng: _Rng) -> None:
        self.rng = rng
        self.bool_as_text = 0.5 if rng.random() < 0.08 else 0.0
        self.id_as_text = 0.4 if rng.random() < 0.06 else 0.0

    def flag(self, value: bool) -> bool | str:
        """A boolean, sometimes spelled as the string ``"True"``/``"False"``."""
        if self.bool_as_text and self.rng.random() < self.bool_as_text:
            return "True" if value else "False"
        return value

    def ident(self, value: int) -> int | str:
        """An integer id, sometimes delivered as a numeric string."""
        if self.id_as_text and self.rng.random() < self.id_as_text:
            return str(value)
        return value


def _country_text(rng: _Rng, place: _Place) -> str:
    # JOOR accepts English names or ISO codes, and data entered over the years holds both.
    return place[1] if rng.random() < 0.15 else place[0]


def _pick_place(rng: _Rng, home: _Place) -> _Place:
    return home if rng.random() < 0.75 else rng.pick(_PLACES)


def _street(rng: _Rng, place: _Place) -> str:
    return rng.pick(place[5]).replace("{n}", str(rng.between(1, 1500)))


def _phone(rng: _Rng, place: _Place) -> str:
    roll = rng.random()
    if roll < 0.04:
        return ""
    if roll < 0.07:
        return "0000000000"
    if place[1] in ("US", "CA"):
        area, line = rng.between(201, 989), _digits(rng, 4)
        return f"({area}) 555-{line}" if roll < 0.4 else f"{area}-555-{line}"
    return f"+{rng.between(30, 99)} {_digits(rng, 3)} {_digits(rng, 4)}"


def _email(rng: _Rng, local: str) -> str:
    return f"{local}@{rng.pick(_DOMAINS)}"


def _ascii_slug(text: str) -> str:
    return _SLUGS.get(text) or _slugify(text)


def _slugify(text: str) -> str:
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return "".join(ch for ch in plain.lower() if ch.isalnum()) or "shop"


_SLUGS: Final[dict[str, str]] = {w: _slugify(w) for w in (*_NAME_FIRST, *_NAME_SECOND, *_FIRST_NAMES)}


def _customer_code(rng: _Rng, index: int) -> str:
    letters = "".join([rng.pick(_UPPER) for _ in range(rng.between(2, 4))])
    roll = rng.random()
    # Letters never contain digits and the index has no leading zero, so every code is unique.
    if roll < 0.02:
        return f"{letters}-{index}"
    if roll < 0.03:
        return f"{letters} {index}"
    if roll < 0.04:
        return f"{letters[0]}&{letters[1:]}{index}"
    return f"{letters}{index}"


def _connection(rng: _Rng, index: int) -> dict[str, Any]:
    q = _Quirks(rng)
    home = rng.pick(_HOME_POOL)
    first, second = rng.pick(_NAME_FIRST), rng.pick(_NAME_SECOND)
    name = f"{first} {second}"
    slug = _ascii_slug(first) + _ascii_slug(second)
    contact_first, contact_last = rng.pick(_FIRST_NAMES), rng.pick(_LAST_NAMES)
    company = rng.pick(_COMPANIES) if rng.random() < 0.7 else ("", "")
    group = rng.pick(_GROUPS) if rng.random() < 0.85 else ("", "")
    alias_roll = rng.random()
    alias = name if alias_roll < 0.5 else f"{name} {home[3]}" if alias_roll < 0.9 else slug.upper()[:12]

    billing = [_billing_address(rng, q, index, slot, name, home) for slot in _slots(rng, 1, 3, 4)]
    shipping = [_shipping_address(rng, q, index, slot, name, slug, home) for slot in _slots(rng, 1, 3, 4)]
    shipping_ids = [_SHIPPING_ADDRESS_BASE + _SHIPPING_STRIDE * index + slot for slot in range(4)]
    own_shipping_ids = [addr["shipping_address_id"] for addr in shipping]

    return {
        "brand_account_id": q.ident(BRAND_ACCOUNT_ID),
        "customer_account_id": q.ident(_CUSTOMER_ACCOUNT_BASE + 7 * index + rng.below(6)),
        "customer_code": _customer_code(rng, index),
        "customer_alias": alias,
        "customer_name": name,
        "customer_email": _email(rng, slug) if rng.random() < 0.95 else "",
        "customer_contact_name": f"{contact_first} {contact_last}",
        "company_number_name": company[0],
        "company_number_code": company[1],
        "customer_group_name": group[0],
        "customer_group_code": group[1],
        "sales_rep_code": rng.pick(_SALES_REPS) if rng.random() < 0.8 else "",
        "warehouses": [
            {"warehouse_name": wh_name, "warehouse_code": wh_code} for wh_name, wh_code in rng.subset(_WAREHOUSE_SETS)
        ],
        "connection_modified": datetime.fromtimestamp(_EPOCH_2014 + rng.below(_TWELVE_YEARS), UTC).strftime(
            "%Y-%m-%dT%H:%M:%S+00:00"
        ),
        "billing": {"billing_addresses": billing, "payment_methods": _payment_methods(rng, q)},
        "shipping": {"shipping_addresses": shipping, "shipping_methods": _shipping_methods(rng, q)},
        "price_types": _price_types(rng),
        "doors": _doors(rng, q, index, own_shipping_ids, shipping_ids[0] + _DANGLING_SLOT, home),
        "customer_locations": _locations(rng, q, index, home),
        "buyers": _buyers(rng, q, index, slug),
        "tax_id_numbers": _tax_ids(rng, home),
        "discounts": _discounts(rng, q, index),
    }


def _slots(rng: _Rng, low: int, high: int, width: int) -> tuple[int, ...]:
    """Sorted distinct slots in ``range(width)``: index-derived ids with realistic gaps."""
    return rng.subset(_slot_table(low, high, width))


@functools.cache
def _slot_table(low: int, high: int, width: int) -> _Subsets[int]:
    return _subsets(range(width), low, high)


def _billing_address(rng: _Rng, q: _Quirks, index: int, slot: int, name: str, home: _Place) -> dict[str, Any]:
    place = _pick_place(rng, home)
    return {
        "billing_address_id": q.ident(_BILLING_ADDRESS_BASE + 4 * index + slot),
        "billing_code": f"B{index}-{slot}" if rng.random() < 0.15 else "",
        "billing_name": name,
        "billing_phone": _phone(rng, place),
        "billing_address_1": _street(rng, place),
        "billing_address_2": rng.pick(_ADDRESS_2) if rng.random() < 0.45 else "",
        "billing_city": place[3],
        "billing_state": place[2],
        "billing_postal_code": rng.pick(place[4]),
        "billing_country": _country_text(rng, place),
    }


def _shipping_address(
    rng: _Rng, q: _Quirks, index: int, slot: int, name: str, slug: str, home: _Place
) -> dict[str, Any]:
    place = _pick_place(rng, home)
    return {
        "shipping_address_id": q.ident(_SHIPPING_ADDRESS_BASE + _SHIPPING_STRIDE * index + slot),
        "shipping_code": f"S{index}-{slot}" if rng.random() < 0.15 else "",
        "shipping_name": name,
        "shipping_phone": _phone(rng, place),
        "shipping_email": _email(rng, f"receiving.{slug}") if rng.random() < 0.8 else "",
        "shipping_address_1": _street(rng, place),
        "shipping_address_2": rng.pick(_ADDRESS_2) if rng.random() < 0.45 else "",
        "shipping_city": place[3],
        "shipping_state": place[2],
        "shipping_postal_code": rng.pick(place[4]),
        "shipping_country": _country_text(rng, place),
    }


def _default_position(rng: _Rng, count: int, none_share: float) -> int:
    """Which item is the default, or -1 for a connection that has none."""
    return -1 if count == 0 or rng.random() < none_share else rng.below(count)


def _payment_methods(rng: _Rng, q: _Quirks) -> list[dict[str, Any]]:
    chosen = rng.subset(_PAYMENT_METHOD_SETS)
    default = _default_position(rng, len(chosen), 0.05)
    return [
        {
            "payment_method_id": method_id,
            "payment_method_code": code,
            "payment_method_name": label,
            "payment_method_is_default": q.flag(pos == default),
        }
        for pos, (method_id, code, label) in enumerate(chosen)
    ]


def _shipping_methods(rng: _Rng, q: _Quirks) -> list[dict[str, Any]]:
    chosen = rng.subset(_SHIPPING_METHOD_SETS)
    default = _default_position(rng, len(chosen), 0.2)
    return [
        {
            "shipping_method_id": method_id,
            "shipping_method_code": code,
            "shipping_method_name": label,
            "shipping_method_is_default": q.flag(pos == default),
        }
        for pos, (method_id, code, label) in enumerate(chosen)
    ]


def _price_types(rng: _Rng) -> list[dict[str, Any]]:
    out = []
    for type_id, label, code, currency in rng.subset(_PRICE_TYPE_SETS):
        retail = (code, currency) if rng.random() < 0.8 else ("USD", "US Dollar")
        override = rng.pick(_OVERRIDE_TERMS) if rng.random() < 0.15 else ("", "")
        out.append(
            {
                "price_type_id": type_id,
                "price_type_label": label,
                "price_type_currency_code": code,
                "price_type_currency_name": currency,
                "price_type_retail_currency_code": retail[0],
                "price_type_retail_currency_name": retail[1],
                "price_type_terms": f"These are the {code} Terms" if rng.random() < 0.5 else "",
                "connection_override_terms_name": override[0],
                "connection_override_terms_value": override[1],
            }
        )
    return out


def _doors(
    rng: _Rng, q: _Quirks, index: int, shipping_ids: list[Any], dangling: int, home: _Place
) -> list[dict[str, Any]]:
    out = []
    for slot in _slots(rng, 0, 4, 5):
        # Like the seed example, a few doors point at a shipping address the connection does not have.
        target = dangling if rng.random() < 0.02 else rng.pick(shipping_ids)
        out.append(
            {
                "door_id": q.ident(_DOOR_BASE + 5 * index + slot),
                "door_shipping_address_id": target,
                "door_name": f"{home[3]} {rng.pick(_DOOR_NAMES)}",
                "door_code": f"D{slot + 1}" if rng.random() < 0.85 else "",
            }
        )
    return out


def _locations(rng: _Rng, q: _Quirks, index: int, home: _Place) -> list[dict[str, Any]]:
    out = []
    for slot in _slots(rng, 0, 2, 3):
        place = _pick_place(rng, home)
        out.append(
            {
                "location_address_id": q.ident(_LOCATION_BASE + 3 * index + slot),
                "location_address_1": _street(rng, place),
                "location_address_2": rng.pick(_ADDRESS_2) if rng.random() < 0.3 else "",
                "location_city": place[3],
                "location_state": place[2],
                "location_zip": rng.pick(place[4]),
                "location_country": _country_text(rng, place),
                "location_phone": _phone(rng, place),
            }
        )
    return out


def _buyers(rng: _Rng, q: _Quirks, index: int, slug: str) -> list[dict[str, Any]]:
    out = []
    for slot in _slots(rng, 0, 5, 6):
        first, last = rng.pick(_FIRST_NAMES), rng.pick(_LAST_NAMES)
        out.append(
            {
                "buyer_id": q.ident(_BUYER_BASE + 6 * index + slot),
                "buyer_name": f"{first} {last}" if rng.random() < 0.6 else "",
                "buyer_email": _email(rng, f"{_ascii_slug(first)}.{slot}+{slug}"),
            }
        )
    return out


def _tax_ids(rng: _Rng, home: _Place) -> list[dict[str, Any]]:
    out = []
    for _ in range(rng.between(0, 2)):
        place = _pick_place(rng, home)
        template = _TAX_FORMATS[place[1]]
        number = template
        for width in (14, 13, 12, 11, 10, 9, 8, 7, 3, 2):
            token = f"{{d{width}}}"
            while token in number:
                number = number.replace(token, _digits(rng, width), 1)
        out.append({"tax_id_number": number, "name": place[0]})
    return out


def _discounts(rng: _Rng, q: _Quirks, index: int) -> list[dict[str, Any]]:
    out = []
    for slot in _slots(rng, 0, 3, 4):
        amount: float | int = rng.pick(_DISCOUNT_AMOUNTS)
        # The seed example sends whole percentages as JSON integers; keep a few of those.
        if rng.random() < 0.1 and float(amount).is_integer():
            amount = int(amount)
        out.append(
            {
                "amount": amount,
                "type": "PERCENT",
                "division_id": q.ident(rng.pick(_DIVISIONS)) if rng.random() < 0.65 else "",
                "account_boutique_discount_id": q.ident(_DISCOUNT_BASE + 4 * index + slot),
                "line_item_level": q.flag(rng.random() < 0.5),
                "style_id": _STYLE_BASE + rng.below(100_000) if rng.random() < 0.08 else "",
            }
        )
    return out

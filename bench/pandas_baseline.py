"""The pandas alternative: the script a data engineer would write with ``json.load`` and ``pd.json_normalize``.

It produces the five core tables (connections, addresses, payment_methods, discounts, doors) from the raw JSON
pages. JSON only: pandas has no reader for JOOR's nested XML short of hand-written ElementTree code, which
is no longer "the pandas way".

There is no schema. JOOR sends some ids sometimes as numbers and sometimes as strings (and ``""`` for a
missing one), which leaves object columns that Arrow refuses to write ("Could not convert '' with type str:
tried to convert to int64"); like a user after that first error, every such column is written as text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import pandas as pd

#: Keys whose values are lists or groups of lists: they become child tables, not columns.
NESTED_FIELDS: Final = (
    "warehouses",
    "billing",
    "shipping",
    "price_types",
    "doors",
    "customer_locations",
    "buyers",
    "tax_id_numbers",
    "discounts",
)
META: Final = ["customer_account_id", "customer_code"]
#: (JOOR list, prefix of its fields, address_type): the three lists that make up one addresses table.
ADDRESS_LISTS: Final = (
    (["billing", "billing_addresses"], "billing_", "billing"),
    (["shipping", "shipping_addresses"], "shipping_", "shipping"),
    (["customer_locations"], "location_", "location"),
)


def flatten_with_pandas(page_files: Sequence[Path], out_dir: Path) -> dict[str, Path]:
    """Read every page, normalize the five core tables and write each to ``out_dir/<table>.parquet``."""
    connections: list[dict[str, Any]] = []
    for path in page_files:
        with open(path, encoding="utf-8") as fh:
            connections.extend(json.load(fh)["connections"])

    top = pd.json_normalize(connections)
    top = top.drop(columns=[c for c in top.columns if c.split(".")[0] in NESTED_FIELDS])
    written = {"connections": _write(top, out_dir / "connections.parquet")}

    addresses = []
    for record_path, prefix, address_type in ADDRESS_LISTS:
        frame = pd.json_normalize(connections, record_path=record_path, meta=META)
        frame = frame.rename(columns=lambda c, p=prefix: c.removeprefix(p)).rename(columns={"zip": "postal_code"})
        frame.insert(0, "address_type", address_type)
        addresses.append(frame)
    written["addresses"] = _write(pd.concat(addresses, ignore_index=True), out_dir / "addresses.parquet")

    for table, record_path in (
        ("payment_methods", ["billing", "payment_methods"]),
        ("discounts", ["discounts"]),
        ("doors", ["doors"]),
    ):
        frame = pd.json_normalize(connections, record_path=record_path, meta=META)
        written[table] = _write(frame, out_dir / f"{table}.parquet")
    return written


def _write(frame: pd.DataFrame, path: Path) -> Path:
    for column in frame.select_dtypes(include="object").columns:
        frame[column] = frame[column].astype("string")
    frame.to_parquet(path, compression="zstd", index=False)
    return path

"""Land hand-made raw snapshots with the fetch's own writer, for tests that start from raw pages."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from joor_pipeline.flatten import TABLES
from joor_pipeline.sandbox.render import render_json, render_xml
from joor_pipeline.storage.parquet import published_files
from joor_pipeline.storage.publish import STAGING_DIR
from joor_pipeline.storage.raw import open_raw_snapshot

PAGE_SIZE = 100


def land(
    data_dir: Path,
    snapshot_date: date,
    connections: list[dict[str, Any]],
    fmt: str = "json",
    *,
    body_of: Callable[[int, bytes], bytes] | None = None,
    account: str = "default",
) -> None:
    """Land ``connections`` as raw pages of 100 with the fetch's own writer; ``body_of`` may spoil a page."""
    chunks = [connections[i : i + PAGE_SIZE] for i in range(0, len(connections), PAGE_SIZE)]
    with open_raw_snapshot(data_dir, snapshot_date, fmt, account=account) as writer:
        for index, chunk in enumerate(chunks):
            start = index * PAGE_SIZE
            last = index == len(chunks) - 1
            document = {
                "response": {
                    "code": 0,
                    "comment": "",
                    "start_from": start,
                    "next_start": 0 if last else start + PAGE_SIZE,
                    "count": len(chunk),
                    "log_id": f"log-{index}",
                },
                "connections": chunk,
            }
            body = render_json(document) if fmt == "json" else render_xml(document)
            if body_of is not None:
                body = body_of(index, body)
            writer.add_page(
                index, body, log_id=f"log-{index}", connections=len(chunk), start_from=start, url="https://x/"
            )
        writer.commit({"api_version": "v2", "fetch_started_at": "t0", "fetch_finished_at": "t1"})


def partition_bytes(data_dir: Path, snapshot_date: date) -> dict[str, dict[str, bytes]]:
    """Every file of every table's partition, by table and file name."""
    return {
        table: {path.name: path.read_bytes() for path in published_files(data_dir, table, snapshot_date)}
        for table in TABLES
    }


def staging_leftovers(data_dir: Path) -> list[Path]:
    """What a fetch or flatten left in staging (nothing, after success or failure), and any hidden folder in
    the data folders (staging lives outside them)."""
    staging = data_dir / STAGING_DIR
    found = list(staging.iterdir()) if staging.is_dir() else []
    return sorted(found + [p for p in data_dir.glob("*/**/.*") if p.is_dir()])

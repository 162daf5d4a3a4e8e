"""Land hand-made raw snapshots with the fetch's own writer, for tests that start from raw pages."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from joor_pipeline import layout
from joor_pipeline.flatten import TABLES
from joor_pipeline.layout import DEFAULT_ACCOUNT, SnapshotKey
from joor_pipeline.sandbox.render import render_json, render_xml
from joor_pipeline.storage.access import open_uri
from joor_pipeline.storage.parquet import published_files
from joor_pipeline.storage.raw import open_raw_snapshot, read_manifest

PAGE_SIZE = 100


def snap(day: date, account: str = DEFAULT_ACCOUNT) -> SnapshotKey:
    """The key of a snapshot (the default account unless told)."""
    return SnapshotKey(account, day)


def land(
    data_dir: Path,
    snapshot_date: date,
    connections: list[dict[str, Any]],
    fmt: str = "json",
    *,
    body_of: Callable[[int, bytes], bytes] | None = None,
    account: str = DEFAULT_ACCOUNT,
) -> None:
    """Land ``connections`` as raw pages of 100 with the fetch's own writer; ``body_of`` may spoil a page."""
    chunks = [connections[i : i + PAGE_SIZE] for i in range(0, len(connections), PAGE_SIZE)]
    with open_raw_snapshot(data_dir, snap(snapshot_date, account), fmt) as writer:
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


def raw_snapshot_dir(data_dir: Path, snapshot_date: date, *, account: str = DEFAULT_ACCOUNT) -> Path:
    """The folder of a raw snapshot in a local data directory."""
    return data_dir / layout.raw_snapshot(snap(snapshot_date, account))


def raw_pages(data_dir: Path, snapshot_date: date, *, account: str = DEFAULT_ACCOUNT) -> list[Path]:
    """The page files of a local raw snapshot, in its manifest's order."""
    manifest = read_manifest(data_dir, snap(snapshot_date, account))
    return [raw_snapshot_dir(data_dir, snapshot_date, account=account) / page["file"] for page in manifest["pages"]]


def partition_dir(data_dir: Path, table: str, snapshot_date: date, *, account: str = DEFAULT_ACCOUNT) -> Path:
    """The folder of one table's partition in a local data directory."""
    return data_dir / layout.table_partition(table, snap(snapshot_date, account))


def parquet_path(data_dir: Path, table: str, snapshot_date: date, *, account: str = DEFAULT_ACCOUNT) -> Path:
    """The first published file of one table's partition in a local data directory."""
    return Path(published_files(data_dir, table, snap(snapshot_date, account))[0])


def partition_bytes(data_dir: Path, snapshot_date: date, *, account: str = DEFAULT_ACCOUNT) -> dict[str, list[bytes]]:
    """Every file of every table's partition, by table, in row order (their names carry the publication id)."""
    found: dict[str, list[bytes]] = {}
    for table in TABLES:
        contents = []
        for file in published_files(data_dir, table, snap(snapshot_date, account)):
            with open_uri(file) as handle:  # through whichever store holds them
                contents.append(handle.read())
        found[table] = contents
    return found


def staging_leftovers(data_dir: Path) -> list[Path]:
    """What a fetch or flatten left in staging (nothing, after success or failure), and any hidden folder in
    the data folders (staging lives outside them)."""
    staging = data_dir / layout.STAGING
    found = list(staging.iterdir()) if staging.is_dir() else []
    return sorted(found + [p for p in data_dir.glob("*/**/.*") if p.is_dir()])

"""The raw landing zone: every page exactly as JOOR sent it, plus a manifest written last.

Layout::

    $JOOR_DATA_DIR/raw/connections/snapshot_date=YYYY-MM-DD/
        page-00000.json        # or .xml: the response body, byte for byte
        page-00001.json
        _manifest.json         # written last: pages, counts, log_ids, format, timings (never a secret)

A snapshot directory without ``_manifest.json`` is incomplete; the swap makes that state invisible anyway.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Final

from joor_pipeline.storage.atomic import replace_dir, staging_dir, write_bytes_durably

RAW_CONNECTIONS: Final = Path("raw") / "connections"
MANIFEST_NAME: Final = "_manifest.json"


class SnapshotNotFound(FileNotFoundError):
    """No complete raw snapshot exists for that date."""


def raw_snapshot_dir(data_dir: Path, snapshot_date: date) -> Path:
    """Where the raw pages of one snapshot live."""
    return data_dir / RAW_CONNECTIONS / f"snapshot_date={snapshot_date.isoformat()}"


def page_file_name(index: int, fmt: str) -> str:
    """``page-00000.json`` style names: sortable, one per fetched page."""
    return f"page-{index:05d}.{fmt}"


@dataclass
class RawPageRecord:
    """One landed page, as recorded in the manifest."""

    page: int
    file: str
    log_id: str | None
    connections: int
    start_from: int
    bytes: int
    sha256: str
    url: str


@dataclass
class RawSnapshotWriter:
    """Collects pages in a staging directory; :meth:`commit` writes the manifest and swaps the snapshot in."""

    data_dir: Path
    snapshot_date: date
    fmt: str
    staging: Path
    pages: list[RawPageRecord] = field(default_factory=list)

    def add_page(
        self, index: int, body: bytes, *, log_id: str | None, connections: int, start_from: int, url: str
    ) -> RawPageRecord:
        """Land one response body untouched."""
        name = page_file_name(index, self.fmt)
        write_bytes_durably(self.staging / name, body)
        record = RawPageRecord(
            page=index,
            file=name,
            log_id=log_id,
            connections=connections,
            start_from=start_from,
            bytes=len(body),
            sha256=hashlib.sha256(body).hexdigest(),
            url=url,
        )
        self.pages.append(record)
        return record

    def commit(self, metadata: dict[str, Any]) -> dict[str, Any]:
        """Write ``_manifest.json`` last and atomically replace the snapshot directory."""
        manifest = {
            "snapshot_date": self.snapshot_date.isoformat(),
            "format": self.fmt,
            **metadata,
            "page_count": len(self.pages),
            "connections": sum(p.connections for p in self.pages),
            "pages": [vars(p) for p in self.pages],
        }
        write_bytes_durably(
            self.staging / MANIFEST_NAME, json.dumps(manifest, indent=2, ensure_ascii=False).encode() + b"\n"
        )
        target = raw_snapshot_dir(self.data_dir, self.snapshot_date)
        replace_dir(self.staging, target, trash=self.staging.parent / "trash")
        return manifest


@contextmanager
def open_raw_snapshot(data_dir: Path, snapshot_date: date, fmt: str) -> Iterator[RawSnapshotWriter]:
    """A :class:`RawSnapshotWriter` over a staging directory; on error nothing of it remains."""
    with staging_dir(data_dir / RAW_CONNECTIONS) as staging:
        pages = staging / "snapshot"
        pages.mkdir()
        yield RawSnapshotWriter(data_dir, snapshot_date, fmt, pages)


def read_manifest(data_dir: Path, snapshot_date: date) -> dict[str, Any]:
    """The manifest of a complete raw snapshot; a clear error when there is none."""
    directory = raw_snapshot_dir(data_dir, snapshot_date)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        if directory.is_dir():
            raise SnapshotNotFound(f"raw snapshot {directory} is incomplete: it has no {MANIFEST_NAME}")
        raise SnapshotNotFound(
            f"no raw snapshot for {snapshot_date.isoformat()} at {directory}; run "
            f"`joor-pipeline fetch --date {snapshot_date.isoformat()}` first"
        )
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SnapshotNotFound(f"cannot read {path}: {exc}") from None
    return manifest

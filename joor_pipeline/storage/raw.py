"""The raw landing zone: every page exactly as JOOR sent it, plus a manifest, published all at once.

Layout (keys of :mod:`joor_pipeline.layout`)::

    raw/connections/account=<name>/snapshot_date=YYYY-MM-DD/
        page-00000-<publication id>.json   # or .xml: the response body, byte for byte
        page-00001-<publication id>.json
        _manifest.json                     # the switch: pages, counts, log_ids, format, timings (never a secret)

The pages are staged in the local scratch directory and the snapshot is published by
:mod:`~joor_pipeline.storage.publish` (crash-safe, one fetch or flatten per account and date at a time). A snapshot
is the pages its ``_manifest.json`` lists; a folder without one is not a snapshot (it is reported as incomplete).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from joor_pipeline import layout
from joor_pipeline.joor.errors import PayloadError
from joor_pipeline.joor.parse import Canonical, RecordDecoder, parse_page
from joor_pipeline.layout import DEFAULT_ACCOUNT, SnapshotKey
from joor_pipeline.storage.access import local_folder
from joor_pipeline.storage.durable import write_durably
from joor_pipeline.storage.factory import store_of
from joor_pipeline.storage.publish import Publication, publication
from joor_pipeline.storage.store import StoreError


class SnapshotNotFound(FileNotFoundError):
    """No complete raw snapshot exists for that date."""


def page_file_name(index: int, fmt: str) -> str:
    """``page-00000.json`` style names: sortable, one per fetched page (published with the publication id)."""
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
    """Collects pages in a staging directory; :meth:`commit` writes the manifest and publishes the snapshot."""

    data_dir: Path
    key: SnapshotKey
    fmt: str
    staging: Path
    publication: Publication
    pages: list[RawPageRecord] = field(default_factory=list)

    def add_page(
        self, index: int, body: bytes, *, log_id: str | None, connections: int, start_from: int, url: str
    ) -> RawPageRecord:
        """Land one response body untouched."""
        name = page_file_name(index, self.fmt)
        write_durably(self.staging / name, body)
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
        """Write ``_manifest.json`` and publish the snapshot in place of the previous one; the published manifest."""
        manifest = {
            "account": self.key.account,
            "snapshot_date": self.key.snapshot_date.isoformat(),
            "format": self.fmt,
            **metadata,
            "publication_id": self.publication.id,
            "page_count": len(self.pages),
            "connections": sum(p.connections for p in self.pages),
            "pages": [vars(p) for p in self.pages],
        }
        payload = json.dumps(manifest, indent=2, ensure_ascii=False).encode() + b"\n"
        write_durably(self.staging / layout.MANIFEST, payload)
        self.publication.publish()
        return read_manifest(self.data_dir, self.key)


@contextmanager
def open_raw_snapshot(data_dir: Path, key: SnapshotKey, fmt: str) -> Iterator[RawSnapshotWriter]:
    """A :class:`RawSnapshotWriter` over a staging directory; on error nothing of it remains.

    Holds the date's lock (``SnapshotBusy`` when another process fetches or flattens it) until the block ends.
    """
    target = layout.raw_snapshot(key)
    with publication(data_dir, key, "raw", [target]) as pub:
        pages = pub.staged(target)
        pages.mkdir()
        yield RawSnapshotWriter(data_dir, key, fmt, pages, pub)


def raw_snapshot_exists(data_dir: Path, key: SnapshotKey) -> bool:
    """True when a complete raw snapshot of ``key`` is published (its manifest exists)."""
    return store_of(data_dir).version(layout.manifest(layout.raw_snapshot(key))) is not None


def _fetch_first(key: SnapshotKey) -> str:
    option = f" --account {key.account}" if key.account != DEFAULT_ACCOUNT else ""
    # JOOR serves only today's state: a past date's fetch must say it files today's connections under that date
    past = key.snapshot_date < datetime.now(UTC).date()
    backdated = " --allow-backdated` (it files today's JOOR connections under that date)" if past else "`"
    return f"run `joor-pipeline fetch{option} --date {key.snapshot_date.isoformat()}{backdated} first"


def read_manifest(data_dir: Path, key: SnapshotKey) -> dict[str, Any]:
    """The manifest of a complete raw snapshot; a clear error when there is none."""
    store = store_of(data_dir)
    folder = layout.raw_snapshot(key)
    try:
        found = store.read(layout.manifest(folder))
        if found is None and store.list(folder):
            raise SnapshotNotFound(f"raw snapshot {store.uri(folder)} is incomplete: it has no {layout.MANIFEST}")
    except StoreError as exc:
        raise SnapshotNotFound(str(exc)) from None
    if found is None:
        raise SnapshotNotFound(f"no raw snapshot for {key} at {store.uri(folder)}; {_fetch_first(key)}")
    try:
        manifest: dict[str, Any] = json.loads(found[0])
    except ValueError as exc:
        raise SnapshotNotFound(f"cannot read {store.uri(layout.manifest(folder))}: {exc}") from None
    return manifest


# ---- reading a landed snapshot back ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RawPageEntry:
    """One page as the raw snapshot's manifest lists it."""

    page: int
    file: str
    log_id: str | None
    sha256: str | None


@dataclass(frozen=True)
class RawSnapshot:
    directory: Path
    format: str
    pages: list[RawPageEntry]


def read_raw_snapshot(data_dir: Path, key: SnapshotKey) -> RawSnapshot:
    """A complete raw snapshot's format and pages, from its manifest, checked enough to trust names and order.

    Its ``directory`` is local: the snapshot's own folder on local disk, else a copy of the pages the manifest
    lists, downloaded into the local work directory once per publication.
    """
    folder = layout.raw_snapshot(key)
    manifest = read_manifest(data_dir, key)

    def broken(reason: str) -> SnapshotNotFound:
        where = store_of(data_dir).uri(layout.manifest(folder))
        return SnapshotNotFound(f"raw snapshot {where} is unusable: {reason}")

    if not isinstance(manifest, dict):
        raise broken("it is not a JSON object")
    if manifest.get("snapshot_date", key.snapshot_date.isoformat()) != key.snapshot_date.isoformat():
        raise broken(f"it is for snapshot_date {manifest.get('snapshot_date')!r}")
    if manifest.get("account", key.account) != key.account:
        raise broken(f"it is for account {manifest.get('account')!r}")
    fmt = manifest.get("format")
    if fmt not in ("json", "xml"):
        raise broken(f"format is {fmt!r}, expected 'json' or 'xml'")
    pages = manifest.get("pages")
    if not isinstance(pages, list):
        raise broken("'pages' is not a list")
    entries: list[RawPageEntry] = []
    sizes: dict[str, int | None] = {}
    for index, page in enumerate(pages):
        if not isinstance(page, dict):
            raise broken(f"pages[{index}] is not an object")
        number, file, log_id, sha = page.get("page"), page.get("file"), page.get("log_id"), page.get("sha256")
        if type(number) is not int or not isinstance(file, str) or Path(file).name != file or file in ("", ".."):
            raise broken(f"pages[{index}] needs an integer 'page' and a plain file name 'file'")
        entries.append(
            RawPageEntry(
                page=number,
                file=file,
                log_id=log_id if isinstance(log_id, str) and log_id else None,
                sha256=sha if isinstance(sha, str) and sha else None,
            )
        )
        sizes[file] = page.get("bytes") if isinstance(page.get("bytes"), int) else None
    raw_dir = local_folder(data_dir, folder, sizes, str(manifest.get("publication_id") or ""))
    return RawSnapshot(raw_dir, fmt, entries)


def read_page(
    raw_dir: Path, entry: RawPageEntry, fmt: str, *, records: RecordDecoder | None = None
) -> tuple[list[Canonical], str | None]:
    """One landed page's connections and log_id; a PayloadError names the file and its log_id. With ``records``, a
    clean JSON page's connections come as records (see :func:`~joor_pipeline.joor.parse.parse_json`)."""
    path = raw_dir / entry.file
    try:
        body = path.read_bytes()
    except FileNotFoundError:
        raise SnapshotNotFound(
            f"raw snapshot {raw_dir} is incomplete: {entry.file} is in the manifest but not on disk"
        ) from None
    if entry.sha256 is not None and hashlib.sha256(body).hexdigest() != entry.sha256:
        raise PayloadError("page differs from the sha256 in the manifest", source=str(path), log_id=entry.log_id)
    try:
        page = parse_page(body, fmt, source=str(path), canonical=False, records=records)
    except PayloadError as exc:
        if exc.log_id is None and entry.log_id is not None:
            # The body carried no log_id (it may not even parse); the fetch recorded one in the manifest.
            raise PayloadError(exc.message, source=exc.source, log_id=entry.log_id) from None
        raise
    log_id = page.response.log_id or entry.log_id
    if page.response.code != 0:
        raise PayloadError(
            f"response.code is {page.response.code} ({page.response.comment!r})", source=str(path), log_id=log_id
        )
    return page.connections, log_id


def _pages(snapshot: RawSnapshot) -> Iterator[tuple[RawPageEntry, list[Canonical], str | None]]:
    for entry in snapshot.pages:
        connections, log_id = read_page(snapshot.directory, entry, snapshot.format)
        yield entry, connections, log_id


def iter_raw_pages(data_dir: Path, key: SnapshotKey) -> Iterator[tuple[RawPageEntry, list[Canonical], str | None]]:
    """Each page of a complete raw snapshot in manifest order: its entry, connections and log_id.

    JSON connections come as parsed (native leaves, see ``parse_json(canonical=False)``), XML ones canonical.

    One page is read at a time. Errors are those of :func:`flatten_snapshot`: ``SnapshotNotFound`` for a missing
    or unusable manifest or page file, ``PayloadError`` (naming the file and log_id) for a page that is not a
    JOOR envelope or does not match its sha256.
    """
    yield from _pages(read_raw_snapshot(data_dir, key))

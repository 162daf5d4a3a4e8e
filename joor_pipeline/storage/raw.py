"""The raw landing zone: every page exactly as JOOR sent it, plus a manifest written last.

Layout::

    $JOOR_DATA_DIR/raw/connections/account=<name>/snapshot_date=YYYY-MM-DD/
        page-00000.json        # or .xml: the response body, byte for byte
        page-00001.json
        _manifest.json         # written last: pages, counts, log_ids, format, timings (never a secret)

The pages are staged under ``$JOOR_DATA_DIR/_work/`` and the snapshot directory is replaced all at once by
:mod:`~joor_pipeline.storage.publish` (crash-safe, one fetch or flatten per date at a time), so a snapshot
directory without ``_manifest.json`` only comes from outside the pipeline; it is reported as incomplete.
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

from joor_pipeline.joor.errors import PayloadError
from joor_pipeline.joor.parse import Canonical, RecordDecoder, parse_page
from joor_pipeline.storage import objectstore
from joor_pipeline.storage.locks import DEFAULT_ACCOUNT, account_key
from joor_pipeline.storage.publish import Publication, publication, write_durably

RAW_CONNECTIONS: Final = Path("raw") / "connections"
MANIFEST_NAME: Final = "_manifest.json"


class SnapshotNotFound(FileNotFoundError):
    """No complete raw snapshot exists for that date."""


def raw_snapshot_target(snapshot_date: date, *, account: str = DEFAULT_ACCOUNT) -> Path:
    """The raw snapshot's directory relative to the data directory."""
    return RAW_CONNECTIONS / account_key(account) / f"snapshot_date={snapshot_date.isoformat()}"


def raw_snapshot_dir(data_dir: Path, snapshot_date: date, *, account: str = DEFAULT_ACCOUNT) -> Path:
    """Where the raw pages of one account's snapshot live."""
    return data_dir / raw_snapshot_target(snapshot_date, account=account)


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
    """Collects pages in a staging directory; :meth:`commit` writes the manifest and publishes the snapshot."""

    data_dir: Path
    snapshot_date: date
    fmt: str
    staging: Path
    publication: Publication
    pages: list[RawPageRecord] = field(default_factory=list)
    account: str = DEFAULT_ACCOUNT

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
        """Write ``_manifest.json`` last and publish the snapshot directory in place of the previous one."""
        manifest = {
            "account": self.account,
            "snapshot_date": self.snapshot_date.isoformat(),
            "format": self.fmt,
            **metadata,
            "publication_id": self.publication.id,
            "page_count": len(self.pages),
            "connections": sum(p.connections for p in self.pages),
            "pages": [vars(p) for p in self.pages],
        }
        write_durably(self.staging / MANIFEST_NAME, json.dumps(manifest, indent=2, ensure_ascii=False).encode() + b"\n")
        self.publication.publish([raw_snapshot_target(self.snapshot_date, account=self.account)])
        return manifest


@contextmanager
def open_raw_snapshot(
    data_dir: Path, snapshot_date: date, fmt: str, *, account: str = DEFAULT_ACCOUNT
) -> Iterator[RawSnapshotWriter]:
    """A :class:`RawSnapshotWriter` over a staging directory; on error nothing of it remains.

    Holds the date's lock (``SnapshotBusy`` when another process fetches or flattens it) until the block ends.
    """
    with publication(data_dir, snapshot_date, "raw", account=account) as pub:
        pages = pub.staged(raw_snapshot_target(snapshot_date, account=account))
        pages.mkdir()
        yield RawSnapshotWriter(data_dir, snapshot_date, fmt, pages, pub, account=account)


def raw_snapshot_exists(data_dir: Path, snapshot_date: date, *, account: str = DEFAULT_ACCOUNT) -> bool:
    """True when a complete raw snapshot of ``snapshot_date`` is published (its manifest exists)."""
    store = objectstore.store_of(data_dir)
    if store is not None:
        return store.exists(raw_snapshot_target(snapshot_date, account=account) / MANIFEST_NAME)
    return (raw_snapshot_dir(data_dir, snapshot_date, account=account) / MANIFEST_NAME).is_file()


def read_manifest(data_dir: Path, snapshot_date: date, *, account: str = DEFAULT_ACCOUNT) -> dict[str, Any]:
    """The manifest of a complete raw snapshot; a clear error when there is none."""
    store = objectstore.store_of(data_dir)
    if store is not None:
        target = raw_snapshot_target(snapshot_date, account=account)
        try:
            found = objectstore.read_manifest(store, target)
        except objectstore.StoreError as exc:
            raise SnapshotNotFound(str(exc)) from None
        if found is None:
            raise SnapshotNotFound(
                f"no raw snapshot for {snapshot_date.isoformat()} at {store.uri(target)}; run "
                f"`joor-pipeline fetch{f' --account {account}' if account != DEFAULT_ACCOUNT else ''} "
                f"--date {snapshot_date.isoformat()}` first"
            )
        return found
    directory = raw_snapshot_dir(data_dir, snapshot_date, account=account)
    path = directory / MANIFEST_NAME
    if not path.is_file():
        if directory.is_dir():
            raise SnapshotNotFound(f"raw snapshot {directory} is incomplete: it has no {MANIFEST_NAME}")
        raise SnapshotNotFound(
            f"no raw snapshot for {snapshot_date.isoformat()} at {directory}; run "
            f"`joor-pipeline fetch{f' --account {account}' if account != DEFAULT_ACCOUNT else ''} "
            f"--date {snapshot_date.isoformat()}` first"
        )
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SnapshotNotFound(f"cannot read {path}: {exc}") from None
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


def read_raw_snapshot(data_dir: Path, snapshot_date: date, *, account: str = DEFAULT_ACCOUNT) -> RawSnapshot:
    """A complete raw snapshot's format and pages, from its manifest, checked enough to trust names and order."""
    raw_dir = raw_snapshot_dir(data_dir, snapshot_date, account=account)
    manifest = read_manifest(data_dir, snapshot_date, account=account)

    def broken(reason: str) -> SnapshotNotFound:
        return SnapshotNotFound(f"raw snapshot {raw_dir} has an unusable _manifest.json: {reason}")

    if not isinstance(manifest, dict):
        raise broken("it is not a JSON object")
    if manifest.get("snapshot_date", snapshot_date.isoformat()) != snapshot_date.isoformat():
        raise broken(f"it is for snapshot_date {manifest.get('snapshot_date')!r}")
    if manifest.get("account", account) != account:
        raise broken(f"it is for account {manifest.get('account')!r}")
    fmt = manifest.get("format")
    if fmt not in ("json", "xml"):
        raise broken(f"format is {fmt!r}, expected 'json' or 'xml'")
    pages = manifest.get("pages")
    if not isinstance(pages, list):
        raise broken("'pages' is not a list")
    entries: list[RawPageEntry] = []
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
    store = objectstore.store_of(data_dir)
    if store is not None:  # the pages the manifest lists, downloaded into the local work directory
        raw_dir = objectstore.cached_pages(
            store, data_dir, raw_snapshot_target(snapshot_date, account=account), manifest
        )
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


def iter_raw_pages(
    data_dir: Path, snapshot_date: date, *, account: str = DEFAULT_ACCOUNT
) -> Iterator[tuple[RawPageEntry, list[Canonical], str | None]]:
    """Each page of a complete raw snapshot in manifest order: its entry, connections and log_id.

    JSON connections come as parsed (native leaves, see ``parse_json(canonical=False)``), XML ones canonical.

    One page is read at a time. Errors are those of :func:`flatten_snapshot`: ``SnapshotNotFound`` for a missing
    or unusable manifest or page file, ``PayloadError`` (naming the file and log_id) for a page that is not a
    JOOR envelope or does not match its sha256.
    """
    yield from _pages(read_raw_snapshot(data_dir, snapshot_date, account=account))

"""``JOOR_DATA_DIR=s3://bucket/prefix``: the data on an object store, the work on a local scratch directory.

The layout in the bucket is the local one (``raw/``, ``parquet/``, ``joor.duckdb``, ``_work/``), but a process
never works in the bucket: it works in a local *work directory* (``JOOR_WORK_DIR``, by default a folder per URL
under the user's cache directory) that is bound to the URL by ``_work/store.json``. Every function of the storage
modules still takes that local directory as ``data_dir``; the primitives ask :func:`store_of` whether it is bound
to a store and branch there. Staging, the flatten's output, the audit and the dbt build happen on local disk as
before; what changes:

- **Publishing** (:func:`publish`, called by :meth:`~joor_pipeline.storage.publish.Publication.publish`): the
  staged files are uploaded under unique names (``part-00000-<publication id>.parquet``), next to the live ones,
  where nothing refers to them yet; a journal object ``_work/journals/<id>.json`` is created (``If-None-Match:
  *``): the commit point; then each target's ``_manifest.json`` is replaced by compare-and-swap (``If-Match`` the
  ETag read when staging began, or ``If-None-Match: *`` for a new partition); the journal is deleted, then the
  files the old manifests listed. The raw snapshot's manifest is thus written last, as on disk.
- **Recovery** (:func:`recover`): a journal left by a dead process is rolled forward (its staged manifests were
  uploaded before it), under its date's lease; uploads of a publication killed before its journal are deleted
  by the next publication of that date (:func:`sweep`), which holds the lease.
- **The per-date lock** is a lease object at the lock path, created only if absent, renewed by a thread of the
  live writer every third of ``JOOR_STORE_LEASE_SECONDS``, and taken over by compare-and-swap once expired.
- **Readers** resolve partitions only through manifests (:func:`published_uris`, :func:`read_manifest`), never
  by listing, so a killed run is never visible. The raw pages a flatten reads are downloaded, as the manifest
  lists them, into a local cache; Parquet is read in place (``s3://`` paths; DuckDB through
  :func:`register`, pyarrow through :func:`parquet_file`).

Conditional writes go through botocore's client (``put_object`` with ``IfMatch`` / ``IfNoneMatch``); reads for
DuckDB and pyarrow through s3fs. Both take credentials and endpoint from the standard AWS variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``, or a profile); nothing
here logs or stores them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Final

from joor_pipeline.joor.errors import JoorError
from joor_pipeline.storage.locks import DEFAULT_ACCOUNT, WORK_DIR, SnapshotBusy, holder_description

if TYPE_CHECKING:
    import duckdb
    import pyarrow.parquet as pq

    from joor_pipeline.storage.publish import Publication

log = logging.getLogger(__name__)

BINDING_FILE: Final = WORK_DIR / "store.json"
JOURNALS: Final = WORK_DIR / "journals"
CACHE_DIR: Final = WORK_DIR / "store-cache"
MANIFEST: Final = "_manifest.json"
DEFAULT_LEASE_SECONDS: Final = 60.0
TRANSFER_THREADS: Final = 16
_URL: Final = re.compile(r"^s3:/{1,2}([a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(?:/(.*))?$")
_OTHER_URL: Final = re.compile(r"^([a-z][a-z0-9+.\-]*):/")


class StoreError(JoorError):
    """The object store refused or failed a request (named, with the object's URL; never a credential)."""


class Conflict(StoreError):
    """A conditional write lost: the object exists, or changed since its ETag was read."""


# ---- the URL and its local work directory ---------------------------------------------------------------------


def parse_store_url(text: str) -> str | None:
    """``s3://bucket/prefix`` normalised (no trailing slash), or None for a local path.

    Also accepts ``s3:/bucket`` (what ``pathlib`` leaves of an URL). Another scheme is an error, named.
    """
    found = _URL.match(text)
    if found is None:
        if text.startswith("s3:"):
            raise StoreError(f"{text!r} is not a valid s3://bucket/prefix URL (bucket: 3-63 of a-z 0-9 . -)")
        other = _OTHER_URL.match(text)
        if other is not None and len(other.group(1)) > 1:  # "C:/..." is a Windows drive, not a scheme
            raise StoreError(
                f"{text!r}: only s3:// object stores are supported (S3 or an S3-compatible endpoint given by "
                f"AWS_ENDPOINT_URL), not {other.group(1)}://"
            )
        return None
    prefix = (found.group(2) or "").strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise StoreError(f"{text!r} has an empty, '.' or '..' path segment")
    return f"s3://{found.group(1)}/{prefix}".rstrip("/")


def default_work_dir(url: str) -> Path:
    """A work directory per URL under the user's cache directory (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", url.removeprefix("s3://")).strip("-")[:60]
    return (cache / "joor-pipeline" / f"{slug}-{hashlib.sha256(url.encode()).hexdigest()[:8]}").absolute()


def bind(url: str, work_dir: Path | None = None) -> Path:
    """The local work directory of ``url`` (``JOOR_WORK_DIR`` or :func:`default_work_dir`), bound to it."""
    configured = os.environ.get("JOOR_WORK_DIR", "").strip()
    work = (work_dir or (Path(configured) if configured else default_work_dir(url))).expanduser().absolute()
    binding = work / BINDING_FILE
    try:
        bound = json.loads(binding.read_text(encoding="utf-8")).get("url")
    except (OSError, ValueError, AttributeError):
        bound = None
    if bound is not None and bound != url:
        raise StoreError(
            f"work directory {work} belongs to {bound}, not {url}: give each data directory its own JOOR_WORK_DIR"
        )
    if bound is None:
        binding.parent.mkdir(parents=True, exist_ok=True)
        scratch = binding.with_name(f".{binding.name}.{os.getpid()}.tmp")
        scratch.write_text(json.dumps({"url": url}) + "\n", encoding="utf-8")
        os.replace(scratch, binding)
    return work


_stores: dict[Path, ObjectStore] = {}
_stores_guard = threading.Lock()


def store_of(data_dir: Path) -> ObjectStore | None:
    """The object store a work directory is bound to; None for a plain local data directory."""
    key = data_dir.absolute()
    with _stores_guard:
        store = _stores.get(key)
    if store is not None:
        return store
    try:
        url = json.loads((key / BINDING_FILE).read_text(encoding="utf-8"))["url"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"cannot read {key / BINDING_FILE}: {exc}") from None
    parsed = parse_store_url(url)
    if parsed is None:
        raise StoreError(f"{key / BINDING_FILE} names {url!r}, not an s3:// URL")
    store = ObjectStore(parsed)
    with _stores_guard:
        _stores[key] = store
    return store


# ---- the store -------------------------------------------------------------------------------------------------


def _rel(path: Path | PurePosixPath | str) -> str:
    text = PurePosixPath(path).as_posix() if not isinstance(path, str) else path
    return text.strip("/")


@dataclass
class ObjectStore:
    """One ``s3://bucket/prefix``: keys are data-directory-relative paths under the prefix."""

    url: str
    bucket: str = field(init=False)
    prefix: str = field(init=False)

    def __post_init__(self) -> None:
        rest = self.url.removeprefix("s3://")
        self.bucket, _, self.prefix = rest.partition("/")

    def key(self, rel: Path | PurePosixPath | str) -> str:
        return f"{self.prefix}/{_rel(rel)}" if self.prefix else _rel(rel)

    def uri(self, rel: Path | PurePosixPath | str) -> str:
        return f"s3://{self.bucket}/{self.key(rel)}"

    @cached_property
    def client(self) -> Any:
        import botocore.config
        import botocore.session

        config = botocore.config.Config(max_pool_connections=TRANSFER_THREADS + 4)
        return botocore.session.get_session().create_client("s3", config=config)

    @cached_property
    def fs(self) -> Any:
        """An s3fs file system over the same account (for DuckDB and pyarrow)."""
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True)

    def _call(self, operation: str, rel: Path | PurePosixPath | str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, operation)(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                raise Conflict(f"{self.uri(rel)}: {code or status}") from None
            if code in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(self.uri(rel)) from None
            raise StoreError(
                f"{operation} {self.uri(rel)} failed: {code or status} {error.get('Message', '')}"
            ) from None
        except BotoCoreError as exc:
            raise StoreError(f"{operation} {self.uri(rel)} failed: {type(exc).__name__}: {exc}") from None

    def get(self, rel: Path | PurePosixPath | str) -> tuple[bytes, str] | None:
        """The object's bytes and ETag; None when there is none."""
        try:
            response = self._call("get_object", rel, Key=self.key(rel))
        except FileNotFoundError:
            return None
        with response["Body"] as body:
            return body.read(), str(response["ETag"])

    def put(
        self, rel: Path | PurePosixPath | str, body: bytes, *, if_match: str | None = None, if_absent: bool = False
    ) -> str:
        """Write an object (conditionally: ``if_match`` an ETag, or ``if_absent``); its new ETag. :class:`Conflict`
        when the condition does not hold."""
        extra: dict[str, str] = {}
        if if_match is not None:
            extra["IfMatch"] = if_match
        elif if_absent:
            extra["IfNoneMatch"] = "*"
        response = self._call("put_object", rel, Key=self.key(rel), Body=body, **extra)
        return str(response["ETag"])

    def upload(self, local: Path, rel: Path | PurePosixPath | str) -> None:
        with open(local, "rb") as handle:
            self._call("put_object", rel, Key=self.key(rel), Body=handle)

    def download(self, rel: Path | PurePosixPath | str, local: Path) -> None:
        response = self._call("get_object", rel, Key=self.key(rel))
        scratch = local.with_name(f".{local.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with response["Body"] as body, open(scratch, "wb") as out:
            for chunk in iter(lambda: body.read(1 << 20), b""):
                out.write(chunk)
        os.replace(scratch, local)

    def delete(self, rels: Iterable[Path | PurePosixPath | str]) -> None:
        keys = [self.key(rel) for rel in rels]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start : start + 1000]]
            self._call("delete_objects", self.prefix, Delete={"Objects": batch, "Quiet": True})

    def list(self, rel_prefix: Path | PurePosixPath | str) -> list[str]:
        """Relative paths of the objects under a folder (for writers' clean-up only: readers use manifests)."""
        base = self.key(rel_prefix).rstrip("/")
        start = f"{base}/" if base else ""
        found: list[str] = []
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            response = self._call("list_objects_v2", rel_prefix, Prefix=start, **extra)
            skip = len(self.prefix) + 1 if self.prefix else 0
            found.extend(item["Key"][skip:] for item in response.get("Contents", []))
            if not response.get("IsTruncated"):
                return found
            token = response["NextContinuationToken"]

    def exists(self, rel: Path | PurePosixPath | str) -> bool:
        try:
            self._call("head_object", rel, Key=self.key(rel))
        except FileNotFoundError:
            return False
        except StoreError as exc:
            if "404" in str(exc):
                return False
            raise
        return True

    def read_json(self, rel: Path | PurePosixPath | str) -> tuple[dict[str, Any], str] | None:
        got = self.get(rel)
        if got is None:
            return None
        try:
            value = json.loads(got[0])
        except ValueError as exc:
            raise StoreError(f"{self.uri(rel)} is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise StoreError(f"{self.uri(rel)} is not a JSON object")
        return value, got[1]


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, indent=2, ensure_ascii=False).encode() + b"\n"


# ---- readers ---------------------------------------------------------------------------------------------------


def read_manifest(store: ObjectStore, target: Path) -> dict[str, Any] | None:
    """A published target's manifest; None when there is none."""
    found = store.read_json(PurePosixPath(target) / MANIFEST)
    return None if found is None else found[0]


def _listed(manifest: dict[str, Any]) -> list[str]:
    """The file names a manifest refers to (raw ``pages[].file`` or Parquet ``files[].name``)."""
    names: list[str] = []
    for key, field_name in (("pages", "file"), ("files", "name")):
        for entry in manifest.get(key) or []:
            name = entry.get(field_name) if isinstance(entry, dict) else None
            if isinstance(name, str) and PurePosixPath(name).name == name and name not in ("", ".", ".."):
                names.append(name)
    return names


def published_uris(store: ObjectStore, target: Path) -> list[str] | None:
    """The ``s3://`` URLs of a published Parquet partition's files, in row order; None without a manifest."""
    manifest = read_manifest(store, target)
    if manifest is None:
        return None
    return [store.uri(PurePosixPath(target) / name) for name in _listed(manifest)]


def published_targets(store: ObjectStore, parent: Path, pattern: re.Pattern[str]) -> list[str]:
    """Names of the folders under ``parent`` that match ``pattern`` and hold a manifest."""
    names = set()
    for rel in store.list(parent):
        path = PurePosixPath(rel)
        if (
            path.name == MANIFEST
            and path.parent.parent == PurePosixPath(parent)
            and pattern.fullmatch(path.parent.name)
        ):
            names.add(path.parent.name)
    return sorted(names)


def cached_pages(store: ObjectStore, data_dir: Path, target: Path, manifest: dict[str, Any]) -> Path:
    """A local folder holding the files the raw manifest lists, downloaded once per publication."""
    base = data_dir / CACHE_DIR / target
    publication = str(manifest.get("publication_id") or "unknown")
    folder = base / publication
    folder.mkdir(parents=True, exist_ok=True)
    if base.is_dir():  # other publications of the same snapshot: superseded
        import shutil

        for other in base.iterdir():
            if other.name != publication:
                shutil.rmtree(other, ignore_errors=True)
    sizes = {
        entry["file"]: entry.get("bytes")
        for entry in manifest.get("pages") or []
        if isinstance(entry, dict) and isinstance(entry.get("file"), str)
    }
    wanted = [
        name
        for name in _listed(manifest)
        if not (folder / name).is_file() or (folder / name).stat().st_size != sizes.get(name)
    ]

    def one(name: str) -> None:
        with suppress(FileNotFoundError):  # read_page names the missing file
            store.download(PurePosixPath(target) / name, folder / name)

    if wanted:
        with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
            list(pool.map(one, wanted))
    return folder


def register(con: duckdb.DuckDBPyConnection, data_dir: Path) -> None:
    """Let a DuckDB connection read the store's ``s3://`` files (no-op for a local data directory)."""
    store = store_of(data_dir)
    if store is not None:
        con.register_filesystem(store.fs)


def parquet_file(path: Path | str) -> pq.ParquetFile:
    """A Parquet file, local or ``s3://`` (read through s3fs with the standard AWS variables)."""
    import pyarrow.parquet as pq

    if isinstance(path, str) and path.startswith("s3://"):
        store = ObjectStore(path[: path.index("/", 5)])
        return pq.ParquetFile(store.fs.open(path.removeprefix("s3://"), "rb"))
    return pq.ParquetFile(path)


# ---- leases: the per-date lock ---------------------------------------------------------------------------------


def lease_seconds() -> float:
    raw = os.environ.get("JOOR_STORE_LEASE_SECONDS", "").strip()
    try:
        value = float(raw) if raw else DEFAULT_LEASE_SECONDS
    except ValueError:
        raise StoreError(f"JOOR_STORE_LEASE_SECONDS must be a number of seconds, got {raw!r}") from None
    if not 1 <= value <= 3600:
        raise StoreError(f"JOOR_STORE_LEASE_SECONDS must be from 1 to 3600, got {raw!r}")
    return value


@dataclass
class Lease:
    """A lease object held by this process, renewed by a daemon thread until released."""

    store: ObjectStore
    rel: str
    token: str
    seconds: float
    etag: str
    lost: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def body(self) -> bytes:
        return _json(
            {
                **holder_description(),
                "token": self.token,
                "lease_seconds": self.seconds,
                "expires_at": time.time() + self.seconds,
            }
        )

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.etag = self.store.put(self.rel, self.body(), if_match=self.etag)
            except Conflict:
                self.lost = True
                log.error("lost the lease %s (taken over after it expired)", self.store.uri(self.rel))
                return
            except StoreError as exc:
                log.warning("could not renew the lease %s: %s", self.store.uri(self.rel), exc)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._renew, name="joor-lease", daemon=True)
        self._thread.start()

    def check(self) -> None:
        if self.lost:
            raise SnapshotBusy(f"the lease {self.store.uri(self.rel)} was lost: another process took the date over")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        found = self.store.read_json(self.rel)
        if found is not None and found[0].get("token") == self.token:
            self.store.delete([self.rel])


def acquire_lease(store: ObjectStore, rel: str, what: str) -> Lease:
    """Take the lease object ``rel`` (created if absent, taken over once expired), or :class:`SnapshotBusy`."""
    lease = Lease(store, rel, uuid.uuid4().hex, lease_seconds(), etag="")
    for _attempt in range(3):
        try:
            lease.etag = store.put(rel, lease.body(), if_absent=True)
            lease.start()
            return lease
        except Conflict:
            pass
        found = store.read_json(rel)
        if found is None:
            continue  # released meanwhile
        info, etag = found
        expires = info.get("expires_at")
        if isinstance(expires, int | float) and expires > time.time():
            until = datetime.fromtimestamp(expires, UTC).isoformat(timespec="seconds")
            raise SnapshotBusy(
                f"{what} is busy: pid {info.get('pid')} on {info.get('host')} ({info.get('command')!r}) holds the "
                f"lease {store.uri(rel)}, renewed until {until}; wait for it to finish, then try again"
            )
        try:
            lease.etag = store.put(rel, lease.body(), if_match=etag)
        except Conflict:
            continue
        log.warning("took over the expired lease %s of pid %s on %s", store.uri(rel), info.get("pid"), info.get("host"))
        lease.start()
        return lease
    raise SnapshotBusy(f"{what} is busy: its lease {store.uri(rel)} keeps changing hands")


# ---- publishing ------------------------------------------------------------------------------------------------


def unique_name(name: str, publication_id: str) -> str:
    """``part-00000.parquet`` -> ``part-00000-<id>.parquet``: a name no other publication writes."""
    path = PurePosixPath(name)
    return f"{path.stem}-{publication_id}{path.suffix}"


def _renamed(manifest: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    out = dict(manifest)
    for key, field_name in (("pages", "file"), ("files", "name")):
        if isinstance(out.get(key), list):
            out[key] = [
                {**entry, field_name: mapping.get(str(entry.get(field_name)), entry.get(field_name))}
                if isinstance(entry, dict)
                else entry
                for entry in out[key]
            ]
    return out


def staged_manifest(target: Path | str, publication_id: str) -> PurePosixPath:
    return PurePosixPath(target) / f"_manifest-{publication_id}.json"


def journal_path(publication_id: str) -> PurePosixPath:
    return PurePosixPath(JOURNALS) / f"{publication_id}.json"


def base_etags(store: ObjectStore, targets: Sequence[Path]) -> dict[str, str | None]:
    """Each target's manifest ETag now (None: no partition yet), read when staging begins."""
    found: dict[str, str | None] = {}
    for target in targets:
        got = store.get(PurePosixPath(target) / MANIFEST)
        found[_rel(target)] = None if got is None else got[1]
    return found


def publish(store: ObjectStore, pub: Publication, targets: Sequence[Path], lease: Lease | None) -> None:
    """Upload the staged targets and switch their manifests by compare-and-swap (see the module docstring)."""
    from joor_pipeline.storage.publish import NEW, PublishError

    uploads: list[tuple[Path, PurePosixPath]] = []
    manifests: dict[str, bytes] = {}
    for target in targets:
        local = pub.root / NEW / target
        manifest_path = local / MANIFEST
        if not manifest_path.is_file():
            raise PublishError(f"nothing staged for {target}: {manifest_path} is missing")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        names = sorted(path.name for path in local.iterdir() if path.is_file() and path.name != MANIFEST)
        mapping = {name: unique_name(name, pub.id) for name in names}
        uploads.extend((local / name, PurePosixPath(target) / mapping[name]) for name in names)
        manifests[_rel(target)] = _json({**_renamed(manifest, mapping), "publication_id": pub.id})
    bases = pub.base_etags if pub.base_etags is not None else base_etags(store, targets)
    old: dict[str, list[str]] = {}
    for target in targets:
        rel = _rel(target)
        got = store.read_json(PurePosixPath(target) / MANIFEST)
        etag = None if got is None else got[1]
        if rel in bases and etag != bases[rel]:
            raise PublishError(
                f"{store.uri(PurePosixPath(target) / MANIFEST)} changed since this publication began staging "
                "(another writer without the lease?); nothing was published"
            )
        bases[rel] = etag
        old[rel] = [] if got is None else [str(PurePosixPath(target) / name) for name in _listed(got[0])]
    with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
        list(pool.map(lambda item: store.upload(*item), uploads))
    for target in targets:
        store.put(staged_manifest(target, pub.id), manifests[_rel(target)])
    if lease is not None:
        lease.check()
    journal = {
        "publication_id": pub.id,
        "snapshot_date": pub.snapshot_date.isoformat(),
        "account": pub.account,
        "kind": pub.kind,
        "targets": [_rel(t) for t in targets],
        "bases": {_rel(t): bases[_rel(t)] for t in targets},
        "old_files": old,
        "committed_at": datetime.now(UTC).isoformat(),
    }
    store.put(journal_path(pub.id), _json(journal), if_absent=True)  # the commit point
    for target in targets:
        _swap(store, _rel(target), pub.id, manifests[_rel(target)], bases[_rel(target)])
    _finish(store, journal)


def _swap(store: ObjectStore, target: str, publication_id: str, body: bytes, base: str | None) -> None:
    from joor_pipeline.storage.publish import PublishError

    rel = PurePosixPath(target) / MANIFEST
    try:
        store.put(rel, body, if_match=base, if_absent=base is None)
    except Conflict:
        current = store.read_json(rel)
        if current is not None and current[0].get("publication_id") == publication_id:
            return  # switched already
        raise PublishError(
            f"{store.uri(rel)} changed under publication {publication_id} after its commit point; the next run "
            "completes the publication"
        ) from None


def _finish(store: ObjectStore, journal: dict[str, Any]) -> None:
    """After every swap: forget the journal, then delete what no manifest refers to any more."""
    publication_id = journal["publication_id"]
    store.delete([journal_path(publication_id)])
    garbage = [name for files in journal.get("old_files", {}).values() for name in files]
    garbage.extend(str(staged_manifest(target, publication_id)) for target in journal["targets"])
    live: set[str] = set()
    for target in journal["targets"]:  # a file kept by the new manifest (same name) is not garbage
        manifest = read_manifest(store, Path(target))
        live.update(str(PurePosixPath(target) / name) for name in _listed(manifest or {}))
    store.delete([name for name in garbage if name not in live])


def roll_forward(store: ObjectStore, journal: dict[str, Any]) -> None:
    """Finish a journaled publication: swap in each staged manifest that is not live yet (idempotent)."""
    publication_id = journal["publication_id"]
    for target in journal["targets"]:
        rel = PurePosixPath(target) / MANIFEST
        current = store.read_json(rel)
        if current is not None and current[0].get("publication_id") == publication_id:
            continue
        staged = store.get(staged_manifest(target, publication_id))
        if staged is None:
            raise StoreError(
                f"cannot complete publication {publication_id}: {staged_manifest(target, publication_id)} is gone"
            )
        store.put(rel, staged[0], if_match=None if current is None else current[1], if_absent=current is None)
    _finish(store, journal)
    log.warning(
        "recovered the interrupted publication %s of %s, account %s (%s) on %s: completed it",
        publication_id,
        journal.get("snapshot_date"),
        journal.get("account", DEFAULT_ACCOUNT),
        journal.get("kind"),
        store.url,
    )


def journals(store: ObjectStore) -> Iterator[dict[str, Any]]:
    for rel in sorted(store.list(JOURNALS)):
        found = store.read_json(rel)
        if found is not None:
            yield found[0]


def sweep(store: ObjectStore, targets: Sequence[Path]) -> list[str]:
    """Delete the objects under ``targets`` that their manifest does not list (uploads of killed runs).

    Only under the date's lease and with no journal of it pending: nobody else writes there then.
    """
    deleted: list[str] = []
    for target in targets:
        manifest = read_manifest(store, target) or {}
        keep = {MANIFEST, *_listed(manifest)}
        stray = [rel for rel in store.list(target) if PurePosixPath(rel).parent == PurePosixPath(target)]
        stray = [rel for rel in stray if PurePosixPath(rel).name not in keep]
        store.delete(stray)
        deleted.extend(stray)
    return deleted


def date_targets(snapshot_date: date, account: str = DEFAULT_ACCOUNT) -> list[Path]:
    """Every target a publication of ``snapshot_date`` may switch: the raw snapshot and the ten partitions."""
    from joor_pipeline.flatten import TABLES
    from joor_pipeline.storage.parquet import partition_target
    from joor_pipeline.storage.raw import raw_snapshot_target

    return [
        raw_snapshot_target(snapshot_date, account=account),
        *(partition_target(table, snapshot_date, account=account) for table in TABLES),
    ]


def kind_targets(kind: str, snapshot_date: date, account: str = DEFAULT_ACCOUNT) -> list[Path]:
    targets = date_targets(snapshot_date, account)
    return targets[:1] if kind == "raw" else targets[1:]


def recover(store: ObjectStore, data_dir: Path, current: date | None, account: str = DEFAULT_ACCOUNT) -> list[str]:
    """Roll forward the journals of dead publications (each under its date's lease), then sweep ``current``
    (of ``account``)."""
    from joor_pipeline.storage.publish import date_lock_if_free

    done: list[str] = []
    for journal in journals(store):
        day = date.fromisoformat(journal["snapshot_date"])
        with date_lock_if_free(data_dir, day, journal.get("account", DEFAULT_ACCOUNT)) as locked:
            if not locked:
                continue  # its writer is alive (or another run recovers it)
            # Re-read: the journal may have been finished while we waited.
            if store.exists(journal_path(journal["publication_id"])):
                roll_forward(store, journal)
                done.append(journal["publication_id"])
    if current is not None:
        stray = sweep(store, date_targets(current, account))
        if stray:
            log.warning(
                "deleted %d unreferenced object(s) of %s, account %s on %s (a run killed mid-upload)",
                len(stray),
                current,
                account,
                store.url,
            )
    return done


# ---- the warehouse file and the data directory setting ------------------------------------------------------


def local_data_dir(text: str) -> Path:
    """``JOOR_DATA_DIR`` as a local directory: itself, or the bound work directory of an ``s3://`` URL."""
    url = parse_store_url(text)
    return Path(text).expanduser() if url is None else bind(url)


def pull(store: ObjectStore, rel: Path | PurePosixPath | str, local: Path) -> bool:
    """Make ``local`` the store's copy of ``rel`` (downloaded only when its ETag changed); False if there is none
    (then ``local`` is removed too: a stale local copy must not stand in for a missing object)."""
    tag_file = local.with_name(local.name + ".etag")
    try:
        head = store._call("head_object", rel, Key=store.key(rel))
    except FileNotFoundError:
        head = None
    except StoreError as exc:
        if "404" not in str(exc):
            raise
        head = None
    if head is None:
        local.unlink(missing_ok=True)
        tag_file.unlink(missing_ok=True)
        return False
    etag = str(head["ETag"])
    if local.is_file() and tag_file.is_file() and tag_file.read_text(encoding="utf-8") == etag:
        return True
    local.parent.mkdir(parents=True, exist_ok=True)
    store.download(rel, local)
    tag_file.write_text(etag, encoding="utf-8")
    return True


def push(store: ObjectStore, local: Path, rel: Path | PurePosixPath | str) -> None:
    """Upload ``local`` as ``rel`` (one PUT: readers see the old object or the new one), remembering its ETag."""
    with open(local, "rb") as handle:
        response = store._call("put_object", rel, Key=store.key(rel), Body=handle)
    local.with_name(local.name + ".etag").write_text(str(response["ETag"]), encoding="utf-8")


def shown(data_dir: Path, path: Path) -> str:
    """Where a published path under ``data_dir`` is, for messages: its ``s3://`` URL on a store."""
    store = store_of(data_dir)
    if store is None:
        return str(path)
    try:
        return store.uri(path.relative_to(data_dir))
    except ValueError:
        return str(path)

"""``JOOR_DATA_DIR`` to a store: the one place that knows which backends exist.

``JOOR_DATA_DIR`` is a local directory or a URL. Either way the rest of the project is handed a *local directory*
(``data_dir``) and never asks which backend is behind it:

- a local directory is its own store (:class:`~joor_pipeline.storage.local.LocalStore`), and its ``_work/``
  holds the scratch (staging, quarantine, builds); a URL's work directory given as a local directory stands for
  the URL;
- a URL (``s3://bucket/prefix``, ``gs://bucket/prefix``, ``az://container/prefix``: the schemes of
  :data:`BACKENDS`, served by :mod:`~joor_pipeline.storage.cloud`) gets a local *work directory* (``JOOR_WORK_DIR``,
  by default a folder per URL under the user's cache directory) whose ``_work/`` holds the scratch, and which is
  *bound* to the URL by ``_work/store.json`` once the store has answered: a mistyped bucket never binds a work
  directory, so fixing the URL is enough. A work directory bound to another URL is refused (two data
  directories must not share their scratch).

:func:`open_data_dir` makes that directory and remembers its store; :func:`store_of` gives it back, inside
``storage/`` only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final

from joor_pipeline import layout
from joor_pipeline.joor.errors import ConfigError
from joor_pipeline.storage.cloud import CLOUDS, OTHER_SPELLINGS, cloud_store, parse_cloud_url
from joor_pipeline.storage.durable import write_json_atomically
from joor_pipeline.storage.lease import DEFAULT_LEASE_SECONDS
from joor_pipeline.storage.local import LocalStore
from joor_pipeline.storage.store import Store, StoreError


def _cloud_url(text: str) -> str:
    url = parse_cloud_url(text)
    if url is None:  # not reached: only a scheme of BACKENDS comes here
        raise StoreError(f"{text!r} is not an s3://, gs:// or az:// URL")
    return str(url)


def _cloud(url: str, lease_seconds: float) -> Store:
    return cloud_store(url, lease_seconds=lease_seconds)


#: URL scheme -> (normalise the URL, raising StoreError when it is malformed; open the store of a normal URL with
#: the lease life in seconds, raising :class:`~joor_pipeline.storage.cloud.MissingExtra`, a ConfigError, when the
#: cloud's optional packages are not installed).
BACKENDS: Final[dict[str, tuple[Callable[[str], str], Callable[[str, float], Store]]]] = {
    scheme: (_cloud_url, _cloud) for scheme in CLOUDS
}
_SCHEME: Final = re.compile(r"^([a-z][a-z0-9+.\-]*):/")

_stores: dict[Path, Store] = {}
_guard = threading.Lock()


def parse_location(text: str) -> str | None:
    """A data location's URL, normalised (``s3://bucket/prefix``, ``gs://...``, ``az://...``), or None for a local
    path. ConfigError for a malformed URL or a scheme no backend serves (naming the spelling to use, if any)."""
    found = _SCHEME.match(text)
    if found is None or len(found.group(1)) == 1:  # "C:/..." is a Windows drive, not a scheme
        return None
    scheme = found.group(1)
    if scheme not in BACKENDS and scheme not in OTHER_SPELLINGS:
        served = ", ".join(f"{name}://" for name in BACKENDS)
        raise ConfigError(f"{text!r}: only local directories and {served} URLs are supported, not {scheme}://")
    try:
        if scheme not in BACKENDS:
            parse_cloud_url(text)  # raises, naming the spelling to write instead (abfs:// -> az://...)
        return BACKENDS[scheme][0](text)
    except StoreError as exc:
        raise ConfigError(str(exc)) from None


def default_work_dir(url: str) -> Path:
    """A work directory per URL under the user's cache directory (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", url.split("://", 1)[-1]).strip("-")[:60]
    return (cache / "joor-pipeline" / f"{slug}-{hashlib.sha256(url.encode()).hexdigest()[:8]}").absolute()


def checked_directory(path: Path, name: str) -> Path:
    """``path`` made absolute, or a ConfigError naming ``name`` if it cannot hold data: not a directory, not
    writable, or not creatable (tried, and undone: nothing is left behind)."""
    path = path.expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is" if existing == path else f"would be under {existing}, which is"
        raise ConfigError(f"{name} {path} {where} not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "is" if existing == path else f"would be created in {existing}, which is"
        raise ConfigError(f"{name} {path} {where} not writable")
    if existing != path:
        made = []
        try:
            for parent in reversed([path, *path.parents]):
                if not parent.exists():
                    parent.mkdir()
                    made.append(parent)
        except OSError as exc:
            raise ConfigError(f"{name} {path} cannot be created: {exc.strerror or exc}") from None
        finally:
            for directory in reversed(made):
                directory.rmdir()
    return path


def _bound_url(work: Path) -> str | None:
    try:
        bound = json.loads((work / layout.BINDING).read_text(encoding="utf-8")).get("url")
    except (OSError, ValueError, AttributeError):
        return None
    return bound if isinstance(bound, str) else None


def open_data_dir(
    location: str | Path,
    *,
    work_dir: Path | None = None,
    lease_seconds: float = DEFAULT_LEASE_SECONDS,
    name: str = "JOOR_DATA_DIR",
) -> Path:
    """The local directory the data at ``location`` is worked on (see the module docstring), its store opened.

    ConfigError (naming ``name``, or ``JOOR_WORK_DIR``) for a location that cannot work: a malformed URL, an
    unknown scheme, a directory that cannot be written or made, a work directory bound to another URL.
    StoreError when the store does not answer (a missing bucket, no network, refused credentials).
    """
    text = str(location).strip()
    try:
        url = parse_location(text)
    except ConfigError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    if url is None:
        path = checked_directory(Path(text), name)
        url = _bound_url(path)
        if url is None:
            with _guard:
                _stores.setdefault(path.resolve(), LocalStore(path.resolve()))
            return path
        work_dir = path  # a URL's work directory, given in its place (as ``run`` hands it to Dagster)
    work = checked_directory(work_dir if work_dir is not None else default_work_dir(url), "JOOR_WORK_DIR")
    bound = _bound_url(work)
    if bound is not None and bound != url:
        raise ConfigError(
            f"JOOR_WORK_DIR {work} belongs to {bound}, not {url}: give each data directory its own JOOR_WORK_DIR"
        )
    with _guard:
        store = _stores.get(work.resolve())
    if store is None or store.url != url or getattr(store, "lease_seconds", lease_seconds) != lease_seconds:
        store = BACKENDS[url.split("://", 1)[0]][1](url, lease_seconds)
        if bound is None:
            store.list(layout.JOURNALS)  # the store answers (the bucket exists, the credentials work)...
            write_json_atomically(work / layout.BINDING, {"url": url})  # ...so the work directory is its
        with _guard:
            _stores[work.resolve()] = store
    return work


def store_of(data_dir: Path) -> Store:
    """The store of a directory given by :func:`open_data_dir` (a directory never opened is a local store, or
    the store its binding names)."""
    path = data_dir.resolve()
    with _guard:
        store = _stores.get(path)
    if store is not None:
        return store
    url = _bound_url(path)
    store = LocalStore(path) if url is None else BACKENDS[url.split("://", 1)[0]][1](url, DEFAULT_LEASE_SECONDS)
    with _guard:
        return _stores.setdefault(path, store)


def use_store(data_dir: Path, store: Store) -> None:
    """Make ``store`` the store of ``data_dir`` in this process, in place of the one its location opens: a seam for
    the tests (a store that fails on purpose, or a fake of a cloud whose emulator lacks a feature)."""
    with _guard:
        _stores[data_dir.resolve()] = store


def stores() -> list[Store]:
    """Every store this process has opened (to open a URI that one of them gave)."""
    with _guard:
        return list(_stores.values())

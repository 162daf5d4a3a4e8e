"""The lock of an object store: a lease object, written on the :class:`~joor_pipeline.storage.store.Store`
primitives alone, so every object-store backend's :meth:`~joor_pipeline.storage.store.Store.lock` is this.

A lease is created only if absent; its live holder renews it (compare-and-swap against the version it wrote)
every third of its life; another process takes it over, by compare-and-swap, once it has expired (so hosts'
clocks must agree to within a few seconds). A holder killed with its lease makes the next writer wait out the rest
of its life. A lease object that does not parse (junk, written by hand) is set aside under ``_work/damaged/`` and
taken over at once, with one warning line: it never blocks its date.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from joor_pipeline.storage.damaged import set_aside
from joor_pipeline.storage.locks import holder_description
from joor_pipeline.storage.store import Conflict, SnapshotBusy, Store, StoreError, Version

log = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS: Final = 60.0


@dataclass
class Lease:
    """A lease object held by this process, renewed by a daemon thread until released."""

    store: Store
    key: str
    token: str
    seconds: float
    version: Version = ""
    lost: bool = False
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def body(self) -> bytes:
        info = {**holder_description(), "token": self.token, "lease_seconds": self.seconds}
        return json.dumps({**info, "expires_at": time.time() + self.seconds}, indent=2).encode() + b"\n"

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.version = self.store.swap(self.key, self.body(), self.version)
            except Conflict:
                self.lost = True
                log.error("lost the lease %s (taken over after it expired)", self.store.uri(self.key))
                return
            except StoreError as exc:
                log.warning("could not renew the lease %s: %s", self.store.uri(self.key), exc)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._renew, name="joor-lease", daemon=True)
        self._thread.start()

    def check(self) -> None:
        if self.lost:
            raise SnapshotBusy(f"the lease {self.store.uri(self.key)} was lost: another process took it over")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        found = self.store.read(self.key)
        if found is not None and _parse(found[0]).get("token") == self.token:
            self.store.delete([self.key])


def _parse(data: bytes) -> dict[str, Any]:
    """A lease's fields; empty when it does not parse as one."""
    try:
        info = json.loads(data)
    except ValueError:
        return {}
    if not isinstance(info, dict) or not isinstance(info.get("expires_at"), int | float):
        return {}
    return info


def acquire_lease(store: Store, key: str, what: str, seconds: float) -> Lease:
    """Take the lease object ``key`` (created if absent, taken over once expired or unreadable), or raise
    :class:`SnapshotBusy` naming its live holder."""
    lease = Lease(store, key, uuid.uuid4().hex, seconds)
    for _attempt in range(3):
        try:
            lease.version = store.create(key, lease.body())
            lease.start()
            return lease
        except Conflict:
            pass
        found = store.read(key)
        if found is None:
            continue  # released meanwhile
        data, version = found
        info = _parse(data)
        if info and info["expires_at"] > time.time():
            until = datetime.fromtimestamp(info["expires_at"], UTC).isoformat(timespec="seconds")
            raise SnapshotBusy(
                f"{what} is busy: pid {info.get('pid')} on {info.get('host')} ({info.get('command')!r}) holds the "
                f"lease {store.uri(key)}, renewed until {until}; wait for it to finish, then try again"
            )
        try:
            lease.version = store.swap(key, lease.body(), version)
        except Conflict:
            continue
        if info:
            log.warning(
                "took over the expired lease %s of pid %s on %s", store.uri(key), info.get("pid"), info.get("host")
            )
        else:
            set_aside(store, key, data, "was not a lease (it does not parse) and was taken over", delete=False)
        lease.start()
        return lease
    raise SnapshotBusy(f"{what} is busy: its lease {store.uri(key)} keeps changing hands")

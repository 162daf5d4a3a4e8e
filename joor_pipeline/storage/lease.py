"""A lock on an object store: a *lease object*, written once here on the :class:`~joor_pipeline.storage.store.Store`
protocol's own primitives (create, swap, read, delete), so that it serves every cloud alike.

- **Taking it**: the lease object is created only if absent (:meth:`Store.create`). If it exists and its
  ``expires_at`` is in the future, its holder is alive: :class:`SnapshotBusy` at once, naming the holder. If it has
  expired (its holder died, or stopped renewing), it is taken over by compare-and-swap against the version just
  read, with one warning: of two processes taking it over at once, exactly one wins. A lease object that does not
  parse (truncated, written by hand) is set aside under ``_work/damaged/`` and taken over the same way, with one
  warning naming both: junk never blocks a date for ever.
- **Holding it**: a daemon thread of the holder renews it every third of its duration, by compare-and-swap
  against the version it wrote last. A renewal that loses means another process took the lease over (this one
  was too slow to renew, its clock or its network failed): the lease is *lost*. :meth:`Lease.check`, called
  before a commit point, re-reads the object and raises :class:`SnapshotBusy` if it is no longer this holder's.
- **Giving it up**: the object is deleted if it is still this holder's (its token).

Expiry is wall-clock time written by the holder, so the hosts' clocks must agree to within a small part of the
lease's duration (60 s by default, ``JOOR_STORE_LEASE_SECONDS``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Final

from joor_pipeline.storage.damaged import set_aside
from joor_pipeline.storage.locks import describe_holder, holder_description
from joor_pipeline.storage.store import Conflict, SnapshotBusy, Store, StoreError, Version

log = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS: Final = 60.0


def _parse(data: bytes) -> dict[str, Any] | None:
    """The lease's fields, or None when it is not a lease object (junk, truncated, hand-written)."""
    try:
        info = json.loads(data)
    except ValueError:
        return None
    if not isinstance(info, dict) or not isinstance(info.get("expires_at"), int | float):
        return None
    if not isinstance(info.get("token"), str):
        return None
    return info


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


class Lease:
    """A lease object this process holds, renewed by a daemon thread until :meth:`release`."""

    def __init__(self, store: Store, key: str, what: str, seconds: float) -> None:
        self.store = store
        self.key = key
        self.what = what
        self.seconds = seconds
        self.token = uuid.uuid4().hex
        self.since = datetime.now(UTC).isoformat(timespec="seconds")
        self.version: Version = ""
        #: Until when the last successful write holds the lease (wall clock, as written in the object).
        self.valid_until = 0.0
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()

    def __repr__(self) -> str:
        return f"Lease({self.store.uri(self.key)!r}, lost={self.lost})"

    def body(self, expires_at: float) -> bytes:
        fields = {
            **holder_description(),
            "since": self.since,
            "what": self.what,
            "token": self.token,
            "lease_seconds": self.seconds,
            "expires_at": expires_at,
        }
        return json.dumps(fields, sort_keys=True).encode() + b"\n"

    def _wrote(self, version: Version, expires_at: float) -> None:
        self.version = version
        self.valid_until = expires_at

    def renew(self) -> None:
        """Extend the lease by one duration (compare-and-swap); a lost swap marks it lost."""
        with self._guard:
            if self.lost or self._stop.is_set():
                return
            expires_at = time.time() + self.seconds
            try:
                self._wrote(self.store.swap(self.key, self.body(expires_at), self.version), expires_at)
            except Conflict:
                self.lost = True
                log.error("lost the lease %s: another process took %s over", self.store.uri(self.key), self.what)
            except StoreError as exc:
                # Try again at the next tick; past valid_until, check() reports the lease as lost.
                log.warning("could not renew the lease %s: %s", self.store.uri(self.key), exc)

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            self.renew()
            if self.lost:
                return

    def start(self) -> None:
        self._thread = threading.Thread(target=self._renew_until_stopped, name="joor-lease", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raise :class:`SnapshotBusy` if the lease is no longer this holder's (read from the store)."""
        if not self.lost:
            found = self.store.read(self.key)
            info = None if found is None else _parse(found[0])
            if info is None or info.get("token") != self.token:
                self.lost = True
            elif time.time() > self.valid_until:
                self.lost = True  # not renewed in time: another process may take it over any moment
        if self.lost:
            raise SnapshotBusy(
                f"the lease {self.store.uri(self.key)} of {self.what} was lost (not renewed in time, and taken over "
                "or about to be): stopped before the commit point"
            )

    def release(self) -> None:
        """Stop renewing, and delete the lease object if it is still this holder's."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._guard:
            found = self.store.read(self.key)
            info = None if found is None else _parse(found[0])
            if info is not None and info.get("token") == self.token:
                self.store.delete([self.key])


def acquire(store: Store, key: str, what: str, seconds: float = DEFAULT_LEASE_SECONDS) -> Lease:
    """Take the lease at ``key`` (created if absent, taken over once expired or unreadable), or raise
    :class:`SnapshotBusy` at once naming its live holder."""
    if not seconds > 0:
        raise ValueError(f"a lease lasts more than 0 seconds, not {seconds!r}")
    lease = Lease(store, key, what, seconds)
    for _attempt in range(5):
        expires_at = time.time() + seconds
        try:
            lease._wrote(store.create(key, lease.body(expires_at)), expires_at)
        except Conflict:
            pass
        else:
            lease.start()
            return lease
        found = store.read(key)
        if found is None:
            continue  # released meanwhile: create it again
        data, version = found
        info = _parse(data)
        if info is not None and info["expires_at"] > time.time():
            raise SnapshotBusy(
                f"{what} is busy: {describe_holder(data)} holds its lease {store.uri(key)}, renewed until "
                f"{_when(info['expires_at'])}; wait for it to finish, then try again"
            )
        expires_at = time.time() + seconds
        try:
            lease._wrote(store.swap(key, lease.body(expires_at), version), expires_at)
        except Conflict:
            continue  # another process took it over, or its holder renewed it: look again
        if info is None:
            set_aside(
                store,
                key,
                data,
                f"was not a lock record (it does not parse, {len(data)} bytes) and was taken over",
                delete=False,
            )
        else:
            log.warning(
                "took over the expired lease %s of pid %s on %s (expired %s)",
                store.uri(key),
                info.get("pid"),
                info.get("host"),
                _when(info["expires_at"]),
            )
        lease.start()
        return lease
    raise SnapshotBusy(f"{what} is busy: its lease {store.uri(key)} keeps changing hands")

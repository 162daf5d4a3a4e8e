"""Publish a snapshot's data all at once, recoverably: the one mechanism behind the raw fetch and the flatten.

A *publication* replaces one or more *targets* (directories relative to ``$JOOR_DATA_DIR``: the raw snapshot
``raw/connections/snapshot_date=D``, or the ten ``parquet/<table>/snapshot_date=D``) so that, whatever happens
to the process, each reader and the next run see either all the old targets or all the new ones. Its life::

    stage ──► (audit) ──► commit point: journal written ──► switch each target ──► journal removed ──► clean
      │            └──► quarantine (blocking check failed): staged data kept aside, nothing published
      └──► error / SIGTERM: staging deleted, nothing published

Everything unpublished lives under ``$JOOR_DATA_DIR/_work/`` (never under ``raw/`` or ``parquet/``, so a
reader of the hive layout only ever sees published data)::

    _work/locks/snapshot_date=D.lock     one run per date (see locks.snapshot_lock)
    _work/staging/<id>.owner             flocked by the live writer; free once it is gone (even by SIGKILL)
    _work/staging/<id>/new/<target>      the staged copy of each target, written and fsynced
    _work/staging/<id>/journal.json      the commit point: which targets to switch (atomic rename, fsynced)
    _work/staging/<id>/old/<n>           target n's previous content, moved aside during the switch
    _work/quarantine/snapshot_date=D/    the last staged flatten of D whose blocking checks failed

**The journal is the commit point.** Before it exists, a crash leaves every target untouched and the staging
is simply deleted (roll back). Once it exists, every new target is complete on disk, so the switch can always
be finished (roll forward): each target's step is decided from what is on disk alone (is ``new/<target>``
still there? is there an old copy aside?), which makes it idempotent, so a crash during recovery is recovered
the same way. The old data is deleted only after every target is switched and the journal is gone, never
left in a trash folder that nothing restores. A failure of the switch inside the process (a rename refused
by the file system) rolls back instead, from the old copies.

**Recovery** (:func:`recover`) runs at the start of every fetch and flatten, under the date's lock: each
staging whose owner file is no longer flocked belongs to a dead process; a journaled one is rolled forward
(only while holding its date's lock, so never under a live run of that date), any other is deleted. A
SIGTERM during staging is turned into a normal exit (``SystemExit``), so the ``finally`` blocks delete the
staging; during the switch, SIGTERM and SIGINT wait until it is done.

**On an object store** (``JOOR_DATA_DIR=s3://...``, :mod:`~joor_pipeline.storage.objectstore`) the same
interface holds and staging stays on local scratch; only :meth:`Publication.publish`, :func:`publication`'s
recovery and the date lock branch there. Staged files are uploaded once under unique names (the publication id
in the name) beside the live ones, where nothing refers to them yet. A target is switched by replacing its
``_manifest.json`` with a compare-and-swap (``If-Match`` the ETag read when staging began, or ``If-None-Match:
*`` for a new partition): readers resolve a partition through its manifest
(:func:`~joor_pipeline.storage.parquet.published_files`), never by listing, so the manifest *is* the pointer.
The journal is an object created with ``If-None-Match: *`` before the first swap; roll forward re-applies the
swaps whose manifest does not carry the publication id yet. "Old data moved aside" becomes "old files no
longer referenced", deleted right after the swap (a reader still holding the previous manifest gets a clear
not-found). The owner flock becomes a lease object with an expiry that the live writer renews.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any, Final

from joor_pipeline.joor.errors import JoorError
from joor_pipeline.storage import objectstore
from joor_pipeline.storage.locks import (
    DEFAULT_ACCOUNT,
    WORK_DIR,
    SnapshotBusy,
    account_key,
    held_lease,
    holds_snapshot_lock,
    release,
    snapshot_lock,
    try_flock,
    write_holder,
)
from joor_pipeline.storage.migrate import migrate_legacy_layout

log = logging.getLogger(__name__)
store_of = objectstore.store_of

STAGING_DIR: Final = WORK_DIR / "staging"
QUARANTINE_DIR: Final = WORK_DIR / "quarantine"
JOURNAL_FILE: Final = "journal.json"
OWNER_SUFFIX: Final = ".owner"
NEW: Final = "new"
OLD: Final = "old"
#: Exit status of a process ended by SIGTERM through :func:`sigterm_as_exit` (128 + the signal, as shells say).
SIGTERM_EXIT: Final = 128 + signal.SIGTERM


class PublishError(JoorError):
    """A publication could not be completed, or the data directory is not in a state it can explain."""


def write_durably(path: Path, data: bytes) -> None:
    """Write a file and flush it to disk before returning."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` (files written without fsync, e.g. by pyarrow)."""
    for directory, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(directory))


def _write_json_atomically(path: Path, value: dict[str, Any]) -> None:
    scratch = path.with_name(path.name + ".tmp")
    write_durably(scratch, json.dumps(value, indent=2).encode() + b"\n")
    os.replace(scratch, path)
    _fsync_dir(path.parent)


# ---- signals --------------------------------------------------------------------------------------------------


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(SIGTERM_EXIT)


@contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """For the block, SIGTERM raises ``SystemExit`` so ``finally`` blocks clean up (if nobody else handles it)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _reset_in_child() -> None:
    # A forked flatten worker must die of SIGTERM as before, not unwind into its parent's cleanup.
    if signal.getsignal(signal.SIGTERM) is _raise_exit:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


os.register_at_fork(after_in_child=_reset_in_child)


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGTERM and SIGINT wait until the block is done (the switch must not stop halfway), then act as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    # A handler installed outside Python reads as None and could not be put back: leave that signal alone.
    saved = {sig: handler for sig in (signal.SIGTERM, signal.SIGINT) if (handler := signal.getsignal(sig)) is not None}
    for sig in saved:
        signal.signal(sig, lambda signum, _frame: pending.append(signum))
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        for signum in pending:
            os.kill(os.getpid(), signum)


# ---- the publication ------------------------------------------------------------------------------------------


def _staging_root(data_dir: Path) -> Path:
    return data_dir / STAGING_DIR


def quarantine_dir(data_dir: Path, snapshot_date: date, *, account: str = DEFAULT_ACCOUNT) -> Path:
    """Where the last staged flatten of ``snapshot_date`` of ``account`` whose blocking checks failed is kept."""
    return data_dir / QUARANTINE_DIR / account_key(account) / f"snapshot_date={snapshot_date.isoformat()}"


@dataclass
class Publication:
    """One staged replacement of some targets under ``data_dir``; see the module docstring."""

    data_dir: Path
    snapshot_date: date
    kind: str
    id: str
    root: Path
    _owner: IO[bytes] | None = field(default=None, repr=False)
    state: str = "staging"  # -> published | quarantined | discarded
    account: str = DEFAULT_ACCOUNT
    #: On an object store: each target's manifest ETag when staging began (the compare-and-swap's condition).
    base_etags: dict[str, str | None] | None = None

    def staged(self, target: Path) -> Path:
        """The staging copy of ``target`` (a path relative to the data directory); its parent exists."""
        path = self.root / NEW / target
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def publish(self, targets: Sequence[Path]) -> None:
        """Replace every target by its staged copy, all or none (see the module docstring)."""
        if self.state != "staging":
            raise PublishError(f"publication {self.id} is already {self.state}")
        missing = [str(t) for t in targets if not (self.root / NEW / t).is_dir()]
        if missing:
            raise PublishError(f"nothing staged for {', '.join(missing)}")
        store = store_of(self.data_dir)
        if store is not None:
            with _signals_deferred():
                objectstore.publish(
                    store, self, targets, held_lease(self.data_dir, self.snapshot_date, account=self.account)
                )
                self.state = "published"
            if self.kind == "parquet":
                shutil.rmtree(quarantine_dir(self.data_dir, self.snapshot_date), ignore_errors=True)
            return
        _fsync_tree(self.root / NEW)
        journal = {
            "publication_id": self.id,
            "snapshot_date": self.snapshot_date.isoformat(),
            "account": self.account,
            "kind": self.kind,
            "targets": [str(t) for t in targets],
            "committed_at": datetime.now(UTC).isoformat(),
        }
        with _signals_deferred():
            _write_json_atomically(self.root / JOURNAL_FILE, journal)
            current = 0
            try:
                for current, target in enumerate(targets):
                    _switch(self.data_dir, self.root, current, target)
            except Exception:
                # The rename was refused here, not by a crash: put back what was switched, from the old copies.
                for index in range(current, -1, -1):
                    _unswitch(self.data_dir, self.root, index, targets[index])
                (self.root / JOURNAL_FILE).unlink()
                raise
            (self.root / JOURNAL_FILE).unlink()
            _fsync_dir(self.root)
            self.state = "published"
        if self.kind == "parquet":
            shutil.rmtree(quarantine_dir(self.data_dir, self.snapshot_date, account=self.account), ignore_errors=True)

    def quarantine(self, reason: dict[str, Any]) -> Path:
        """Keep the staged data aside (replacing the date's previous quarantine) instead of publishing it."""
        if self.state != "staging":
            raise PublishError(f"publication {self.id} is already {self.state}")
        target = quarantine_dir(self.data_dir, self.snapshot_date, account=self.account)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_durably(
            self.root / NEW / "reason.json",
            json.dumps({"publication_id": self.id, **reason}, indent=2, default=str).encode() + b"\n",
        )
        aside = self.root / "previous-quarantine"
        if target.exists():
            os.replace(target, aside)
        os.replace(self.root / NEW, target)
        self.state = "quarantined"
        return target

    def close(self) -> None:
        """Delete the staging (with the old data of a finished publish) and free the owner file."""
        if self.state == "staging":
            self.state = "discarded"
        if (self.root / JOURNAL_FILE).exists():
            # Only a crash in the switch itself gets here; the next recovery finishes it.
            log.error("publication %s of %s was interrupted; the next run completes it", self.id, self.snapshot_date)
        else:
            shutil.rmtree(self.root, ignore_errors=True)
            _owner_path(self.root).unlink(missing_ok=True)
        if self._owner is not None:
            release(self._owner)
            self._owner = None


def _owner_path(root: Path) -> Path:
    return root.with_name(root.name + OWNER_SUFFIX)


def _switch(data_dir: Path, root: Path, index: int, target: Path) -> None:
    """Make ``target`` the staged copy; idempotent, decided from what is on disk (see the module docstring)."""
    new, old, live = root / NEW / target, root / OLD / str(index), data_dir / target
    if not new.exists():
        return  # switched already
    live.parent.mkdir(parents=True, exist_ok=True)
    if live.exists():
        if old.exists():
            raise PublishError(f"cannot publish {live}: both it and an earlier copy at {old} exist")
        old.parent.mkdir(parents=True, exist_ok=True)
        os.replace(live, old)
    os.replace(new, live)


def _unswitch(data_dir: Path, root: Path, index: int, target: Path) -> None:
    new, old, live = root / NEW / target, root / OLD / str(index), data_dir / target
    if live.exists() and not new.exists():
        os.replace(live, new)
    if old.exists():
        os.replace(old, live)


def _new_owner(data_dir: Path) -> tuple[str, Path, IO[bytes]]:
    """A fresh publication id, its staging directory and its locked owner file (locked before the directory)."""
    staging = _staging_root(data_dir)
    staging.mkdir(parents=True, exist_ok=True)
    while True:
        publication_id = uuid.uuid4().hex
        root = staging / publication_id
        owner_path = _owner_path(root)
        owner = try_flock(owner_path)
        if owner is None:
            continue
        try:
            same = os.fstat(owner.fileno()).st_ino == os.stat(owner_path).st_ino
        except FileNotFoundError:
            same = False  # a recovery deleted it between our open and our lock
        if same:
            write_holder(owner)
            root.mkdir()
            return publication_id, root, owner
        release(owner)


@contextmanager
def publication(
    data_dir: Path, snapshot_date: date, kind: str, *, account: str = DEFAULT_ACCOUNT
) -> Iterator[Publication]:
    """Stage a publication of ``snapshot_date``'s ``kind`` data ('raw' or 'parquet') under the date's lock.

    Takes :func:`~joor_pipeline.storage.locks.snapshot_lock` (``SnapshotBusy`` if another process has it), runs
    :func:`recover` first, and deletes the staging on the way out unless it was published or quarantined.
    """
    with snapshot_lock(data_dir, snapshot_date, account=account), sigterm_as_exit():
        recover(data_dir)
        migrate_legacy_layout(data_dir)  # data written before accounts existed -> account=default
        store = store_of(data_dir)
        bases = None
        if store is not None:
            objectstore.recover(store, data_dir, snapshot_date, account)
            bases = objectstore.base_etags(store, objectstore.kind_targets(kind, snapshot_date, account))
        publication_id, root, owner = _new_owner(data_dir)
        pub = Publication(data_dir, snapshot_date, kind, publication_id, root, owner, account=account, base_etags=bases)
        try:
            yield pub
        finally:
            pub.close()


# ---- recovery -------------------------------------------------------------------------------------------------


@contextmanager
def date_lock_if_free(data_dir: Path, snapshot_date: date, account: str = DEFAULT_ACCOUNT) -> Iterator[bool]:
    if holds_snapshot_lock(data_dir, snapshot_date, account=account):
        yield True
        return
    with ExitStack() as stack:
        try:
            stack.enter_context(snapshot_lock(data_dir, snapshot_date, account=account))
        except SnapshotBusy:
            yield False
            return
        yield True


def _roll_forward(data_dir: Path, root: Path) -> bool:
    """Finish a journaled publication; False when its date is locked by a live run (left for that run)."""
    journal = json.loads((root / JOURNAL_FILE).read_text(encoding="utf-8"))
    snapshot_date = date.fromisoformat(journal["snapshot_date"])
    account = journal.get("account", DEFAULT_ACCOUNT)
    with date_lock_if_free(data_dir, snapshot_date, account) as locked:
        if not locked:
            return False
        with _signals_deferred():
            for index, target in enumerate(journal["targets"]):
                _switch(data_dir, root, index, Path(target))
            (root / JOURNAL_FILE).unlink()
        log.warning(
            "recovered the interrupted publication %s of %s (%s): completed it",
            journal["publication_id"],
            snapshot_date.isoformat(),
            journal["kind"],
        )
        if journal["kind"] == "parquet":
            shutil.rmtree(quarantine_dir(data_dir, snapshot_date, account=account), ignore_errors=True)
    return True


def recover(data_dir: Path) -> list[str]:
    """Finish or delete the publications of dead processes; returns the ids it dealt with.

    A staging whose owner still holds its flock is left alone. A dead one with a journal is rolled forward
    (under its date's lock), any other is deleted: e.g. the pages of a fetch killed halfway.
    """
    staging = _staging_root(data_dir)
    if not staging.is_dir():
        return []
    done: list[str] = []
    for root in sorted(path for path in staging.iterdir() if path.is_dir()):
        owner_path = _owner_path(root)
        owner = try_flock(owner_path) if owner_path.exists() else None
        if owner is None and owner_path.exists():
            continue  # its writer is alive
        try:
            if (root / JOURNAL_FILE).exists() and not _roll_forward(data_dir, root):
                continue
            shutil.rmtree(root)
            owner_path.unlink(missing_ok=True)
            done.append(root.name)
        finally:
            if owner is not None:
                release(owner)
    # Owner files whose staging is gone (killed between the two deletions, or before the directory was made).
    for owner_path in staging.glob(f"*{OWNER_SUFFIX}"):
        if not owner_path.with_suffix("").exists():
            owner = try_flock(owner_path)
            if owner is not None:
                with suppress(FileNotFoundError):
                    owner_path.unlink()
                release(owner)
    return done

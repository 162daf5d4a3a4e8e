"""Publish a snapshot's data all at once, recoverably, on any store: the one mechanism behind the fetch and the flatten.

A *publication* replaces one or more *targets* (folder keys: the raw snapshot ``raw/connections/account=A/
snapshot_date=D``, or the ten ``parquet/<table>/account=A/snapshot_date=D``) so that, whatever happens to the
process, each reader and the next run see either all the old targets or all the new ones. A target *is* its
``_manifest.json``: readers resolve a folder only through it, never by listing (see ``storage.parquet`` and
``storage.raw``), so replacing the manifest is the switch. It is written once, on the primitives of
:class:`~joor_pipeline.storage.store.Store`, for every backend::

    stage locally ──► (audit) ──► pending record ──► upload beside the live files ──► staged manifests
        │                └──► quarantine (a blocking check failed): staged data kept aside, nothing published
        └──► error / SIGTERM: staging deleted, nothing published
    ──► journal created (the commit point) ──► each manifest swapped ──► finish: records deleted, old files deleted

1. **Stage** in the local scratch directory (``_work/staging/<id>/``, owned by a flocked ``<id>.owner`` file while
   its writer lives), and read each target's manifest version (the base of the compare-and-swap).
2. **Pending record** ``_work/journals/<id>.pending.json``, created only if absent: what the publication will
   upload, so that the uploads of a writer killed before its commit point can be found and deleted.
3. **Upload** the staged files beside the live ones under names no other publication writes
   (``part-00000-<id>.parquet``, ``page-00000-<id>.json``; on local disk a fsynced rename from the scratch
   directory), then each target's new manifest as ``_manifest-<id>.json``. Nothing refers to any of them yet.
4. **Journal** ``_work/journals/<id>.json``, created only if absent: **the commit point**. Before it, a crash
   leaves every target as it was; after it, everything the switch needs is in the store, and the switch is
   finished whatever happens.
5. **Swap** each target's ``_manifest.json`` by compare-and-swap against the version read when staging began (a
   lost swap whose live manifest already carries this publication's id is done). The swap never needs to parse
   the old manifest, so a damaged one is replaced like any other.
6. **Finish**: delete the pending record, then the journal, then the files the old manifests listed and the
   staged manifests (a reader still holding the previous manifest gets a clear not-found).

**Recovery** (:func:`recover`: at the start of every fetch and flatten, under the date's lock, and on demand)
reads ``_work/journals/``: a journal whose date's lock is free (its writer is dead) is rolled forward (each target
whose manifest does not carry its id yet is swapped to its staged manifest, then finished); a pending record
without a journal whose date's lock is free is rolled back (its uploads deleted). Each step is decided from what
the store holds, so a crash during recovery is recovered the same way. A journal or pending record that does not
parse, and any other object there, is set aside under ``_work/damaged/`` with one warning line and stops nothing.
A publication then deletes, under its date's lock, what its targets' folders hold beyond their manifests (the
files of a publication killed after its journal was deleted, a stray copy). Dead writers' local staging is
deleted.

**Withdrawal** (:func:`withdraw`: ``joor-pipeline prune``) is a publication that replaces its targets by nothing, on
the same steps and the same recovery: under the date's lock, after :func:`recover`, it records a pending record
(it uploads nothing), checks its lock, creates its journal (the commit point: it names each target's manifest
version and every file the target's folder holds), deletes each target's ``_manifest.json`` (from then on no
reader sees the target: a folder without a manifest is never data), then the files, then its records. Before the
commit point a crash leaves every target as it was (the pending record is rolled back); from it on, each target is
whole or invisible, and recovery deletes what is left. The files go before the records, because no later
publication of the date will sweep them.

A SIGTERM during staging is turned into a normal exit (``SystemExit``) so the ``finally`` blocks delete the
staging and the uploads; from the commit point to the last swap, SIGTERM and SIGINT wait until it is done.
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
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path, PurePosixPath
from types import FrameType
from typing import IO, Any, Final

from joor_pipeline import layout
from joor_pipeline.joor.errors import JoorError
from joor_pipeline.layout import SnapshotKey
from joor_pipeline.storage.damaged import set_aside
from joor_pipeline.storage.durable import release, try_flock, write_durably
from joor_pipeline.storage.factory import store_of
from joor_pipeline.storage.locks import hold, hold_if_free, holder_description
from joor_pipeline.storage.migrate import migrate_legacy_layout
from joor_pipeline.storage.store import Conflict, Held, LocalFiles, Store, Version

log = logging.getLogger(__name__)

OWNER_SUFFIX: Final = ".owner"
NEW: Final = "new"
#: Uploads in flight at once.
TRANSFER_THREADS: Final = 16
#: Exit status of a process ended by SIGTERM through :func:`sigterm_as_exit` (128 + the signal, as shells say).
SIGTERM_EXIT: Final = 128 + signal.SIGTERM


class PublishError(JoorError):
    """A publication could not be completed, or the data directory is not in a state it can explain."""


def _json(value: dict[str, Any]) -> bytes:
    return json.dumps(value, indent=2, ensure_ascii=False).encode() + b"\n"


def listed_files(manifest: object) -> list[str]:
    """The file names a manifest refers to (raw ``pages[].file``, Parquet ``files[].name``); plain names only."""
    names: list[str] = []
    if not isinstance(manifest, dict):
        return names
    for key, field_name in (("pages", "file"), ("files", "name")):
        entries = manifest.get(key)
        for entry in entries if isinstance(entries, list) else []:
            name = entry.get(field_name) if isinstance(entry, dict) else None
            if isinstance(name, str) and PurePosixPath(name).name == name and name not in ("", ".", ".."):
                names.append(name)
    return names


def _parsed(data: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _publication_of(data: bytes) -> str | None:
    found = _parsed(data)
    return None if found is None else found.get("publication_id")


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


def quarantine_dir(data_dir: Path, key: SnapshotKey) -> Path:
    """Where the last staged flatten of a snapshot whose blocking checks failed is kept (local scratch)."""
    return data_dir / layout.quarantine(key)


def lock_name(key: SnapshotKey) -> str:
    """The date lock's name in messages."""
    return f"snapshot {key}"


@contextmanager
def snapshot_lock(data_dir: Path, key: SnapshotKey) -> Iterator[Held]:
    """Hold the lock of a snapshot's account and date for the block (re-entrant within this process), or raise
    ``SnapshotBusy`` at once naming its holder: one fetch or flatten of an account's date at a time, different
    dates and accounts side by side."""
    with hold(store_of(data_dir), layout.lock(key), lock_name(key)) as held:
        yield held


@dataclass
class Publication:
    """One staged replacement of some targets of a data directory; see the module docstring."""

    data_dir: Path
    store: Store
    key: SnapshotKey
    kind: str
    targets: tuple[str, ...]
    id: str
    root: Path
    held: Held
    #: Each target's manifest version when staging began (the compare-and-swap's condition).
    bases: dict[str, Version | None]
    _owner: IO[bytes] | None = field(default=None, repr=False)
    state: str = "staging"  # -> published | quarantined | discarded

    def staged(self, target: str) -> Path:
        """The staging copy of ``target`` (a folder key); its parent exists."""
        path = self.root / NEW / target
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def publish(self) -> None:
        """Replace every target by its staged copy, all or none (see the module docstring)."""
        if self.state != "staging":
            raise PublishError(f"publication {self.id} is already {self.state}")
        store = self.store
        uploads: list[tuple[Path, str]] = []
        manifests: dict[str, bytes] = {}
        for target in self.targets:
            local = self.root / NEW / target
            manifest_path = local / layout.MANIFEST
            if not manifest_path.is_file():
                raise PublishError(f"nothing staged for {target}: {manifest_path} is missing")
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            names = sorted(path.name for path in local.iterdir() if path.is_file() and path.name != layout.MANIFEST)
            mapping = {name: layout.unique_name(name, self.id) for name in names}
            uploads.extend((local / name, f"{target}/{mapping[name]}") for name in names)
            manifests[target] = _json({**_renamed(manifest, mapping), "publication_id": self.id})
        old: dict[str, list[str]] = {}
        for target in self.targets:
            found = store.read(layout.manifest(target))
            if (None if found is None else found[1]) != self.bases[target]:
                raise PublishError(
                    f"{store.uri(layout.manifest(target))} changed since this publication began staging (another "
                    "writer without the lock?); nothing was published"
                )
            # A damaged manifest names no file: what it held is deleted by the next publication of the date.
            old[target] = [f"{target}/{name}" for name in listed_files(_parsed(found[0]) if found else None)]
        staged_manifests = [layout.staged_manifest(target, self.id) for target in self.targets]
        record = {
            "publication_id": self.id,
            "account": self.key.account,
            "snapshot_date": self.key.snapshot_date.isoformat(),
            "dataset": self.key.dataset,
            "kind": self.kind,
            "targets": list(self.targets),
            "uploads": [key for _path, key in uploads] + staged_manifests,
            "holder": holder_description(),
        }
        store.create(layout.pending(self.id), _json(record))
        try:
            with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
                list(pool.map(lambda item: store.upload(item[1], item[0]), uploads))
            for target, staged in zip(self.targets, staged_manifests, strict=True):
                store.write(staged, manifests[target])
            self.held.check()
        except BaseException:
            # Before the commit point: what was uploaded refers to nothing; delete it and the record.
            with suppress(Exception):
                _roll_back(store, record)
            raise
        journal = {
            **record,
            "bases": self.bases,
            "old_files": old,
            "committed_at": datetime.now(UTC).isoformat(),
        }
        with _signals_deferred():
            store.create(layout.journal(self.id), _json(journal))  # the commit point
            for target in self.targets:
                _swap(store, target, self.id, manifests[target], self.bases[target])
            self.state = "published"
        _finish(store, journal)
        if self.kind == "parquet":
            shutil.rmtree(quarantine_dir(self.data_dir, self.key), ignore_errors=True)

    def quarantine(self, reason: dict[str, Any]) -> Path:
        """Keep the staged data aside (replacing the snapshot's previous quarantine) instead of publishing it."""
        if self.state != "staging":
            raise PublishError(f"publication {self.id} is already {self.state}")
        target = quarantine_dir(self.data_dir, self.key)
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
        """Delete the staging and free the owner file."""
        if self.state == "staging":
            self.state = "discarded"
        shutil.rmtree(self.root, ignore_errors=True)
        _owner_path(self.root).unlink(missing_ok=True)
        if self._owner is not None:
            release(self._owner)
            self._owner = None


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


def _swap(store: Store, target: str, publication_id: str, body: bytes, base: Version | None) -> None:
    key = layout.manifest(target)
    try:
        store.swap(key, body, base)
    except Conflict:
        current = store.read(key)
        if current is not None and _publication_of(current[0]) == publication_id:
            return  # switched already
        raise PublishError(
            f"{store.uri(key)} changed under publication {publication_id} after its commit point; the next run "
            "completes the publication"
        ) from None


def _finish(store: Store, journal: dict[str, Any]) -> None:
    """After every swap: forget the records (the pending one first: alone, it would be rolled back), then delete
    what no manifest refers to any more."""
    publication_id = journal["publication_id"]
    store.delete([layout.pending(publication_id)])
    store.delete([layout.journal(publication_id)])
    garbage = [name for files in journal.get("old_files", {}).values() for name in files]
    garbage.extend(layout.staged_manifest(target, publication_id) for target in journal["targets"])
    live: set[str] = set()
    for target in journal["targets"]:  # a file kept by the new manifest (the same name) is not garbage
        found = store.read(layout.manifest(target))
        live.update(f"{target}/{name}" for name in listed_files(_parsed(found[0]) if found else None))
    store.delete([name for name in garbage if name not in live])


def _roll_back(store: Store, record: dict[str, Any]) -> None:
    """Delete the uploads of a publication that never reached its commit point, then its pending record."""
    store.delete([key for key in record.get("uploads", []) if isinstance(key, str)])
    store.delete([layout.pending(record["publication_id"])])


def sweep(data_dir: Path, targets: Sequence[str]) -> list[str]:
    """Delete what the targets' folders hold beyond their manifests; the keys deleted. Only under the targets'
    date lock, after :func:`recover` (nothing pending of that date: nobody else writes there then), as every
    publication does first. A target whose manifest does not parse is left for a later sweep."""
    return _sweep(store_of(data_dir), targets)


def _sweep(store: Store, targets: Sequence[str]) -> list[str]:
    deleted: list[str] = []
    for target in targets:
        found = store.read(layout.manifest(target))
        manifest = _parsed(found[0]) if found else {}
        if manifest is None:
            continue
        keep = {layout.MANIFEST, *listed_files(manifest)}
        stray = [key for key in store.list(target) if key.rsplit("/", 1)[0] == target]
        stray = [key for key in stray if key.rsplit("/", 1)[1] not in keep]
        store.delete(stray)
        deleted.extend(stray)
    return deleted


def _owner_path(root: Path) -> Path:
    return root.with_name(root.name + OWNER_SUFFIX)


def _new_owner(data_dir: Path) -> tuple[str, Path, IO[bytes]]:
    """A fresh publication id, its staging directory and its locked owner file (locked before the directory)."""
    staging = data_dir / layout.STAGING
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
            owner.write(json.dumps(holder_description()).encode() + b"\n")
            owner.flush()
            root.mkdir()
            return publication_id, root, owner
        release(owner)


@contextmanager
def publication(data_dir: Path, key: SnapshotKey, kind: str, targets: Sequence[str]) -> Iterator[Publication]:
    """Stage a publication of ``key``'s ``kind`` data ('raw' or 'parquet') replacing ``targets``, under the date's
    lock (``SnapshotBusy`` if another process has it).

    Runs :func:`recover` first, and deletes the staging on the way out unless it was published or quarantined.
    """
    store = store_of(data_dir)
    with snapshot_lock(data_dir, key) as held, sigterm_as_exit():
        recover(data_dir)
        migrate_legacy_layout(data_dir)  # data written before accounts or manifests existed
        stray = _sweep(store, targets)
        if stray:
            log.warning(
                "deleted %d unreferenced file(s) of %s in %s (left by a run killed mid-publish, or copied there)",
                len(stray),
                lock_name(key),
                store.url,
            )
        bases = {target: store.version(layout.manifest(target)) for target in targets}
        publication_id, root, owner = _new_owner(data_dir)
        pub = Publication(data_dir, store, key, kind, tuple(targets), publication_id, root, held, bases, owner)
        try:
            yield pub
        finally:
            pub.close()


# ---- recovery -------------------------------------------------------------------------------------------------


def _record_key(record: dict[str, Any]) -> SnapshotKey:
    return SnapshotKey(
        record["account"], date.fromisoformat(record["snapshot_date"]), record.get("dataset", "connections")
    )


def _check_record(record: dict[str, Any] | None) -> dict[str, Any]:
    """A journal or pending record as written by :meth:`Publication.publish`; ValueError for anything else."""
    if record is None:
        raise ValueError("not a JSON object")
    _record_key(record)
    if not isinstance(record.get("publication_id"), str) or not isinstance(record.get("targets"), list):
        raise ValueError("no publication_id or targets")
    if not all(isinstance(target, str) for target in record["targets"]):
        raise ValueError("a target is not a key")
    return record


def _roll_forward(store: Store, journal: dict[str, Any]) -> None:
    """Finish a journaled publication: swap in each staged manifest that is not live yet (idempotent)."""
    if journal.get("kind") == WITHDRAWAL:
        _complete_withdrawal(store, journal)
        return
    publication_id = journal["publication_id"]
    for target in journal["targets"]:
        key = layout.manifest(target)
        current = store.read(key)
        if current is not None and _publication_of(current[0]) == publication_id:
            continue
        staged = store.read(layout.staged_manifest(target, publication_id))
        if staged is None:
            raise PublishError(f"{store.uri(layout.staged_manifest(target, publication_id))} is gone")
        store.swap(key, staged[0], None if current is None else current[1])
    _finish(store, journal)


def _load_record(store: Store, key: str) -> dict[str, Any] | None:
    """The journal or pending record at ``key``; None when it is gone, or did not parse (then it is set aside)."""
    got = store.read(key)
    if got is None:
        return None
    try:
        return _check_record(_parsed(got[0]))
    except (ValueError, KeyError, TypeError):
        set_aside(store, key, got[0], "does not parse as a publication record")
        return None


def recover(data_dir: Path) -> list[str]:
    """Finish or undo the publications of dead writers (see the module docstring); the ids dealt with."""
    store = store_of(data_dir)
    done = _recover_staging(data_dir)
    found: dict[str, set[str]] = {}
    for key in store.list(layout.JOURNALS):
        folder, _, name = key.rpartition("/")
        entry = layout.journal_entry(name) if folder == layout.JOURNALS else None
        if entry is None:
            got = store.read(key)
            if got is not None:
                set_aside(store, key, got[0], "is not a journal or pending record")
            continue
        found.setdefault(entry[0], set()).add(entry[1])
    for publication_id, kinds in sorted(found.items()):
        record = _load_record(
            store, layout.journal(publication_id) if "journal" in kinds else layout.pending(publication_id)
        )
        if record is None:
            continue  # finished meanwhile, or set aside
        snapshot = _record_key(record)
        with hold_if_free(store, layout.lock(snapshot), lock_name(snapshot)) as free:
            if not free:
                continue  # its writer is alive (or another run recovers it)
            # Read again under the lock: the writer may have reached its commit point, or finished, meanwhile.
            journal = _load_record(store, layout.journal(publication_id))
            if journal is not None:
                try:
                    _roll_forward(store, journal)
                except PublishError as exc:
                    got = store.read(layout.journal(publication_id))
                    if got is not None:
                        set_aside(store, layout.journal(publication_id), got[0], f"cannot be completed ({exc})")
                    continue
                log.warning(
                    "recovered the interrupted publication %s of %s (%s) on %s: completed it",
                    publication_id,
                    snapshot,
                    journal.get("kind"),
                    store.url,
                )
                if journal.get("kind") == "parquet":
                    shutil.rmtree(quarantine_dir(data_dir, snapshot), ignore_errors=True)
                elif journal.get("kind") == WITHDRAWAL:
                    _forget_copies(data_dir, journal["targets"])
            elif store.version(layout.pending(publication_id)) is not None:
                _roll_back(store, record)
                log.warning(
                    "rolled back the unfinished publication %s of %s (%s) on %s: its writer stopped before its "
                    "commit point, the previous data stays",
                    publication_id,
                    snapshot,
                    record.get("kind"),
                    store.url,
                )
            else:
                continue
            if publication_id not in done:
                done.append(publication_id)
    return done


def _recover_staging(data_dir: Path) -> list[str]:
    """Delete the local staging of dead processes (their owner file is no longer flocked); their ids."""
    staging = data_dir / layout.STAGING
    if not staging.is_dir():
        return []
    deleted: list[str] = []
    for root in sorted(path for path in staging.iterdir() if path.is_dir()):
        owner_path = _owner_path(root)
        owner = try_flock(owner_path) if owner_path.exists() else None
        if owner is None and owner_path.exists():
            continue  # its writer is alive
        try:
            shutil.rmtree(root, ignore_errors=True)
            owner_path.unlink(missing_ok=True)
            deleted.append(root.name)
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
    return deleted


# ---- withdrawal -----------------------------------------------------------------------------------------------

#: The ``kind`` of a publication that withdraws its targets: it deletes their manifests, then their files.
WITHDRAWAL: Final = "withdrawal"


def withdraw(data_dir: Path, key: SnapshotKey, targets: Sequence[str]) -> dict[str, int]:
    """Delete ``targets`` (folder keys of ``key``'s date) all at once, recoverably: a publication that replaces
    them by nothing (see the module docstring). Returns every key deleted with its size in bytes (manifests
    included; empty when no target held anything).

    Under the date's lock (``SnapshotBusy`` at once if another process has it), after :func:`recover`. A target
    whose manifest changed between the commit point and its deletion (a writer ignoring the lock) is left as it
    is, with a :class:`PublishError`; the next recovery sets the journal aside.
    """
    store = store_of(data_dir)
    with snapshot_lock(data_dir, key) as held, sigterm_as_exit():
        recover(data_dir)
        migrate_legacy_layout(data_dir)
        held_files: dict[str, dict[str, int]] = {}
        bases: dict[str, Version | None] = {}
        for target in targets:
            held_files[target] = {
                name: size for name, size in store.list(target).items() if name.rsplit("/", 1)[0] == target
            }
            bases[target] = store.version(layout.manifest(target))
        present = [target for target in targets if held_files[target] or bases[target] is not None]
        if not present:
            return {}
        publication_id = uuid.uuid4().hex
        record = {
            "publication_id": publication_id,
            "account": key.account,
            "snapshot_date": key.snapshot_date.isoformat(),
            "dataset": key.dataset,
            "kind": WITHDRAWAL,
            "targets": present,
            "uploads": [],
            "holder": holder_description(),
        }
        store.create(layout.pending(publication_id), _json(record))
        try:
            held.check()  # a lease lost while listing: another writer may have the date now
        except BaseException:
            with suppress(Exception):
                _roll_back(store, record)
            raise
        journal = {
            **record,
            "bases": {target: bases[target] for target in present},
            "old_files": {
                target: sorted(name for name in held_files[target] if name != layout.manifest(target))
                for target in present
            },
            "committed_at": datetime.now(UTC).isoformat(),
        }
        with _signals_deferred():
            store.create(layout.journal(publication_id), _json(journal))  # the commit point
            for target in present:
                _withdraw_manifest(store, target, publication_id, bases[target])
        _finish_withdrawal(store, journal)
        _forget_copies(data_dir, present)
    return {name: size for target in present for name, size in held_files[target].items()}


def _withdraw_manifest(store: Store, target: str, publication_id: str, base: Version | None) -> None:
    """The switch of a withdrawal: delete the target's manifest, if it is still the one the journal names."""
    key = layout.manifest(target)
    current = store.version(key)
    if current is None:
        return  # withdrawn already (or the target had files and no manifest)
    if current != base:
        raise PublishError(
            f"{store.uri(key)} changed under withdrawal {publication_id} after its commit point (a writer without "
            "the lock?); it is left as it is"
        )
    store.delete([key])


def _finish_withdrawal(store: Store, journal: dict[str, Any]) -> None:
    """After every manifest is gone: delete the targets' files, then the records (the pending one first)."""
    publication_id = journal["publication_id"]
    for target, names in journal["old_files"].items():
        found = store.read(layout.manifest(target))
        live = {f"{target}/{name}" for name in listed_files(_parsed(found[0]) if found else None)}
        store.delete([name for name in names if name.rsplit("/", 1)[0] == target and name not in live])
    store.delete([layout.pending(publication_id)])
    store.delete([layout.journal(publication_id)])
    if isinstance(store, LocalFiles):  # an empty folder is no data, but it need not stay either
        for target in journal["targets"]:
            with suppress(OSError):
                store.local_path(target).rmdir()


def _forget_copies(data_dir: Path, targets: Sequence[str]) -> None:
    """Delete this machine's downloaded copies of withdrawn targets (an object store's raw pages, for a flatten)."""
    for target in targets:
        if isinstance(target, str) and layout.partition_of(target) is not None:
            shutil.rmtree(data_dir / layout.STORE_CACHE / target, ignore_errors=True)


def _complete_withdrawal(store: Store, journal: dict[str, Any]) -> None:
    """Recovery of a journaled withdrawal: delete what is left of it (idempotent)."""
    bases, old_files = journal.get("bases"), journal.get("old_files")
    targets = journal["targets"]
    if not isinstance(bases, dict) or not isinstance(old_files, dict) or set(old_files) != set(targets):
        raise PublishError("the withdrawal's journal lacks its targets' versions or files")
    if not all(isinstance(names, list) and all(isinstance(n, str) for n in names) for names in old_files.values()):
        raise PublishError("the withdrawal's journal lists files that are not keys")
    for target in targets:
        base = bases.get(target)
        _withdraw_manifest(store, target, journal["publication_id"], base if isinstance(base, str) else None)
    _finish_withdrawal(store, journal)

"""The storage backends the publication suite and the whole-run tests run on: local disk, S3 on moto's emulator,
Azure Blob Storage on Azurite (Microsoft's emulator) and GCS on a fake of its XML API (each started once per
session by ``emulators.py``).

A test takes the ``backend`` fixture and runs once per name in :data:`BACKENDS`; ``local_backend`` and
``cloud_backend`` (the three clouds only) pick a part of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from joor_pipeline import layout
from joor_pipeline.config import SETTINGS, check_data_dir
from joor_pipeline.layout import SnapshotKey
from joor_pipeline.storage.factory import store_of
from joor_pipeline.storage.store import Store
from joor_pipeline_tests.emulators import FIXTURES, S3_SECRET, Emulator, new_bucket

#: The backends every test of the suite runs on: name -> the URL scheme of its data directory ("" local disk).
SCHEMES = {"local": "", "s3": "s3", "azure": "az", "gcs": "gs"}
BACKENDS = tuple(SCHEMES)
CLOUDS = tuple(name for name, scheme in SCHEMES.items() if scheme)
#: A secret value of the S3 backend's credentials, which must never show anywhere (see :attr:`Backend.secret`).
SECRET = S3_SECRET
#: ``JOOR_STORE_LEASE_SECONDS`` of a writer a crash test kills: long enough that no load delays its renewals past
#: it; the test then expires the dead writer's lease itself (:meth:`Backend.expire_dead_leases`).
DEAD_WRITER_LEASE = "120"


@dataclass
class Backend:
    """One data location, empty, and how to reach it."""

    name: str
    #: What ``JOOR_DATA_DIR`` (or ``--data-dir``) says: a directory or a URL.
    location: str
    #: What the pipeline works in (``open_data_dir``'s answer): the directory itself, or a URL's work directory.
    data_dir: Path
    #: The environment of a process working on it (credentials, endpoint, work directory; no JOOR_* setting else).
    env: dict[str, str]
    #: How long a dead writer's lock lives on: None for a flock (freed at once), else its lease's life.
    lease_seconds: float | None = None
    #: Requests to an emulator cost milliseconds each: its crash tests kill at the first and the last write of each
    #: step of a publication rather than at every one of the ten tables' writes.
    emulated: bool = False
    #: The emulator (or fake) behind a cloud backend.
    emulator: Emulator | None = None

    @property
    def store(self) -> Store:
        return store_of(self.data_dir)

    @property
    def secret(self) -> str:
        """A secret of this backend's credentials (none on local disk or the GCS fake: then one that is never
        set), which must never show in output, logs or objects."""
        return (self.emulator.secret if self.emulator else "") or SECRET

    def expire_dead_leases(self) -> None:
        """What time does to the lease objects a SIGKILLed writer left (their life elapsing), done at once: each is
        rewritten as expired, so the next run's takeover (compare-and-swap against the version it reads) happens
        now, however long the lease. A killed writer runs with a long lease (:data:`DEAD_WRITER_LEASE`) so that a
        loaded machine never makes it lose its lease before the write it is killed at."""
        if self.lease_seconds is None:
            return  # a flock is freed by the kernel when its holder dies
        leases = [*self.objects(layout.LOCKS), layout.WAREHOUSE_LOCK]
        for key in leases:
            found = self.store.read(key)
            if found is None:
                continue
            try:
                info = json.loads(found[0])
            except ValueError:
                continue  # junk: the next run sets it aside anyway
            info["expires_at"] = time.time() - 1
            self.store.write(key, json.dumps(info).encode())

    def objects(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix`` (local disk: the data's files; the scratch under ``_work/`` excepted)."""
        keys = sorted(self.store.list(prefix))
        local_scratch = ("_work/staging/", "_work/quarantine/", "_work/warehouse/", "_work/store-cache/")
        return [key for key in keys if not key.startswith(local_scratch)]


def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for setting in SETTINGS:
        monkeypatch.delenv(setting.name, raising=False)


def make_backend(request: pytest.FixtureRequest, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    """An empty data location on backend ``name``: a directory, or a fresh bucket on the cloud's emulator with the
    cloud's variables aimed at it (in this process's environment too) and a work directory of its own."""
    _clean_environment(monkeypatch)
    scheme = SCHEMES[name]
    if not scheme:
        location = tmp_path / "data"
        env = {**os.environ, "JOOR_FLATTEN_WORKERS": "1"}
        return Backend("local", str(location), check_data_dir(location), env)
    emulator: Emulator = request.getfixturevalue(FIXTURES[scheme])
    settings = {**emulator.env, "JOOR_WORK_DIR": str(tmp_path / "work"), "JOOR_STORE_LEASE_SECONDS": "30"}
    for variable, value in settings.items():
        monkeypatch.setenv(variable, value)
    location = f"{scheme}://{new_bucket(emulator)}/data"
    data_dir = check_data_dir(Path(location))
    assert data_dir == (tmp_path / "work").absolute()
    env = {**os.environ, "JOOR_FLATTEN_WORKERS": "1"}
    return Backend(name, location, data_dir, env, lease_seconds=30.0, emulated=True, emulator=emulator)


@pytest.fixture
def local_backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    """An empty local data directory."""
    return make_backend(request, "local", tmp_path, monkeypatch)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    """Each backend in turn (see :data:`BACKENDS`)."""
    return make_backend(request, request.param, tmp_path, monkeypatch)


@pytest.fixture(params=CLOUDS)
def cloud_backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    """Each cloud backend in turn, on its emulator (see :data:`CLOUDS`)."""
    return make_backend(request, request.param, tmp_path, monkeypatch)


_HOLDER = """
import sys, time
from datetime import date
from pathlib import Path
from joor_pipeline.config import check_data_dir
from joor_pipeline.layout import SnapshotKey
from joor_pipeline.storage.publish import snapshot_lock
with snapshot_lock(check_data_dir(Path(sys.argv[1])), SnapshotKey(sys.argv[2], date.fromisoformat(sys.argv[3]))):
    print("locked", flush=True)
    time.sleep(120)
"""


@contextmanager
def held_elsewhere(backend: Backend, key: SnapshotKey) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``key``'s lock for the block (killed at its end), with a lease no loaded machine
    makes it lose (:data:`DEAD_WRITER_LEASE`)."""
    argv = [sys.executable, "-c", _HOLDER, backend.location, key.account, key.snapshot_date.isoformat()]
    env = {**backend.env, "JOOR_STORE_LEASE_SECONDS": DEAD_WRITER_LEASE}
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "locked"
        yield process
    finally:
        process.kill()
        process.communicate()

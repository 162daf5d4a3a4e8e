"""The storage backends the publication suite runs on: local disk, and S3 on moto's emulator (started once).

A test takes the ``backend`` fixture and runs once per name in :data:`BACKENDS`. Another backend joins the suite
with its name there and a ``<name>_backend`` fixture giving a :class:`Backend` (its emulator started once per
session, like :func:`s3_endpoint`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from joor_pipeline.config import SETTINGS, check_data_dir
from joor_pipeline.storage.factory import store_of
from joor_pipeline.storage.store import Store
from joor_pipeline_tests.s3_emulator import EmulatorDidNotStart, moto_s3_server

#: The backends every test of the suite runs on.
BACKENDS = ("local", "s3")
#: A secret value of the backends' credentials, which must never show anywhere.
SECRET = "s3cr3t-value-never-shown"


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
    #: Requests to an emulator cost tens of milliseconds: its crash tests kill at the first and the last write of
    #: each step of a publication rather than at every one of the ten tables' writes.
    emulated: bool = False

    @property
    def store(self) -> Store:
        return store_of(self.data_dir)

    def objects(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix`` (local disk: the data's files; the scratch under ``_work/`` excepted)."""
        keys = sorted(self.store.list(prefix))
        local_scratch = ("_work/staging/", "_work/quarantine/", "_work/warehouse/", "_work/store-cache/")
        return [key for key in keys if not key.startswith(local_scratch)]


def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for setting in SETTINGS:
        monkeypatch.delenv(setting.name, raising=False)


@pytest.fixture
def local_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    """An empty local data directory."""
    _clean_environment(monkeypatch)
    location = tmp_path / "data"
    env = {**os.environ, "JOOR_FLATTEN_WORKERS": "1"}
    return Backend("local", str(location), check_data_dir(location), env)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 emulator as a real HTTP server on loopback, once for the whole session."""
    try:
        with moto_s3_server(tmp_path_factory.mktemp("moto") / "server.log") as endpoint:
            yield endpoint
    except EmulatorDidNotStart as exc:
        pytest.fail(str(exc))


@pytest.fixture
def s3_backend(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    """A fresh bucket on moto's S3 emulator, the AWS variables aimed at it, and a work directory for it."""
    _clean_environment(monkeypatch)
    env = {
        "AWS_ACCESS_KEY_ID": "test-key-id",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_endpoint,
        "JOOR_WORK_DIR": str(tmp_path / "work"),
        "JOOR_STORE_LEASE_SECONDS": "2",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    bucket = f"joor-{uuid.uuid4().hex[:12]}"
    from joor_pipeline.storage.objectstore import ObjectStore

    ObjectStore(f"s3://{bucket}").client.create_bucket(Bucket=bucket)
    location = f"s3://{bucket}/data"
    data_dir = check_data_dir(Path(location))
    assert data_dir == (tmp_path / "work").absolute()
    env = {**os.environ, "JOOR_FLATTEN_WORKERS": "1"}
    return Backend("s3", location, data_dir, env, lease_seconds=2.0, emulated=True)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each backend in turn (see :data:`BACKENDS`)."""
    return request.getfixturevalue(f"{request.param}_backend")  # type: ignore[no-any-return]

"""The object-store emulators on 127.0.0.1, the one place that starts them: moto (S3), Azurite (Azure Blob Storage),
and a fake of GCS's XML API (no PyPI emulator serves what obstore sends: see fake_gcs.py).

The tests get each one from a session fixture (:func:`moto`, :func:`azurite`, :func:`fake_gcs`), registered only
by ``conftest.py``, so each is started once per test session whatever module asks; the benchmarks use the
context managers (:func:`moto_server`, :func:`azurite_server`, :func:`gcs_fake_server`) directly.

Azurite is the npm package pinned in ``.ci/node/package-lock.json``, installed there by ``npm ci`` (``.ci/run``
does it; so does :func:`azurite_command` when it is missing) and run with the machine's Node.js.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from joor_pipeline_tests.fake_gcs import FakeGCS, fake_gcs_server

REPO = Path(__file__).resolve().parent.parent
NODE_DIR = REPO / ".ci" / "node"
AZURITE_BLOB = NODE_DIR / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"
#: Azurite's well-known development account (public, documented by Microsoft; a secret to the code all the same:
#: it must never show in a message, a log or an object).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
#: The secret of the S3 credentials the tests give moto (moto accepts any), which must never show anywhere.
S3_SECRET = "s3cr3t-value-never-shown"


class EmulatorDidNotStart(RuntimeError):
    """An emulator exited, or did not listen within the time allowed."""


@dataclass(frozen=True)
class Emulator:
    """A running emulator (or the fake): what a store's environment needs to reach it."""

    #: For messages: which emulator, named as an emulator (or as a fake).
    name: str
    #: The URL scheme it serves: s3, az or gs.
    scheme: str
    endpoint: str
    #: The cloud's standard variables aimed at it.
    env: dict[str, str]
    #: The credential's secret value (empty when there is none), which must never show anywhere.
    secret: str = ""
    fake: FakeGCS | None = field(default=None, compare=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, name: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise EmulatorDidNotStart(f"{name} did not start: {tail}") from None
            time.sleep(0.1)


@contextmanager
def _serving(command: list[str], port: int, log: Path, name: str) -> Iterator[None]:
    """Run ``command`` (a server on ``port``, its output to ``log``) until the block ends."""
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=out)
    try:
        _wait_for_port(port, process, log, name)
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def moto_server(log: Path) -> Iterator[Emulator]:
    """moto's S3 emulator (a separate process, ``moto[server]``), with static credentials aimed at it."""
    port = free_port()
    with _serving([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port, log, "moto"):
        endpoint = f"http://127.0.0.1:{port}"
        env = {
            "AWS_ACCESS_KEY_ID": "emulator-key-id",
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }
        yield Emulator("moto (S3 emulator)", "s3", endpoint, env, S3_SECRET)


def azurite_command() -> list[str]:
    """How to run Azurite's blob service: installed under ``.ci/node`` by ``npm ci`` first if missing."""
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        raise EmulatorDidNotStart("Azurite needs Node.js and npm (Debian: apt-get install nodejs npm; .ci/run does it)")
    if not AZURITE_BLOB.is_file():
        done = subprocess.run(
            [npm, "ci", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund", "--loglevel=error"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0 or not AZURITE_BLOB.is_file():
            raise EmulatorDidNotStart(f"npm ci --prefix {NODE_DIR} failed: {(done.stderr or done.stdout)[-1500:]}")
    return [node, str(AZURITE_BLOB)]


@contextmanager
def azurite_server(log: Path) -> Iterator[Emulator]:
    """Azurite's blob service (Node.js), in memory, with its development account."""
    port = free_port()
    command = [
        *azurite_command(),
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--inMemoryPersistence",
        "--skipApiVersionCheck",
        "--disableProductStyleUrl",
    ]
    with _serving(command, port, log, "Azurite"):
        endpoint = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
        connection = (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={endpoint};"
        )
        env = {"AZURE_STORAGE_CONNECTION_STRING": connection}
        yield Emulator("Azurite (Azure Storage emulator)", "az", endpoint, env, AZURITE_KEY)


@contextmanager
def gcs_fake_server(log: Path | None = None) -> Iterator[Emulator]:
    """The fake of GCS's XML API (threads of this process, real HTTP), reached as Google's clients reach an
    emulator: ``STORAGE_EMULATOR_HOST``. (It logs nothing: ``log`` is there to match the emulators' signature.)"""
    with fake_gcs_server() as (endpoint, state):
        env = {"STORAGE_EMULATOR_HOST": endpoint}
        yield Emulator("fake GCS (a fake of the XML API)", "gs", endpoint, env, "", state)


def new_bucket(emulator: Emulator) -> str:
    """A fresh, empty bucket (container) on ``emulator``; its name."""
    name = f"joor-{uuid.uuid4().hex[:12]}"
    if emulator.scheme == "s3":
        import botocore.session

        client = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=emulator.endpoint,
            region_name=emulator.env["AWS_REGION"],
            aws_access_key_id=emulator.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=emulator.env["AWS_SECRET_ACCESS_KEY"],
        )
        client.create_bucket(Bucket=name)
    elif emulator.scheme == "az":
        from azure.storage.blob import BlobServiceClient

        service = BlobServiceClient.from_connection_string(emulator.env["AZURE_STORAGE_CONNECTION_STRING"])
        service.create_container(name)
    # The GCS fake has every bucket.
    return name


# ---- the session fixtures (registered by conftest.py only: one instance per session) -----------------------------


def _session(server: AbstractContextManager[Emulator]) -> Iterator[Emulator]:
    """A session fixture's body: the emulator until the session ends; a test failure naming why it did not start."""
    with ExitStack() as stack:
        try:
            emulator = stack.enter_context(server)
        except EmulatorDidNotStart as exc:
            pytest.fail(str(exc))
        yield emulator


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """moto's S3 emulator, once per session."""
    yield from _session(moto_server(tmp_path_factory.mktemp("moto") / "moto.log"))


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """Azurite, once per session."""
    yield from _session(azurite_server(tmp_path_factory.mktemp("azurite") / "azurite.log"))


@pytest.fixture(scope="session")
def fake_gcs() -> Iterator[Emulator]:
    """The GCS fake, once per session."""
    yield from _session(gcs_fake_server())


#: The emulator fixture of each cloud's URL scheme.
FIXTURES = {"s3": "moto", "az": "azurite", "gs": "fake_gcs"}

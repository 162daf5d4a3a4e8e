"""The object-store emulators on 127.0.0.1, each started once per test session: moto (S3), Azurite (Azure Blob
Storage), and a fake of GCS's XML API (no PyPI emulator serves what obstore sends: see fake_gcs.py).

Import the fixtures into a test module (``from joor_pipeline_tests.emulators import azurite, fake_gcs, moto``).
Azurite is the npm package pinned in ``.ci/node/package-lock.json``, installed there by ``npm ci`` (``.ci/run``
does it; so does :func:`azurite_command` when it is missing) and run with the machine's Node.js.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from joor_pipeline_tests.fake_gcs import FakeGCS, fake_gcs_server
from joor_pipeline_tests.s3_emulator import EmulatorDidNotStart, free_port, moto_s3_server

REPO = Path(__file__).resolve().parent.parent
NODE_DIR = REPO / ".ci" / "node"
AZURITE_BLOB = NODE_DIR / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"
#: Azurite's well-known development account (public, documented by Microsoft; not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


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


@dataclass(frozen=True)
class Emulator:
    """A running emulator (or the fake): what a store's environment needs to reach it."""

    name: str
    endpoint: str
    env: dict[str, str]
    fake: FakeGCS | None = None


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """moto's S3 emulator (a separate process), with static credentials aimed at it."""
    try:
        with moto_s3_server(tmp_path_factory.mktemp("moto") / "server.log") as endpoint:
            env = {
                "AWS_ACCESS_KEY_ID": "emulator-key-id",
                "AWS_SECRET_ACCESS_KEY": "emulator-secret-key",
                "AWS_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": endpoint,
            }
            yield Emulator("moto (S3 emulator)", endpoint, env)
    except EmulatorDidNotStart as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """Azurite's blob service (Node.js), in memory, with its development account."""
    try:
        command = azurite_command()
    except EmulatorDidNotStart as exc:
        pytest.fail(str(exc))
    port = free_port()
    where = tmp_path_factory.mktemp("azurite")
    log = where / "azurite.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                *command,
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(port),
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--disableProductStyleUrl",
            ],
            stdout=out,
            stderr=out,
        )
    try:
        _wait_for_port(port, process, log, "Azurite")
        endpoint = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
        connection = (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={endpoint};"
        )
        yield Emulator("Azurite (Azure Storage emulator)", endpoint, {"AZURE_STORAGE_CONNECTION_STRING": connection})
    except EmulatorDidNotStart as exc:
        pytest.fail(str(exc))
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="session")
def fake_gcs() -> Iterator[Emulator]:
    """The fake of GCS's XML API (in this process, real HTTP), reached as an emulator: ``STORAGE_EMULATOR_HOST``."""
    with fake_gcs_server() as (endpoint, state):
        yield Emulator("fake GCS (XML API fake)", endpoint, {"STORAGE_EMULATOR_HOST": endpoint}, state)


def new_bucket(emulator: Emulator, scheme: str) -> str:
    """A fresh, empty bucket (container) on ``emulator``; its name."""
    name = f"joor-{uuid.uuid4().hex[:12]}"
    if scheme == "s3":
        import botocore.session

        client = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=emulator.endpoint,
            region_name=emulator.env["AWS_REGION"],
            aws_access_key_id=emulator.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=emulator.env["AWS_SECRET_ACCESS_KEY"],
        )
        client.create_bucket(Bucket=name)
    elif scheme == "az":
        from azure.storage.blob import BlobServiceClient

        service = BlobServiceClient.from_connection_string(emulator.env["AZURE_STORAGE_CONNECTION_STRING"])
        service.create_container(name)
    # The GCS fake has every bucket.
    return name

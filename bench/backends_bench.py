"""The object-store backends against local disk: one publication's primitives (upload, create the journal, swap the
manifests, read back through DuckDB and pyarrow) of a realistic partition set, timed as whole processes.

``python -m bench.backends_bench`` makes the partition set once (3 dates x (10 tables' Parquet + 20 raw pages of
~400 KB), about 30 MB), starts moto (S3 emulator), Azurite (Azure emulator) and the GCS fake on 127.0.0.1, then for
each backend times ``--one <backend>`` against ``--one local`` with ``farm-bench --vs`` (A and B in turn, ratio
pair by pair) while the emulators stay up, and prints one table. Emulators on loopback measure the client's and
the protocol's cost (requests, conditional writes, ranged reads), not a cloud's latency.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

DATES = 3
TABLES = 10
PAGES = 20
TRANSFER_THREADS = 16


def make_set(root: Path) -> None:
    """The staged partition set: per date, one Parquet file per table (10k-120k rows) and the raw pages."""
    import random

    rng = random.Random(7)
    for day in range(DATES):
        for table in range(TABLES):
            rows = rng.randint(10_000, 120_000)
            data = pa.table(
                {
                    "id": pa.array(range(rows), pa.int64()),
                    "name": [f"retailer {rng.randint(0, 10**6)}" for _ in range(rows)],
                    "amount": [rng.random() * 1000 for _ in range(rows)],
                }
            )
            target = root / f"d{day}" / f"table{table}"
            target.mkdir(parents=True)
            pq.write_table(data, target / "part-00000.parquet")
        pages = root / f"d{day}" / "raw"
        pages.mkdir()
        for page in range(PAGES):
            body = [{"id": i, "name": f"retailer {rng.randint(0, 10**6)}", "pad": "x" * 300} for i in range(1000)]
            (pages / f"page-{page:05d}.json").write_text(json.dumps(body))


def run_store(url: str, staged: Path) -> int:
    """Publish every date of ``staged`` to the cloud store ``url`` and read it back; the rows read."""
    from joor_pipeline.storage.cloud import cloud_store

    store = cloud_store(url)
    rows = 0
    for day_dir in sorted(staged.iterdir()):
        pub = uuid.uuid4().hex
        targets = sorted(path for path in day_dir.iterdir() if path.is_dir())
        uploads = [
            (f"{day_dir.name}/{t.name}/{f.stem}-{pub}{f.suffix}", f) for t in targets for f in sorted(t.iterdir())
        ]
        bases = {t.name: store.version(f"{day_dir.name}/{t.name}/_manifest.json") for t in targets}
        with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
            list(pool.map(lambda item: store.upload(*item), uploads))
        manifests = {
            t.name: json.dumps({"publication_id": pub, "files": [k for k, f in uploads if f.parent == t]}).encode()
            for t in targets
        }
        store.create(f"_work/journals/{pub}.json", json.dumps({"targets": sorted(manifests)}).encode())
        for name, body in manifests.items():
            store.swap(f"{day_dir.name}/{name}/_manifest.json", body, bases[name])
        store.delete([f"_work/journals/{pub}.json"])
        con = duckdb.connect()
        store.register(con)
        for name in sorted(manifests):
            found = store.read(f"{day_dir.name}/{name}/_manifest.json")
            assert found is not None
            files = [store.uri(key) for key in json.loads(found[0])["files"]]
            if name == "raw":
                rows += sum(len(json.loads(store.read(key)[0])) for key in json.loads(found[0])["files"])  # type: ignore[index]
            else:
                rows += con.execute("select count(*) from read_parquet(?)", [files]).fetchall()[0][0]
                with store.open(json.loads(found[0])["files"][0]) as handle:
                    pq.ParquetFile(handle).metadata  # noqa: B018 (pyarrow's footer read)
        con.close()
    return rows


def run_local(root: Path, staged: Path) -> int:
    """The same on local disk: copy + fsync, O_EXCL journal, os.replace of each manifest, DuckDB and pyarrow reads."""
    rows = 0
    for day_dir in sorted(staged.iterdir()):
        pub = uuid.uuid4().hex
        targets = sorted(path for path in day_dir.iterdir() if path.is_dir())
        uploads = [
            (root / day_dir.name / t.name / f"{f.stem}-{pub}{f.suffix}", f)
            for t in targets
            for f in sorted(t.iterdir())
        ]

        def copy(item: tuple[Path, Path]) -> None:
            target, source = item
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            with open(target, "rb+") as handle:
                os.fsync(handle.fileno())

        with ThreadPoolExecutor(TRANSFER_THREADS) as pool:
            list(pool.map(copy, uploads))
        journal = root / "_work" / "journals" / f"{pub}.json"
        journal.parent.mkdir(parents=True, exist_ok=True)
        with open(journal, "x") as handle:
            handle.write(json.dumps({"targets": [t.name for t in targets]}))
            handle.flush()
            os.fsync(handle.fileno())
        for t in targets:
            manifest = root / day_dir.name / t.name / "_manifest.json"
            scratch = manifest.with_suffix(".tmp")
            files = [str(target) for target, source in uploads if source.parent == t]
            scratch.write_text(json.dumps({"publication_id": pub, "files": files}))
            os.replace(scratch, manifest)
        journal.unlink()
        con = duckdb.connect()
        for t in targets:
            files = json.loads((root / day_dir.name / t.name / "_manifest.json").read_text())["files"]
            if t.name == "raw":
                rows += sum(len(json.loads(Path(name).read_text())) for name in files)
            else:
                rows += con.execute("select count(*) from read_parquet(?)", [files]).fetchall()[0][0]
                pq.ParquetFile(files[0]).metadata  # noqa: B018
        con.close()
    return rows


def one(backend: str, staged: Path) -> None:
    if backend == "local":
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_LOCAL_DIR")) as root:
            print(run_local(Path(root), staged))
        return
    url = os.environ[f"BENCH_{backend.upper()}_URL"]
    print(run_store(f"{url}/{uuid.uuid4().hex[:8]}", staged))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", choices=["local", "s3", "gs", "az"], help="run the workload once on one backend")
    parser.add_argument("--staged", type=Path, help="the partition set (made by the parent)")
    parser.add_argument("-n", type=int, default=5, help="runs per backend (farm-bench -n)")
    args = parser.parse_args()
    if args.one:
        one(args.one, args.staged)
        return

    from joor_pipeline_tests.emulators import AZURITE_ACCOUNT, AZURITE_KEY, Emulator, azurite_command, new_bucket
    from joor_pipeline_tests.fake_gcs import fake_gcs_server
    from joor_pipeline_tests.s3_emulator import free_port, moto_s3_server

    work = Path(tempfile.mkdtemp(prefix="backends-bench-"))
    staged = work / "staged"
    make_set(staged)
    size = sum(path.stat().st_size for path in staged.rglob("*") if path.is_file())
    with ExitStack() as stack:
        s3 = stack.enter_context(moto_s3_server(work / "moto.log"))
        gcs, _state = stack.enter_context(fake_gcs_server())
        port = free_port()
        azurite = subprocess.Popen(
            [
                *azurite_command(),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(port),
                "--inMemoryPersistence",
                "--skipApiVersionCheck",
                "--disableProductStyleUrl",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        stack.callback(azurite.wait)
        stack.callback(azurite.terminate)
        env = {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench-secret",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": s3,
            "STORAGE_EMULATOR_HOST": gcs,
            "AZURE_STORAGE_CONNECTION_STRING": (
                f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
            ),
            "BENCH_LOCAL_DIR": str(work),
        }
        import socket
        import time

        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        env["BENCH_S3_URL"] = f"s3://{new_bucket(Emulator('moto', s3, env), 's3')}"
        env["BENCH_AZ_URL"] = f"az://{new_bucket(Emulator('azurite', '', env), 'az')}"
        env["BENCH_GS_URL"] = "gs://bench-bucket"
        command = [sys.executable, "-m", "bench.backends_bench", "--staged", str(staged), "--one"]
        print(f"partition set: {DATES} dates x ({TABLES} Parquet files + {PAGES} raw pages), {size / 1e6:.1f} MB")
        for backend, label in (("s3", "S3 (moto)"), ("az", "Azure (Azurite)"), ("gs", "GCS (fake)")):
            done = subprocess.run(
                [
                    "farm-bench",
                    "-n",
                    str(args.n),
                    "--timeout",
                    "900",
                    "--vs",
                    " ".join([*command, "local"]),
                    "--",
                    *command,
                    backend,
                ],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                check=False,
            )
            print(f"== {label}: A = {backend}, B = local disk", flush=True)
            print(done.stdout + done.stderr, flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The Store protocol's conformance suite, run against every backend: local disk, S3 (moto), Azure (Azurite), GCS
(a fake of its XML API)."""

from __future__ import annotations

import base64
import io
import json
import logging
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from joor_pipeline.joor.errors import ConfigError
from joor_pipeline.storage import lease
from joor_pipeline.storage.cloud import CloudStore, MissingExtra, cloud_store, parse_cloud_url
from joor_pipeline.storage.local import LocalStore
from joor_pipeline.storage.store import Conflict, Held, SnapshotBusy, Store, StoreError
from joor_pipeline_tests.backends import BACKENDS, CLOUDS, SCHEMES
from joor_pipeline_tests.emulators import FIXTURES, Emulator, new_bucket

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Backend:
    """One fresh data directory on one backend, and how to open another store on it (a second process's view)."""

    name: str
    store: Store
    open_again: Callable[[], Store]
    emulator: Emulator | None


def _backend(request: pytest.FixtureRequest, name: str) -> Backend:
    scheme = SCHEMES[name]
    if not scheme:
        root = request.getfixturevalue("tmp_path") / "data"
        root.mkdir()
        return Backend(name, LocalStore(root), lambda: LocalStore(root), None)
    emulator: Emulator = request.getfixturevalue(FIXTURES[scheme])
    url = f"{scheme}://{new_bucket(emulator)}/data"

    def open_again() -> Store:
        return cloud_store(url, environ=emulator.env, lease_seconds=30)

    return Backend(name, open_again(), open_again, emulator)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    return _backend(request, request.param)


@pytest.fixture(params=CLOUDS)
def cloud(request: pytest.FixtureRequest) -> Backend:
    """The backends whose lock is a lease object (local disk's is a flock)."""
    return _backend(request, request.param)


@pytest.fixture(params=["azure", "s3"])
def bucketed_backend(request: pytest.FixtureRequest) -> Backend:
    """The backends whose emulator has buckets to miss (the GCS fake has every bucket)."""
    return _backend(request, request.param)


def parquet_bytes(rows: int) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"n": list(range(rows)), "label": [f"row {i}" for i in range(rows)]}), buffer)
    return buffer.getvalue()


# ---- reading and writing ----------------------------------------------------------------------------------------


def test_the_store_is_the_protocol_and_names_its_objects(backend: Backend) -> None:
    assert isinstance(backend.store, Store)
    assert backend.store.uri("a/b.json") == f"{backend.store.url}/a/b.json"
    scheme = SCHEMES[backend.name]
    assert backend.store.uri("a/b.json").startswith(f"{scheme}://" if scheme else "/")


def test_read_and_version_of_a_missing_object_are_none(backend: Backend) -> None:
    assert backend.store.read("nothing/here.json") is None
    assert backend.store.version("nothing/here.json") is None


def test_write_then_read_gives_the_bytes_and_one_version_that_changes_on_every_write(backend: Backend) -> None:
    store = backend.store
    first = store.write("w/object.json", b'{"n": 1}')
    assert store.read("w/object.json") == (b'{"n": 1}', first)
    assert store.version("w/object.json") == first
    assert backend.open_again().version("w/object.json") == first  # another process sees the same version
    second = store.write("w/object.json", b'{"n": 2}')
    assert second != first
    assert store.read("w/object.json") == (b'{"n": 2}', second)


def test_create_only_if_absent(backend: Backend) -> None:
    store, other = backend.store, backend.open_again()
    version = store.create("journals/one.json", b"first")
    with pytest.raises(Conflict) as refused:
        other.create("journals/one.json", b"second")
    assert store.uri("journals/one.json") in str(refused.value)
    assert store.read("journals/one.json") == (b"first", version)


def test_swap_replaces_only_the_expected_version(backend: Backend) -> None:
    store, other = backend.store, backend.open_again()
    base = store.create("t/_manifest.json", b"v1")
    mine = store.swap("t/_manifest.json", b"v2", base)
    with pytest.raises(Conflict):
        other.swap("t/_manifest.json", b"v3", base)  # a writer that read v1 loses
    with pytest.raises(Conflict):
        other.swap("t/_manifest.json", b"v3", None)  # "only if absent" loses too
    assert store.read("t/_manifest.json") == (b"v2", mine)
    assert store.swap("new/_manifest.json", b"n1", None)  # None: a new partition
    store.delete(["t/_manifest.json"])
    with pytest.raises(Conflict):
        other.swap("t/_manifest.json", b"v4", mine)  # deleted since its version was read


def test_of_two_concurrent_swaps_from_one_version_exactly_one_wins(backend: Backend) -> None:
    from concurrent.futures import ThreadPoolExecutor

    base = backend.store.create("race/_manifest.json", b"base")
    stores = [backend.open_again() for _ in range(6)]

    def attempt(index: int) -> bool:
        try:
            stores[index].swap("race/_manifest.json", f"writer {index}".encode(), base)
            return True
        except Conflict:
            return False

    with ThreadPoolExecutor(6) as pool:
        won = list(pool.map(attempt, range(6)))
    assert won.count(True) == 1
    found = backend.store.read("race/_manifest.json")
    assert found is not None and found[0] == f"writer {won.index(True)}".encode()


def test_upload_of_a_file_small_and_multipart(backend: Backend, tmp_path: Path) -> None:
    small = tmp_path / "part-00000.parquet"
    small.write_bytes(parquet_bytes(10))
    large = tmp_path / "joor.duckdb"
    content = bytes(range(256)) * (11 * 4096)
    large.write_bytes(content)  # 11 MiB: uploaded in parts
    backend.store.upload("parquet/t/part-00000-abc.parquet", small)  # the local store moves the staged file
    backend.store.upload("joor.duckdb", large)
    assert backend.store.read("parquet/t/part-00000-abc.parquet") is not None
    got = backend.store.read("joor.duckdb")
    assert got is not None and got[0] == content


def test_list_is_every_key_under_the_prefix_recursively_and_sorted(backend: Backend) -> None:
    store = backend.store
    for size, key in enumerate(("raw/b/2.json", "raw/a/1.json", "raw/a/sub/3.json", "rawish/4.json", "top.json")):
        store.write(key, b"x" * size)
    assert store.list("raw") == {"raw/a/1.json": 1, "raw/a/sub/3.json": 2, "raw/b/2.json": 0}
    assert list(store.list("raw/a")) == ["raw/a/1.json", "raw/a/sub/3.json"]
    assert list(store.list("")) == ["raw/a/1.json", "raw/a/sub/3.json", "raw/b/2.json", "rawish/4.json", "top.json"]
    assert store.list("nothing") == {}


def test_delete_is_idempotent(backend: Backend) -> None:
    store = backend.store
    for index in range(5):
        store.write(f"d/{index}.json", b"x")
    store.delete([f"d/{index}.json" for index in range(3)] + ["d/never.json"])
    store.delete(["d/0.json"])  # gone already
    store.delete([])
    assert list(store.list("d")) == ["d/3.json", "d/4.json"]


def test_download_is_atomic_and_a_missing_object_is_file_not_found(backend: Backend, tmp_path: Path) -> None:
    data = bytes(range(256)) * 40_000
    backend.store.write("w/joor.duckdb", data)
    target = tmp_path / "local" / "joor.duckdb"
    target.parent.mkdir()
    target.write_bytes(b"the previous copy")
    backend.store.download("w/joor.duckdb", target)
    assert target.read_bytes() == data
    with pytest.raises(FileNotFoundError, match=r"w/missing\.duckdb"):
        backend.store.download("w/missing.duckdb", tmp_path / "local" / "missing.duckdb")
    assert not (tmp_path / "local" / "missing.duckdb").exists()
    assert sorted(path.name for path in target.parent.iterdir()) == ["joor.duckdb"]  # no scratch left behind


def test_keys_that_escape_the_prefix_are_refused(backend: Backend) -> None:
    for key in ("../other/x", "/abs", "a//b", "a/./b", ""):
        with pytest.raises(StoreError):
            backend.store.write(key, b"x")


# ---- leases ---------------------------------------------------------------------------------------------------


def test_a_lock_excludes_others_until_released(backend: Backend) -> None:
    held = backend.store.lock("_work/locks/day.lock", "the flatten of 2026-11-02")
    assert isinstance(held, Held)
    try:
        with pytest.raises(SnapshotBusy, match=r"the flatten of 2026-11-02 is busy: pid \d+") as busy:
            backend.open_again().lock("_work/locks/day.lock", "the flatten of 2026-11-02")
        assert backend.store.uri("_work/locks/day.lock") in str(busy.value)
        held.check()
    finally:
        held.release()
    if backend.emulator is not None:
        assert backend.store.read("_work/locks/day.lock") is None  # a lease is deleted (a flock's file stays)
    again = backend.open_again().lock("_work/locks/day.lock", "the flatten of 2026-11-02")
    again.release()


def _dead_holders_lease(expired_seconds_ago: float) -> bytes:
    return json.dumps(
        {
            "pid": 999999,
            "host": "gone-host",
            "command": "joor-pipeline flatten",
            "token": "dead",
            "lease_seconds": 60,
            "expires_at": time.time() - expired_seconds_ago,
        }
    ).encode()


def test_an_expired_lease_is_taken_over_with_one_warning(cloud: Backend, caplog: pytest.LogCaptureFixture) -> None:
    backend = cloud
    backend.store.write("_work/locks/day.lock", _dead_holders_lease(5))
    with caplog.at_level(logging.WARNING, logger="joor_pipeline.storage.lease"):
        held = backend.store.lock("_work/locks/day.lock", "the date")
    try:
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "took over the expired lease" in warnings[0] and "gone-host" in warnings[0]
        found = backend.store.read("_work/locks/day.lock")
        assert found is not None and json.loads(found[0])["token"] == held.token  # type: ignore[attr-defined]
        held.check()
    finally:
        held.release()


def test_a_junk_lock_object_is_taken_over_with_one_warning(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    """A lease (object stores) or a lock file (local disk) that does not parse: set aside, taken over, one warning."""
    for junk in (b'{"pid": 12, "expires_at": ', b"[1, 2]", b"\x00\xff"):
        backend.store.write("_work/locks/junk.lock", junk)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="joor_pipeline.storage"):
            held = backend.store.lock("_work/locks/junk.lock", "the date")
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "was not a lock record" in warnings[0] and "set it aside" in warnings[0]
        assert backend.store.uri("_work/locks/junk.lock") in warnings[0]
        held.release()


def test_a_lease_taken_over_is_detected_by_check_and_by_the_renewal(cloud: Backend) -> None:
    backend = cloud
    held = backend.store.lock("_work/locks/day.lock", "the date")
    assert isinstance(held, lease.Lease)
    try:
        # Another process took it over (as after an expiry this holder missed): the object is now someone else's.
        backend.open_again().write("_work/locks/day.lock", _dead_holders_lease(-60))
        with pytest.raises(SnapshotBusy, match="was lost"):
            held.check()
    finally:
        held.release()
    assert backend.store.read("_work/locks/day.lock") is not None  # release never deletes another holder's lease

    second = lease.acquire(backend.store, "_work/locks/two.lock", "the date", seconds=30)
    try:
        backend.open_again().write("_work/locks/two.lock", _dead_holders_lease(-60))
        second.renew()  # what the renewal thread does every third of the lease: its swap loses
        assert second.lost
        with pytest.raises(SnapshotBusy):
            second.check()
    finally:
        second.release()


def test_a_lease_is_renewed_by_its_holder(cloud: Backend) -> None:
    backend = cloud
    held = lease.acquire(backend.store, "_work/locks/renew.lock", "the date", seconds=30)
    try:
        before = backend.store.read("_work/locks/renew.lock")
        held.renew()
        after = backend.store.read("_work/locks/renew.lock")
        assert before is not None and after is not None and before[1] != after[1]
        assert json.loads(after[0])["expires_at"] >= json.loads(before[0])["expires_at"]
        held.check()
    finally:
        held.release()


# ---- DuckDB and pyarrow -----------------------------------------------------------------------------------------


def test_duckdb_reads_parquet_through_register(backend: Backend) -> None:
    backend.store.write("parquet/t/part-0.parquet", parquet_bytes(1000))
    backend.store.write("parquet/t/part-1.parquet", parquet_bytes(10))
    con = duckdb.connect()
    try:
        backend.store.register(con)
        backend.store.register(con)  # twice is harmless
        files = [backend.store.uri("parquet/t/part-0.parquet"), backend.store.uri("parquet/t/part-1.parquet")]
        total = con.execute("select count(*), sum(n) from read_parquet(?)", [files]).fetchall()
        assert total == [(1010, sum(range(1000)) + sum(range(10)))]
    finally:
        con.close()


def test_pyarrow_reads_parquet_through_open(backend: Backend) -> None:
    backend.store.write("parquet/t/part-0.parquet", parquet_bytes(5000))
    with backend.store.open("parquet/t/part-0.parquet") as handle:
        parquet = pq.ParquetFile(handle)
        assert parquet.metadata.num_rows == 5000
        assert parquet.read(columns=["n"]).column("n").to_pylist()[-1] == 4999
    with pytest.raises(FileNotFoundError):
        backend.store.open("parquet/t/missing.parquet")


def test_duckdb_attaches_a_downloaded_copy_of_the_warehouse(backend: Backend, tmp_path: Path) -> None:
    built = tmp_path / "built.duckdb"
    with duckdb.connect(str(built)) as con:
        con.execute("create table dim_retailers as select 42 as retailer_id")
    backend.store.upload("joor.duckdb", built)
    local = tmp_path / "copy" / "joor.duckdb"
    backend.store.download("joor.duckdb", local)
    with duckdb.connect() as con:
        con.execute(f"attach '{local}' as joor (read_only)")
        assert con.execute("select retailer_id from joor.dim_retailers").fetchall() == [(42,)]


# ---- errors and secrets -------------------------------------------------------------------------------------------


#: A well-formed account key (base64) that is not the emulator's.
WRONG_SECRET = base64.b64encode(b"not-the-emulator-key/" * 3).decode()


def test_a_wrong_key_is_a_store_error_naming_the_object_and_no_part_of_the_key(azurite: Emulator) -> None:
    """On Azurite, which checks each request's signature (moto accepts any key; a GCS emulator takes none)."""
    url = f"az://{new_bucket(azurite)}/data"
    connection = azurite.env["AZURE_STORAGE_CONNECTION_STRING"]
    wrong = connection.replace(connection.split("AccountKey=")[1].split(";")[0], WRONG_SECRET)
    store = cloud_store(url, environ={"AZURE_STORAGE_CONNECTION_STRING": wrong})
    assert WRONG_SECRET not in repr(store)
    for attempt in (lambda: store.write("x.json", b"x"), lambda: store.read("x.json"), lambda: store.list("")):
        with pytest.raises(StoreError) as refused:
            attempt()
        text = str(refused.value)
        assert store.url in text
        pieces = {WRONG_SECRET[i : i + 6] for i in range(len(WRONG_SECRET) - 5)}
        assert not [piece for piece in pieces if piece in text], text
        assert "\n" not in text


def test_a_missing_bucket_is_a_store_error_naming_it(bucketed_backend: Backend) -> None:
    backend = bucketed_backend
    assert backend.emulator is not None
    store = cloud_store(f"{SCHEMES[backend.name]}://joor-no-such-bucket/data", environ=backend.emulator.env)
    attempts = (
        lambda: store.write("x.json", b"x"),
        lambda: store.read("x.json"),
        lambda: store.list(""),
        lambda: store.list("_work/journals"),  # what the factory asks before it binds a work directory
    )
    for attempt in attempts:
        with pytest.raises(StoreError, match="'joor-no-such-bucket' does not exist") as refused:
            attempt()
        assert "\n" not in str(refused.value)
        for name in ("AWS_SECRET_ACCESS_KEY", "AZURE_STORAGE_CONNECTION_STRING"):
            secret = backend.emulator.env.get(name, "").split("AccountKey=")[-1].split(";")[0]
            assert not secret or secret not in str(refused.value)


# ---- URLs, extras, leak lines (no backend needed) ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("s3://my-bucket/joor", "s3://my-bucket/joor"),
        ("s3:/my-bucket/joor/", "s3://my-bucket/joor"),
        ("gs://my_bucket.example", "gs://my_bucket.example"),
        ("az://container/a/b", "az://container/a/b"),
        ("./data", None),
        ("C:/data", None),
    ],
)
def test_urls_are_parsed(text: str, expected: str | None) -> None:
    parsed = parse_cloud_url(text)
    assert (None if parsed is None else str(parsed)) == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("abfs://container@account.dfs.core.windows.net/x", "write az://"),
        ("gcs://bucket/x", "write gs://"),
        ("s3a://bucket/x", "write s3://"),
        ("ftp://host/x", "not ftp://"),
        ("s3://Bad_Bucket/x", "not a valid S3 bucket"),
        ("az://under_score/x", "not a valid Azure Blob Storage container"),
        ("s3://bucket/a/../b", "'..'"),
    ],
)
def test_other_urls_are_one_clear_error(text: str, says: str) -> None:
    with pytest.raises(StoreError, match=says.replace("(", r"\(")):
        parse_cloud_url(text)


@pytest.mark.parametrize(("scheme", "extra"), [("s3", "s3"), ("gs", "gcs"), ("az", "azure")])
def test_a_missing_extra_is_one_line_naming_it(scheme: str, extra: str, tmp_path: Path) -> None:
    # A child process where obstore cannot be imported, as in an install without the extra.
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "obstore.py").write_text("raise ImportError('blocked', name='obstore')\n")
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(blocker)!r})
        from joor_pipeline.storage.cloud import cloud_store
        try:
            cloud_store("{scheme}://bucket/data", environ={{"AZURE_STORAGE_ACCOUNT_NAME": "a"}})
        except Exception as exc:
            print(type(exc).__name__, "|", exc)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    kind, _, message = done.stdout.strip().partition(" | ")
    assert kind == "MissingExtra" and issubclass(MissingExtra, ConfigError)
    assert f"uv sync --extra {extra}" in message and f"joor-pipeline[{extra}]" in message
    assert "\n" not in message and "ModuleNotFoundError" not in done.stdout + done.stderr


def test_registering_with_duckdb_leaves_no_nanobind_leak_lines(moto: Emulator, tmp_path: Path) -> None:
    """A process that registers the store's file system with DuckDB, reads through it and exits prints nothing."""
    bucket = new_bucket(moto)
    store = cloud_store(f"s3://{bucket}/data", environ=moto.env)
    store.write("t/part-0.parquet", parquet_bytes(100))
    script = textwrap.dedent(
        f"""
        import duckdb, pyarrow.parquet as pq
        from joor_pipeline.storage.cloud import cloud_store
        store = cloud_store({store.url!r}, environ={moto.env!r})
        con = duckdb.connect()
        store.register(con)
        print(con.execute("select sum(n) from read_parquet(?)", [store.uri("t/part-0.parquet")]).fetchall())
        print(pq.ParquetFile(store.open("t/part-0.parquet")).metadata.num_rows)
        held = store.lock("_work/locks/x.lock", "a test")
        # exits with the connection open, the lease thread running and the file system registered
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[(4950,)]", "100"]
    assert "nanobind" not in done.stderr and "leaked" not in done.stderr, done.stderr


def test_store_objects_hold_no_credential_in_repr(moto: Emulator, azurite: Emulator) -> None:
    s3 = cloud_store("s3://bucket/data", environ=moto.env)
    az = cloud_store("az://container/data", environ=azurite.env)
    assert isinstance(s3, CloudStore)
    for store, secret in ((s3, moto.env["AWS_SECRET_ACCESS_KEY"]), (az, "AccountKey")):
        assert secret not in repr(store) and secret not in repr(store.filesystem)

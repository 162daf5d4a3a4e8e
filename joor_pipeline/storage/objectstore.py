"""``JOOR_DATA_DIR=s3://bucket/prefix``: the :class:`~joor_pipeline.storage.store.Store` primitives on S3.

Conditional writes go through botocore's client (``put_object`` with ``IfMatch`` / ``IfNoneMatch``); reads for
DuckDB and pyarrow through s3fs. Both take credentials and endpoint from the standard AWS variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_ENDPOINT_URL``, or a profile); nothing
here logs or stores them. The lock is a lease object (:mod:`~joor_pipeline.storage.lease`).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final

from joor_pipeline.storage.lease import DEFAULT_LEASE_SECONDS, Lease, acquire
from joor_pipeline.storage.store import Conflict, StoreError, Version

if TYPE_CHECKING:
    import duckdb

TRANSFER_THREADS: Final = 16
_URL: Final = re.compile(r"^s3:/{1,2}([a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(?:/(.*))?$")


def parse_s3_url(text: str) -> str:
    """``s3://bucket/prefix`` normalised (no trailing slash); also accepts ``s3:/bucket`` (what ``pathlib`` leaves
    of an URL). StoreError naming what is wrong."""
    found = _URL.match(text)
    if found is None:
        raise StoreError(f"{text!r} is not a valid s3://bucket/prefix URL (bucket: 3-63 of a-z 0-9 . -)")
    prefix = (found.group(2) or "").strip("/")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise StoreError(f"{text!r} has an empty, '.' or '..' path segment")
    return f"s3://{found.group(1)}/{prefix}".rstrip("/")


@dataclass
class ObjectStore:
    """One ``s3://bucket/prefix``: keys are data-directory-relative paths under the prefix."""

    url: str
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    bucket: str = field(init=False)
    prefix: str = field(init=False)

    def __post_init__(self) -> None:
        rest = self.url.removeprefix("s3://")
        self.bucket, _, self.prefix = rest.partition("/")

    def _key(self, key: str) -> str:
        key = key.strip("/")
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        return f"{self.url}/{key}"

    @cached_property
    def client(self) -> Any:
        import botocore.config
        import botocore.session

        config = botocore.config.Config(max_pool_connections=TRANSFER_THREADS + 4)
        return botocore.session.get_session().create_client("s3", config=config)

    @cached_property
    def fs(self) -> Any:
        """An s3fs file system over the same account (for DuckDB and pyarrow)."""
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True)

    def _call(self, operation: str, key: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, operation)(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                raise Conflict(f"{self.uri(key)}: {code or status}") from None
            if code in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(self.uri(key)) from None
            raise StoreError(
                f"{operation} {self.uri(key)} failed: {code or status} {error.get('Message', '')}"
            ) from None
        except BotoCoreError as exc:
            raise StoreError(f"{operation} {self.uri(key)} failed: {type(exc).__name__}: {exc}") from None

    def read(self, key: str) -> tuple[bytes, Version] | None:
        try:
            response = self._call("get_object", key, Key=self._key(key))
        except FileNotFoundError:
            return None
        with response["Body"] as body:
            return body.read(), str(response["ETag"])

    def version(self, key: str) -> Version | None:
        try:
            head = self._call("head_object", key, Key=self._key(key))
        except FileNotFoundError:
            return None
        return str(head["ETag"])

    def _put(self, key: str, body: Any, **extra: str) -> Version:
        return str(self._call("put_object", key, Key=self._key(key), Body=body, **extra)["ETag"])

    def write(self, key: str, data: bytes) -> Version:
        return self._put(key, data)

    def upload(self, key: str, source: Path) -> None:
        with open(source, "rb") as handle:
            self._put(key, handle)

    def create(self, key: str, data: bytes) -> Version:
        return self._put(key, data, IfNoneMatch="*")

    def swap(self, key: str, data: bytes, expected: Version | None) -> Version:
        if expected is None:
            return self._put(key, data, IfNoneMatch="*")
        return self._put(key, data, IfMatch=expected)

    def list(self, prefix: str) -> dict[str, int]:
        base = self._key(prefix).rstrip("/")
        start = f"{base}/" if base else ""
        skip = len(self.prefix) + 1 if self.prefix else 0
        found: dict[str, int] = {}
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            response = self._call("list_objects_v2", prefix, Prefix=start, **extra)
            found.update((item["Key"][skip:], int(item["Size"])) for item in response.get("Contents", []))
            if not response.get("IsTruncated"):
                return dict(sorted(found.items()))
            token = response["NextContinuationToken"]

    def delete(self, keys: Iterable[str]) -> None:
        names = [self._key(key) for key in keys]
        for start in range(0, len(names), 1000):
            batch = [{"Key": name} for name in names[start : start + 1000]]
            self._call("delete_objects", self.prefix, Delete={"Objects": batch, "Quiet": True})

    def download(self, key: str, target: Path) -> None:
        response = self._call("get_object", key, Key=self._key(key))
        scratch = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            with response["Body"] as body, open(scratch, "wb") as out:
                for chunk in iter(lambda: body.read(1 << 20), b""):
                    out.write(chunk)
            os.replace(scratch, target)
        except BaseException:
            scratch.unlink(missing_ok=True)
            raise

    def lock(self, key: str, what: str) -> Lease:
        return acquire(self, key, what, self.lease_seconds)

    def register(self, con: duckdb.DuckDBPyConnection) -> None:
        con.register_filesystem(self.fs)

    def open(self, key: str) -> BinaryIO:
        return self.fs.open(self.uri(key).removeprefix("s3://"), "rb")  # type: ignore[no-any-return]

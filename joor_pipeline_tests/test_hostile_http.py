"""Hostile HTTP (issue 10): trickled and endless bodies, huge bodies, endless and skipping pagination.

Each attack ends in one clear error, within bounded time and memory, with nothing published; the servers are
the sandbox or a small hostile server on loopback, written with sockets so they can misbehave as HTTP servers
are not supposed to.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import pytest

from joor_pipeline.joor.client import JoorClient, RetryPolicy
from joor_pipeline.joor.errors import JoorApiError, PaginationError, PayloadError, ResponseTooLarge, RetriesExhausted
from joor_pipeline.pipeline import fetch_snapshot
from joor_pipeline.sandbox import Faults, load_seed_connection, run_sandbox
from joor_pipeline_tests.conftest import sandbox_settings
from joor_pipeline_tests.raw_fixtures import raw_pages, raw_snapshot_dir, snap

DAY = date(2026, 11, 2)
TOKEN = "hostile-SECRET-token-51e2"
FAST = RetryPolicy(max_attempts=2, backoff_base=0.01, backoff_max=0.01)

#: What a scenario is handed: the socket, the request's path and query, and an event set when the test ends.
Scenario = Callable[[socket.socket, str, threading.Event], None]


class HostileServer:
    """A loopback HTTP server whose every answer is written by hand by a scenario; counts what it served."""

    def __init__(self, scenario: Scenario) -> None:
        self.stop = threading.Event()
        self.requests: list[str] = []
        self.bytes_sent = 0
        server = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                sock.settimeout(30)
                while not server.stop.is_set():
                    head = b""
                    while b"\r\n\r\n" not in head:
                        data = sock.recv(65536)
                        if not data:
                            return
                        head += data
                    path = head.split(b" ", 2)[1].decode()
                    server.requests.append(path)
                    try:
                        scenario(sock, path, server.stop)
                    except OSError:  # the client hung up: what a client under attack should do
                        return

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            block_on_close = False

        self._server = Server(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.start()

    def send(self, sock: socket.socket, data: bytes) -> None:
        sock.sendall(data)
        self.bytes_sent += len(data)

    def close(self) -> None:
        self.stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


@contextmanager
def hostile(scenario: Callable[[HostileServer, socket.socket, str, threading.Event], None]) -> Iterator[HostileServer]:
    holder: list[HostileServer] = []
    server = HostileServer(lambda sock, path, stop: scenario(holder[0], sock, path, stop))
    holder.append(server)
    try:
        yield server
    finally:
        server.close()


def settings_for(server: HostileServer, **overrides):
    from joor_pipeline.config import load_settings

    env = {"JOOR_BASE_URL": server.base_url, "JOOR_API_TOKEN": TOKEN, **overrides}
    return load_settings(env)


def page(start_from: int, next_start: int, connections: list[dict], count: str | None = None) -> bytes:
    block = {"code": 0, "comment": "", "start_from": start_from, "next_start": next_start, "log_id": f"L{start_from}"}
    if count is not None:
        block["count"] = count
    return json.dumps({"response": block, "connections": connections}).encode()


def head(status: str = "200 OK", **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status}", "Content-Type: application/json", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def assert_clear(exc: BaseException) -> None:
    """One line, no secret."""
    text = str(exc)
    assert "\n" not in text
    assert TOKEN not in text


# ---- JOOR_TIMEOUT bounds the whole request ----------------------------------------------------------------------


def trickle_body(server: HostileServer, sock: socket.socket, path: str, stop: threading.Event) -> None:
    server.send(sock, head(**{"Content-Length": "100000"}))
    while not stop.wait(0.05):
        server.send(sock, b" ")


def trickle_headers(server: HostileServer, sock: socket.socket, path: str, stop: threading.Event) -> None:
    server.send(sock, b"HTTP/1.1 200 OK\r\n")
    while not stop.wait(0.05):
        server.send(sock, b"X-Slow: y\r\n")


@pytest.mark.parametrize("scenario", [trickle_body, trickle_headers], ids=["body", "headers"])
def test_timeout_bounds_the_whole_request_not_each_read(tmp_path: Path, scenario) -> None:
    """A byte every 50 ms never lets a read time out; the 1 s deadline for the whole request still ends it."""
    with hostile(scenario) as server:
        with JoorClient(settings_for(server, JOOR_TIMEOUT="1"), retry=FAST) as client:
            started = time.monotonic()
            with pytest.raises(RetriesExhausted, match=r"ReadTimeout: the request outlasted its 1 s deadline") as info:
                fetch_snapshot(client, tmp_path, snap(DAY))
            took = time.monotonic() - started
            assert client.stats.transport_errors == 2
    # Two tries of one second each, plus slack for a loaded machine; the trickle itself would go on until stopped.
    assert took < 20
    assert len(server.requests) == 2
    assert_clear(info.value)
    assert not raw_snapshot_dir(tmp_path, DAY).exists()


def test_a_slow_body_within_the_deadline_is_read_whole(tmp_path: Path) -> None:
    """The deadline is not a per-read timeout shrunk: a body that trickles in within it arrives intact."""
    seed = load_seed_connection()
    body = page(0, 0, [seed], count="1")

    def slow(server: HostileServer, sock: socket.socket, path: str, stop: threading.Event) -> None:
        server.send(sock, head(**{"Content-Length": str(len(body))}))
        for i in range(0, len(body), len(body) // 5 + 1):
            time.sleep(0.05)
            server.send(sock, body[i : i + len(body) // 5 + 1])

    with hostile(slow) as server, JoorClient(settings_for(server, JOOR_TIMEOUT="10")) as client:
        report = fetch_snapshot(client, tmp_path, snap(DAY))
    assert report.connections == 1
    assert raw_pages(tmp_path, DAY)[0].read_bytes() == body


# ---- JOOR_MAX_RESPONSE_MB caps a body while it streams --------------------------------------------------------------


def declares_huge(server: HostileServer, sock: socket.socket, path: str, stop: threading.Event) -> None:
    server.send(sock, head(**{"Content-Length": str(2 * 2**30)}))
    server.send(sock, b"{" * 65536)


def endless_chunks(server: HostileServer, sock: socket.socket, path: str, stop: threading.Event) -> None:
    server.send(sock, head(**{"Transfer-Encoding": "chunked"}))
    chunk = b"[" * 65536
    while not stop.is_set():
        server.send(sock, b"%x\r\n%s\r\n" % (len(chunk), chunk))


@pytest.mark.parametrize(("scenario", "declared"), [(declares_huge, True), (endless_chunks, False)])
def test_response_size_is_capped_while_streaming(tmp_path: Path, scenario, declared: bool) -> None:
    with hostile(scenario) as server:
        with JoorClient(settings_for(server, JOOR_MAX_RESPONSE_MB="1"), retry=FAST) as client:
            with pytest.raises(ResponseTooLarge) as info:
                fetch_snapshot(client, tmp_path, snap(DAY))
            received = client.stats.bytes_received
    error = info.value
    assert error.limit_bytes == 2**20
    assert (error.declared == 2 * 2**30) is declared
    assert "over the 1 MB cap (JOOR_MAX_RESPONSE_MB)" in str(error)
    assert f"{server.base_url}/v2/connection/?start_from=0&count=100" in str(error)
    assert_clear(error)
    # Not retried: the same page would be as large the second time.
    assert len(server.requests) == 1
    # Abandoned at the cap: what was sent beyond it is what sat in the socket buffers, not gigabytes.
    assert received == 0
    assert server.bytes_sent < 64 * 2**20
    assert not raw_snapshot_dir(tmp_path, DAY).exists()


def test_a_body_just_under_the_cap_is_accepted(tmp_path: Path) -> None:
    seed = load_seed_connection()
    body = page(0, 0, [seed], count="1")
    padded = body[:-1] + b" " * (2**20 - len(body)) + body[-1:]
    assert len(padded) == 2**20

    def exactly_the_cap(server: HostileServer, sock: socket.socket, path: str, stop: threading.Event) -> None:
        server.send(sock, head(**{"Content-Length": str(len(padded))}) + padded)

    with hostile(exactly_the_cap) as server:
        with JoorClient(settings_for(server, JOOR_MAX_RESPONSE_MB="1")) as client:
            report = fetch_snapshot(client, tmp_path, snap(DAY))
    assert report.connections == 1


# ---- JOOR_MAX_PAGES caps the pages of a snapshot --------------------------------------------------------------------


def endless_pages(server: HostileServer, sock: socket.socket, path: str, stop: threading.Event) -> None:
    start = int(path.split("start_from=")[1].split("&")[0])
    connection = {**load_seed_connection(), "customer_account_id": 10**6 + start}
    body = page(start, start + 1, [connection])
    server.send(sock, head(**{"Content-Length": str(len(body))}) + body)


def test_endless_pagination_stops_at_the_page_cap(tmp_path: Path) -> None:
    with hostile(endless_pages) as server:
        with JoorClient(settings_for(server, JOOR_MAX_PAGES="25")) as client:
            with pytest.raises(PaginationError, match="would pass 25 pages \\(JOOR_MAX_PAGES\\)") as info:
                fetch_snapshot(client, tmp_path, snap(DAY))
    assert "page 24 (log_id L24) points on to next_start 25" in str(info.value)
    assert_clear(info.value)
    assert len(server.requests) == 25
    assert not raw_snapshot_dir(tmp_path, DAY).exists()
    assert not list(tmp_path.rglob("page-*"))


@pytest.mark.parametrize("concurrency", [1, 4])
def test_page_cap_on_the_sandbox(tmp_path: Path, concurrency: int) -> None:
    """12 pages against a cap of 5: page by page it stops at the 5th; planned, before the 2nd is asked for."""
    with run_sandbox(connections=120, rate_limit_credits=0) as sb:
        settings = sandbox_settings(sb, page_size=10, concurrency=concurrency, max_pages=5)
        with JoorClient(settings) as client, pytest.raises(PaginationError) as info:
            fetch_snapshot(client, tmp_path, snap(DAY))
    if concurrency == 1:
        assert sb.stats.requests == 5
        assert "page 4 (log_id " in str(info.value)
    else:
        assert sb.stats.requests == 1
        assert "JOOR reports 120 connections, 12 pages of 10" in str(info.value)
    assert not raw_snapshot_dir(tmp_path, DAY).exists()


def test_a_snapshot_of_exactly_the_cap_is_landed(tmp_path: Path) -> None:
    with run_sandbox(connections=120, rate_limit_credits=0) as sb:
        for concurrency in (1, 4):
            settings = sandbox_settings(sb, page_size=10, concurrency=concurrency, max_pages=12)
            with JoorClient(settings) as client:
                assert fetch_snapshot(client, tmp_path / str(concurrency), snap(DAY)).pages == 12


# ---- a next_start that skips connections ---------------------------------------------------------------------------


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_pagination_gap_is_an_error_naming_page_and_log_id(tmp_path: Path, concurrency: int) -> None:
    with run_sandbox(connections=120, rate_limit_credits=0, faults=Faults(pagination_gap=3)) as sb:
        settings = sandbox_settings(sb, page_size=10, concurrency=concurrency)
        with JoorClient(settings) as client, pytest.raises(PaginationError) as info:
            fetch_snapshot(client, tmp_path, snap(DAY))
    message = str(info.value)
    assert "next_start 13 skips past the end of page 0 (log_id " in message
    assert "start_from 0 + 10 connections is 10, so the 3 connection(s) in between would be lost" in message
    assert_clear(info.value)
    assert not raw_snapshot_dir(tmp_path, DAY).exists()


def test_a_cursor_falling_short_repeats_rather_than_loses_and_is_kept() -> None:
    """next_start inside the page (an overlap) loses nothing: it is followed, with a warning."""

    def overlapping(server: HostileServer, sock: socket.socket, path: str, stop: threading.Event) -> None:
        start = int(path.split("start_from=")[1].split("&")[0])
        rows = [{**load_seed_connection(), "customer_account_id": 500 + i} for i in range(start, min(start + 4, 6))]
        body = page(start, start + 2 if start + 4 < 6 else 0, rows)
        server.send(sock, head(**{"Content-Length": str(len(body))}) + body)

    with hostile(overlapping) as server, JoorClient(settings_for(server, JOOR_CONCURRENCY="1")) as client:
        pages = list(client.iter_connection_pages())
    assert [p.start_from for p in pages] == [0, 2]
    ids = [c["customer_account_id"] for p in pages for c in p.page.connections]
    assert ids == [str(500 + i) for i in (0, 1, 2, 3, 2, 3, 4, 5)]


# ---- absurd numbers and texts in the response block (issue 19) ------------------------------------------------------


def serve(body: bytes, content_type: str = "application/json") -> Callable[..., None]:
    def scenario(server: HostileServer, sock: socket.socket, path: str, stop: threading.Event) -> None:
        server.send(sock, head(**{"Content-Type": content_type, "Content-Length": str(len(body))}) + body)

    return scenario


NINES = "9" * 30


@pytest.mark.parametrize("fmt", ["json", "xml"])
@pytest.mark.parametrize("field", ["count", "next_start", "start_from"])
def test_a_response_number_past_64_bits_is_one_error_naming_the_page_and_log_id(
    tmp_path: Path, fmt: str, field: str
) -> None:
    seed = {**load_seed_connection(), "customer_account_id": 500}
    block = {"code": 0, "comment": "", "start_from": 0, "next_start": 1, "count": 300, "log_id": "L0", field: NINES}
    if fmt == "json":
        body = json.dumps({"response": block, "connections": [seed]}).replace(f'"{NINES}"', NINES).encode()
    else:
        fields = "".join(f"<{k}>{v}</{k}>" for k, v in block.items())
        one = "<connection><customer_account_id>500</customer_account_id></connection>"
        body = f"<connections><response>{fields}</response><connections>{one}</connections></connections>".encode()
    with hostile(serve(body)) as server, JoorClient(settings_for(server, JOOR_FORMAT=fmt), retry=FAST) as client:
        with pytest.raises(PayloadError) as info:
            fetch_snapshot(client, tmp_path, snap(DAY))
    message = str(info.value)
    assert f"response.{field} {NINES} is out of range" in message
    assert f"{server.base_url}/v2/connection/?start_from=0&count=100" in message and "(log_id L0)" in message
    assert "OverflowError" not in message
    assert_clear(info.value)
    assert not raw_snapshot_dir(tmp_path, DAY).exists()


def test_a_huge_comment_or_value_in_the_response_block_is_quoted_short(tmp_path: Path) -> None:
    """A 200 with a non-zero response.code and a comment of 100,000 characters: one short line, the size said."""
    comment = "Z" * 100_000
    body = json.dumps({"response": {"code": 7, "comment": comment, "log_id": "L" * 5000}, "connections": []})
    with hostile(serve(body.encode())) as server, JoorClient(settings_for(server), retry=FAST) as client:
        with pytest.raises(JoorApiError) as info:
            fetch_snapshot(client, tmp_path, snap(DAY))
    message = str(info.value)
    assert "response.code 7" in message and "100,000 characters" in message and "5,000 characters" in message
    assert f"url {server.base_url}/v2/connection/" in message
    assert len(message) < 1000
    assert_clear(info.value)

    for value in ('"' + "x" * 100_000 + '"', "[" + "1," * 50_000 + "1]"):
        body = '{"response": {"code": 0, "count": ' + value + ', "log_id": "L0"}, "connections": []}'
        with hostile(serve(body.encode())) as server, JoorClient(settings_for(server), retry=FAST) as client:
            with pytest.raises(PayloadError, match=r"response\.count is not an integer") as caught:
                fetch_snapshot(client, tmp_path, snap(DAY))
        assert len(str(caught.value)) < 1000
        assert_clear(caught.value)
    assert not raw_snapshot_dir(tmp_path, DAY).exists()

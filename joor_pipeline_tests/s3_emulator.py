"""moto's S3 *emulator* (not AWS) as a real HTTP server on 127.0.0.1: for the object-store tests and bench."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class EmulatorDidNotStart(RuntimeError):
    """moto's server exited, or did not listen within the time allowed."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def moto_s3_server(log: Path, *, start_timeout: float = 60.0) -> Iterator[str]:
    """Start moto's S3 server on a free loopback port; yields its endpoint URL and stops it on the way out.

    Its output goes to ``log``, whose tail is in the error when the server does not start.
    """
    port = free_port()
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-2000:]
                    raise EmulatorDidNotStart(f"moto's S3 server did not start: {tail}") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)

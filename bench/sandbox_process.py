"""The JOOR sandbox in a process of its own, so the fetch under test does not share a GIL with the server.

In one process, the server's rendering and the client's parsing would take turns on one interpreter lock and
the benchmark would measure the emulator as much as the fetch; the real JOOR is another machine. The child
runs :func:`joor_pipeline.sandbox.run_sandbox` and answers ``stats``, ``reset`` and ``stop`` over a pipe.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any, Final

#: A sandbox of 20,000 connections generates in about a second; allow for a slow, shared machine.
START_TIMEOUT: Final = 300.0


def _serve(pipe: Connection, config: dict[str, Any], latency_ms: float) -> None:
    from joor_pipeline.sandbox import Faults, SandboxConfig, run_sandbox

    with run_sandbox(SandboxConfig(**config, faults=Faults(latency_ms=latency_ms))) as sandbox:
        pipe.send({"base_url": sandbox.base_url, "api_token": sandbox.config.api_token})
        while True:
            command = pipe.recv()
            if command == "stats":
                pipe.send(dataclasses.asdict(sandbox.stats))
            elif command == "reset":
                sandbox.reset_stats()
                pipe.send(None)
            elif command == "new_window":
                sandbox.reset_window()
                pipe.send(None)
            else:
                break


class SandboxProcess:
    """A sandbox served by a child process for the duration of a ``with`` block."""

    def __init__(
        self,
        *,
        connections: int,
        seed: int,
        latency_ms: float = 0.0,
        rate_limit_credits: int = 0,
        rate_limit_window: float = 300.0,
    ) -> None:
        # rate_limit_credits 0 switches the sandbox's meter off.
        config = {
            "connections": connections,
            "seed": seed,
            "rate_limit_credits": rate_limit_credits,
            "rate_limit_window": rate_limit_window,
            "max_page_size": 1000,
        }
        context = multiprocessing.get_context("spawn")
        self._pipe, child_end = context.Pipe()
        self._process = context.Process(
            target=_serve, args=(child_end, config, latency_ms), name="joor-sandbox", daemon=True
        )
        self._process.start()
        child_end.close()
        if not self._pipe.poll(START_TIMEOUT):
            self.close()
            raise RuntimeError(f"the sandbox did not start within {START_TIMEOUT:.0f} s")
        hello = self._pipe.recv()
        self.base_url: str = hello["base_url"]
        self.api_token: str = hello["api_token"]

    def stats(self) -> dict[str, Any]:
        """The sandbox's counters (requests, by_status, credits_used, throttled, max_concurrent, ...)."""
        self._pipe.send("stats")
        stats: dict[str, Any] = self._pipe.recv()
        return stats

    def reset(self) -> None:
        """Zero the counters (the rate-limit window is not reset: use a fresh sandbox for that)."""
        self._pipe.send("reset")
        self._pipe.recv()

    def new_window(self) -> None:
        """Start the account's next rate-limit window afresh (its credits whole again), without a new sandbox."""
        self._pipe.send("new_window")
        self._pipe.recv()

    def close(self) -> None:
        """Stop the server and wait for its process; terminate it if it does not stop."""
        if self._process.is_alive():
            with contextlib.suppress(OSError):
                self._pipe.send("stop")
            self._process.join(timeout=30)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(timeout=10)
        self._pipe.close()

    def __enter__(self) -> SandboxProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

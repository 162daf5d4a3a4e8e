"""Parts of a real deployment for the deployment test: a throwaway PostgreSQL, Dagster's processes, GraphQL.

Each part is a context manager that stops what it started, even when the block fails. Failures say what is
missing and how to get it: the deployment test is never skipped.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import httpx

T = TypeVar("T")

#: Where Debian and Ubuntu put the server binaries, one directory per major version.
POSTGRES_BIN_GLOB = "/usr/lib/postgresql/*/bin"
#: initdb and postgres refuse to run as root; as root, the server runs as this user (made by the package).
POSTGRES_OS_USER = "postgres"
POSTGRES_MISSING = (
    "PostgreSQL's server binaries (initdb, pg_ctl, psql) were not found on PATH nor in "
    f"{POSTGRES_BIN_GLOB}: install them (Debian/Ubuntu: apt-get install -y postgresql; .ci/run does it). "
    "The deployment test needs a real PostgreSQL and is never skipped."
)


class DeploymentError(AssertionError):
    """A part of the deployment did not come up or misbehaved; the message says which and shows its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
    """Call ``probe`` until it returns something other than None; DeploymentError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise DeploymentError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def log_tail(path: Path, lines: int = 40) -> str:
    """The last lines of a process's log, for a failure message."""
    if not path.is_file():
        return f"(no log at {path})"
    text = path.read_text(errors="replace").splitlines()[-lines:]
    return f"--- last lines of {path} ---\n" + "\n".join(text)


# ---- PostgreSQL ------------------------------------------------------------------------------------------------


def postgres_bindir() -> Path:
    """The directory of initdb, pg_ctl and psql: PATH first, then the newest Debian-packaged version."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).parent] if on_path else []
    candidates += sorted(
        (Path(p) for p in Path("/").glob(POSTGRES_BIN_GLOB.lstrip("/"))),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "psql")):
            return bindir
    raise DeploymentError(POSTGRES_MISSING)


@dataclass(frozen=True)
class PostgresServer:
    """A running throwaway server: superuser over the Unix socket in ``root``, passwords over TCP."""

    bindir: Path
    root: Path
    port: int
    os_user: str | None
    host: str = "127.0.0.1"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def command(self, tool: str, *args: str) -> list[str]:
        """``tool`` from the server's bindir, run as the server's OS user when we are root."""
        prefix = ["runuser", "-u", self.os_user, "--"] if self.os_user else []
        return [*prefix, str(self.bindir / tool), *args]

    def run(self, tool: str, *args: str, timeout: float = 60) -> str:
        """Run a PostgreSQL tool; DeploymentError with its output if it fails."""
        try:
            done = subprocess.run(
                self.command(tool, *args),
                cwd=self.root,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise DeploymentError(f"{tool} did not finish within {timeout:.0f}s\n{log_tail(self.log_path)}") from exc
        if done.returncode != 0:
            raise DeploymentError(
                f"{tool} {' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}"
                f"\n{log_tail(self.log_path)}"
            )
        return done.stdout

    def sql(self, *statements: str, database: str = "postgres") -> str:
        """Statements run as the superuser over the Unix socket (psql stops at the first error)."""
        args = ["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.root), "-p", str(self.port), "-U", "postgres"]
        args += ["-d", database, "-At"]
        for statement in statements:
            args += ["-c", statement]
        return self.run("psql", *args)


def _os_user_for_server(root: Path) -> str | None:
    """As root, hand the server's directory to the ``postgres`` user; otherwise run as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        account = pwd.getpwnam(POSTGRES_OS_USER)
    except KeyError:
        raise DeploymentError(
            f"running as root, but there is no {POSTGRES_OS_USER!r} user for initdb (which refuses root). "
            + POSTGRES_MISSING
        ) from None
    os.chown(root, account.pw_uid, account.pw_gid)
    return POSTGRES_OS_USER


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A fresh cluster in a temporary directory, listening on a free port of 127.0.0.1; removed afterwards.

    The directory is made with mkdtemp in the system temp dir rather than pytest's tmp_path, because the server's
    OS user must reach it and pytest's base directory is private to the user running the tests.
    """
    bindir = postgres_bindir()
    root = Path(tempfile.mkdtemp(prefix="joor-postgres-"))
    server: PostgresServer | None = None
    try:
        os_user = _os_user_for_server(root)
        probe = PostgresServer(bindir, root, 0, os_user)
        # Local (socket) connections are the superuser's; TCP connections must give a password, as in production.
        probe.run(
            "initdb",
            "-D",
            str(probe.data_dir),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        for attempt in range(3):
            candidate = PostgresServer(bindir, root, free_port(), os_user)
            options = f"-h 127.0.0.1 -p {candidate.port} -k {root} -c fsync=off -c full_page_writes=off"
            try:
                candidate.run(
                    "pg_ctl", "-D", str(candidate.data_dir), "-l", str(candidate.log_path), "-w", "-t", "60",
                    "-o", options, "start",
                )  # fmt: skip
            except DeploymentError:
                if attempt == 2:  # the free port may have been taken in between; try another
                    raise
                continue
            server = candidate
            break
        assert server is not None
        yield server
    finally:
        if server is not None:
            with contextlib.suppress(DeploymentError):
                server.run("pg_ctl", "-D", str(server.data_dir), "-m", "immediate", "-w", "stop", timeout=30)
        shutil.rmtree(root, ignore_errors=True)


# ---- Dagster's processes ---------------------------------------------------------------------------------------


def venv_script(name: str) -> str:
    """A console script installed beside the running interpreter (the project's environment)."""
    path = Path(sys.executable).parent / name
    if not path.is_file():
        raise DeploymentError(f"{name} is not installed beside {sys.executable}: run `make setup`")
    return str(path)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we cannot signal still exists
        return True
    return True


def stop_process_group(process: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """SIGTERM the process's group (it and the code servers and runs it started), then SIGKILL what remains."""
    pgid = process.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _group_alive(pgid):
        process.poll()
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


@dataclass
class ServiceProcess:
    """A long-running process in its own process group, its output in ``log_path``."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def check_alive(self) -> None:
        """DeploymentError, with the log, if the process has exited."""
        code = self.process.poll()
        if code is not None:
            raise DeploymentError(f"{self.name} exited with code {code}\n{log_tail(self.log_path)}")


@contextlib.contextmanager
def service(name: str, args: list[str], env: Mapping[str, str], cwd: Path, log_path: Path) -> Iterator[ServiceProcess]:
    """Start ``args`` in a new session (so its children can be stopped with it) for the length of the block."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            args, env=dict(env), cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield ServiceProcess(name, process, log_path)
    finally:
        stop_process_group(process)


# ---- GraphQL ---------------------------------------------------------------------------------------------------


@dataclass
class GraphQL:
    """The webserver's GraphQL endpoint, as the UI uses it."""

    url: str
    timeout: float = 30.0

    def __call__(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        response = httpx.post(self.url, json={"query": query, "variables": dict(variables or {})}, timeout=self.timeout)
        if response.status_code != 200:
            raise DeploymentError(f"GraphQL answered {response.status_code}: {response.text[:2000]}")
        body = response.json()
        if body.get("errors"):
            raise DeploymentError(f"GraphQL errors: {body['errors']}")
        return dict(body["data"])


# ---- the README's operator steps, followed on a fresh checkout ------------------------------------------------

UV_MISSING: Final = (
    "uv was not found on PATH nor as `python3 -m uv`: the deployment test follows the README's install, "
    "`uv sync ...` (pip install uv; `make setup` does it)"
)


def uv_dir(scratch: Path) -> Path:
    """A directory holding ``uv``, to put on PATH: uv's own, or a link to the one ``python3 -m uv`` runs."""
    found = shutil.which("uv")
    if found:
        return Path(found).parent
    for python in ("python3", sys.executable):
        done = subprocess.run(
            [python, "-c", "import uv; print(uv.find_uv_bin())"], capture_output=True, text=True, check=False
        )
        if done.returncode == 0 and Path(done.stdout.strip()).is_file():
            scratch.mkdir(parents=True, exist_ok=True)
            (scratch / "uv").symlink_to(done.stdout.strip())
            return scratch
    raise DeploymentError(UV_MISSING)


def operator_environment(base: Mapping[str, str], uv_bin: Path) -> dict[str, str]:
    """The shell an operator follows the README in: ``base``, uv on PATH, no other project's environment active.

    PYTHONDONTWRITEBYTECODE (set on this project's test machines) is dropped: an operator's fresh install writes
    its bytecode on first import, instead of every process of it compiling Dagster again.
    """
    env = {
        k: v for k, v in base.items() if k not in {"VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT", "PYTHONDONTWRITEBYTECODE"}
    }
    env["PATH"] = os.pathsep.join([str(uv_bin), env.get("PATH", "")])
    return env


def follow(step: str, text: str, env: Mapping[str, str], cwd: Path, timeout: float = 600) -> str:
    """Run one step's shell text as an operator would paste it (given on standard input, so no value in it shows
    in the process list); its output, or DeploymentError naming the step."""
    clock = time.monotonic()
    try:
        done = subprocess.run(
            ["bash", "--noprofile", "--norc", "-e", "-o", "pipefail"],
            input=text,
            cwd=cwd,
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise DeploymentError(f"the README's {step} step did not finish within {timeout:.0f}s") from exc
    if done.returncode != 0:
        raise DeploymentError(
            f"the README's {step} step failed with exit code {done.returncode}:\n{text}\n---\n"
            f"{done.stdout}{done.stderr}"
        )
    print(f"the README's {step} step: {time.monotonic() - clock:.1f}s")
    return done.stdout + done.stderr


def exported(step: str, text: str, env: Mapping[str, str], cwd: Path) -> dict[str, str]:
    """The variables a step's shell text exports (or changes), as the next steps' shell would have them."""
    handle, dump = tempfile.mkstemp(prefix="joor-operator-env-")
    os.close(handle)
    try:
        follow(step, f"{text}\nenv -0 > {shlex.quote(dump)}\n", env, cwd)
        entries = Path(dump).read_text().split("\0")
    finally:
        os.unlink(dump)
    after = dict(entry.split("=", 1) for entry in entries if "=" in entry)
    shell_own = {"_", "SHLVL", "PWD", "OLDPWD"}
    return {name: value for name, value in after.items() if env.get(name) != value and name not in shell_own}

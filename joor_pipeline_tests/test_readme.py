"""The README runs as written: every block of code in it is marked, and the runnable ones pass, in order, on a
fresh checkout with the built-in sandbox (and the project's JOOR sandbox on 127.0.0.1 standing in for JOOR)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import duckdb
import pytest

from joor_pipeline.sandbox import run_sandbox
from joor_pipeline_tests.readme import Block, ReadmeError, blocks, check_marks, fresh_checkout, replaced

VENV_BIN: Final = Path(sys.executable).parent

#: ``uv`` as the docs test stands it in: the project's environment is already installed (``make setup``), so
#: ``uv run [--options] COMMAND`` runs COMMAND from it and ``uv sync`` (``make``'s setup) has nothing to do. The
#: real ``uv sync`` and ``uv run`` of the operator's steps are followed by the deployment test on a fresh checkout.
UV_STAND_IN: Final = """#!/usr/bin/env bash
case "$1" in
  --version) echo "uv (the docs test's stand-in: the project's environment is installed)"; exit 0 ;;
  sync) exit 0 ;;
  run) shift; while [[ "$1" == --* ]]; do shift; done; exec "$@" ;;
esac
echo "uv stand-in of the docs test: unexpected arguments: $*" >&2
exit 99
"""

#: A block may take this long under load (make demo, three runs); a hang fails the test instead of holding it.
BLOCK_TIMEOUT: Final = 900


def _environment(checkout: Path) -> dict[str, str]:
    """Our environment without any JOOR, Dagster or cloud setting of the machine (never real credentials), the
    stand-in ``uv`` and the project's environment on PATH, and the built-in sandbox as JOOR."""
    prefixes = ("JOOR_", "DAGSTER_", "AWS_", "AZURE_", "GOOGLE_", "STORAGE_EMULATOR")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes) and not k.endswith("_JOOR_TOKEN")}
    bin_dir = checkout.parent / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "uv").write_text(UV_STAND_IN, encoding="utf-8")
    (bin_dir / "uv").chmod(0o755)
    env["PATH"] = os.pathsep.join([str(bin_dir), str(VENV_BIN), env.get("PATH", "")])
    env["JOOR_ENVIRONMENT"] = "builtin"
    env["JOOR_SANDBOX_CONNECTIONS"] = "200"
    # The instance `make demo` records into and `make ui` opens; `run` records there too (as the README says).
    env["DAGSTER_HOME"] = str(checkout / "dagster_home")
    return env


def _run(block: Block, text: str, env: Mapping[str, str], cwd: Path) -> str:
    """Run one block's text as the README means it; its output (stdout and stderr). Fails naming the block."""
    if block.lang == "python":
        args, stdin = [str(VENV_BIN / "python"), "-c", text], None
    elif block.lang == "sql":  # SQL for the warehouse, as `joor-pipeline sql < file` runs it
        args, stdin = [str(VENV_BIN / "joor-pipeline"), "sql"], text
    else:  # -x: the failure message shows which command failed
        args, stdin = ["bash", "--noprofile", "--norc", "-e", "-o", "pipefail", "-x", "-c", text], None
    done = subprocess.run(
        args,
        cwd=cwd,
        env=dict(env),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{block.where()} failed with exit code {done.returncode}:\n{text}\n---\n{output}"
    return output


def test_every_block_of_code_in_the_readme_is_marked() -> None:
    check_marks(blocks())


def test_an_unmarked_block_or_a_stale_mark_fails_the_check(tmp_path: Path) -> None:
    """The check that keeps the README from drifting fails on each way it can drift."""
    readme = tmp_path / "README.md"
    cases = {
        "```bash\nuv run joor-pipeline fetch\n```\n": "is not marked",
        "<!-- runable -->\n```bash\ntrue\n```\n": "unknown mark",
        "<!-- example -->\n```python\npass\n```\n": "says why",
        '<!-- runnable; skip "make ui": a server -->\n```bash\nmake demo\n```\n': "matches 0 lines",
        '<!-- runnable; skip "make ui" -->\n```bash\nmake ui\n```\n': "does not say why",
        "<!-- operator: deploy -->\n```bash\ntrue\n```\n": "is none of",
    }
    for text, problem in cases.items():
        readme.write_text(text, encoding="utf-8")
        with pytest.raises(ReadmeError, match=problem):
            check_marks(blocks(readme))
    # Output and data blocks need no mark; the operator steps must each be marked once, in order.
    readme.write_text("```\n$ joor-pipeline check\n```\n```yaml\nops: {}\n```\n", encoding="utf-8")
    with pytest.raises(ReadmeError, match="operator step 'install' is marked 0 times") as raised:
        check_marks(blocks(readme))
    assert "not marked" not in str(raised.value)


def test_the_runnable_blocks_run_as_written(tmp_path: Path) -> None:
    checkout = fresh_checkout(tmp_path / "joor-pipeline")
    assert not (checkout / ".venv").exists() and not (checkout / "dagster_home").exists()
    env = _environment(checkout)
    runnable = [block for block in blocks(checkout / "README.md") if block.kind == "runnable"]
    assert len(runnable) >= 8, [block.where() for block in runnable]
    outputs: dict[int, str] = {}
    with run_sandbox(connections=60, seed=5, rate_limit_credits=0, api_token="docs-test-token") as sandbox:
        for block in runnable:
            text, block_env = block.commands(), env
            if block.argument == "joor-sandbox":  # JOOR is the sandbox on 127.0.0.1, `...` its token
                text = replaced(
                    Block(block.line, block.lang, text, block.mark),
                    {"JOOR_API_TOKEN=...": f"JOOR_API_TOKEN={sandbox.config.api_token}"},
                )
                block_env = {k: v for k, v in env.items() if k != "JOOR_ENVIRONMENT"}
                block_env["JOOR_BASE_URL"] = sandbox.base_url
            outputs[block.line] = _run(block, text, block_env, checkout)
        assert sandbox.stats.requests >= 1, "check did not reach the JOOR stand-in"

    everything = "\n".join(outputs.values())
    assert "account default: ok" in everything  # `check`, on the stand-in and on the built-in sandbox
    # What the blocks left: the demo's instance (which `make ui` opens), today's and yesterday's snapshots, and a
    # warehouse holding both dates.
    assert (checkout / "dagster_home" / "dagster.yaml").is_file()
    with duckdb.connect(str(checkout / "data" / "joor.duckdb"), read_only=True) as con:
        dates = con.execute("select count(distinct snapshot_date) from staging.int_snapshots").fetchone()
    assert dates == (2,)
    assert (checkout / "shipping.csv").read_text(encoding="utf-8").startswith("account,")

"""``python -m bench.backends_bench``: the flatten with its data on each object store (on its emulator) beside the
same flatten on local disk, as whole processes.

Lands the cached 20,000-connection JSON snapshot (see :mod:`bench.snapshots`) in a local data directory and, through
the fetch's own writer, in a fresh bucket on moto (S3 emulator), Azurite (Azure emulator) and the GCS fake (a fake
of its XML API), all on 127.0.0.1 (started by ``joor_pipeline_tests/emulators.py``). Then, for each backend, it
times ``joor-pipeline flatten --date D --data-dir <location>`` as a whole process (interpreter start, imports, the
raw pages downloaded through their manifest, the flatten on local scratch, the blocking checks, the upload of the
ten partitions and the swap of their manifests), the backend and local disk in turn (A B A B ...), and takes the
ratio pair by pair. Every run starts cold, as on a fresh worker: the work directory's page cache
(``_work/store-cache/``) is deleted first.

Emulators on loopback measure the client's and the protocol's cost (requests, conditional writes, ranged reads),
not a cloud's latency; moto and the GCS fake are Python servers sharing the machine's cores with the flatten.

``--serve`` prepares the same and prints each backend's two commands (A: the backend, B: local disk) as ``sh -c``
lines, keeping the emulators up until its standard input closes: for a whole-process timer of your own. Without it,
the results replace the "Object storage" section of ``bench/results.md`` (between its markers).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from bench.sections import replace_section
from bench.snapshots import PROJECT_ROOT, SNAPSHOT_DATE, SNAPSHOT_KEY, ensure_snapshots, snapshot_data_dir

BEGIN: Final = "<!-- backends bench: python -m bench.backends_bench -->"
END: Final = "<!-- /backends bench -->"
CLI: Final = Path(sys.executable).parent / "joor-pipeline"
#: scheme -> (label, emulator context manager's name in joor_pipeline_tests.emulators)
BACKENDS: Final = {
    "s3": ("S3 (moto, emulator)", "moto_server"),
    "az": ("Azure Blob Storage (Azurite, emulator)", "azurite_server"),
    "gs": ("GCS (a fake of its XML API)", "gcs_fake_server"),
}


def _land_in_store(source: Path, data_dir: Path) -> None:
    """Publish the cached raw snapshot into the store with the fetch's writer (pages, then the manifest)."""
    from joor_pipeline import layout
    from joor_pipeline.storage.raw import open_raw_snapshot, read_manifest

    manifest = read_manifest(source, SNAPSHOT_KEY)
    pages_dir = source / layout.raw_snapshot(SNAPSHOT_KEY)
    with open_raw_snapshot(data_dir, SNAPSHOT_KEY, manifest["format"]) as writer:
        for page in manifest["pages"]:
            writer.add_page(
                page["page"],
                (pages_dir / page["file"]).read_bytes(),
                log_id=page["log_id"],
                connections=page["connections"],
                start_from=page["start_from"],
                url=page["url"],
            )
        writer.commit({"api_version": manifest.get("api_version", "v2")})


def flatten_command(location: str, work: Path, env: dict[str, str]) -> str:
    """One cold ``joor-pipeline flatten`` of the snapshot at ``location`` as an ``sh -c`` line (its page cache
    deleted first; ``env``: the cloud's variables)."""
    exports = "".join(f"export {name}={shlex.quote(value)}; " for name, value in sorted(env.items()))
    script = (
        f"{exports}rm -rf {shlex.quote(str(work / '_work' / 'store-cache'))} && exec {shlex.quote(str(CLI))} flatten "
        f"--date {SNAPSHOT_DATE.isoformat()} --data-dir {shlex.quote(location)} >/dev/null"
    )
    return f"sh -c {shlex.quote(script)}"


def _timed(command: str) -> float:
    clock = time.perf_counter()
    done = subprocess.run(shlex.split(command), capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - clock
    if done.returncode != 0:
        raise SystemExit(f"error: {command} failed ({done.returncode}): {done.stderr[-2000:]}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backends_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=20_000, help="connections in the snapshot (20,000)")
    parser.add_argument("--repeat", type=int, default=5, help="timed pairs per backend after one warm-up (5)")
    parser.add_argument("--only", choices=sorted(BACKENDS), action="append", help="a backend (default: all three)")
    parser.add_argument("--serve", action="store_true", help="prepare, print the commands, wait for end of input")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "joor-pipeline-bench")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results.md")
    args = parser.parse_args(argv)
    chosen = args.only or list(BACKENDS)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    for name in [*os.environ]:  # the commands' settings are theirs alone
        if name.startswith(("JOOR_", "AWS_", "AZURE_", "GOOGLE_")) or name == "STORAGE_EMULATOR_HOST":
            del os.environ[name]
    ensure_snapshots(args.workdir, [args.connections], ["json"], args.seed, log)
    source = snapshot_data_dir(args.workdir, args.connections, "json", args.seed)
    scratch = Path(tempfile.mkdtemp(prefix="joor-backends-bench-"))
    local = scratch / "local"
    shutil.copytree(source / "raw", local / "raw")
    baseline = flatten_command(str(local), local, {})
    rows = []
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, scratch, True)
        from joor_pipeline.storage.factory import open_data_dir
        from joor_pipeline_tests import emulators

        commands = {}
        for scheme in chosen:
            label, server = BACKENDS[scheme]
            emulator = stack.enter_context(getattr(emulators, server)(scratch / f"{scheme}.log"))
            os.environ.update(emulator.env)
            url = f"{scheme}://{emulators.new_bucket(emulator)}/data"
            work = scratch / f"work-{scheme}"
            _land_in_store(source, open_data_dir(url, work_dir=work))
            commands[scheme] = flatten_command(url, work, {**emulator.env, "JOOR_WORK_DIR": str(work)})
            log(f"{label}: landed {args.connections:,} connections in {url}")
        if args.serve:
            print(f"B (local disk): {baseline}")
            for scheme, command in commands.items():
                print(f"A ({BACKENDS[scheme][0]}): {command}")
            print("(emulators up until end of input)", flush=True)
            sys.stdin.read()
            return 0
        for scheme, command in commands.items():
            ratios, a_times, b_times = [], [], []
            for rep in range(args.repeat + 1):  # the first pair warms up (page cache, the forkserver's imports)
                a, b = _timed(command), _timed(baseline)
                log(f"{scheme} rep {rep}: {a:.2f} s vs local {b:.2f} s")
                if rep:
                    ratios.append(a / b)
                    a_times.append(a)
                    b_times.append(b)
            ratios.sort()
            label = BACKENDS[scheme][0]
            rows.append((label, statistics.median(a_times), statistics.median(b_times), ratios))

    lines = [
        BEGIN,
        "## Object storage: the flatten on each backend beside local disk, measured "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"`python -m bench.backends_bench`: `joor-pipeline flatten` of {args.connections:,} connections (JSON, cold",
        "page cache) as a whole process, on each emulator and on local disk in turn, the ratio taken pair by pair",
        f"({args.repeat} pairs after a warm-up). Emulators on loopback, sharing this machine: the ratio is the cost",
        "of the protocol and the client here, not of a cloud.",
        "",
        "| backend | backend (median s) | local disk (median s) | backend / local (median of pairs) | min | max |",
        "|---|---|---|---|---|---|",
        *(
            f"| {label} | {a:.2f} | {b:.2f} | **{statistics.median(r):.2f}x** | {r[0]:.2f} | {r[-1]:.2f} |"
            for label, a, b, r in rows
        ),
        END,
    ]
    section = "\n".join(lines)
    replace_section(args.out, section, BEGIN, END, before="## Machine")
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())

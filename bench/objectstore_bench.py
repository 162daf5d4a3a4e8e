"""``python -m bench.objectstore_bench``: the flatten with its data on an S3 server against the same on local disk.

Starts moto's S3 server (an emulator, ``moto[server]``, a dev dependency) on 127.0.0.1, lands the cached bench
snapshot (see :mod:`bench.snapshots`) in a bucket through the fetch's own writer, and times ``flatten_snapshot``
on both data directories in the same process, the two interleaved (local, S3, local, S3, ...). The S3 flatten
starts cold each time: its local page cache is emptied, so it downloads every page, flattens on local scratch,
audits nothing (neither does the local one), uploads the ten partitions and swaps their manifests.

Writes (replaces) the "Object storage" section of ``bench/results.md``, between its markers.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from bench.snapshots import PROJECT_ROOT, SNAPSHOT_KEY, ensure_snapshots, snapshot_data_dir
from joor_pipeline_tests.s3_emulator import moto_s3_server

BEGIN: Final = "<!-- objectstore bench: python -m bench.objectstore_bench -->"
END: Final = "<!-- /objectstore bench -->"


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.objectstore_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000,20000", help="connections per snapshot (default 2000,20000)")
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions per side (default 3)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "joor-pipeline-bench")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "bench" / "results.md")
    args = parser.parse_args(argv)
    sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    ensure_snapshots(args.workdir, sizes, ["json"], args.seed, log)
    scratch = Path(tempfile.mkdtemp(prefix="joor-objstore-bench-"))
    rows = []
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, scratch, True)
        endpoint = stack.enter_context(moto_s3_server(scratch / "moto.log"))
        os.environ.update(
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",  # noqa: S106 - the emulator accepts any
            AWS_REGION="us-east-1",
            AWS_ENDPOINT_URL=endpoint,
        )
        from joor_pipeline.flatten.runner import flatten_snapshot
        from joor_pipeline.layout import STORE_CACHE
        from joor_pipeline.storage.factory import open_data_dir
        from joor_pipeline.storage.objectstore import ObjectStore

        for n in sizes:
            source = snapshot_data_dir(args.workdir, n, "json", args.seed)
            local = scratch / f"local-{n}"
            shutil.copytree(source / "raw", local / "raw")
            bucket = f"bench-{uuid.uuid4().hex[:10]}"
            store = ObjectStore(f"s3://{bucket}/data")
            store.client.create_bucket(Bucket=bucket)
            remote = open_data_dir(store.url, work_dir=scratch / f"work-{n}")
            _land_in_store(source, remote)
            times: dict[str, list[float]] = {"local": [], "s3": []}
            for rep in range(args.repeat + 1):  # the first pair warms up (imports, the forkserver), not counted
                for side, data_dir in (("local", local), ("s3", remote)):
                    shutil.rmtree(data_dir / STORE_CACHE, ignore_errors=True)
                    clock = time.perf_counter()
                    report = flatten_snapshot(data_dir, SNAPSHOT_KEY)
                    elapsed = time.perf_counter() - clock
                    assert report.connections == n, (side, report.connections)
                    if rep:
                        times[side].append(elapsed)
                    log(f"N={n} {side} rep {rep}: {elapsed:.2f} s")
            local_s, s3_s = statistics.median(times["local"]), statistics.median(times["s3"])
            ratios = sorted(b / a for a, b in zip(times["local"], times["s3"], strict=True))
            rows.append((n, report.pages, local_s, s3_s, statistics.median(ratios), ratios[0], ratios[-1]))

    lines = [
        BEGIN,
        f"## Object storage: the flatten on S3 (moto's emulator) against local disk, measured "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        "`python -m bench.objectstore_bench`: the same cached JSON snapshot flattened with `flatten_snapshot` (default",
        "workers) from a local data directory and from `JOOR_DATA_DIR=s3://...` on moto's S3 server on 127.0.0.1, in",
        f"one process, the two interleaved, {args.repeat} counted repetitions each after a warm-up pair. The S3 side",
        "starts cold every time (downloads every page through the raw manifest), flattens on local scratch, uploads",
        "the ten partitions and swaps their manifests. moto is a Python emulator sharing this 2-core machine: the",
        "ratio bounds the cost of the store round trips here, it is not a measurement of AWS S3.",
        "",
        "| N | pages | local (median s) | S3 emulator (median s) | S3 / local (median of pairs) | min | max |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {n:,} | {pages} | {a:.2f} | {b:.2f} | **{r:.2f}x** | {lo:.2f} | {hi:.2f} |"
            for n, pages, a, b, r, lo, hi in rows
        ),
        END,
    ]
    section = "\n".join(lines)
    text = args.out.read_text(encoding="utf-8")
    if BEGIN in text:
        start, end = text.index(BEGIN), text.index(END) + len(END)
        text = text[:start] + section + text[end:]
    else:
        anchor = text.index("## Machine")
        text = text[:anchor] + section + "\n\n" + text[anchor:]
    args.out.write_text(text, encoding="utf-8")
    print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())

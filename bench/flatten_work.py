"""One timed ``flatten_snapshot`` in a fresh process, for timing the worker pool by hand.

``python -m bench.flatten_work SNAPSHOT_DATA_DIR OUT_DIR LOG [--start-early]``

SNAPSHOT_DATA_DIR is a data directory holding the raw snapshot of :data:`~bench.snapshots.SNAPSHOT_DATE` (as
``python -m bench`` caches them); OUT_DIR is emptied, given a link to those raw pages, and receives the Parquet.
The flatten's own time (no imports, no interpreter start; the forkserver's start inside it unless
``--start-early``) is appended to LOG, one line a run, so two builds timed in turn (A B A B ...) pair up line by
line. ``--start-early`` starts the forkserver before this process's imports, as ``joor-pipeline flatten`` does.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    early = "--start-early" in argv
    paths = [arg for arg in argv if arg != "--start-early"]
    if len(paths) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    data_dir, out_dir, log = (Path(arg) for arg in paths)
    if early:
        from joor_pipeline.flatten.forkserver import start_forkserver

        start_forkserver()
    import pyarrow as pa

    from bench.snapshots import SNAPSHOT_DATE
    from joor_pipeline.flatten.runner import flatten_snapshot
    from joor_pipeline.layout import DEFAULT_ACCOUNT, SnapshotKey

    pa.array([0], type=pa.int64())  # pyarrow's lazy pandas import, outside the clock (as in bench.run_one)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    (out_dir / "raw").symlink_to(data_dir.resolve() / "raw", target_is_directory=True)
    clock = time.perf_counter()
    flatten_snapshot(out_dir, SnapshotKey(DEFAULT_ACCOUNT, SNAPSHOT_DATE))
    seconds = time.perf_counter() - clock
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"{seconds:.4f}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""One timed flatten in a fresh process: ``python -m bench.run_one APPROACH DATA_DIR OUT_DIR``.

APPROACH is ``ours`` (the project's flatten, all ten tables), ``pandas`` or ``duckdb`` (the five core tables).
DATA_DIR holds the raw snapshot; OUT_DIR, empty, receives the Parquet files. Every library is imported before
the clock starts, so ``seconds`` is the work alone. The last line printed is a JSON object::

    {"approach": ..., "seconds": ..., "vmhwm_kib": ..., "rows": {table: rows written}}

``vmhwm_kib`` is this process's own peak RSS (``VmHWM``), a cross-check on the parent's ``ru_maxrss``; row
counts are read back from the written files' metadata, after the clock stops.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import pyarrow.parquet as pq

from bench.snapshots import SNAPSHOT_DATE, page_files

APPROACHES: Final = ("ours", "pandas", "duckdb")

Work = Callable[[], dict[str, list[Path]]]


def _ours(data_dir: Path, out_dir: Path) -> Work:
    import pyarrow as pa

    from joor_pipeline.flatten.runner import flatten_snapshot
    from joor_pipeline.layout import DEFAULT_ACCOUNT, SnapshotKey

    # pyarrow imports pandas on its first pa.array() of a Python list (its pandas shim checks the input's type);
    # the flatten's first page would pay that import inside the clock, so pay it here, like every other import.
    pa.array([0], type=pa.int64())
    # flatten_snapshot reads data_dir/raw and writes data_dir/parquet: point a fresh data dir at the cached pages.
    (out_dir / "raw").symlink_to(data_dir.resolve() / "raw", target_is_directory=True)

    def work() -> dict[str, list[Path]]:
        report = flatten_snapshot(out_dir, SnapshotKey(DEFAULT_ACCOUNT, SNAPSHOT_DATE))
        # Globbed rather than taken from the report, so a flatten that writes several parts is counted whole.
        return {table: sorted((out_dir / "parquet" / table).rglob("*.parquet")) for table in report.rows}

    return work


def _pandas(data_dir: Path, out_dir: Path) -> Work:
    from bench.pandas_baseline import flatten_with_pandas

    def work() -> dict[str, list[Path]]:
        written = flatten_with_pandas(page_files(data_dir, "json"), out_dir)
        return {table: [path] for table, path in written.items()}

    return work


def _duckdb(data_dir: Path, out_dir: Path) -> Work:
    from bench.duckdb_baseline import flatten_with_duckdb

    def work() -> dict[str, list[Path]]:
        written = flatten_with_duckdb(page_files(data_dir, "json"), out_dir)
        return {table: [path] for table, path in written.items()}

    return work


def peak_rss_kib() -> int:
    """This process's own peak RSS (``VmHWM`` in /proc/self/status), in KiB; 0 where there is no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in APPROACHES:
        print(__doc__, file=sys.stderr)
        return 2
    approach, data_dir, out_dir = argv[0], Path(argv[1]), Path(argv[2])
    prepare = {"ours": _ours, "pandas": _pandas, "duckdb": _duckdb}[approach]
    work = prepare(data_dir, out_dir)
    clock = time.perf_counter()
    outputs = work()
    seconds = time.perf_counter() - clock
    vmhwm = peak_rss_kib()
    rows = {table: sum(pq.read_metadata(path).num_rows for path in paths) for table, paths in outputs.items()}
    print(json.dumps({"approach": approach, "seconds": seconds, "vmhwm_kib": vmhwm, "rows": rows}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

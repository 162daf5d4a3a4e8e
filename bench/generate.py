"""Generate and land sandbox snapshots: ``python -m bench.generate WORKDIR SEED N:FMT ...``.

The generator is prefix-stable (connection i is the same whatever N), so the largest N asked for is generated
once and every smaller snapshot is a prefix of it. Pages are landed with the test fixtures' ``land``, the
fetch's own raw writer, so the files and manifest are exactly what a fetch would leave.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from bench.snapshots import SNAPSHOT_DATE, snapshot_data_dir
from joor_pipeline.sandbox import generate_connections
from joor_pipeline_tests.raw_fixtures import land


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    workdir, seed = Path(argv[0]), int(argv[1])
    wanted = [(int(n), fmt) for n, _, fmt in (item.partition(":") for item in argv[2:])]
    largest = max(n for n, _ in wanted)
    clock = time.perf_counter()
    connections = generate_connections(largest, seed)
    print(f"  generated {largest:,} connections in {time.perf_counter() - clock:.1f} s", flush=True)
    for n, fmt in sorted(wanted):
        clock = time.perf_counter()
        data_dir = snapshot_data_dir(workdir, n, fmt, seed)
        land(data_dir, SNAPSHOT_DATE, connections[:n], fmt)
        print(f"  landed {n:,} connections as {fmt} in {time.perf_counter() - clock:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

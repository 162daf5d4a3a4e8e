"""Sandbox snapshots on disk, cached by (N, format, seed): raw pages of 100 with a manifest, as a fetch lands them.

Layout under the work directory::

    snapshots/n20000-seed7-json/raw/connections/account=default/snapshot_date=2026-01-05/page-00000.json ...

Each snapshot directory is a complete ``JOOR_DATA_DIR`` for one raw snapshot. The raw writer swaps the
snapshot in only once its manifest is written, so a snapshot with a manifest is complete and a generation
that was interrupted leaves nothing that looks cached.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Final

from joor_pipeline import layout
from joor_pipeline.layout import DEFAULT_ACCOUNT, SnapshotKey

SNAPSHOT_DATE: Final = date(2026, 1, 5)
SNAPSHOT_KEY: Final = SnapshotKey(DEFAULT_ACCOUNT, SNAPSHOT_DATE)
FORMATS: Final = ("json", "xml")
PROJECT_ROOT: Final = Path(__file__).resolve().parents[1]


def snapshot_data_dir(workdir: Path, n: int, fmt: str, seed: int) -> Path:
    """The data directory holding the raw snapshot of ``n`` connections in ``fmt``."""
    return workdir / "snapshots" / f"n{n}-seed{seed}-{fmt}"


def page_files(data_dir: Path, fmt: str) -> list[Path]:
    """The snapshot's page files in page order."""
    return sorted((data_dir / layout.raw_snapshot(SNAPSHOT_KEY)).glob(f"page-*.{fmt}"))


def is_complete(data_dir: Path) -> bool:
    """True when the snapshot's manifest exists (it is written last)."""
    return (data_dir / layout.manifest(layout.raw_snapshot(SNAPSHOT_KEY))).is_file()


def ensure_snapshots(
    workdir: Path, sizes: Sequence[int], formats: Sequence[str], seed: int, log: Callable[[str], None]
) -> None:
    """Generate every snapshot not yet cached, in a child process so this one stays small.

    The parent's memory matters: on Linux a child's ``ru_maxrss`` starts from the peak of the process it was
    spawned from, so a parent that once held 200,000 generated connections would inflate every measurement.
    """
    missing = [(n, fmt) for n in sizes for fmt in formats if not is_complete(snapshot_data_dir(workdir, n, fmt, seed))]
    if not missing:
        log(f"snapshots cached in {workdir / 'snapshots'}")
        return
    wanted = " ".join(f"{n}:{fmt}" for n, fmt in missing)
    log(f"generating snapshots {wanted} (seed {seed}) in {workdir / 'snapshots'}")
    command = [sys.executable, "-m", "bench.generate", str(workdir), str(seed)]
    command += [f"{n}:{fmt}" for n, fmt in missing]
    subprocess.run(command, check=True, cwd=PROJECT_ROOT)

"""Time our flatten and the two baselines, each repetition in a fresh child process, on the same cached pages.

Repetitions are interleaved (ours, pandas, DuckDB, then again), so a noisy neighbour or a warming disk cache
touches every approach alike. The child reports the seconds of the work itself; the parent measures the whole
process (interpreter start and imports included) and its peak RSS through ``os.wait4``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bench.snapshots import PROJECT_ROOT, snapshot_data_dir

#: The tables both baselines produce: the ones whose row counts must agree with ours.
CORE_TABLES: Final = ("connections", "addresses", "payment_methods", "discounts", "doors")
BASELINES: Final = ("pandas", "duckdb")


class BenchError(RuntimeError):
    """A measured child failed: the benchmark cannot report it."""


@dataclass(frozen=True)
class ChildRun:
    """One repetition of one approach."""

    seconds: float  # the work, as timed inside the child
    process_seconds: float  # the whole child process, as timed by the parent
    maxrss_kib: int  # ru_maxrss of the child, from wait4 (its own peak, or its biggest worker's)
    vmhwm_kib: int  # the child's own VmHWM, reported by itself
    rows: dict[str, int]
    tree_pss_kib: int = 0  # peak of the PSS summed over the child and its worker processes, sampled

    @property
    def memory_kib(self) -> int:
        """Peak memory of the whole flatten: one process's peak RSS, or all its processes' PSS at once."""
        return max(self.maxrss_kib, self.tree_pss_kib)


@dataclass
class FlattenCase:
    """Every repetition of one approach on one snapshot."""

    n: int
    fmt: str
    approach: str
    runs: list[ChildRun] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def median_seconds(self) -> float:
        return statistics.median(run.seconds for run in self.runs)

    @property
    def min_seconds(self) -> float:
        return min(run.seconds for run in self.runs)

    @property
    def median_process_seconds(self) -> float:
        return statistics.median(run.process_seconds for run in self.runs)

    @property
    def peak_rss_mb(self) -> float:
        """The highest peak memory over the repetitions (see :attr:`ChildRun.memory_kib`), in MB (10^6 bytes)."""
        return max(run.memory_kib for run in self.runs) * 1024 / 1e6

    @property
    def connections_per_second(self) -> float:
        return self.n / self.median_seconds

    @property
    def rows(self) -> dict[str, int]:
        return self.runs[0].rows


def approaches_for(fmt: str) -> tuple[str, ...]:
    """Ours reads both formats; neither baseline has an XML path."""
    return ("ours", *BASELINES) if fmt == "json" else ("ours",)


def _tree(pid: int) -> list[int]:
    """``pid`` and every process below it, from /proc (empty once it is gone)."""
    out, stack = [], [pid]
    while stack:
        current = stack.pop()
        out.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                stack.extend(int(child) for child in (task / "children").read_text().split())
        except OSError:
            continue
    return out


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class _TreeMemory(threading.Thread):
    """Samples the PSS summed over a process and its descendants (forkserver, workers) until told to stop.

    PSS (proportional set size) splits each shared page between the processes mapping it, so the sum is what
    the process tree occupies together, with the libraries the workers share with their parent counted once.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak_kib = pid, interval, 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.peak_kib = max(self.peak_kib, sum(_pss_kib(pid) for pid in _tree(self.pid)))


def run_child(approach: str, data_dir: Path, out_dir: Path) -> ChildRun:
    """Run one approach in a fresh interpreter and measure it."""
    out_dir.mkdir(parents=True)
    command = [sys.executable, "-m", "bench.run_one", approach, str(data_dir), str(out_dir)]
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        clock = time.perf_counter()
        child = subprocess.Popen(command, stdout=stdout, stderr=stderr, cwd=PROJECT_ROOT)
        sampler = _TreeMemory(child.pid)
        sampler.start()
        # wait4 rather than wait: it hands back the child's rusage, whose ru_maxrss is its peak RSS in KiB.
        _, status, usage = os.wait4(child.pid, 0)
        sampler.stopped.set()
        sampler.join()
        process_seconds = time.perf_counter() - clock
        child.returncode = os.waitstatus_to_exitcode(status)
        stdout.seek(0)
        stderr.seek(0)
        out, err = stdout.read().decode(errors="replace"), stderr.read().decode(errors="replace")
    if child.returncode != 0:
        tail = "\n".join(err.strip().splitlines()[-15:])
        raise BenchError(f"{approach} on {data_dir} exited with {child.returncode}:\n{tail}")
    result = json.loads(out.strip().splitlines()[-1])
    return ChildRun(
        seconds=float(result["seconds"]),
        process_seconds=process_seconds,
        maxrss_kib=int(usage.ru_maxrss),
        vmhwm_kib=int(result["vmhwm_kib"]),
        rows={str(k): int(v) for k, v in result["rows"].items()},
        tree_pss_kib=sampler.peak_kib,
    )


def run_flatten_bench(
    workdir: Path,
    sizes: Sequence[int],
    formats: Sequence[str],
    seed: int,
    repeat: int,
    keep: bool,
    log: Callable[[str], None],
) -> list[FlattenCase]:
    """Every (N, format, approach) ``repeat`` times, interleaved; outputs deleted after each run unless ``keep``."""
    cases: dict[tuple[int, str, str], FlattenCase] = {}
    for n in sizes:
        for rep in range(1, repeat + 1):
            for fmt in formats:
                data_dir = snapshot_data_dir(workdir, n, fmt, seed)
                for approach in approaches_for(fmt):
                    case = cases.setdefault((n, fmt, approach), FlattenCase(n, fmt, approach))
                    out_dir = workdir / "runs" / f"flatten-n{n}-{fmt}-{approach}-r{rep}"
                    shutil.rmtree(out_dir, ignore_errors=True)
                    try:
                        run = run_child(approach, data_dir, out_dir)
                    except BenchError as exc:
                        # One failure (a baseline out of memory, say) must not cost the rest of a long run.
                        case.errors.append(f"N={n:,} {fmt} {approach} rep {rep}: {exc}")
                        log(f"flatten N={n:,} {fmt:4} {approach:6} rep {rep}/{repeat}: FAILED: {exc}")
                        continue
                    finally:
                        if not keep:
                            shutil.rmtree(out_dir, ignore_errors=True)
                    case.runs.append(run)
                    log(
                        f"flatten N={n:,} {fmt:4} {approach:6} rep {rep}/{repeat}: {run.seconds:7.2f} s work, "
                        f"{run.process_seconds:7.2f} s process, {run.memory_kib * 1024 / 1e6:6.0f} MB peak memory "
                        f"(ru_maxrss {run.maxrss_kib * 1024 / 1e6:.0f} MB, "
                        f"process tree PSS {run.tree_pss_kib * 1024 / 1e6:.0f} MB)"
                    )
                    if run.vmhwm_kib and abs(run.maxrss_kib - run.vmhwm_kib) > 0.1 * run.vmhwm_kib:
                        log(
                            f"  note: ru_maxrss {run.maxrss_kib} KiB differs from the child's own VmHWM "
                            f"{run.vmhwm_kib} KiB (ru_maxrss covers reaped children only, or a big parent)"
                        )
        for fmt in formats:
            _check_rows(cases, n, fmt, log)
    return list(cases.values())


def row_mismatches(cases: Sequence[FlattenCase], n: int, fmt: str) -> list[str]:
    """Core tables whose row counts differ from ours, for any approach or repetition on one snapshot."""
    ours = next((c for c in cases if (c.n, c.fmt, c.approach) == (n, fmt, "ours")), None)
    if ours is None or not ours.runs:
        return []
    problems = []
    for case in cases:
        if (case.n, case.fmt) != (n, fmt):
            continue
        for index, run in enumerate(case.runs, start=1):
            for table in CORE_TABLES:
                if run.rows.get(table) != ours.rows.get(table):
                    problems.append(
                        f"N={n} {fmt} {case.approach} rep {index}: {table} has {run.rows.get(table)} rows, "
                        f"ours {ours.rows.get(table)}"
                    )
    return problems


def _check_rows(cases: dict[tuple[int, str, str], FlattenCase], n: int, fmt: str, log: Callable[[str], None]) -> None:
    for problem in row_mismatches(list(cases.values()), n, fmt):
        log(f"  ROW COUNT MISMATCH: {problem}")

"""Shared benchmark plumbing: medians over repeated runs, CPU usage, table and JSON output."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path("bench/results")


@dataclass
class CpuSample:
    """Wall time and CPU seconds (this process and its children) over one measured block."""

    wall_s: float = 0.0
    cpu_s: float = 0.0

    @property
    def cpu_percent(self) -> float:
        """CPU use of this process as a percentage of one core."""
        return 100.0 * self.cpu_s / self.wall_s if self.wall_s else 0.0


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def measure_cpu() -> Iterator[CpuSample]:
    """Measure wall and CPU time of the block (self + waited-for children)."""
    sample = CpuSample()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    try:
        yield sample
    finally:
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        sample.wall_s = time.perf_counter() - t0
        sample.cpu_s = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) + (
            c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime
        )


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def median_of(runs: int, fn: Callable[[], float]) -> tuple[float, list[float]]:
    """Run ``fn`` (which returns one measurement) ``runs`` times; return (median, all)."""
    values = [fn() for _ in range(runs)]
    return statistics.median(values), values


@dataclass
class Row:
    """One line of a benchmark table."""

    name: str
    value: float
    unit: str
    floor: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def print_table(title: str, rows: Sequence[Row]) -> None:
    """Print rows as an aligned table."""
    print(f"\n{title}")
    width = max([len(r.name) for r in rows] + [10])
    print(f"  {'metric'.ljust(width)}  {'median':>12}  {'unit':<10} floor")
    for r in rows:
        print(f"  {r.name.ljust(width)}  {r.value:>12,.1f}  {r.unit:<10} {r.floor}")


def write_results(
    name: str, section: str, data: dict[str, Any], directory: Path = RESULTS_DIR
) -> Path:
    """Merge ``data`` under ``section`` into ``bench/results/<name>.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    current: dict[str, Any] = {}
    if path.exists():
        current = json.loads(path.read_text(encoding="utf-8"))
    current[section] = data
    current["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "measured_at": datetime.now(UTC).isoformat(),
    }
    path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path

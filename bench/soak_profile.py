"""``python -m bench.soak_profile``: where the query node's CPU goes during the soak.

Runs ``python -m bench soak`` as a child (its own broker, the whole soak, its
results in ``bench/results/soak.json``), finds the node it starts (``python -m cli
node``), and once the load has run for ``--after`` seconds samples the node's
threads with py-spy for ``--seconds`` (``--idle`` off, as :mod:`bench.profile`),
reading the node's CPU seconds (``/proc/<pid>/stat``) over the same window.

Each busy sample is put in one category: a stack that runs in the materializer's
threads (``ledger/materializer.py`` in it) by the innermost frame that matches
:data:`MATERIALIZER` (Kafka fetch and parse, Avro decode, DuckDB write), any other
stack by :func:`bench.profile.category` (the per-request categories). The node's
CPU over the window is split by the shares, then divided by the events
materialized (the soak's mean rate, from its results) or by the pages served (the
readers' pages over the run's length), giving CPU per event and per page. The
soak's load is steady, so its means stand for the window. Samples of the
control-topic and attempt-log followers are counted as "other loops".
Prints the table; ``--raw FILE`` keeps py-spy's collapsed stacks.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.profile import IDLE, category
from bench.report import RESULTS_DIR, process_cpu_s

MATERIALIZER: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("materializer: DuckDB insert + commit", ("ledger/store.py", "ledger/rollups.py",
                                               "ledger/duplicates.py", "duckdb")),
    ("materializer: Avro decode -> Arrow", ("ledger/columnar.py", "ledger/decode.py",
                                             "pyarrow", "numpy")),
    ("materializer: Kafka fetch + batches", ("ledger/record_runs.py", "ledger/log_reader.py",
                                             "kafka/", "velora/kafka")),
)  # fmt: skip
OTHER_LOOPS = ("ledger/control.py", "ledger/attempts.py")


def soak_category(stack: str) -> str:
    """The category of one collapsed stack of the node during the soak."""
    base = category(stack)
    if base == IDLE:
        return IDLE
    frames = stack.split(";")
    if any("ledger/materializer.py" in f for f in frames):
        for frame in reversed(frames):
            for name, needles in MATERIALIZER:
                if any(n in frame for n in needles):
                    return name
        return "materializer: other (queue, loop)"
    if any(any(n in f for n in OTHER_LOOPS) for f in frames):
        return "other loops (control, attempts)"
    return base


def _node_pid(parent: int, timeout: float) -> int:
    """The pid of the ``cli node`` process started (directly) by ``parent``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in Path(f"/proc/{parent}/task").glob("*/children"):
            for pid in child.read_text().split():
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                if cmd[1:4] == [b"-m", b"cli", b"node"]:
                    return int(pid)
        time.sleep(0.5)
    raise TimeoutError("the soak's node did not start")


def main(argv: list[str] | None = None) -> int:
    """Run the soak, sample its node, print the split."""
    p = argparse.ArgumentParser(prog="python -m bench.soak_profile", description=__doc__)
    p.add_argument("--after", type=float, default=60.0, help="seconds of load before sampling")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--raw", type=Path, help="keep py-spy's collapsed stacks here")
    args = p.parse_args(argv)
    stderr = Path(tempfile.mkdtemp(prefix="velora-soakspy-")) / "soak.log"
    out = stderr.with_name("stacks.txt")
    with open(stderr, "wb") as log:
        soak = subprocess.Popen([sys.executable, "-m", "bench", "soak"], stderr=log)
    node = _node_pid(soak.pid, 300)
    deadline = time.monotonic() + 600
    while not re.search(rb"ready in", stderr.read_bytes()) or _loaded(stderr) < args.after:
        if soak.poll() is not None or time.monotonic() > deadline:
            raise TimeoutError(f"the soak did not reach its load: {stderr.read_text()[-2000:]}")
        time.sleep(1.0)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    cpu0 = process_cpu_s(node)
    subprocess.run(
        [spy, "record", "-p", str(node), "-d", str(int(args.seconds)), "-r", "100",
         "-f", "raw", "-o", str(out), "--threads"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
    )  # fmt: skip
    cpu = process_cpu_s(node) - cpu0
    load = os.getloadavg()[0]
    if soak.wait() != 0:
        print(stderr.read_text()[-3000:], file=sys.stderr)
        return 1
    results = json.loads((RESULTS_DIR / "soak.json").read_text())
    data = results["soak"]
    counts: Counter[str] = Counter()
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            counts[soak_category(stack)] += int(n)
    if args.raw is not None:
        shutil.copy(out, args.raw)
    shutil.rmtree(out.parent, ignore_errors=True)
    counts.pop(IDLE, 0)
    total = sum(counts.values()) or 1
    events_s = data["events_per_s"]
    pages_s = data["readers"]["pages"] / data["sending_s"]
    print(f"node CPU {cpu:.1f} s over {args.seconds:.0f} s = {100 * cpu / args.seconds:.0f}% "
          f"of a core; soak {events_s:,} events/s, {pages_s:.1f} pages/s; load average "
          f"{load:.1f}")  # fmt: skip
    print(f"  {'category':<50} {'share':>6} {'us/event':>9} {'ms/page':>8}")
    for name, n in counts.most_common():
        share = n / total
        cpu_part = cpu * share / args.seconds  # CPU seconds per second
        per_event = f"{1e6 * cpu_part / events_s:9.1f}" if name.startswith("materializer") else ""
        per_page = "" if name.startswith("materializer") else f"{1e3 * cpu_part / pages_s:8.1f}"
        print(f"  {name:<50} {100 * share:>5.1f}% {per_event:>9} {per_page:>8}")
    return 0


def _loaded(stderr: Path) -> float:
    """Seconds of load so far, from the soak's ``soak: t=NNs`` lines (0 before the first)."""
    found = re.findall(rb"soak: t=(\d+)s", stderr.read_bytes())
    return float(found[-1]) if found else 0.0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m bench.ab REV``: the query node of revision REV against this tree, in one run.

A speed lever is measured before/after on the same machine at the same time:
both nodes serve copies of one generated ledger file (``bench.query.generate``,
1M events by default) side by side, REV's code from a ``git archive`` of REV in
a temp folder, this tree's from here; both read-audit every call (``required``).
Their answers to every scenario of :mod:`bench.query` are checked identical
first. Then each scenario is driven closed loop (32 connections) on the two
nodes in turn, ``--rounds`` times, alternating which goes first, and the median
max rate of each is reported with the after / before ratio, plus the load
average over the run. With ``--paced RATE``, ``--rounds`` more rounds then offer
each node RATE req/s, or half the lower of the two median max rates when that is
less (as the query benchmark's paced run), open loop, and the median p50 / p99
latency of each is reported. ``bench/results/ab.json`` keeps the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.query import (
    OFFERED_FRACTION,
    TENANTS,
    _drive,
    _start_server,
    _stop,
    build_copies,
    check_identical,
    generate,
    scenarios,
)
from bench.report import write_results
from cli.keys import create_key
from velora.broker import BrokerConfig, LocalBroker
from velora.settings import Settings
from velora.topics import ensure_topics

DRIVE_S = 6.0


def export_tree(rev: str, into: Path) -> str:
    """Write revision ``rev`` of this repository into ``into``; its full commit id."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    into.mkdir(parents=True)
    archive = subprocess.Popen(["git", "archive", commit], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(into)], stdin=archive.stdout, check=True)
    archive.wait()
    return commit


def compare(
    settings: Settings, rev: str, events: int, rounds: int, paced: float | None = None
) -> dict[str, Any]:
    """Serve REV and this tree over the same rows; the median max rate of each per scenario."""
    work = settings.state_dir
    work.mkdir(parents=True, exist_ok=True)
    big = create_key(settings, "tenant-00", ("audit:read",), name="ab").token
    small = create_key(settings, f"tenant-{TENANTS - 1:02d}", ("audit:read",), name="ab").token
    commit = export_tree(rev, work / "before")
    end = datetime.now(UTC)
    generate(work / "before.duckdb", events, end)
    build_copies(work / "before.duckdb")  # an older revision's node ignores them
    shutil.copy(work / "before.duckdb", work / "after.duckdb")
    load0 = os.getloadavg()
    before, before_url = _start_server(settings, work / "before.duckdb", work / "before")
    try:
        after, after_url = _start_server(settings, work / "after.duckdb")
        try:
            urls = {"before": before_url, "after": after_url}
            sc = {k: scenarios(u, big, small, end) for k, u in urls.items()}
            checked = check_identical(after_url, sc["after"], before_url, sc["before"])
            result: dict[str, Any] = {"before_commit": commit, "events": events,
                                      "events_checked_identical": checked}  # fmt: skip
            for name in sc["after"]:
                rates: dict[str, list[float]] = {"before": [], "after": []}
                lat: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
                for r in range(rounds):
                    for side in ("before", "after") if r % 2 == 0 else ("after", "before"):
                        token, paths = sc[side][name]
                        run = _drive(urls[side], token, paths, 10**6, seconds=DRIVE_S)
                        rates[side].append(asyncio.run(run)["rps"])
                b, a = statistics.median(rates["before"]), statistics.median(rates["after"])
                rate = min(paced or 0.0, OFFERED_FRACTION * min(a, b))
                for r in range(rounds if rate >= 1 else 0):
                    for side in ("before", "after") if r % 2 == 0 else ("after", "before"):
                        token, paths = sc[side][name]
                        n = int(rate * DRIVE_S)
                        got = asyncio.run(_drive(urls[side], token, paths, n, rate))
                        lat[side].append((got["p50_ms"], got["p99_ms"]))
                ratio = a / b if b else 0.0
                result[name] = {"before_rps": b, "after_rps": a, "after_to_before": ratio,
                                "rounds": rates}  # fmt: skip
                line = f"  {name:<40} before {b:7.0f}/s  after {a:7.0f}/s  x{ratio:.2f}"
                if lat["after"]:
                    line += f"  at {rate:.0f}/s"
                    for side in ("before", "after"):
                        p50 = statistics.median(x[0] for x in lat[side])
                        p99 = statistics.median(x[1] for x in lat[side])
                        result[name][f"{side}_paced"] = {
                            "rps": rate,
                            "p50_ms": p50,
                            "p99_ms": p99,
                            "rounds": lat[side],
                        }
                        line += f"  {side} p50/p99 {p50:.1f}/{p99:.1f} ms"
                print(line, flush=True)
        finally:
            _stop(after)
    finally:
        _stop(before)
    result["loadavg"] = {"start": list(load0), "end": list(os.getloadavg())}
    print(f"  load average: start {load0[0]:.1f}, end {os.getloadavg()[0]:.1f}")
    return result


def main(argv: list[str] | None = None) -> int:
    """Start a broker, compare, stop it; writes bench/results/ab.json."""
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    p.add_argument("rev", help="the 'before' revision (a commit, branch or tag)")
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--label", default="latest", help="section of bench/results/ab.json")
    p.add_argument(
        "--paced", type=float, help="also the latency at this req/s (at most half the lower max)"
    )
    args = p.parse_args(argv)
    settings = Settings.from_env()
    workdir = Path(tempfile.mkdtemp(prefix="velora-ab-"))
    broker = LocalBroker(BrokerConfig(state_dir=workdir / "kafka", cache_dir=settings.cache_dir,
                                      version=settings.kafka_version,
                                      heap_mb=settings.broker_heap_mb))  # fmt: skip
    try:
        broker.start()
        run = settings.with_overrides(
            kafka_bootstrap=broker.bootstrap, topic_prefix=f"ab{uuid.uuid4().hex[:8]}",
            state_dir=workdir / "state", duckdb_path=workdir / "state" / "ledger.duckdb",
        )  # fmt: skip
        ensure_topics(run)
        result = compare(run, args.rev, args.events, args.rounds, args.paced)
        write_results("ab", args.label, result)
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

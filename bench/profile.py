"""``python -m bench.profile``: where a saturated query node's CPU goes, per request.

Starts a broker, generates the query benchmark's events (``bench.query.generate``,
1M by default), serves them from the node exactly as ``bench.query`` does (child
process, read audit ``required``), saturates it with the benchmark's client on 32
connections, and samples the node's threads with py-spy meanwhile (``--idle``
off: only threads that run, or wait for the GIL, are counted). Each sample is put
in one category by its innermost frame that matches one (:data:`CATEGORIES`), and
the node's CPU seconds over the window (``/proc/<pid>/stat``) divided by the
requests served give CPU ms per request, split by the categories' sample shares.
Samples whose leaf frame is a blocking wait (:data:`IDLE_LEAVES`: a pool thread
waiting for work, a selector, a condition) are counted as idle and left out.
Prints the table; ``--raw FILE`` keeps py-spy's collapsed stacks.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from bench.query import _drive, _start_server, _stop, build_copies, generate, remove_ledger
from bench.report import process_cpu_s
from cli.keys import create_key
from velora.broker import BrokerConfig, LocalBroker
from velora.settings import Settings
from velora.topics import ensure_topics

CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("query (DuckDB)", ("query_api/queries.py", "ledger/duck.py", "duckdb")),
    ("serialization", ("query_api/serialize.py", "json/", "orjson", "schemas/times.py",
                       "starlette/responses.py")),
    ("read audit", ("query_api/read_audit.py", "ingest/", "kafka/", "fastavro", "schemas/",
                    "uuid_utils")),
    ("auth", ("query_api/auth.py", "hashlib", "hmac")),
    ("rate limit", ("query_api/ratelimit.py",)),
    ("route, filters, cursor", ("query_api/routes.py", "query_api/filters.py",
                                "query_api/cursor.py", "query_api/links.py", "urllib/")),
    ("ASGI stack (uvicorn, httptools, Starlette, middleware)", (
        "uvicorn/", "httptools", "starlette/", "velora/http_server.py",
        "velora/http_protocol.py", "velora/proxies.py",
        "query_api/middleware.py", "velora/http_errors.py")),
    ("event loop, threads", ("asyncio/", "threading.py", "concurrent/", "selectors.py")),
)  # fmt: skip


IDLE_LEAVES = (
    "_worker (concurrent/futures/thread.py",  # a pool thread waiting for work
    "EpollSelector.select", "Condition.wait", "Event.wait", "Queue.get",
)  # fmt: skip
"""Leaf frames of a thread blocked in C (py-spy cannot always tell them idle)."""
IDLE = "idle (waiting)"


def category(stack: str) -> str:
    """The category of one collapsed stack (``root;...;leaf``): idle when its leaf
    waits, else its innermost frame that matches a category."""
    frames = stack.split(";")
    if any(frames[-1].startswith(leaf) for leaf in IDLE_LEAVES):
        return IDLE
    if frames[-1].startswith("Runner.run (asyncio/runners.py"):
        return "event loop (uvloop, native)"
    for frame in reversed(frames):
        for name, needles in CATEGORIES:
            if any(n in frame for n in needles):
                return name
    return "other"


def profile(settings: Settings, events: int, seconds: float, raw: Path | None) -> None:
    """Generate, serve, saturate, sample; print CPU ms per request by category."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    token = create_key(settings, "tenant-00", ("audit:read",), name="profile").token
    db = settings.state_dir / "profile.duckdb"
    generate(db, events, datetime.now(UTC))
    build_copies(db)
    proc, url = _start_server(settings, db)
    out = Path(tempfile.mkdtemp(prefix="velora-spy-")) / "stacks.txt"
    try:
        path = ["/api/v2/public/audit/events?limit=50"]
        asyncio.run(_drive(url, token, path, 10**6, seconds=3))  # warm up
        spy = subprocess.Popen([
            shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record",
            "-p", str(proc.pid), "-d", str(int(seconds)), "-r", "100", "-f", "raw",
            "-o", str(out), "--threads"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        time.sleep(1.0)  # py-spy attaches
        cpu0, t0 = process_cpu_s(proc.pid), time.perf_counter()
        result = asyncio.run(_drive(url, token, path, 10**6, seconds=seconds - 2))
        served = result["completed"]
        cpu, wall = process_cpu_s(proc.pid) - cpu0, time.perf_counter() - t0
        spy.wait(timeout=seconds + 60)
    finally:
        _stop(proc)
        remove_ledger(db)
    counts: Counter[str] = Counter()
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            counts[category(stack)] += int(n)
    if raw is not None:
        shutil.copy(out, raw)
    shutil.rmtree(out.parent, ignore_errors=True)
    idle = counts.pop(IDLE, 0)
    total = sum(counts.values()) or 1
    per_request_ms = 1000 * cpu / served
    print(f"{events:,} events; {served:,} requests in {wall:.1f}s = {served / wall:.0f} req/s; "
          f"node CPU {cpu:.1f}s = {per_request_ms:.2f} ms/request; load average "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"  busy samples {total:,} (and {idle:,} idle, left out); CPU split by busy share")
    print(f"  {'category':<50} {'share':>6} {'CPU ms/request':>15}")
    for name, n in counts.most_common():
        print(f"  {name:<50} {100 * n / total:>5.1f}% {per_request_ms * n / total:>15.2f}")


def main(argv: list[str] | None = None) -> int:
    """Start a broker, profile, stop the broker."""
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--raw", type=Path, help="keep py-spy's collapsed stacks here")
    args = p.parse_args(argv)
    settings = Settings.from_env()
    workdir = Path(tempfile.mkdtemp(prefix="velora-profile-"))
    broker = LocalBroker(BrokerConfig(state_dir=workdir / "kafka", cache_dir=settings.cache_dir,
                                      version=settings.kafka_version,
                                      heap_mb=settings.broker_heap_mb))  # fmt: skip
    try:
        broker.start()
        run = settings.with_overrides(
            kafka_bootstrap=broker.bootstrap, topic_prefix=f"prof{uuid.uuid4().hex[:8]}",
            state_dir=workdir / "state", duckdb_path=workdir / "state" / "ledger.duckdb",
        )  # fmt: skip
        ensure_topics(run)
        profile(run, args.events, args.seconds, args.raw)
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

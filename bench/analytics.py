"""Analytics and export benchmark: latency of the analytics endpoints, export throughput, RSS.

**Data.** 10M events generated in DuckDB by :func:`bench.query.generate` (the real
``audit_events`` layout, log order, 30 days up to now, 8 actions, 2000 actors, 4
sources, one target each out of a million), spread over 20 tenants with the biggest
holding half (5M events; the other 19 a Zipf share of the rest), then the rollups
are computed from the rows with :func:`ledger.rollups.rebuild_sql` (what the
materializer would have written batch by batch).

**Rollups against rows** (engine only, in this process, before the server starts):
each analytics query that the rollups can serve is timed both ways on the same file,
``rollups=True`` and ``rollups=False`` (the same query over the rows), median of
:data:`ENGINE_RUNS`; the ratio is rows / rollups.

**Latency** (HTTP, httpx). A child process serves ``create_app`` over the file (the
real middleware, auth, read auditing to the bench broker), as in ``bench.query``.
Each scenario (every endpoint over the biggest tenant's 30 days, without a filter
and with ``action=claim.*``; ``top`` by actor and by action; the summary also with an
``actor_id`` filter, served by the actor and target tables for whole days) runs
:data:`SEQUENTIAL` requests one at a time (the latency without queueing), then open
loop at :data:`PACED_RPS` requests/s for :data:`PACED_SECONDS` (the portal makes 4
analytics calls per refresh: one dashboard refresh every 2 s), latency counted from
each request's due time so a queue is not hidden, then closed loop on
:data:`CONCURRENCY` connections for the maximum rate. Floor: p99 < 250 ms at the paced rate.

**Exports** (HTTP): the biggest tenant's whole 30 days (5M events) streamed once per
format by one client that discards the bytes; events/s = 5M / wall time. The
client is the standard library's ``http.client``, reading 1 MiB at a time (its
chunked decoding reads each of the server's multi-MB chunks whole): httpx's
streaming spent about half a core of the two on the client side, which showed up
as export throughput (5M NDJSON events: 31 s with httpx, 20 s with this client). The
server's RSS (``/proc/<pid>/status``) is sampled every 20 ms during each export;
the growth is the peak minus the RSS just before it. Floors: NDJSON >= 100k
events/s, Parquet >= 300k events/s, RSS growth < 300 MB.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import statistics
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx

from bench.query import _start_server, generate
from bench.report import Row, percentile, write_results
from cli.keys import create_key
from ledger import target_sets
from ledger.duck import LedgerFile
from ledger.rollups import ALL_ROLLUPS, rebuild_sql
from query_api import analytics, analytics_summary
from query_api.filters import Filters
from velora.settings import Settings

EVENTS = 10_000_000
TENANTS = 20
BIGGEST_SHARE = 0.5
CONCURRENCY = 8
SEQUENTIAL = 10
PACED_RPS = 2.0
PACED_SECONDS = 30.0
SATURATED_SECONDS = 15.0
HARD_DEADLINE_S = 120.0
ENGINE_RUNS = 5
FLOOR_P99_MS = 250.0
FLOOR_NDJSON, FLOOR_PARQUET, FLOOR_RSS_MB = 100_000, 300_000, 300.0


def shares() -> list[float]:
    """The biggest tenant holds half; the other 19 share the rest with a Zipf skew."""
    weights = [1 / (k + 1) ** 1.07 for k in range(TENANTS - 1)]
    total = sum(weights)
    return [BIGGEST_SHARE, *((1 - BIGGEST_SHARE) * w / total for w in weights)]


def build(path: Path, n: int, end: datetime) -> tuple[float, float]:
    """Generate the rows, then the rollups; seconds for each."""
    gen_s = generate(path, n, end, shares())
    t0 = time.perf_counter()
    db = LedgerFile(path, create=False)
    try:
        cur = db.connection.cursor()
        cur.execute(f"BEGIN TRANSACTION; {rebuild_sql()}")
        target_sets.rebuild(cur)
        cur.execute("COMMIT; CHECKPOINT")
        cur.close()
    finally:
        db.close()
    return gen_s, time.perf_counter() - t0


def _engine_case(name: str, fn) -> dict[str, float]:
    times: dict[str, list[float]] = {"rollups": [], "rows": []}
    for _ in range(ENGINE_RUNS):
        for mode in ("rollups", "rows"):
            t0 = time.perf_counter()
            fn(mode == "rollups")
            times[mode].append((time.perf_counter() - t0) * 1000)
    r, w = statistics.median(times["rollups"]), statistics.median(times["rows"])
    return {"rollups_ms": r, "rows_ms": w, "ratio": w / r if r else 0.0}


def engine_ratios(path: Path, since: datetime, until: datetime) -> dict[str, dict[str, float]]:
    """Each rollup-served query against the same query over the rows, in one run."""
    db = LedgerFile(path, create=False)
    try:
        cur = db.connection.cursor()
        cur.execute("SET TimeZone = 'UTC'")
        base = Filters(since=since, until=until)
        claims = Filters(since=since, until=until, action_prefix="claim.")
        actor = Filters(since=since, until=until, actor_id="usr_0042")
        t = "tenant-00"
        series = analytics.timeseries
        cases = {
            "timeseries (auto=day)": lambda r: series(cur, t, base, "day", None, r),
            "timeseries hourly": lambda r: series(cur, t, base, "hour", None, r),
            "timeseries by action": lambda r: series(cur, t, base, "day", "action", r),
            "timeseries action=claim.*": lambda r: series(cur, t, claims, "day", None, r),
            "top action": lambda r: analytics.top(cur, t, base, "action", 10, r),
            "top actor": lambda r: analytics.top(cur, t, base, "actor", 10, r),
            "top actor action=claim.*": lambda r: analytics.top(cur, t, claims, "actor", 10, r),
            "summary": lambda r: analytics_summary.summary(cur, t, base, "day", r),
            "summary action=claim.*": lambda r: analytics_summary.summary(cur, t, claims, "day", r),
            "summary actor_id": lambda r: analytics_summary.summary(cur, t, actor, "day", r),
            "summary total+failures+busiest (no distinct)": lambda r: (
                analytics.counts(cur, t, base, group="outcome", rollups=r),
                analytics.counts(cur, t, base, unit="day", rollups=r),
            ),
        }  # fmt: skip
        out = {name: _engine_case(name, fn) for name, fn in cases.items()}
        cur.close()
        return out
    finally:
        db.close()


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def export_run(url: str, token: str, pid: int, params: dict[str, str], fmt: str) -> dict[str, Any]:
    """Stream one export, discarding it; its status, wall time, bytes and the server's
    RSS growth (an answer other than 200 is measured too: the caller reports it)."""
    before = _rss_kb(pid)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], _rss_kb(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    size = lines = 0
    status = 0
    where = urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port, timeout=600)
    t0 = time.perf_counter()
    try:
        query = urlencode({**params, "format": fmt})
        conn.request(
            "GET",
            f"/api/v2/public/audit/export?{query}",
            headers={"Authorization": f"Bearer {token}"},
        )
        resp = conn.getresponse()
        status = resp.status
        while chunk := resp.read(1 << 20):
            size += len(chunk)
            if fmt == "ndjson" and status == 200:
                lines += chunk.count(b"\n")
    finally:
        conn.close()
        done.set()
        sampler.join()
    wall = time.perf_counter() - t0
    return {"status": status, "seconds": wall, "bytes": size, "ndjson_lines": lines,
            "rss_before_mb": before / 1024, "rss_growth_mb": (peak[0] - before) / 1024}  # fmt: skip


def run(settings: Settings, n: int = EVENTS) -> list[Row]:
    """Build the data, time the engine both ways, then serve it and measure over HTTP."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    db = settings.state_dir / "analytics.duckdb"
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    since, until = end - timedelta(days=30), end + timedelta(minutes=1)
    gen_s, rollup_s = build(db, n, end)
    print(
        f"bench analytics: {n:,} events in {gen_s:.1f}s, rollups {rollup_s:.1f}s", file=sys.stderr
    )
    check = LedgerFile(db, create=False)
    try:
        biggest = check.connection.execute(
            "SELECT count(*) FROM audit_events WHERE tenant_id = 'tenant-00'"
        ).fetchall()[0][0]
        rollup_rows = {
            t: check.connection.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0]
            for t, _ in ALL_ROLLUPS
        }
    finally:
        check.close()
    ratios = engine_ratios(db, since, until)
    section: dict[str, Any] = {
        "events": n,
        "biggest_tenant_events": biggest,
        "rollup_rows": rollup_rows,
        "generation_s": gen_s,
        "rollup_build_s": rollup_s,
        "loadavg_1m_at_start": os.getloadavg()[0],
        "engine_rollups_vs_rows": ratios,
    }
    rows: list[Row] = [
        Row(f"engine {name}: rows / rollups", r["ratio"], "x",
            f"{r['rows_ms']:.1f} ms / {r['rollups_ms']:.1f} ms")
        for name, r in ratios.items()
    ]  # fmt: skip

    token = create_key(
        settings, "tenant-00", ("audit:read", "audit:export"), name="bench analytics"
    ).token
    proc, url = _start_server(settings, db)
    window = urlencode({"since": since.isoformat(), "until": until.isoformat()})
    base = "/api/v2/public/analytics"
    scenarios = {
        "timeseries": f"{base}/timeseries?{window}",
        "timeseries action=claim.*": f"{base}/timeseries?{window}&action=claim.%2A",
        "timeseries by action": f"{base}/timeseries?{window}&group_by=action",
        "top actor": f"{base}/top?{window}&dimension=actor",
        "top actor action=claim.*": f"{base}/top?{window}&dimension=actor&action=claim.%2A",
        "top action": f"{base}/top?{window}&dimension=action",
        "top action action=claim.*": f"{base}/top?{window}&dimension=action&action=claim.%2A",
        "summary": f"{base}/summary?{window}",
        "summary action=claim.*": f"{base}/summary?{window}&action=claim.%2A",
        "summary actor_id": f"{base}/summary?{window}&actor_id=usr_0042",
    }
    latency: dict[str, Any] = {}
    exports: dict[str, Any] = {}
    try:
        for name, path in scenarios.items():
            warm = httpx.get(
                f"{url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=60
            )  # a slow answer (503 past the request deadline) is measured, not fatal
            alone = asyncio.run(_load(url, token, path, rate=None, seconds=0, workers=1))
            paced = asyncio.run(_load(url, token, path, rate=PACED_RPS, seconds=PACED_SECONDS))
            saturated = asyncio.run(_load(url, token, path, rate=None, seconds=SATURATED_SECONDS))
            latency[name] = {"one_at_a_time": alone, "paced": {**paced, "offered_rps": PACED_RPS},
                             "saturated": saturated,
                             "warm_up_status": warm.status_code}  # fmt: skip
            ok = paced["p99_ms"] < FLOOR_P99_MS and not paced["timeouts"]
            errors = saturated["errors"] + paced["errors"] + paced["timeouts"]
            rows += [
                Row(f"{name}: one at a time, p50", alone["p50_ms"], "ms"),
                Row(f"{name}: p50 @{PACED_RPS:.0f}/s", paced["p50_ms"], "ms"),
                Row(f"{name}: p99 @{PACED_RPS:.0f}/s", paced["p99_ms"], "ms",
                    f"< {FLOOR_P99_MS:.0f} ms: {'ok' if ok else 'MISSED'}"
                    + (f", {errors} errors" if errors else "")),
                Row(f"{name}: max rate", saturated["rps"], "req/s"),
            ]  # fmt: skip
        params = {"since": since.isoformat(), "until": until.isoformat()}
        for fmt, floor in (("ndjson", FLOOR_NDJSON), ("csv", None), ("parquet", FLOOR_PARQUET)):
            result = export_run(url, token, proc.pid, params, fmt)
            if result["status"] != 200:
                exports[fmt] = result
                rows.append(Row(f"export {fmt}: answered {result['status']}", result["seconds"],
                                "s", "MISSED"))  # fmt: skip
                continue
            rate = biggest / result["seconds"]
            exports[fmt] = {**result, "events": biggest, "events_per_s": rate}
            if fmt == "ndjson" and result["ndjson_lines"] != biggest:
                raise AssertionError(f"NDJSON export has {result['ndjson_lines']} lines")
            note = "" if floor is None else f">= {floor:,}: {'ok' if rate >= floor else 'MISSED'}"
            rss_ok = result["rss_growth_mb"] < FLOOR_RSS_MB
            rows += [
                Row(f"export {fmt} ({biggest / 1e6:.1f}M events)", rate, "events/s", note),
                Row(f"export {fmt}: server RSS growth", result["rss_growth_mb"], "MB",
                    f"< {FLOOR_RSS_MB:.0f}: {'ok' if rss_ok else 'MISSED'}"),
            ]  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        db.unlink(missing_ok=True)
        Path(str(db) + ".wal").unlink(missing_ok=True)
    section["latency"] = latency
    section["exports"] = exports
    section["concurrency"] = CONCURRENCY
    write_results("analytics", f"{n // 1_000_000}M", section)
    return rows


async def _load(
    url: str,
    token: str,
    path: str,
    *,
    rate: float | None,
    seconds: float,
    workers: int = CONCURRENCY,
) -> dict[str, Any]:
    """GETs of ``path``: open loop at ``rate`` req/s for ``seconds`` (latency from each
    request's due time, so queueing is not hidden), or closed loop on ``workers``
    connections for ``seconds`` (with ``seconds=0``: :data:`SEQUENTIAL` requests)."""
    latencies: list[float] = []
    errors: list[int] = []
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=300) as c:

        async def one(due: float) -> None:
            resp = await c.get(path)
            latencies.append((time.perf_counter() - due) * 1000)
            if resp.status_code != 200:
                errors.append(resp.status_code)

        t0 = time.perf_counter()
        if rate is not None:
            tasks = []
            for i in range(int(seconds * rate)):
                due = t0 + i / rate
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                tasks.append(asyncio.create_task(one(due)))
            _, pending = await asyncio.wait(tasks, timeout=HARD_DEADLINE_S)
            for task in pending:
                task.cancel()
            timeouts = len(pending)
        else:
            stop = t0 + seconds
            count = [0]

            async def worker() -> None:
                while (time.perf_counter() < stop) if seconds else (count[0] < SEQUENTIAL):
                    count[0] += 1
                    await one(time.perf_counter())

            await asyncio.gather(*(worker() for _ in range(workers)))
            timeouts = 0
        wall = time.perf_counter() - t0
    return {
        "requests": len(latencies),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "rps": len(latencies) / wall if wall else 0.0,
        "errors": len(errors),
        "timeouts": timeouts,
    }

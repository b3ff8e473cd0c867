"""Query benchmark: public-API latency and throughput over 1M and 10M events.

**Data.** Generated directly in DuckDB (one ``INSERT ... SELECT`` over
``range(n)``), not through Kafka: the real ``audit_events`` layout from
:mod:`ledger.tables` (primary key included), rows in log order with
``occurred_at`` rising over the last 30 days up to now, 20 tenants with a Zipf
skew (the biggest holds ~30%), 8 actions, 2000 actors. Kafka ingest and the
materializer have their own benchmarks; this one measures reads.

**Server.** A child process serves ``create_app(settings, LedgerFile(file))``
as ``velora node`` serves it (``velora.http_server``: uvicorn on h11 with the
HTTP limits): the real middleware (auth, rate limits with a huge bucket, read
auditing through ``ingest.AuditProducer`` to the bench broker), routes and SQL.
**Load.** This process drives it over 32 concurrent keep-alive connections with
a minimal asyncio HTTP/1.1 client (cheaper than httpx, so that the two cores go
to the server) and measures client-side latency per request.

Each scenario runs twice on 32 connections: closed loop (every connection sends
its next request as soon as the last answer arrives) for the maximum rate, where
latency is just 32 / rate by Little's law; then open loop at half that rate, for
the latency a client sees on a busy but not saturated node (counted from each
request's due time). Scenarios (limit 50): the first page of the biggest and of
the smallest tenant; a deep page by cursor (20 days back); filtered by exact
action, action prefix and one actor. Floor: at 10M events, p99 < 100 ms for the
first page of 50 (open loop).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx

from bench.report import Row, percentile, write_results
from cli.keys import create_key
from ledger.tables import ALL_DDL
from velora.errors import BrokerError
from velora.settings import Settings

TENANTS = 20
SKEW = 1.07  # Zipf exponent: the biggest of 20 tenants holds ~30%
SPAN = timedelta(days=30)
CONCURRENCY = 32
REQUESTS = 800
WARMUP = 64
FLOOR_P99_MS = 100.0
OFFERED_FRACTION = 0.5  # latency is measured at half the saturation rate
_ACTIONS = ("claim.viewed", "claim.updated", "member.viewed", "member.exported",
            "eligibility.checked", "user.login", "report.downloaded", "claim.created")  # fmt: skip
_SOURCES = ("claims-service", "member-portal", "eligibility-api", "reporting")


def tenant_shares() -> list[float]:
    """The share of events of each of the 20 tenants (biggest first)."""
    weights = [1 / (k + 1) ** SKEW for k in range(TENANTS)]
    total = sum(weights)
    return [w / total for w in weights]


def generate(path: Path, n: int, end: datetime, shares: list[float] | None = None) -> float:
    """Build a ledger file of ``n`` events in log order ending at ``end``; seconds taken.

    ``shares`` (one per tenant, biggest first; default :func:`tenant_shares`) sets how
    the events are spread over the 20 tenants. The rollups are left empty (see
    ``bench.analytics``, which fills them).
    """
    path.unlink(missing_ok=True)
    cases, cum = [], 0.0
    for k, share in enumerate((shares or tenant_shares())[:-1]):
        cum += share
        cases.append(f"WHEN u < {cum:.6f} THEN 'tenant-{k:02d}'")
    tenant = f"CASE {' '.join(cases)} ELSE 'tenant-{TENANTS - 1:02d}' END"
    start_us = int((end - SPAN).timestamp() * 1_000_000)
    step_us = int(SPAN.total_seconds() * 1_000_000) // n
    actions = "[" + ",".join(f"'{a}'" for a in _ACTIONS) + "]"
    sources = "[" + ",".join(f"'{s}'" for s in _SOURCES) + "]"
    # Only constants of this module are formatted into the statement.
    sql = f"""
    INSERT INTO audit_events
    SELECT length(tenant)::VARCHAR || ':' || tenant || ':' || event_id, event_id, tenant, *
           EXCLUDE (event_id, tenant)
    FROM (
    SELECT
      printf('%08x-%04x-7%03x-8%03x-%012x', (ts // 65536000) % 4294967296, (ts // 1000) % 65536,
             i % 4096, (i // 4096) % 4096, i) AS event_id,
      {tenant} AS tenant, make_timestamptz(ts), make_timestamptz(ts + 5000),
      {actions}[1 + (h % 8)::INT], 'read', 'claims',
      CASE WHEN h % 5 = 0 THEN 'service' ELSE 'user' END,
      'usr_' || lpad(((h // 8) % 2000)::VARCHAR, 4, '0'), NULL, NULL, '10.0.0.1', NULL,
      [{{'type': 'claim', 'id': 'CLA-' || ((h // 16000) % 1000000)::VARCHAR, 'name': NULL}}],
      CASE WHEN h % 50 = 0 THEN 'failure' WHEN h % 33 = 0 THEN 'denied' ELSE 'success' END,
      NULL, NULL, {sources}[1 + ((h // 64) % 4)::INT], MAP {{'portal_version': '4.2'}}, 1,
      0, i
    FROM (SELECT i, hash(i) AS h, (hash(i * 7919) % 1000000) / 1000000.0 AS u,
                 {start_us} + i * {step_us} AS ts
          FROM range({n}) t(i)))
    """
    t0 = time.perf_counter()
    con = duckdb.connect(str(path))
    try:
        for ddl in ALL_DDL:
            con.execute(ddl)
        con.execute(sql)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    return time.perf_counter() - t0


def _serve_main() -> None:
    """Child process: serve the app over the DuckDB file in argv[1]; print the port."""
    from ledger.duck import LedgerFile
    from query_api.app import create_app
    from velora.http_server import listen, make_server

    settings = Settings.from_env()
    app = create_app(settings, LedgerFile(sys.argv[1], create=False))
    sock = listen("127.0.0.1", 0, settings.http_backlog)
    print(sock.getsockname()[1], flush=True)
    make_server(app, settings).run(sockets=[sock])


def _child_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VELORA_")}
    env.update({
        "VELORA_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "VELORA_TOPIC_PREFIX": settings.topic_prefix,
        "VELORA_AUDIT_PARTITIONS": str(settings.audit_partitions),
        "VELORA_KEY_PEPPER": settings.key_pepper.reveal(),
        "VELORA_CURSOR_SECRET": settings.cursor_secret.reveal(),
        "VELORA_RATE_LIMIT_BURST": "1000000",
        "VELORA_RATE_LIMIT_PER_SECOND": "1000000",
        "VELORA_LOG_LEVEL": "WARNING",
    })  # fmt: skip
    return env


def _start_server(settings: Settings, db: Path) -> tuple[subprocess.Popen[str], str]:
    code = "from bench.query import _serve_main; _serve_main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(db)],
        env=_child_env(settings),
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.strip().isdigit():
        proc.kill()
        raise BrokerError("the bench query server did not start")
    url = f"http://127.0.0.1:{line.strip()}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise BrokerError("the bench query server did not become ready")


async def _client(
    host: str,
    port: int,
    token: str,
    paths: list[str],
    jobs: Any,
    latencies: list[float],
    failures: list[int],
    schedule: Callable[[int], float] | None = None,
) -> None:
    """One keep-alive HTTP/1.1 connection: a minimal client, so the load generator
    spends little of the two cores that the server needs (httpx costs ~1 ms a call).

    With ``schedule`` (open loop), request ``i`` is due at ``schedule(i)`` and its
    latency counts from that due time, so a slow server cannot hide queueing
    (no coordinated omission)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for i in jobs:
            request = (
                f"GET {paths[i % len(paths)]} HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {token}\r\nUser-Agent: velora-bench\r\n\r\n"
            )
            t0 = time.perf_counter()
            if schedule is not None:
                due = schedule(i)
                if due > t0:
                    await asyncio.sleep(due - t0)
                t0 = due
            writer.write(request.encode())
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            took = (time.perf_counter() - t0) * 1000
            if i >= WARMUP:
                latencies.append(took)
                if head[9:12] != b"200":
                    failures.append(int(head[9:12]))
    finally:
        writer.close()


async def _drive(
    url: str, token: str, paths: list[str], total: int, rate: float | None = None
) -> dict[str, Any]:
    """``total`` GETs cycling over ``paths`` on CONCURRENCY connections: as fast as
    possible (closed loop) or, with ``rate``, offered at ``rate`` req/s (open loop)."""
    parsed = httpx.URL(url)
    latencies: list[float] = []
    failures: list[int] = []
    jobs = iter(range(total + WARMUP))
    t0 = time.perf_counter()
    schedule = None if rate is None else (lambda i: t0 + i / rate)
    await asyncio.gather(*(
        _client(parsed.host, parsed.port or 80, token, paths, jobs, latencies, failures, schedule)
        for _ in range(CONCURRENCY)
    ))  # fmt: skip
    wall = time.perf_counter() - t0
    return {
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "rps": (total + WARMUP) / wall,
        "requests": total,
        "errors": len(failures),
    }


def _scenarios(url: str, token: str, small_token: str, end: datetime) -> dict[str, tuple]:
    base = "/api/v2/public/audit/events"
    until = (end - timedelta(days=20)).isoformat()
    first = httpx.get(
        f"{url}{base}",
        params={"limit": 50, "until": until},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    ).json()
    deep = httpx.URL(
        base, params={"limit": 50, "until": until, "cursor": first["page"]["next_cursor"]}
    )
    return {
        "first page, biggest tenant": (token, [f"{base}?limit=50"]),
        "first page, smallest tenant": (small_token, [f"{base}?limit=50"]),
        "deep page by cursor (20 days back)": (token, [str(deep)]),
        "filter action=claim.viewed": (token, [f"{base}?limit=50&action=claim.viewed"]),
        "filter action=member.*": (token, [f"{base}?limit=50&action=member.*"]),
        "filter actor_id (1 of 2000)": (
            token, [f"{base}?limit=50&actor_id=usr_{k:04d}" for k in range(40, 48)]),
    }  # fmt: skip


def run(settings: Settings, sizes: tuple[int, ...] = (1_000_000, 10_000_000)) -> list[Row]:
    """Generate each size, serve it, drive every scenario; rows of p50/p99 ms and req/s."""
    rows: list[Row] = []
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    big = create_key(settings, "tenant-00", ("audit:read",), name="bench").token
    small = create_key(settings, f"tenant-{TENANTS - 1:02d}", ("audit:read",), name="bench").token
    for n in sizes:
        label = f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k"
        db = settings.state_dir / f"query-{label}.duckdb"
        end = datetime.now(UTC)
        gen_s = generate(db, n, end)
        print(f"bench query: generated {n:,} events in {gen_s:.1f}s", file=sys.stderr)
        proc, url = _start_server(settings, db)
        section: dict[str, Any] = {
            "events": n,
            "generation_s": gen_s,
            "concurrency": CONCURRENCY,
            "loadavg_1m_at_start": os.getloadavg()[0],  # other work on the machine skews p99
        }
        try:
            for name, (token, paths) in _scenarios(url, big, small, end).items():
                saturated = asyncio.run(_drive(url, token, paths, REQUESTS))
                rate = max(1.0, saturated["rps"] * OFFERED_FRACTION)
                paced = asyncio.run(_drive(url, token, paths, REQUESTS // 2, rate))
                section[name] = {"saturated": saturated, "paced": {**paced, "offered_rps": rate}}
                floor = ""
                if n >= 10_000_000 and name.startswith("first page"):
                    ok = paced["p99_ms"] < FLOOR_P99_MS
                    floor = f"< {FLOOR_P99_MS:.0f} ms: {'ok' if ok else 'MISSED'}"
                errors = saturated["errors"] + paced["errors"]
                rows += [
                    Row(f"{label} {name}: p50 @{rate:.0f}/s", paced["p50_ms"], "ms"),
                    Row(f"{label} {name}: p99 @{rate:.0f}/s", paced["p99_ms"], "ms", floor),
                    Row(f"{label} {name}: max rate", saturated["rps"], "req/s",
                        f"{errors} errors" if errors else ""),
                    Row(f"{label} {name}: p99 at max rate", saturated["p99_ms"], "ms"),
                ]  # fmt: skip
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            db.unlink(missing_ok=True)
        write_results("query", label, section)
    return rows

"""Query benchmark: public-API latency and throughput over 1M and 10M events.

**Data.** Generated directly in DuckDB (one ``INSERT ... SELECT`` over
``range(n)``), not through Kafka: the real ``audit_events`` layout from
:mod:`ledger.tables` (primary key included), rows in log order with
``occurred_at`` rising over the last 30 days up to now, 20 tenants with a Zipf
skew (the biggest holds ~30%), 8 actions, 2000 actors; event ids shaped like
ingest's UUIDv7s (the time in milliseconds, then 74 pseudo-random bits, so that
they compress as real ones do). Kafka ingest and the
materializer have their own benchmarks; this one measures reads.

**Server.** A child process serves ``create_app(settings, LedgerFile(file))``
with the tenants' heads (:mod:`ledger.head`), as ``velora node`` serves it
(``velora.http_server``: uvicorn on httptools with the HTTP limits): the real
middleware (auth, rate limits with a huge bucket, read auditing through
``ingest.LoopAuditProducer`` to the bench broker), routes and SQL.
**Load.** This process drives it over 32 concurrent keep-alive connections with
a minimal asyncio HTTP/1.1 client (cheaper than httpx, so that the two cores go
to the server) and measures client-side latency per request.

**Peer.** The same rows are loaded into a local PostgreSQL (:mod:`bench.postgres`:
Debian's package, installed when missing, a temp cluster on a free port, stopped
at the end) with the indexes a typical team would build, and served by a minimal
Starlette + asyncpg app on one uvicorn worker (:mod:`bench.peer_app`). Before any
timing, :func:`check_identical` fetches every scenario's pages from both and
stops the run unless the events are identical. The peer does not audit reads;
the node waits for each read's audit record to be acknowledged by Kafka.

Each scenario runs on both servers over 32 connections: closed loop (every
connection sends its next request as soon as the last answer arrives) for 8 s, for
the maximum rate, where latency is just 32 / rate by Little's law; then open loop at
one common rate, half the lower of the two maximum rates, for the latency a
client sees on a busy but not saturated server (8 s of requests, latency counted
from each request's due time). ``query.json`` gets, per scenario, both servers'
figures, the node / peer ratio of the maximum rates and the load average before and after. Scenarios
(limit 50): the first page of the biggest and of the smallest tenant; a deep page
by cursor (20 days back); filtered by exact action, action prefix and one actor
(cycling over 8 actors, so each is asked for again and served from its id head
after its second page), one actor with every request asking for another actor of
the 1,900 (each asked once: a one-off lookup, read through the sorted copies,
:mod:`ledger.sorted_copies`), one target id (cycling over 8 targets of the page 20
days back; a target has a few events in 30 days) and one target id with every
request asking for another of about 10,000 (each asked once, through the copies;
``python -m bench.rare_filters`` times both filters in DuckDB alone; the peer has a
GIN index on ``targets``). The "each asked once" runs stop before they would ask
for a path again (the closed loop takes at most half the paths, the paced run at
most the rest), so none of their pages comes from an id head, and so that the id
heads they would load do not crowd out those of the scenarios asked again, which
run first. The generated file gets its sorted copies (and page bodies, with
``VELORA_PAGE_BODIES``) (:func:`build_copies`) before the node serves it, as a
node's keepers build them, and the node reads the copies into DuckDB's buffer pool
before it serves (``VELORA_WARM_COPIES``), as a node's copy warmer does in its first
round.
Floor: at 10M events, p99 < 100 ms for the first page of 50 (open loop).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import duckdb
import httpx

from bench.postgres import LocalPostgres, load_from_duckdb
from bench.report import Row, percentile, write_results
from cli.keys import create_key
from ledger import page_bodies, sorted_copies
from ledger.duck import LedgerFile
from ledger.tables import ALL_DDL
from velora.errors import BrokerError, LedgerMismatch
from velora.settings import Settings

TENANTS = 20
SKEW = 1.07  # Zipf exponent: the biggest of 20 tenants holds ~30%
SPAN = timedelta(days=30)
CONCURRENCY = 32
REQUESTS = 20_000  # at most, per closed-loop run ...
DRIVE_S = 8.0  # ... of at most this long; a paced run offers DRIVE_S seconds of requests
WARMUP = 32  # one request per connection
CHECKED_PATHS = 8
ONCE_PATHS = 100
"""A scenario of more paths than this asks for each once (an id nobody asked for yet)."""
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
      printf('%08x-%04x-7%03x-%04x-%012x', (ts // 65536000) % 4294967296, (ts // 1000) % 65536,
             hash(i, 1) % 4096, 32768 + hash(i, 2) % 16384, (hash(i, 2) // 16384) % 281474976710656)
        AS event_id,
      {tenant} AS tenant, make_timestamptz(ts), make_timestamptz(ts + 5000),
      {actions}[1 + (h % 8)::INT], 'read', 'claims',
      CASE WHEN h % 5 = 0 THEN 'service' ELSE 'user' END,
      'usr_' || lpad(((h // 8) % 2000)::VARCHAR, 4, '0'), NULL, NULL, '10.0.0.1', NULL,
      [{{'type': 'claim', 'id': 'CLA-' || ((h // 16000) % 1000000)::VARCHAR, 'name': NULL}}],
      CASE WHEN h % 50 = 0 THEN 'failure' WHEN h % 33 = 0 THEN 'denied' ELSE 'success' END,
      NULL, NULL, {sources}[1 + ((h // 64) % 4)::INT], MAP {{'portal_version': '4.2'}}, 1,
      0, i, i + 1
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


def build_copies(path: Path, bodies: bool = False) -> dict[str, float]:
    """Sort a generated file's rows into its sorted copies (:mod:`ledger.sorted_copies`)
    and, with ``bodies``, append their page bodies (:mod:`ledger.page_bodies`), as a
    node's keepers do behind its writer; seconds taken, the file's growth and the
    bodies' size."""
    before = path.stat().st_size
    t0 = time.perf_counter()
    con = duckdb.connect(str(path))
    try:
        sorted_copies.catch_up(con)
        con.execute("CHECKPOINT")
    finally:
        con.close()
    built = time.perf_counter()
    out = {
        "build_s": built - t0,
        "file_mb_before": before / 1e6,
        "file_mb_after": path.stat().st_size / 1e6,
    }
    if not bodies:
        return out
    ledger = LedgerFile(path, create=False, bodies=True)
    try:
        ledger.build_bodies()
        bodies_mb = ledger.bodies.size_bytes() / 1e6 if ledger.bodies else 0.0
    finally:
        ledger.close()
    return {**out, "bodies_s": time.perf_counter() - built, "bodies_mb": bodies_mb}


def remove_ledger(path: Path) -> None:
    """Remove a benchmark's ledger file and its page bodies."""
    path.unlink(missing_ok=True)
    Path(f"{path}.wal").unlink(missing_ok=True)
    page_bodies.remove(page_bodies.path_for(path))


def _serve_main() -> None:
    """Child process: serve the app over the DuckDB file in argv[1]; print the port."""
    from ledger.copy_warmer import Warmth
    from ledger.duck import LedgerFile
    from ledger.head import TenantHeads
    from query_api.app import create_app
    from velora.http_server import listen, make_server
    from velora.memory import prepare_to_serve

    settings = Settings.from_env()
    heads = None
    if settings.head_events > 0:  # as a node keeps them; nothing writes the file here
        heads = TenantHeads(
            settings.head_events, settings.head_tenants, settings.head_actions, settings.head_ids
        )
    limit = settings.duckdb_memory_limit_mb  # as velora node applies it
    ledger = LedgerFile(
        sys.argv[1],
        create=False,
        heads=heads,
        memory_limit=f"{limit}MB" if limit else None,
        bodies=settings.page_bodies,
    )
    if settings.warm_copies:  # a node's copy warmer does this in its first round
        Warmth().round(ledger.cursor())
    app = create_app(settings, ledger)
    sock = listen("127.0.0.1", 0, settings.http_backlog)
    server = make_server(app, settings)
    prepare_to_serve()  # as velora node does
    print(sock.getsockname()[1], flush=True)
    server.run(sockets=[sock])


def _child_env(settings: Settings, tree: Path | None = None) -> dict[str, str]:
    """The bench node's environment. For another revision's ``tree`` (``bench.ab``), the
    settings that tree does not know are left out: its node would refuse them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VELORA_")}
    env.update({
        "VELORA_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "VELORA_TOPIC_PREFIX": settings.topic_prefix,
        "VELORA_AUDIT_PARTITIONS": str(settings.audit_partitions),
        "VELORA_KEY_PEPPER": settings.key_pepper.reveal(),
        "VELORA_CURSOR_SECRET": settings.cursor_secret.reveal(),
        "VELORA_DUCKDB_MEMORY_LIMIT_MB": str(settings.duckdb_memory_limit_mb),
        "VELORA_RATE_LIMIT_BURST": "1000000",
        "VELORA_RATE_LIMIT_PER_SECOND": "1000000",
        "VELORA_LOG_LEVEL": "WARNING",
    })  # fmt: skip
    newer = {
        "VELORA_PAGE_BODIES": str(settings.page_bodies).lower(),
        "VELORA_WARM_COPIES": str(settings.warm_copies).lower(),
    }
    known = None if tree is None else (tree / "velora" / "settings.py").read_text()
    env.update({k: v for k, v in newer.items() if known is None or f'"{k}"' in known})
    return env


def _start_child(
    code: str, args: list[str], env: dict[str, str], stdin: str = "", cwd: Path | None = None
) -> tuple[subprocess.Popen[str], str]:
    """Start ``python -c code *args`` (it prints its port, then serves); wait for /readyz.
    With ``cwd``, the code is imported from that folder (another revision's tree)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env if cwd is None else {**env, "PYTHONPATH": str(cwd)},
        cwd=cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        return proc, _wait_child(proc, stdin)
    except BaseException:  # not ready, or interrupted meanwhile: never leave it running
        proc.kill()
        proc.wait()
        raise


def _wait_child(proc: subprocess.Popen[str], stdin: str) -> str:
    """Feed ``stdin``, read the child's port, wait for /readyz; its URL."""
    if proc.stdin is not None:
        proc.stdin.write(stdin)
        proc.stdin.close()
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.strip().isdigit():
        raise BrokerError("a bench query server did not start")
    url = f"http://127.0.0.1:{line.strip()}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise BrokerError("a bench query server did not become ready")


def _start_server(
    settings: Settings, db: Path, tree: Path | None = None
) -> tuple[subprocess.Popen[str], str]:
    code = "from bench.query import _serve_main; _serve_main()"
    return _start_child(code, [str(db)], _child_env(settings, tree), cwd=tree)


def start_peer(dsn: str, tokens: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """Serve :mod:`bench.peer_app` over ``dsn`` in a child process; ``tokens`` maps a
    Bearer token to its tenant (passed on stdin, not on the command line)."""
    code = "from bench.peer_app import serve_main; serve_main()"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VELORA_")}
    return _start_child(code, [dsn], env, json.dumps(tokens) + "\n")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
    if proc.stdout is not None:
        proc.stdout.close()


async def _client(
    host: str,
    port: int,
    token: str,
    paths: list[str],
    jobs: Any,
    latencies: list[float],
    failures: list[int],
    done: list[int],
    schedule: Callable[[int], float] | None = None,
) -> None:
    """One keep-alive HTTP/1.1 connection: a minimal client, so the load generator
    spends little of the two cores that the server needs (httpx costs ~1 ms a call).

    With ``schedule`` (open loop), request ``i`` is due at ``schedule(i)`` and its
    latency counts from that due time, so a slow server cannot hide queueing
    (no coordinated omission). A connection the server closed while idle (its
    keep-alive timeout, at low paced rates) is reopened, and the reconnect counts
    in that request's latency."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for i in jobs:
            request = (
                f"GET {paths[i % len(paths)]} HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Bearer {token}\r\nUser-Agent: velora-bench\r\n\r\n"
            ).encode()
            t0 = time.perf_counter()
            if schedule is not None:
                due = schedule(i)
                if due > t0:
                    await asyncio.sleep(due - t0)
                t0 = due
            for attempt in (1, 2):
                try:
                    writer.write(request)
                    head = await reader.readuntil(b"\r\n\r\n")
                    break
                except (asyncio.IncompleteReadError, ConnectionError):
                    writer.close()
                    if attempt == 2:
                        raise
                    reader, writer = await asyncio.open_connection(host, port)
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            took = (time.perf_counter() - t0) * 1000
            done[0] += 1
            if i >= WARMUP:
                latencies.append(took)
                if head[9:12] != b"200":
                    failures.append(int(head[9:12]))
    finally:
        writer.close()


def _jobs(limit: int, deadline: float) -> Iterator[int]:
    """Request numbers 0.. while under ``limit`` and before ``deadline``."""
    i = 0
    while i < limit and time.perf_counter() < deadline:
        yield i
        i += 1


async def _drive(
    url: str,
    token: str,
    paths: list[str],
    total: int,
    rate: float | None = None,
    seconds: float = float("inf"),
) -> dict[str, Any]:
    """Up to ``total`` GETs (after WARMUP) cycling over ``paths`` on CONCURRENCY
    connections, for at most ``seconds``: as fast as possible (closed loop) or, with
    ``rate``, offered at ``rate`` req/s (open loop)."""
    parsed = httpx.URL(url)
    latencies: list[float] = []
    failures: list[int] = []
    done = [0]
    t0 = time.perf_counter()
    jobs = _jobs(total + WARMUP, t0 + seconds)
    schedule = None if rate is None else (lambda i: t0 + i / rate)
    await asyncio.gather(*(
        _client(parsed.host, parsed.port or 80, token, paths, jobs, latencies, failures, done,
                schedule)
        for _ in range(CONCURRENCY)
    ))  # fmt: skip
    wall = time.perf_counter() - t0
    return {
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "rps": done[0] / wall,
        "requests": len(latencies),
        "completed": done[0],
        "seconds": wall,
        "errors": len(failures),
    }


def scenarios(url: str, token: str, small_token: str, end: datetime) -> dict[str, tuple]:
    """Each scenario's (token, paths) against the server at ``url``; the deep page's
    cursor is that server's own (``next_cursor`` of its page 20 days back)."""
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
        "filter target_id (8 targets, asked again)": (
            token, [f"{base}?limit=50&target_id={t}" for t in _targets(first["events"], 8)]),
        "filter actor_id, each asked once": (
            token, [f"{base}?limit=50&actor_id=usr_{k:04d}" for k in range(100, 2000)]),
        "filter target_id, each asked once": (
            token, [f"{base}?limit=50&target_id={t}" for t in _spread_targets(url, token, end)]),
    }  # fmt: skip


def _spread_targets(url: str, token: str, end: datetime) -> list[str]:
    """About 10,000 distinct target ids of the biggest tenant, from pages of 1,000 events
    every 3 days back (each asked once: more than two timed runs can ask for)."""
    events = []
    for days in range(0, 30, 3):
        query = urlencode({"limit": 1000, "until": (end - timedelta(days=days)).isoformat()})
        events += _get(url, token, f"/api/v2/public/audit/events?{query}")["events"]
    return _targets(events, len(events))


def _targets(events: list[dict[str, Any]], n: int) -> list[str]:
    """The first ``n`` distinct target ids of ``events`` (a few events each, over 30 days)."""
    ids = dict.fromkeys(t["id"] for e in events for t in e["targets"])
    return list(ids)[:n]


def _get(url: str, token: str, path: str) -> dict[str, Any]:
    response = httpx.get(f"{url}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=60)
    if response.status_code != 200:
        raise LedgerMismatch(f"GET {path} answered {response.status_code}")
    body: dict[str, Any] = response.json()
    return body


def check_identical(
    node_url: str, node_scenarios: dict[str, tuple], peer_url: str, peer_scenarios: dict[str, tuple]
) -> int:
    """GET the last :data:`CHECKED_PATHS` paths of every scenario (every path of the
    scenarios that cycle over a few; the timed runs of "each asked once" never reach
    its last ones, so that none of its timed pages is a second ask) from both
    servers; raise :class:`LedgerMismatch`
    unless both return the same, non-empty events in the same order, the same
    ``limit`` and both a next page or neither. Returns the number of events compared."""
    compared = 0
    for name, (token, node_paths) in node_scenarios.items():
        peer_token, peer_paths = peer_scenarios[name]
        pairs = list(zip(node_paths, peer_paths, strict=True))[-CHECKED_PATHS:]
        for node_path, peer_path in pairs:
            mine, theirs = _get(node_url, token, node_path), _get(peer_url, peer_token, peer_path)
            if not mine["events"]:
                raise LedgerMismatch(f"{name}: the node returned no events to compare")
            for k, (a, b) in enumerate(zip(mine["events"], theirs["events"], strict=False)):
                if a != b:
                    raise LedgerMismatch(f"{name}: event {k} differs ({a['event_id']} vs peer)")
            if len(mine["events"]) != len(theirs["events"]):
                raise LedgerMismatch(f"{name}: {len(mine['events'])} events, peer has "
                                     f"{len(theirs['events'])}")  # fmt: skip
            if mine["page"]["limit"] != theirs["page"]["limit"] or (
                mine["page"]["next_cursor"] is None
            ) != (theirs["page"]["next_cursor"] is None):
                raise LedgerMismatch(f"{name}: the page object differs")
            compared += len(mine["events"])
    return compared


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run(settings: Settings, sizes: tuple[int, ...] = (1_000_000, 10_000_000)) -> list[Row]:
    """Generate each size, serve it from the node and from the Postgres peer, check the
    answers identical, drive every scenario on both; rows of p50/p99 ms, req/s, ratios."""
    rows: list[Row] = []
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    big = create_key(settings, "tenant-00", ("audit:read",), name="bench").token
    small = create_key(settings, f"tenant-{TENANTS - 1:02d}", ("audit:read",), name="bench").token
    tokens = {big: "tenant-00", small: f"tenant-{TENANTS - 1:02d}"}
    with LocalPostgres() as pg:
        for n in sizes:
            label = f"{n // 1_000_000}M" if n >= 1_000_000 else f"{n // 1000}k"
            rows += _run_size(settings, pg, n, label, big, small, tokens)
    return rows


def _run_size(
    settings: Settings,
    pg: LocalPostgres,
    n: int,
    label: str,
    big: str,
    small: str,
    tokens: dict[str, str],
) -> list[Row]:
    rows: list[Row] = []
    db = settings.state_dir / f"query-{label}.duckdb"
    end = datetime.now(UTC)
    gen_s = generate(db, n, end)
    copies = build_copies(db, bodies=settings.page_bodies)
    load_s = load_from_duckdb(pg, db)
    bodies = (
        f", page bodies in {copies['bodies_s']:.1f}s ({copies['bodies_mb']:,.0f} MB)"
        if "bodies_s" in copies
        else ""
    )
    print(f"bench query: {n:,} events generated in {gen_s:.1f}s, sorted copies built in "
          f"{copies['build_s']:.1f}s (file {copies['file_mb_before']:,.0f} -> "
          f"{copies['file_mb_after']:,.0f} MB){bodies}, loaded into PostgreSQL "
          f"in {load_s:.1f}s", file=sys.stderr)  # fmt: skip
    proc, url = _start_server(settings, db)
    section: dict[str, Any] = {
        "events": n,
        "generation_s": gen_s,
        "sorted_copies": copies,
        "peer_load_s": load_s,
        "concurrency": CONCURRENCY,
        "loadavg_at_start": _loadavg(),  # other work on the machine skews p99
        "peer": "PostgreSQL (Debian) + Starlette/asyncpg on one uvicorn worker; no read audit",
    }
    try:
        peer_proc, peer_url = start_peer(pg.dsn, tokens)
        try:
            node_sc = scenarios(url, big, small, end)
            peer_sc = scenarios(peer_url, big, small, end)
            section["events_checked_identical"] = check_identical(url, node_sc, peer_url, peer_sc)
            for name, (token, paths) in node_sc.items():
                peer_paths = peer_sc[name][1]
                result = _measure(url, token, paths, peer_url, peer_paths)
                section[name] = result
                rows += _rows_of(label, name, n, result)
        finally:
            _stop(peer_proc)
    finally:
        _stop(proc)
        remove_ledger(db)
    section["loadavg_at_end"] = _loadavg()
    write_results("query", label, section)
    return rows


def _measure(
    url: str, token: str, paths: list[str], peer_url: str, peer_paths: list[str]
) -> dict[str, Any]:
    """Max rate of node and peer (closed loop), then both at one common paced rate:
    half of the lower max rate, so that neither is saturated."""
    load0 = _loadavg()
    # "each asked once": the two runs together never come back to a path (a second
    # ask would be an id head's page) nor reach the last ones, which check_identical
    # asked already
    fresh = len(paths) - CHECKED_PATHS
    once = len(paths) > ONCE_PATHS
    limit = fresh // 2 if once else REQUESTS
    node = asyncio.run(_drive(url, token, paths, limit, seconds=DRIVE_S))
    peer = asyncio.run(_drive(peer_url, token, peer_paths, limit, seconds=DRIVE_S))
    rate = max(1.0, min(node["rps"], peer["rps"]) * OFFERED_FRACTION)
    paced = max(50, int(rate * DRIVE_S))
    if once:
        paced = min(paced, fresh - max(node["completed"], peer["completed"]))
    # the paced runs go on where the closed loops stopped ("each asked once" stays so)
    node_paced = asyncio.run(_drive(url, token, _after(paths, node), paced, rate))
    peer_paced = asyncio.run(_drive(peer_url, token, _after(peer_paths, peer), paced, rate))
    return {
        "saturated": node,
        "paced": {**node_paced, "offered_rps": rate},
        "peer_saturated": peer,
        "peer_paced": {**peer_paced, "offered_rps": rate},
        "node_to_peer_max_rate": node["rps"] / peer["rps"] if peer["rps"] else 0.0,
        "loadavg": {"before": load0, "after": _loadavg()},
    }


def _after(paths: list[str], run: dict[str, Any]) -> list[str]:
    """``paths`` rotated to start past the ``run`` that cycled over them."""
    k = run["completed"] % len(paths)
    return paths[k:] + paths[:k]


def _rows_of(label: str, name: str, n: int, r: dict[str, Any]) -> list[Row]:
    node, paced = r["saturated"], r["paced"]
    peer, peer_paced = r["peer_saturated"], r["peer_paced"]
    rate = paced["offered_rps"]
    floor = ""
    if n >= 10_000_000 and name.startswith("first page"):
        ok = paced["p99_ms"] < FLOOR_P99_MS
        floor = f"< {FLOOR_P99_MS:.0f} ms: {'ok' if ok else 'MISSED'}"
    errors = node["errors"] + paced["errors"] + peer["errors"] + peer_paced["errors"]
    ratio = r["node_to_peer_max_rate"]
    return [
        Row(f"{label} {name}: node p50 @{rate:.0f}/s", paced["p50_ms"], "ms"),
        Row(f"{label} {name}: node p99 @{rate:.0f}/s", paced["p99_ms"], "ms", floor),
        Row(f"{label} {name}: peer p50 @{rate:.0f}/s", peer_paced["p50_ms"], "ms"),
        Row(f"{label} {name}: peer p99 @{rate:.0f}/s", peer_paced["p99_ms"], "ms",
            "node <= peer" if paced["p99_ms"] <= peer_paced["p99_ms"] else "node > peer"),
        Row(f"{label} {name}: node max rate", node["rps"], "req/s",
            f"{errors} errors" if errors else ""),
        Row(f"{label} {name}: peer max rate", peer["rps"], "req/s"),
        Row(f"{label} {name}: node / peer max rate", ratio, "x",
            ">= 1: ok" if ratio >= 1 else "< 1: short"),
    ]  # fmt: skip

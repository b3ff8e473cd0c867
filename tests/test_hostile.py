"""A hostile client against a live query node and a live ingest service (issue 14).

Both run as ``velora run`` runs them: ``python -m cli node`` and ``python -m cli
ingest serve`` subprocesses on port 0, against the session's real broker. The
client speaks raw TCP so it can send what no HTTP library would: 128 MiB headers,
one byte a second, 2,000 idle connections, 500 uploads that stall. Each test
checks the answer (the JSON error shape, never a reset or plain text) and the
process's memory (RSS from ``/proc``).

The node and the slow-client ingest use short timeouts (2-3 s) so the suite is
quick; the stalled-upload test runs ingest with its defaults (256 MiB budget, 30 s
body timeout). Memory figures are printed (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from cli.keys import create_key
from ingest.http import EVENTS_PATH
from tests.helpers import REPO, wait_for
from tests.raw_http import Answer, exchange, parse, read_until_closed, request
from tests.test_producer import raw_event
from velora.memory import rss_bytes
from velora.settings import Settings

pytestmark = pytest.mark.slow

TOKEN = "hostile-svc-token-0123456789"
MB = 1_000_000
MIB = 1024 * 1024
SHORT = {
    "VELORA_HTTP_HEADER_TIMEOUT_S": "2",
    "VELORA_HTTP_BODY_TIMEOUT_S": "3",
    "VELORA_HTTP_KEEPALIVE_TIMEOUT_S": "2",
}
SLACK_S = 5.0  # a loaded two-core machine (load 10+ from other runs) may run a timer late
EVENTS = "/api/v2/public/audit/events"


class Service:
    """``python -m cli ARGS`` with the settings' environment; knows its port and RSS."""

    def __init__(self, settings: Settings, log: Path, *args: str, **env: str) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("VELORA_")}
        base.update(
            VELORA_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
            VELORA_TOPIC_PREFIX=settings.topic_prefix,
            VELORA_AUDIT_PARTITIONS=str(settings.audit_partitions),
            VELORA_DUCKDB_PATH=str(settings.duckdb_path),
            VELORA_STATE_DIR=str(settings.state_dir),
            VELORA_NODE_PORT="0",
            VELORA_INGEST_PORT="0",
            VELORA_INGEST_TOKENS=TOKEN,
            VELORA_LOG_LEVEL="INFO",
        )
        base.update(env)
        self.log_path = log
        self._log = open(log, "ab")  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", *args],
            cwd=REPO,
            env=base,
            stdout=self._log,
            stderr=self._log,
        )
        self.port = wait_for(self._port, timeout=90, what=f"{args[0]} to log its port")
        self.url = f"http://127.0.0.1:{self.port}"

    def _port(self) -> int | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"exited with {self.proc.returncode}: {self.tail()}")
        found = re.findall(rb"listening on http://127\.0\.0\.1:(\d+)", self.log_path.read_bytes())
        return int(found[-1]) if found else None

    def tail(self) -> str:
        return self.log_path.read_bytes()[-3000:].decode(errors="replace")

    def rss_mb(self) -> float:
        return rss_bytes(self.proc.pid) / MB

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@contextmanager
def service(settings: Settings, log: Path, *args: str, **env: str) -> Iterator[Service]:
    svc = Service(settings, log, *args, **env)
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def system(kafka_bootstrap, tmp_path_factory) -> Iterator[tuple[Settings, Service, Service]]:
    """A ready query node and an ingest service (short timeouts), and a tenant with a key."""
    import uuid

    from velora.topics import ensure_topics

    tmp = tmp_path_factory.mktemp("hostile")
    settings = Settings.from_env(
        {},
        kafka_bootstrap=kafka_bootstrap,
        topic_prefix=f"h{uuid.uuid4().hex[:12]}",
        audit_partitions=3,
        state_dir=tmp / "state",
        duckdb_path=tmp / "ledger.duckdb",
    )
    ensure_topics(settings)
    with (
        service(settings, tmp / "node.log", "node", **SHORT) as node,
        service(settings, tmp / "ingest.log", "ingest", "serve", **SHORT) as ingest,
    ):
        ok = wait_for(
            lambda: httpx.get(f"{node.url}/readyz", timeout=5).status_code == 200,
            timeout=120,
            what="the node to be ready",
        )
        assert ok
        yield settings, node, ingest


class Peak:
    """Samples a service's RSS every 50 ms in a thread; ``peak_mb`` is the highest seen."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self.peak_mb = svc.rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_mb = max(self.peak_mb, self.svc.rss_mb())

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def error_type(answer: Answer) -> str:
    assert answer.headers.get("content-type") == "application/json", answer
    return json.loads(answer.body)["error"]["type"]


def flood_header(port: int, size: int) -> Answer:
    """A header of ``size`` bytes sent blindly (as fast as the socket takes it) while the
    answer is read on another thread, as a careless or hostile client would."""
    conn = socket.create_connection(("127.0.0.1", port))
    started = time.monotonic()

    def send() -> None:
        try:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Padding: ")
            piece = b"a" * 65536
            for _ in range(size // len(piece)):
                conn.sendall(piece)
        except OSError:
            pass  # the server stopped draining and closed: expected for a flood

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    conn.settimeout(30)
    try:
        raw, reset = read_until_closed(conn)
    finally:
        sender.join(timeout=30)
        conn.close()
    status, headers, body = parse(raw)
    return Answer(status, headers, body, time.monotonic() - started, reset)


def test_huge_headers_get_431_and_the_node_stays_small_and_fast(system):
    """Finding 1: two 128 MiB headers in parallel (no key needed) took the node from
    285 MB to 783 MB and list calls from 10 ms to seconds; ingest answered 200 to a
    64 MiB header."""
    _, node, ingest = system
    before = node.rss_mb()
    answers: list[Answer] = []
    with Peak(node) as peak:
        attackers = [
            threading.Thread(target=lambda: answers.append(flood_header(node.port, 128 * MIB)))
            for _ in range(2)
        ]
        for t in attackers:
            t.start()
        latencies: list[float] = []  # ordinary calls are answered all along (printed)
        while not latencies or any(t.is_alive() for t in attackers):
            started = time.monotonic()
            assert httpx.get(f"{node.url}/healthz", timeout=10).status_code == 200
            latencies.append(time.monotonic() - started)
        for t in attackers:
            t.join()
    print(
        f"\nnode RSS {before:.0f} MB before, peak {peak.peak_mb:.0f} MB under two 128 MiB "
        f"headers; /healthz meanwhile: median {1000 * statistics.median(latencies):.0f} ms, "
        f"max {1000 * max(latencies):.0f} ms"
    )
    assert [a.status for a in answers] == [431, 431]
    assert all(error_type(a) == "headers_too_large" for a in answers)
    assert peak.peak_mb - before < 50
    answer = flood_header(ingest.port, 64 * MIB)
    assert answer.status == 431 and error_type(answer) == "headers_too_large"


@pytest.mark.parametrize("which", ["node", "ingest"])
def test_an_over_long_url_gets_414_in_the_json_shape(system, which):
    _, node, ingest = system
    port = (node if which == "node" else ingest).port
    for length in (10_000, 1_000_000):
        answer = exchange(port, request("/healthz?pad=" + "x" * length))
        assert answer.status == 414 and error_type(answer) == "uri_too_long", answer
        assert not answer.reset


@pytest.mark.parametrize("which", ["node", "ingest"])
def test_framing_errors_get_400_in_the_json_shape(system, which):
    _, node, ingest = system
    port = (node if which == "node" else ingest).port
    bad = b"GET /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
    answer = exchange(port, bad)
    assert answer.status == 400 and error_type(answer) == "bad_request"
    assert not answer.body.startswith(b"Invalid HTTP request")


def test_headers_trickled_at_one_byte_a_second_are_cut_off(system):
    """Finding 2: headers at 1 byte/s for 60 s were still accepted."""
    _, node, ingest = system
    for svc in (node, ingest):
        head = request("/healthz")
        answer = exchange(svc.port, *[head[i : i + 1] for i in range(len(head))], gap_s=1.0)
        assert answer.status == 408 and error_type(answer) == "request_timeout"
        assert 2.0 - 0.1 <= answer.closed_after_s <= 2.0 + SLACK_S


def test_a_body_trickled_at_one_byte_a_second_is_cut_off(system):
    """Finding 2: a body trickled at 1 byte/s for 90 s was still accepted."""
    _, _, ingest = system
    head = request(
        EVENTS_PATH,
        f"Authorization: Bearer {TOKEN}",
        "Content-Type: application/json",
        "Content-Length: 500",
        method="POST",
    )
    answer = exchange(ingest.port, head, *([b" "] * 500), gap_s=1.0)
    assert answer.status == 408 and error_type(answer) == "request_timeout"
    assert 3.0 - 0.1 <= answer.closed_after_s <= 3.0 + SLACK_S


def test_two_thousand_idle_connections_are_closed(system):
    """Finding 2: 2,000 idle connections to the node were all kept open."""
    _, node, _ = system
    before = node.rss_mb()
    conns = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(2000)]
    opened = time.monotonic()
    sel = selectors.DefaultSelector()
    for conn in conns:
        conn.setblocking(False)
        sel.register(conn, selectors.EVENT_READ)
    closed = 0
    deadline = opened + 2.0 + SLACK_S + 5.0
    during = node.rss_mb()
    try:
        while closed < len(conns) and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=0.5):
                try:
                    data = key.fileobj.recv(1)  # type: ignore[union-attr]
                except ConnectionResetError:
                    data = b""
                assert data == b"", "an idle connection got data"
                sel.unregister(key.fileobj)
                closed += 1
        took = time.monotonic() - opened
    finally:
        sel.close()
        for conn in conns:
            conn.close()
    print(
        f"\n2000 idle connections closed by the node in {took:.1f} s; RSS {before:.0f} MB "
        f"before, {during:.0f} MB with them open"
    )
    assert closed == len(conns)
    assert httpx.get(f"{node.url}/healthz", timeout=5).status_code == 200


class _Upload(asyncio.Protocol):
    """One upload at the transport level. The head goes out as soon as the connection is
    made (500 tasks on one event loop could otherwise take longer than the server's
    idle timeout to send it), and everything received is kept, even after a reset
    (asyncio's StreamReader would raise the reset and hide an answer already read)."""

    def __init__(self, head: bytes) -> None:
        self.head = head
        self.received = b""
        self.writable = asyncio.Event()
        self.writable.set()
        self.closed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.head)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.received += data

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.writable.set()
        self.closed.set()


async def _stalled_uploads(port: int, n: int, while_stalled: Callable[[], None]) -> Counter:
    """``n`` uploads that declare 5 MiB, send 4 MiB and stall; once every one has been
    answered or has stalled, ``while_stalled()`` runs, then they all close."""
    head = (
        f"POST {EVENTS_PATH} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {5 * MIB}\r\n\r\n"
    ).encode()
    piece = b" " * 65536
    outcome: Counter = Counter()
    release = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def upload() -> None:
        transport, up = await loop.create_connection(lambda: _Upload(head), "127.0.0.1", port)
        for _ in range(4 * MIB // len(piece)):
            if up.received or up.closed.is_set():  # answered: stop sending, as curl does
                break
            transport.write(piece)
            await up.writable.wait()
        if not up.received:
            try:
                await asyncio.wait_for(up.closed.wait(), 1.0)
            except TimeoutError:
                pass
        status = up.received.split(b"\r\n", 1)[0].decode()
        outcome[status or ("stalled" if not up.closed.is_set() else "closed, no answer")] += 1
        await release.wait()
        transport.close()

    tasks = [asyncio.create_task(upload()) for _ in range(n)]
    while sum(outcome.values()) < n:
        await asyncio.sleep(0.1)
        for t in tasks:
            if t.done() and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
    while_stalled()
    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    return outcome


def test_500_stalled_uploads_stay_within_the_budget_and_memory_comes_back(system, tmp_path):
    """Finding 2: 500 uploads that declare 5 MiB, send 4 MiB and stall took ingest from
    179 MB to 2.2 GB, and it stayed at 1.4 GB after they closed. Ingest runs with its
    default budget (256 MiB) and body timeout (30 s) here."""
    settings, _, _ = system
    with service(settings, tmp_path / "ingest.log", "ingest", "serve") as ingest:
        assert httpx.get(f"{ingest.url}/healthz", timeout=5).status_code == 200
        before = ingest.rss_mb()
        during: dict[str, float] = {}

        def measure() -> None:
            during["rss"] = ingest.rss_mb()

        with Peak(ingest) as peak:
            outcome = asyncio.run(_stalled_uploads(ingest.port, 500, measure))
        closed_at = time.monotonic()
        after = wait_for(
            lambda: (rss := ingest.rss_mb()) < before + 30 and rss,
            timeout=30,
            what="ingest's memory to come back",
        )
        back_in = time.monotonic() - closed_at
        print(
            f"\ningest RSS: {before:.0f} MB before, {during['rss']:.0f} MB with the uploads "
            f"stalled (peak {peak.peak_mb:.0f} MB), {after:.0f} MB {back_in:.1f} s after "
            f"they closed; answers {dict(outcome)}"
        )
        assert outcome["stalled"] == 256 // 5  # as many as fit in the budget
        assert outcome["HTTP/1.1 503 Service Unavailable"] == 500 - 256 // 5
        assert peak.peak_mb < before + 256 * MIB / MB + 100
        assert ingest.alive()


def _ingest(ingest: Service, body: bytes, ctype: str = "application/json") -> httpx.Response:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": ctype}
    return httpx.post(f"{ingest.url}{EVENTS_PATH}", content=body, headers=headers, timeout=30)


def test_duplicate_keys_and_loose_timestamps_get_422(system):
    _, _, ingest = system
    dup = json.dumps([raw_event(0)]).replace('"action":', '"action": "a.b", "action":', 1)
    r = _ingest(ingest, dup.encode())
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "action"
    r = _ingest(ingest, b'{"actor": {"id": 1, "id": 2}}\n', "application/x-ndjson")
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "actor.id"
    for stamp in ("2025-W05-5T12:00:00Z", "20250131T120000Z", "2025-01-31"):
        r = _ingest(ingest, json.dumps([raw_event(0, occurred_at=stamp)]).encode())
        assert r.status_code == 422, stamp
        assert r.json()["error"]["details"][0]["field"] == "occurred_at"


def test_the_host_header_is_never_echoed_and_forwarded_for_is_ignored(system):
    settings, node, ingest = system
    key = create_key(settings, "hostile", ("audit:read",), name="hostile test key")
    r = _ingest(ingest, json.dumps([raw_event(i, tenant="hostile") for i in range(3)]).encode())
    assert r.status_code == 200 and r.json()["accepted"] == 3
    auth = {"Authorization": f"Bearer {key.token}"}

    def page(**headers: str) -> httpx.Response:
        return httpx.get(
            f"{node.url}{EVENTS}",
            params={"limit": 1, "action": "claim.viewed"},
            headers={**auth, **headers},
            timeout=10,
        )

    # poll slowly: each 401 while the node learns the key counts against the failure gate
    wait_for(lambda: "link" in page().headers, timeout=60, interval=1.0, what="the events")
    spoof = {"X-Forwarded-For": "203.0.113.9", "User-Agent": "xff-probe"}
    resp = page(Host="h" * 10_000, **spoof)
    assert resp.status_code == 200
    link = resp.headers["link"]
    assert link.startswith(f"<{node.url}{EVENTS}?") and "hhhh" not in link
    resp = page(Host="evil.example.com/x?")
    assert resp.headers["link"].startswith(f"<{node.url}{EVENTS}?")
    # the API's own filters refuse loose timestamps too
    r = httpx.get(f"{node.url}{EVENTS}", params={"since": "2025-W05-5T12:00:00Z"}, headers=auth)
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "since"

    def probe_ip() -> str | None:
        r = httpx.get(
            f"{node.url}{EVENTS}",
            params={"action": "audit_log.viewed", "limit": 1000},
            headers=auth,
            timeout=10,
        )
        if r.status_code != 200:
            return None
        found = [e for e in r.json()["events"] if e["actor"]["user_agent"] == "xff-probe"]
        return found[0]["actor"]["ip"] if found else None

    # the read above that spoofed X-Forwarded-For is in the trail with the real peer
    assert wait_for(probe_ip, timeout=60, what="the probe's read-audit event") == "127.0.0.1"


def test_responses_keep_their_shape_under_all_of_it(system):
    """After everything above, both processes are alive and answer normally."""
    _, node, ingest = system
    assert node.alive() and ingest.alive()
    assert exchange(node.port, request("/healthz", "Connection: close")).status == 200
    assert httpx.get(f"{node.url}/readyz", timeout=5).status_code == 200
    assert _ingest(ingest, json.dumps([raw_event(0)]).encode()).status_code == 200

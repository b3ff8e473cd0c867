"""QueryNode: readiness (503 -> 200 with lag), health, reads off the event loop, the CLI process."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading

import duckdb
import httpx
import pytest
from starlette.applications import Starlette

from ledger import sorted_copies
from ledger.node import QueryNode
from ledger.store import LedgerStore
from query_api.health import health_routes
from tests.factory import EventFactory, produce
from tests.helpers import REPO, wait_for


@pytest.fixture(scope="module")
def factory():
    return EventFactory(templates=200)


class GatedStore(LedgerStore):
    """A fake at the seam: writes wait until the test opens the gate."""

    gate = threading.Event()

    def write_batch(self, table, topic, offsets, quarantine=()):
        assert self.gate.wait(60)
        super().write_batch(table, topic, offsets, quarantine)


def _client(node):
    app = Starlette(routes=health_routes(node))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node")


def test_readyz_is_503_until_caught_up_and_reports_lag(settings, factory, monkeypatch):
    monkeypatch.setattr(sorted_copies, "FLUSH_S", 0.0)  # 1,000 rows need not wait for more
    produce(settings, [factory.make() for _ in range(1000)])
    GatedStore.gate = threading.Event()
    node = QueryNode(settings, store_factory=GatedStore)
    node.start()

    async def probe(path):
        async with _client(node) as client:
            return await client.get(path)

    try:
        wait_for(lambda: node.readiness()["lag"] == 1000, timeout=30, what="end offsets known")
        r = asyncio.run(probe("/readyz"))
        assert r.status_code == 503
        assert r.json()["ready"] is False and r.json()["lag"] == 1000
        assert asyncio.run(probe("/healthz")).status_code == 200
        GatedStore.gate.set()
        wait_for(lambda: asyncio.run(probe("/readyz")).status_code == 200, timeout=60)
        body = asyncio.run(probe("/readyz")).json()
        assert body["ready"] is True and body["lag"] == 0
        assert sum(p["stored"] for p in body["partitions"].values()) == 1000
        keeper = body["target_sets"]  # reported, never a reason to be unready
        assert keeper["error"] is None and keeper["rows"] <= 1000
        # the copy keeper sorts the 1,000 rows within its interval (5 s): a run
        wait_for(
            lambda: node.readiness()["sorted_copies"]["rows_behind"] == 0,
            timeout=30,
            what="sorted copies caught up",
        )
        copies = node.readiness()["sorted_copies"]
        assert copies["error"] is None and copies["runs"] == 1 and copies["steps"] >= 1
        assert node.copies is not None and node.copies.mark == node.copies.last >= 1000
    finally:
        GatedStore.gate.set()
        node.stop()


def test_reads_run_in_worker_threads_with_a_cursor_per_thread(settings, factory):
    events = [factory.make() for _ in range(50)]
    produce(settings, events)
    node = QueryNode(settings)
    node.start()
    try:
        wait_for(lambda: node.readiness()["ready"], timeout=60)
        loop_thread = threading.get_ident()

        def count(cur):
            assert threading.get_ident() != loop_thread
            return cur.execute("SELECT count(*) FROM audit_events").fetchone()[0], id(cur)

        async def main():
            return await asyncio.gather(*(node.read(count) for _ in range(8)))

        results = asyncio.run(main())
        assert {n for n, _ in results} == {50}
        assert node.cursor() is node.cursor()
        other: list[object] = []
        t = threading.Thread(target=lambda: other.append(node.cursor()))
        t.start()
        t.join()
        assert other[0] is not node.cursor()
    finally:
        node.stop()


def _memory_limit(con) -> str:
    return con.execute("SELECT current_setting('memory_limit')").fetchone()[0]


@pytest.mark.parametrize("limit_mb", [256, 0])
def test_the_duckdb_memory_limit_comes_from_the_settings(settings, limit_mb):
    node = QueryNode(settings.with_overrides(duckdb_memory_limit_mb=limit_mb))
    node.start()
    try:
        shown = _memory_limit(node.cursor())
    finally:
        node.stop()
    with duckdb.connect() as fresh:
        engine_default = _memory_limit(fresh)
    # DuckDB shows 256 MB (decimal) as 244.1 MiB; 0 leaves its own default (80% of RAM)
    assert shown == ("244.1 MiB" if limit_mb else engine_default)


def test_wait_for_offset_gives_read_your_writes(settings, factory):
    from kafka import KafkaProducer

    node = QueryNode(settings)
    node.start()
    try:
        wait_for(lambda: node.readiness()["ready"], timeout=60)
        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        event = factory.make()
        meta = producer.send(settings.audit_topic, key=event.key, value=event.value).get(30)
        producer.close()
        assert node.wait_for_offset(meta.partition, meta.offset, timeout=30)
        row = node.cursor().execute(
            "SELECT tenant_id FROM audit_events WHERE event_id = ?", [event.event_id]
        )
        assert row.fetchone() == (event.key.decode(),)
    finally:
        node.stop()
    assert not node.wait_for_offset(0, 0, timeout=0.01)


def node_env(settings) -> dict[str, str]:
    """The environment of a ``velora node`` subprocess for these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VELORA_")}
    env.update(
        VELORA_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        VELORA_TOPIC_PREFIX=settings.topic_prefix,
        VELORA_AUDIT_PARTITIONS=str(settings.audit_partitions),
        VELORA_DUCKDB_PATH=str(settings.duckdb_path),
        VELORA_STATE_DIR=str(settings.state_dir),
        VELORA_NODE_PORT="0",
        VELORA_LOG_LEVEL="INFO",
        VELORA_HEAD_EVENTS=str(settings.head_events),
        VELORA_HEAD_ACTIONS=str(settings.head_actions),
        VELORA_HEAD_IDS=str(settings.head_ids),
    )
    return env


class NodeProcess:
    """``python -m velora.cli node`` as a real subprocess; knows its port from its log."""

    def __init__(self, settings, log_path) -> None:
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "node"],
            cwd=REPO,
            env=node_env(settings),
            stdout=self.log,
            stderr=self.log,
        )
        self.log_path = log_path
        self._start = self.log.tell()
        self.port = wait_for(self._port, timeout=60, what="the node to log its port")

    def _port(self) -> int | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"node exited with {self.proc.returncode}: {self.tail()}")
        with open(self.log_path, "rb") as f:
            f.seek(self._start)
            found = re.findall(rb"listening on http://127\.0\.0\.1:(\d+)", f.read())
        return int(found[-1]) if found else None

    def tail(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read()[-3000:].decode(errors="replace")

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)

    def readiness(self) -> dict:
        try:
            return self.get("/readyz").json()
        except httpx.HTTPError:
            return {}

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.wait()

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait()

    def wait(self) -> int:
        try:
            return self.proc.wait(60)
        finally:
            self.log.close()


def test_velora_node_serves_health_on_port_0_and_stops_on_sigterm(settings, factory, tmp_path):
    produce(settings, [factory.make() for _ in range(100)])
    node = NodeProcess(settings, tmp_path / "node.log")
    try:
        assert node.get("/healthz").status_code == 200
        wait_for(lambda: node.get("/readyz").status_code == 200, timeout=60)
        ledger = node.readiness()
        assert ledger["lag"] == 0
    finally:
        code = node.terminate()
    assert code == 0, node.tail()
    store = LedgerStore(settings.duckdb_path)
    try:
        assert store.count() == 100
    finally:
        store.close()

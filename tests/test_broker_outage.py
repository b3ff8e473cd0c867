"""Broker outage during HTTP ingest: 503 while Kafka is down, nothing acknowledged is lost.

A dedicated broker (its own state folder, so stopping it touches no other test)
serves a real uvicorn ingest service and a real ``velora node`` subprocess. A client
keeps posting batches with its own event ids while the broker is stopped and started
again on the same state. Every id answered ``accepted`` with a 2xx must be in DuckDB.
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import httpx
import pytest
import uuid_utils

from ingest import AuditProducer
from ingest.http import EVENTS_PATH, create_ingest_app
from ledger.store import LedgerStore
from tests.helpers import make_broker, wait_for
from tests.test_ingest_http import JSON_HEADERS, TOKEN, serve
from tests.test_node import NodeProcess
from tests.test_producer import raw_event
from velora.settings import Secret, Settings
from velora.topics import end_offsets, ensure_topics

BATCH = 50


class Sender(threading.Thread):
    """Posts batches until stopped; records acknowledged ids and every status seen."""

    def __init__(self, client: httpx.Client) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.stop = threading.Event()
        self.acked: set[str] = set()
        self.statuses: list[int] = []
        self.retry_after: list[str] = []
        self.error: BaseException | None = None
        self.lock = threading.Lock()

    def run(self) -> None:
        i = 0
        try:
            while not self.stop.is_set():
                events = []
                for _ in range(BATCH):
                    i += 1
                    events.append(
                        raw_event(i, tenant=f"t{i % 5}", event_id=str(uuid_utils.uuid7()))
                    )
                r = self.client.post(EVENTS_PATH, content=json.dumps(events), headers=JSON_HEADERS)
                with self.lock:
                    self.statuses.append(r.status_code)
                    if r.status_code == 503:
                        self.retry_after.append(r.headers.get("retry-after", ""))
                    elif 200 <= r.status_code < 300:
                        for item in r.json()["items"]:
                            if item["status"] == "accepted":
                                self.acked.add(item["event_id"])
        except BaseException as exc:  # reported by the test
            self.error = exc

    def count(self, status: int) -> int:
        with self.lock:
            return self.statuses.count(status)

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)


@pytest.mark.slow
def test_broker_outage_answers_503_and_loses_no_acknowledged_event(tmp_path: Path) -> None:
    broker = make_broker(tmp_path / "kafka")
    broker.start()
    node = None
    try:
        settings = Settings.from_env(
            {},
            kafka_bootstrap=broker.bootstrap,
            topic_prefix=f"outage{uuid.uuid4().hex[:8]}",
            audit_partitions=3,
            state_dir=tmp_path / "state",
            duckdb_path=tmp_path / "ledger.duckdb",
            ingest_tokens=(Secret(TOKEN),),
        )
        ensure_topics(settings)
        node = NodeProcess(settings, tmp_path / "node.log")
        with (
            AuditProducer(settings, timeout=5.0) as producer,
            serve(create_ingest_app(settings, producer)) as client,
        ):
            sender = Sender(client)
            sender.start()
            wait_for(lambda: sender.acked_count() >= 2_000, timeout=120, what="acks before")

            assert broker.stop()
            wait_for(lambda: sender.count(503) >= 2, timeout=120, what="503 while down")
            acked_during_outage = sender.acked_count()

            broker.start()
            wait_for(
                lambda: sender.acked_count() >= acked_during_outage + 2_000,
                timeout=180,
                what="acks after the broker returned",
            )
            sender.stop.set()
            sender.join(timeout=120)
        assert sender.error is None, sender.error
        assert all(v and float(v) > 0 for v in sender.retry_after), sender.retry_after
        assert not [s for s in sender.statuses if s >= 500 and s != 503], sender.statuses

        ends = end_offsets(settings, settings.audit_topic)

        def caught_up() -> bool:
            parts = node.readiness().get("partitions") or {}
            return sum(p["stored"] for p in parts.values()) >= sum(ends.values())

        wait_for(caught_up, timeout=180, what="the node to materialize the log")
        assert node.terminate() == 0, node.tail()
        node = None

        store = LedgerStore(settings.duckdb_path)
        try:
            cur = store.cursor()
            cur.execute("CREATE TEMP TABLE acked(event_id VARCHAR)")
            cur.executemany("INSERT INTO acked VALUES (?)", [[e] for e in sender.acked])
            missing = cur.execute(
                "SELECT count(*) FROM acked LEFT JOIN audit_events USING (event_id) "
                "WHERE audit_events.tenant_id IS NULL"
            ).fetchone()[0]
            rows, distinct = cur.execute(
                "SELECT count(*), count(DISTINCT event_id) FROM audit_events"
            ).fetchone()
        finally:
            store.close()
        assert missing == 0
        assert rows == distinct >= len(sender.acked)
    finally:
        if node is not None:
            node.kill()
        broker.stop()

"""The whole loop: the API asks, a dispatcher delivers, the node materializes the attempts.

Real parts throughout: the app under uvicorn, the control and request topics, a
dispatcher, a receiver verifying with the public libraries, and the attempt log
materialized into DuckDB exactly once by a query node's ``AttemptLog``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kafka import KafkaProducer

from ledger.attempts import AttemptLog
from ledger.store import LedgerStore
from schemas.codec import AvroCodec
from schemas.events import WebhookAttempt
from tests.api_support import insert_events, make_event, running_api
from tests.helpers import wait_for
from tests.webhook_support import Receiver, running_dispatcher

BASE = "/api/v2/public/webhooks/endpoints"


def test_test_ping_retry_and_replay_go_through_the_dispatcher(settings):
    s = settings.with_overrides(webhooks_allow_insecure_loopback=True)
    rx = Receiver().start()
    try:
        with running_api(s) as api, running_dispatcher(s) as d:
            key = api.issue("acme", ("webhooks:write",)).token
            auth = {"Authorization": f"Bearer {key}"}
            made = api.client.post(
                BASE, json={"url": rx.url, "event_types": ["claim.*"]}, headers=auth
            ).json()
            rx.secrets.append(made["secret"])
            eid = made["id"]
            # events already in the ledger (before the endpoint existed: not sent on their own)
            t0 = datetime(2025, 3, 1, 12, tzinfo=UTC)
            old = [
                make_event("acme", i, action=("claim.viewed", "member.viewed")[i % 2])
                for i in range(10)
            ]
            insert_events(api.reader, old)
            ping = api.client.post(f"{BASE}/{eid}/test", headers=auth)
            assert ping.status_code == 202
            ping_id = ping.json()["delivery_id"]
            wait_for(lambda: ping_id in rx.ids(), timeout=90, what="the ping")
            (r,) = [r for r in rx.received if r.envelopes[0]["id"] == ping_id]
            assert r.envelopes[0]["type"] == "velora.ping" and r.stripe_ok and r.standard_ok
            replay = api.client.post(
                f"{BASE}/{eid}/replay",
                json={"since": t0.isoformat(), "until": (t0 + timedelta(hours=1)).isoformat()},
                headers=auth,
            )
            assert replay.status_code == 202 and replay.json()["events"] == 5
            claims = {e.event_id for e in old if e.action.startswith("claim.")}
            wait_for(lambda: rx.ids() >= claims, timeout=90, what="the replayed events")
            assert rx.ids() == claims | {ping_id}  # member.* events are not replayed
            replayed = [r for r in rx.received if r.headers["webhook-id"] in claims]
            assert all(r.stripe_ok and r.standard_ok for r in replayed)
            # a manual retry of one delivery, named as the attempt log names it
            cur = api.reader.connection.cursor()
            cur.execute(
                "INSERT INTO webhook_attempts VALUES (?, ?, ?, ?, ?, 'claim.viewed', 1, 'event',"
                " now(), 500, 1.0, 'failed', 'http_500', NULL, 0, 0)",
                ["a-1", sorted(claims)[0], eid, "acme", [sorted(claims)[0]]],
            )
            cur.close()
            before = len(rx.received)
            retry = api.client.post(
                f"{BASE}/{eid}/deliveries/{sorted(claims)[0]}/retry", headers=auth
            )
            assert retry.status_code == 202
            wait_for(lambda: len(rx.received) > before, timeout=90, what="the retried delivery")
            assert rx.received[-1].headers["webhook-id"] == sorted(claims)[0]
            # the receiver has the POST before the dispatcher has its answer and counts it
            wait_for(
                lambda: d.service.dispatcher.counters[eid]["delivered"] >= 7,
                timeout=30,
                what="the retried delivery counted",
            )
    finally:
        rx.stop()


def test_the_attempt_log_is_materialized_exactly_once(settings, tmp_path):
    codec = AvroCodec()
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    t0 = datetime(2025, 6, 1, tzinfo=UTC)

    def attempt(i: int) -> bytes:
        a = WebhookAttempt(
            attempt_id=f"att-{i:05d}",
            delivery_id=f"evt-{i}",
            endpoint_id="we_" + "0" * 24,
            tenant_id="acme",
            event_ids=(f"evt-{i}",),
            event_type="claim.viewed",
            attempt=1,
            attempted_at=t0 + timedelta(seconds=i),
            status_code=200,
            latency_ms=2.0,
            outcome="delivered",
        )
        return codec.encode("WebhookAttempt", a.to_avro())

    def send(rng: range) -> None:
        for i in rng:
            producer.send(settings.webhook_attempts_topic, key=b"we", value=attempt(i))
        producer.send(settings.webhook_attempts_topic, key=b"we", value=b"not avro")
        producer.flush()

    def rows(store: LedgerStore) -> int:
        return store.cursor().execute("SELECT count(*) FROM webhook_attempts").fetchone()[0]

    try:
        send(range(300))
        store = LedgerStore(tmp_path / "ledger.duckdb")
        log = AttemptLog(settings, store)
        log.start()
        wait_for(lambda: rows(store) == 300 and log.status()["lag"] == 0, timeout=120)
        log.stop()
        stored = store.stored_offsets(settings.webhook_attempts_topic)
        assert sum(stored.values()) == 301  # the undecodable record is passed, not stored
        store.close()
        send(range(300, 350))
        store = LedgerStore(tmp_path / "ledger.duckdb")  # a restart resumes at the offsets
        log = AttemptLog(settings, store)
        log.start()
        wait_for(lambda: rows(store) == 350 and log.status()["lag"] == 0, timeout=120)
        log.stop()
        ids = store.cursor().execute("SELECT count(DISTINCT attempt_id) FROM webhook_attempts")
        assert ids.fetchone()[0] == 350 == rows(store)
        assert log.status()["error"] is None
        store.close()
    finally:
        producer.close()

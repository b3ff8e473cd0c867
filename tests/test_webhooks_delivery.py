"""Deliveries end to end: real broker, real dispatcher, real HTTP receivers.

Every receiver verifies every delivery with the public ``stripe`` and
``standardwebhooks`` libraries. Retry schedules and disable rules are compressed
through settings, never by patching.
"""

from __future__ import annotations

import json
import time

import standardwebhooks
import stripe
from kafka import KafkaConsumer
from starlette.responses import Response

from schemas.codec import AvroCodec
from schemas.events import WebhookAttempt
from tests.api_support import make_event
from tests.helpers import wait_for
from tests.webhook_support import (
    Receiver,
    create_endpoint,
    rotate_endpoint,
    running_dispatcher,
    send_events,
)
from webhooks.envelope import event_data


def fast(settings, **changes):
    values = {
        "webhooks_allow_insecure_loopback": True,
        "webhooks_retry_schedule": (0.3, 0.6, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0),
        "webhooks_timeout_s": 2.0,
        "webhooks_batch_max_wait_ms": 100,
        **changes,
    }
    return settings.with_overrides(**values)


def attempts(settings, n: int, timeout: float = 90) -> list[WebhookAttempt]:
    """The first ``n`` attempt records on the attempt log."""
    codec = AvroCodec()
    consumer = KafkaConsumer(
        settings.webhook_attempts_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=500,
    )
    found: list[WebhookAttempt] = []
    deadline = time.monotonic() + timeout
    try:
        while len(found) < n and time.monotonic() < deadline:
            for rec in consumer:
                found.append(WebhookAttempt.from_avro(codec.decode(rec.value)[1]))
    finally:
        consumer.close()
    return found


def test_every_delivery_verifies_with_stripe_and_standardwebhooks_also_during_rotation(settings):
    s = fast(settings)
    rx = Receiver().start()
    try:
        record, old, offset = create_endpoint(s, "acme", rx.url)
        rx.secrets.append(old)
        with running_dispatcher(s) as d:
            d.wait_control(offset)
            before = [make_event("acme", i) for i in range(10)]
            send_events(s, before)
            wait_for(lambda: rx.ids() >= {e.event_id for e in before}, timeout=90)
            _rotated, new, offset = rotate_endpoint(s, record)
            d.wait_control(offset)
            rx.secrets.append(new)
            during = [make_event("acme", 100 + i) for i in range(10)]
            send_events(s, during)
            wait_for(lambda: rx.ids() >= {e.event_id for e in during}, timeout=90)
        assert all(r.stripe_ok and r.standard_ok for r in rx.received)
        by_id = {r.envelopes[0]["id"]: r for r in rx.received}
        for e in during:  # two v1 signatures; each secret alone verifies with both libraries
            r = by_id[e.event_id]
            assert r.headers["velora-signature"].count("v1=") == 2
            assert len(r.headers["webhook-signature"].split(" ")) == 2
            for secret in (old, new):
                stripe.WebhookSignature.verify_header(r.body, r.headers["velora-signature"], secret)
                standardwebhooks.Webhook(secret).verify(r.body, r.headers)
        for e in before:
            r = by_id[e.event_id]
            assert r.headers["velora-signature"].count("v1=") == 1
            assert r.headers["webhook-id"] == r.headers["velora-event-id"] == e.event_id
            assert r.headers["velora-event-type"] == e.action
            envelope = json.loads(r.body)
            assert set(envelope) == {"id", "type", "created", "tenant_id", "data"}
            assert envelope["data"] == event_data(e) and envelope["tenant_id"] == "acme"
    finally:
        rx.stop()


def test_receiver_outage_every_matching_event_arrives_with_the_same_webhook_id(settings):
    s = fast(settings)
    rx = Receiver().start()
    try:
        record, secret, offset = create_endpoint(s, "acme", rx.url, event_types=["claim.*"])
        rx.secrets.append(secret)
        with running_dispatcher(s) as d:
            d.wait_control(offset)
            rx.stop()  # the receiver goes down
            events = [
                make_event("acme", i, action=("claim.viewed", "member.viewed")[i % 2])
                for i in range(40)
            ]
            send_events(s, events)
            wait_for(
                lambda: d.service.dispatcher.counters[record.endpoint_id]["failed"] >= 40,
                timeout=90,
                what="failed attempts while down",
            )
            rx.start()  # ... and comes back on the same port
            wanted = {e.event_id for e in events if e.action.startswith("claim.")}
            wait_for(lambda: rx.ids() >= wanted, timeout=120, what="every claim event")
        assert rx.ids() == wanted  # nothing that event_types exclude
        assert all(r.stripe_ok and r.standard_ok for r in rx.received)
        for r in rx.received:
            assert r.headers["webhook-id"] == r.envelopes[0]["id"]
        tried = attempts(s, 40)
        assert {a.outcome for a in tried} >= {"retry_scheduled"}
        assert all(a.error_class == "connect_error" for a in tried if a.outcome != "delivered")
        assert {a.event_ids[0] for a in tried} <= wanted
    finally:
        rx.stop()


def test_ndjson_batches_and_a_splunk_hec_receiver_that_parses_batches_as_splunk_does(settings):
    s = fast(settings, webhooks_batch_max_events=7)
    hec, nd = Receiver().start(), Receiver().start()
    token = "6b1f3c0e-2e4f-4f0a-9a55-0b7a3d8c9e21"

    def splunk(request):
        if request.headers.get("authorization") != f"Splunk {token}":
            return Response('{"text":"Invalid authorization","code":3}', status_code=401)
        return Response('{"text":"Success","code":0}', media_type="application/json")

    hec.answer = splunk
    try:
        _, hsecret, _ = create_endpoint(s, "acme", hec.url, format="splunk_hec", splunk_token=token)
        _n, nsecret, offset = create_endpoint(s, "acme", nd.url, format="ndjson")
        hec.secrets.append(hsecret)
        nd.secrets.append(nsecret)
        with running_dispatcher(s) as d:
            d.wait_control(offset)
            events = [make_event("acme", i) for i in range(30)]
            send_events(s, events)
            ids = {e.event_id for e in events}
            wait_for(lambda: hec.ids() >= ids and nd.ids() >= ids, timeout=90)
        for r in hec.received:
            # Splunk's documented batch: JSON event objects one after another, no array
            text = r.body.decode()
            assert (not text.startswith("[") and "}{" in text) or len(r.envelopes) == 1
            decoder, i, objects = json.JSONDecoder(), 0, []
            while i < len(text):
                obj, i = decoder.raw_decode(text, i)
                objects.append(obj)
            assert 1 <= len(objects) <= 7
            for obj in objects:
                assert set(obj) == {"time", "source", "sourcetype", "event"}
                assert isinstance(obj["time"], float | int) and obj["sourcetype"] == "velora:audit"
            assert r.headers["authorization"] == f"Splunk {token}"
            assert r.stripe_ok and r.standard_ok
        for r in nd.received:
            lines = r.body.decode().splitlines()
            assert len(lines) == len(r.envelopes) <= 7
            assert r.headers["content-type"] == "application/x-ndjson"
            assert r.headers["webhook-id"].startswith("batch_")
            assert r.stripe_ok and r.standard_ok
    finally:
        hec.stop()
        nd.stop()


def test_a_hanging_endpoint_never_holds_back_a_healthy_one(settings):
    s = fast(settings, webhooks_timeout_s=10.0, webhooks_concurrency=4)
    stuck, healthy = Receiver(hang=True).start(), Receiver().start()
    try:
        _, _stuck_secret, _ = create_endpoint(s, "acme", stuck.url)
        _, secret, offset = create_endpoint(s, "acme", healthy.url)
        healthy.secrets.append(secret)
        with running_dispatcher(s) as d:
            d.wait_control(offset)
            sent: dict[str, float] = {}
            for batch in range(20):  # a steady stream: 10 events every 0.25 s, 5 s
                events = [make_event("acme", batch * 10 + i) for i in range(10)]
                send_events(s, events)
                now = time.monotonic()
                sent.update({e.event_id: now for e in events})
                time.sleep(0.25)
            wait_for(lambda: healthy.ids() >= set(sent), timeout=90, what="healthy deliveries")
        arrived = {}
        for r in healthy.received:
            for e in r.envelopes:
                arrived.setdefault(e["id"], r.at)
        latencies = sorted(arrived[i] - sent[i] for i in sent)
        p99 = latencies[int(0.99 * (len(latencies) - 1))]
        p50 = latencies[len(latencies) // 2]
        print(f"healthy endpoint beside a hanging one: p50 {p50:.3f}s p99 {p99:.3f}s")
        assert p99 < 2.0
        assert all(r.stripe_ok and r.standard_ok for r in healthy.received)
    finally:
        stuck.hang = False
        stuck.stop()
        healthy.stop()


def test_gone_disables_at_once_and_continuous_failure_after_the_limit(settings):
    s = fast(settings, webhooks_disable_after_s=2)
    gone, failing = Receiver(status=410).start(), Receiver(status=500).start()
    try:
        g, _, _ = create_endpoint(s, "acme", gone.url)
        f, _, offset = create_endpoint(s, "acme", failing.url)
        with running_dispatcher(s) as d:
            d.wait_control(offset)
            send_events(s, [make_event("acme", 0)])
            control = d.service.control
            wait_for(
                lambda: (
                    (control.webhook_health(g.endpoint_id) or 0)
                    and control.webhook_health(g.endpoint_id).disabled_at
                ),
                timeout=60,
            )
            assert control.webhook_health(g.endpoint_id).disabled_reason == "gone"
            assert len(gone.received) == 1
            for i in range(1, 4):
                time.sleep(1.0)
                send_events(s, [make_event("acme", i)])
            wait_for(
                lambda: (
                    (control.webhook_health(f.endpoint_id) or 0)
                    and control.webhook_health(f.endpoint_id).disabled_at
                ),
                timeout=90,
            )
            health = control.webhook_health(f.endpoint_id)
            assert health.disabled_reason == "failing"
            assert (health.disabled_at - health.failing_since).total_seconds() >= 2
            count = len(failing.received)
            counters = d.service.dispatcher.counters
            skipped = counters[f.endpoint_id]["skipped"]
            send_events(s, [make_event("acme", 9)])
            # read, matched and not sent (pending retries, if any were left, are dropped)
            wait_for(lambda: counters[f.endpoint_id]["skipped"] > skipped, timeout=60)
            assert len(failing.received) == count  # nothing more is sent to a disabled endpoint
            assert counters[g.endpoint_id]["skipped"] >= 1  # the gone one missed it too
            metrics = d.service.metrics_text()
            shown = f'velora_webhook_skipped_total{{endpoint="{f.endpoint_id}"}} '
            assert f"{shown}{counters[f.endpoint_id]['skipped']}\n" in metrics
    finally:
        gone.stop()
        failing.stop()


def test_a_name_that_resolves_to_an_internal_address_is_refused_at_connect_time(settings):
    s = fast(settings)
    rx = Receiver().start()
    try:
        # Created while the name pointed elsewhere (the record is written directly, as the
        # API would have after its own check); now the name resolves to 127.0.0.1.
        _record, _, offset = create_endpoint(s, "acme", "https://rebind.example.com/hook")
        with running_dispatcher(s, resolve=lambda host, port: ["127.0.0.1"]) as d:
            d.wait_control(offset)
            send_events(s, [make_event("acme", 0)])
            first = attempts(s, 1)[0]
        assert first.outcome == "retry_scheduled" and first.error_class == "ssrf_refused"
        assert rx.received == []
    finally:
        rx.stop()

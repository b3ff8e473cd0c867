"""Attempt records gathered per loop turn: each caller waits for its own record, and a
failed append is retried by the callers whose records it did not queue (real broker;
the one fault is injected at the appender)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from kafka import KafkaConsumer
from kafka.errors import KafkaTimeoutError
from kafka.partitioner import murmur2

from ingest.appender import Appender
from schemas.codec import AvroCodec
from schemas.events import WebhookAttempt
from velora.topics import end_offsets
from webhooks import publisher as publisher_module
from webhooks.publisher import Publisher


def _attempt(i: int) -> WebhookAttempt:
    return WebhookAttempt(
        attempt_id=f"wa_{i:04d}",
        delivery_id=f"evt_{i:04d}",
        endpoint_id=f"we_{i % 7:02d}",
        tenant_id="acme",
        event_ids=(f"evt_{i:04d}",),
        event_type="member.viewed",
        attempt=1,
        attempted_at=datetime.now(UTC),
        status_code=200,
        latency_ms=1.0,
        outcome="delivered",
    )


def _stored(settings) -> dict[str, tuple[int, str]]:
    """attempt_id -> (partition, endpoint_id) of every record on the attempt log."""
    codec = AvroCodec()
    consumer = KafkaConsumer(
        settings.webhook_attempts_topic,
        bootstrap_servers=settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=2000,
    )
    out: dict[str, tuple[int, str]] = {}
    try:
        for rec in consumer:
            attempt = WebhookAttempt.from_avro(codec.decode(rec.value)[1])
            assert attempt.attempt_id not in out, "an attempt record was written twice"
            out[attempt.attempt_id] = (rec.partition, attempt.endpoint_id)
    finally:
        consumer.close()
    return out


def test_attempts_of_one_turn_are_acknowledged_each_and_a_failed_append_is_retried(
    settings, monkeypatch
) -> None:
    monkeypatch.setattr(publisher_module, "RETRY_S", 0.05)
    real = Appender.append_runs
    calls: list[int] = []

    def fails_once(self, records, out):  # queue the first half, then fail: a metadata timeout
        calls.append(len(records))
        if len(calls) == 1:
            real(self, records[: len(records) // 2], out)
            raise KafkaTimeoutError("injected")
        real(self, records, out)

    monkeypatch.setattr(Appender, "append_runs", fails_once)

    async def main() -> None:
        pub = Publisher(settings)
        try:
            await asyncio.gather(*(pub.publish_attempt(_attempt(i)) for i in range(60)))
        finally:
            pub.close()

    asyncio.run(main())
    assert calls[0] == 60  # one append for the whole turn
    assert sum(calls[1:]) == 30  # the callers of the unqueued half retried, the others not
    stored = _stored(settings)
    assert sorted(stored) == sorted(f"wa_{i:04d}" for i in range(60))
    partitions = sorted(end_offsets(settings, settings.webhook_attempts_topic))
    for partition, endpoint_id in stored.values():  # the Java client's partition for the key
        expected = (murmur2(endpoint_id.encode()) & 0x7FFFFFFF) % len(partitions)
        assert partition == partitions[expected]

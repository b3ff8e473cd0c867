"""ingest.loop_producer: audit records sent and acknowledged in the caller's event loop."""

from __future__ import annotations

import asyncio
import textwrap
import threading
import uuid
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import pytest
from kafka import KafkaAdminClient
from kafka.partitioner.default import murmur2

from ingest import Ack, AuditProducer, loop_producer
from ingest.loop_producer import RECONNECT_AFTER_S, LoopAuditProducer
from tests.test_producer import raw_event, read_topic, total
from velora.broker import free_port
from velora.errors import Unavailable, ValidationError
from velora.settings import Settings


def test_deliver_writes_the_record_ingest_writes_to_the_tenants_partition(
    settings: Settings,
) -> None:
    tenants = [f"tenant-{i}" for i in range(9)]

    async def main() -> list[Ack]:
        producer = LoopAuditProducer(settings, timeout=10.0)
        try:
            return [await producer.deliver(raw_event(i, tenant=t)) for i, t in enumerate(tenants)]
        finally:
            await producer.aclose()

    acks = asyncio.run(main())
    with AuditProducer(settings, timeout=10.0) as ingest:  # the same tenants through ingest
        ingested = [ingest.send(raw_event(i, tenant=t)).result(10) for i, t in enumerate(tenants)]
    records = {r["event_id"]: (p, o, k, r) for p, o, k, r in read_topic(settings)}
    assert len(records) == 2 * len(tenants)
    for tenant, ack, other in zip(tenants, acks, ingested, strict=True):
        partition, offset, key, record = records[ack.event_id]
        assert (partition, offset) == (ack.partition, ack.offset)
        assert key == tenant.encode() and record["tenant_id"] == tenant
        assert record["actor"]["id"] == f"u-{tenants.index(tenant)}"
        assert partition == other.partition  # where ingest's producer puts the tenant
        assert partition == (murmur2(tenant.encode()) & 0x7FFFFFFF) % settings.audit_partitions
    assert len({a.partition for a in acks}) > 1


def test_send_from_another_thread_resolves_once_acknowledged(settings: Settings) -> None:
    async def main() -> tuple[Ack, Ack]:
        producer = LoopAuditProducer(settings, timeout=10.0)
        producer.bind(asyncio.get_running_loop())
        futures: list[Future[Ack]] = []
        sender = threading.Thread(target=lambda: futures.append(producer.send(raw_event(1))))
        sender.start()
        await asyncio.to_thread(sender.join)
        ack = await asyncio.wrap_future(futures[0])
        on_loop = await asyncio.wrap_future(producer.send(raw_event(2)))  # the loop's thread too
        await asyncio.to_thread(producer.close)  # flushes, from another thread
        return ack, on_loop

    ack, on_loop = asyncio.run(main())
    found = {r["event_id"]: (p, o) for p, o, _k, r in read_topic(settings)}
    assert found == {ack.event_id: (ack.partition, ack.offset),
                     on_loop.event_id: (on_loop.partition, on_loop.offset)}  # fmt: skip


def test_an_invalid_event_is_refused_at_once_and_never_written(settings: Settings) -> None:
    async def main() -> None:
        producer = LoopAuditProducer(settings, timeout=10.0)
        producer.bind(asyncio.get_running_loop())
        try:
            with pytest.raises(ValidationError):
                await producer.deliver(raw_event(0, action="X"))
            with pytest.raises(ValidationError):
                producer.send(raw_event(1, tenant=""))
            await producer.deliver(raw_event(2))
        finally:
            await producer.aclose()

    asyncio.run(main())
    assert [r["actor"]["id"] for _p, _o, _k, r in read_topic(settings)] == ["u-2"]


def test_reserved_actions_need_system_mode(settings: Settings) -> None:
    event = raw_event(0, action="audit_log.viewed", source="velora.query_api")

    async def main() -> Ack:
        user = LoopAuditProducer(settings, timeout=10.0)
        with pytest.raises(ValidationError):
            await user.deliver(event)
        system = LoopAuditProducer(settings, timeout=10.0, system=True)
        try:
            return await system.deliver(event)
        finally:
            await system.aclose()

    ack = asyncio.run(main())
    assert [r["event_id"] for _p, _o, _k, r in read_topic(settings)] == [ack.event_id]


def test_unreachable_kafka_is_unavailable_and_not_retried_for_a_second(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = settings.with_overrides(kafka_bootstrap=f"127.0.0.1:{free_port()}")
    producer = LoopAuditProducer(closed, timeout=1.0)
    attempts: list[int] = []
    make = producer._new_kafka
    monkeypatch.setattr(producer, "_new_kafka", lambda: attempts.append(1) or make())
    now = [1000.0]  # the producer's clock for its back-off, moved by hand (no sleeping)
    monkeypatch.setattr(loop_producer, "time", SimpleNamespace(monotonic=lambda: now[0]))

    async def main() -> None:
        with pytest.raises(Unavailable) as first:
            await producer.deliver(raw_event(0))
        assert first.value.retry_after and first.value.retry_after > 0
        assert "127.0.0.1" not in str(first.value)  # no broker address in the message
        with pytest.raises(Unavailable):
            await producer.deliver(raw_event(1))
        assert len(attempts) == 1  # the second send failed at once, without connecting
        now[0] += RECONNECT_AFTER_S  # the second has passed: the next send tries again
        with pytest.raises(Unavailable):
            await producer.deliver(raw_event(2))
        assert len(attempts) == 2

    asyncio.run(main())


def test_a_missing_topic_is_unavailable_and_never_created(settings: Settings) -> None:
    missing = settings.with_overrides(topic_prefix=f"missing{uuid.uuid4().hex[:8]}")

    async def main() -> None:
        producer = LoopAuditProducer(missing, timeout=5.0)
        try:
            with pytest.raises(Unavailable, match="topic does not exist"):
                await producer.deliver(raw_event(0))
        finally:
            await producer.aclose()

    asyncio.run(main())
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        assert missing.audit_topic not in admin.list_topics()
    finally:
        admin.close()


def test_after_close_sends_are_unavailable(settings: Settings) -> None:
    async def main() -> None:
        producer = LoopAuditProducer(settings, timeout=10.0)
        await producer.deliver(raw_event(0))
        with pytest.raises(RuntimeError):
            producer.close()  # would block its own loop
        await producer.aclose()
        await producer.aclose()
        with pytest.raises(Unavailable):
            await producer.deliver(raw_event(1))

    asyncio.run(main())
    assert total(settings) == 1


def test_the_documented_sample_delivers_one_event(settings: Settings) -> None:
    """docs/ingest.md's sample, run as written inside a coroutine."""
    text = (Path(__file__).parent.parent / "docs" / "ingest.md").read_text()
    section = text.split("### In an event loop: `LoopAuditProducer`", 1)[1]
    sample = section.split("```python\n", 1)[1].split("```", 1)[0]
    body = textwrap.indent(sample, "    ")
    scope: dict = {}
    exec(f"async def sample(settings, event):\n{body}\n    return ack\n", scope)
    ack = asyncio.run(scope["sample"](settings, raw_event(7)))
    assert isinstance(ack, Ack)
    found = [(p, o, r["event_id"]) for p, o, _k, r in read_topic(settings)]
    assert found == [(ack.partition, ack.offset, ack.event_id)]

"""The ingest library against a real broker: acks, ids, keys, back-pressure, outages."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka import __version__ as kafka_version
from kafka.errors import KafkaTimeoutError
from kafka.partitioner.default import murmur2
from kafka.producer.future import FutureProduceResult
from kafka.structs import TopicPartition

import ingest
from ingest import Accepted, Ack, AuditProducer, Rejected, SendResult
from ingest.appender import Run, fast_path_supported
from ingest.avro_writer import compile_writer
from ingest.pipeline import Pipeline
from ingest.validation import to_record
from schemas import AUDIT_EVENT, Actor, AuditEvent, AvroCodec, Outcome
from velora.broker import free_port
from velora.errors import Unavailable, ValidationError, VeloraError
from velora.kafka_internals import PINNED_KAFKA_PYTHON
from velora.settings import Settings
from velora.topics import end_offsets

CODEC = AvroCodec()


def raw_event(i: int = 0, tenant: str = "acme", **changes: Any) -> dict[str, Any]:
    """A valid raw event."""
    ev: dict[str, Any] = {
        "tenant_id": tenant,
        "occurred_at": datetime.now(UTC).isoformat(),
        "action": "claim.viewed",
        "actor": {"type": "user", "id": f"u-{i}", "name": "Ana Ruiz", "ip": "10.0.0.1"},
        "targets": [{"type": "claim", "id": f"c-{i}"}],
        "outcome": {"result": "success"},
        "source": "claims-api",
        "metadata": {"i": str(i)},
    }
    ev.update(changes)
    return ev


def read_topic(settings: Settings) -> list[tuple[int, int, bytes | None, dict[str, Any]]]:
    """Every record of the audit topic, as ``(partition, offset, key, decoded value)``."""
    ends = end_offsets(settings, settings.audit_topic)
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        consumer_timeout_ms=10_000,
    )
    try:
        tps = [TopicPartition(settings.audit_topic, p) for p in ends]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out = []
        remaining = {p for p, end in ends.items() if end > 0}
        for msg in consumer:
            _, record = CODEC.decode(msg.value)
            out.append((msg.partition, msg.offset, msg.key, record))
            if msg.offset + 1 >= ends[msg.partition]:
                remaining.discard(msg.partition)
            if not remaining:
                break
        assert not remaining, f"partitions {remaining} not read to their end"
        return out
    finally:
        consumer.close()


def total(settings: Settings) -> int:
    return sum(end_offsets(settings, settings.audit_topic).values())


@pytest.fixture
def producer(settings: Settings) -> Iterator[AuditProducer]:
    with AuditProducer(settings, timeout=15.0) as p:
        yield p


def test_public_surface_is_pinned() -> None:
    assert sorted(ingest.__all__) == [
        "Accepted",
        "Ack",
        "AuditProducer",
        "Rejected",
        "SendResult",
        "TenantTransform",
        "identity",
        "validate_event",
    ]


def test_send_many_acks_valid_events_fills_ids_and_keeps_given_ones(
    settings: Settings, producer: AuditProducer
) -> None:
    given = str(uuid.uuid4())
    before = datetime.now(UTC)
    results = producer.send_many([raw_event(0), raw_event(1, event_id=given)])
    assert [type(r) for r in results] == [Accepted, Accepted]
    assert [r.index for r in results] == [0, 1]
    first, second = results
    assert isinstance(first, Accepted) and isinstance(second, Accepted)
    assert uuid.UUID(first.event_id).version == 7
    assert second.event_id == given

    records = {rec["event_id"]: (p, off, key, rec) for p, off, key, rec in read_topic(settings)}
    assert set(records) == {first.event_id, given}
    for r in (first, second):
        partition, offset, key, rec = records[r.event_id]
        assert (partition, offset) == (r.ack.partition, r.ack.offset)
        assert key == b"acme"
        assert before <= rec["received_at"] <= datetime.now(UTC)
        assert rec["actor"]["name"] == "Ana Ruiz"


def test_send_returns_a_future_resolving_to_the_ack(
    settings: Settings, producer: AuditProducer
) -> None:
    now = datetime.now(UTC)
    typed = AuditEvent(
        event_id="",
        tenant_id="acme",
        occurred_at=now,
        received_at=now,
        action="claim.viewed",
        actor=Actor("api_key", "k1"),
        outcome=Outcome("success"),
        source="claims-api",
        crud="read",
    )
    futures = [producer.send(typed), producer.send(raw_event(3))]
    assert all(isinstance(f, Future) for f in futures)
    acks = [f.result(timeout=15) for f in futures]
    assert all(isinstance(a, Ack) for a in acks)
    assert uuid.UUID(acks[0].event_id).version == 7
    by_id = {rec["event_id"]: (p, off, rec) for p, off, _, rec in read_topic(settings)}
    assert by_id[acks[0].event_id][:2] == (acks[0].partition, acks[0].offset)
    assert by_id[acks[0].event_id][2]["action"] == "claim.viewed"
    assert by_id[acks[1].event_id][:2] == (acks[1].partition, acks[1].offset)
    assert producer.pending == 0


def test_send_raises_validation_errors_at_once(producer: AuditProducer) -> None:
    with pytest.raises(ValidationError) as info:
        producer.send(raw_event(action="Nope"))
    assert info.value.details[0].field == "action"


def test_rejected_items_never_reach_the_topic(settings: Settings, producer: AuditProducer) -> None:
    batch = [
        raw_event(0),
        raw_event(1, action="BAD"),
        "not an object",
        raw_event(3, actor={"type": "user", "id": "u\x00"}),
        raw_event(4),
    ]
    results = producer.send_many(batch)
    assert [r.status for r in results] == [
        "accepted",
        "rejected",
        "rejected",
        "rejected",
        "accepted",
    ]
    rejected = [r for r in results if isinstance(r, Rejected)]
    assert [(r.index, r.errors[0].field) for r in rejected] == [
        (1, "action"),
        (2, "event"),
        (3, "actor.id"),
    ]
    ids = {rec["event_id"] for *_, rec in read_topic(settings)}
    assert ids == {r.event_id for r in results if isinstance(r, Accepted)}
    assert total(settings) == 2


def test_one_tenant_one_partition_as_the_java_client_would_choose(
    settings: Settings, producer: AuditProducer
) -> None:
    tenants = [f"tenant-{i}" for i in range(12)]
    results = producer.send_many([raw_event(i, tenant=tenants[i % 12]) for i in range(240)])
    assert all(isinstance(r, Accepted) for r in results)
    seen: dict[str, set[int]] = {}
    for partition, _, key, rec in read_topic(settings):
        assert key == rec["tenant_id"].encode()
        seen.setdefault(rec["tenant_id"], set()).add(partition)
    assert all(len(parts) == 1 for parts in seen.values())
    assert len({p for parts in seen.values() for p in parts}) > 1  # spread over partitions
    # The Java client's (and kafka-python's default) choice: murmur2(key) mod partitions.
    for tenant, parts in seen.items():
        assert parts == {(murmur2(tenant.encode()) & 0x7FFFFFFF) % settings.audit_partitions}


def test_fast_and_public_append_paths_write_the_same_records(settings: Settings) -> None:
    now = datetime.now(UTC)
    batch = [raw_event(i, tenant=f"t{i % 5}", received_at=now.isoformat()) for i in range(50)]
    placed: dict[bool, dict[str, tuple[int, dict[str, Any]]]] = {}
    for fast in (True, False):
        ids = [str(uuid.uuid4()) for _ in batch]
        with AuditProducer(settings, fast_append=fast, timeout=15) as p:
            assert p.send_many([dict(ev, event_id=i) for ev, i in zip(batch, ids, strict=True)])
        records = {rec["event_id"]: (part, rec) for part, _, _, rec in read_topic(settings)}
        placed[fast] = {
            str(n): (records[i][0], {**records[i][1], "event_id": None}) for n, i in enumerate(ids)
        }
    assert placed[True] == placed[False]
    assert total(settings) == 100


def test_the_fast_paths_are_taken_on_the_pinned_kafka_python(settings: Settings) -> None:
    kafka = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    try:
        assert kafka_version == PINNED_KAFKA_PYTHON
        assert fast_path_supported(kafka)
    finally:
        kafka.close()


def test_a_run_reads_its_offset_or_its_error_from_the_batch_future() -> None:
    # kafka-python completes a batch's future successfully even when the batch
    # failed or was aborted, with a function giving each record's error.
    tp = TopicPartition("audit", 3)
    seen: list[Any] = []

    ok = FutureProduceResult(tp)
    run = Run(ok, 3, 2, [5, 6], batch=True)
    run.on_result(lambda part, off: seen.append((part, off)), seen.append)
    assert not run.done
    ok.success((100, -1, None))
    assert run.done and run.wait(0) == 102
    assert seen == [(3, 102)]

    aborted = FutureProduceResult(tp)
    aborted.success((-1, -1, lambda index: KafkaTimeoutError(f"record {index} expired")))
    run = Run(aborted, 3, 2, [0], batch=True)
    with pytest.raises(KafkaTimeoutError, match="record 2 expired"):
        run.wait(0)
    run.on_result(lambda part, off: seen.append((part, off)), seen.append)
    assert isinstance(seen[-1], KafkaTimeoutError)

    pending = Run(FutureProduceResult(tp), 3, 0, [0], batch=True)
    with pytest.raises(KafkaTimeoutError):
        pending.wait(0.01)


@pytest.mark.parametrize("fast", [True, False], ids=["batch-runs", "public-send"])
def test_every_ack_names_its_records_place_across_many_batches_and_threads(
    settings: Settings, fast: bool
) -> None:
    # 2 KiB batches hold a few records each, so every partition's records span
    # many kafka-python batches; two threads append at once, and send() interleaves.
    tenants = [f"tenant-{i}" for i in range(7)]
    with AuditProducer(settings, fast_append=fast, batch_size=2048, timeout=15) as p:

        def batch(seed: int) -> list[SendResult]:
            events: list[dict[str, Any]] = [
                raw_event(i, tenant=tenants[(seed + i) % 7]) for i in range(300)
            ]
            events[17] = raw_event(17, action="Not An Action")
            return p.send_many(events)

        with ThreadPoolExecutor(2) as pool:
            batches = list(pool.map(batch, [0, 1]))
            single = p.send(raw_event(999, tenant="tenant-3")).result(timeout=15)
    acks = [r.ack for results in batches for r in results if isinstance(r, Accepted)]
    assert [isinstance(r, Rejected) for r in batches[0]].count(True) == 1
    assert len(acks) == 2 * 299
    placed = {rec["event_id"]: (part, off) for part, off, _, rec in read_topic(settings)}
    assert len(placed) == 2 * 299 + 1
    for ack in [*acks, single]:
        assert placed[ack.event_id] == (ack.partition, ack.offset)


def test_back_pressure_bounds_records_awaiting_acks(settings: Settings) -> None:
    # linger keeps records in the client's buffer, so nothing is acknowledged until flush.
    with AuditProducer(settings, max_pending=5, linger_ms=60_000, timeout=2.0) as p:
        futures = [p.send(raw_event(i)) for i in range(5)]
        assert p.pending == 5
        assert not any(f.done() for f in futures)
        blocked = p.send(raw_event(5))  # waits for buffer space, up to the timeout
        with pytest.raises(Unavailable) as info:
            blocked.result(timeout=10)
        assert "buffer full" in info.value.message
        assert info.value.retry_after
        p.flush(timeout=15)
        assert [f.result(timeout=15).event_id for f in futures]
        assert p.pending == 0
        assert p.send(raw_event(6)) is not None
        p.flush(timeout=15)
        assert p.pending == 0
    assert total(settings) == 6


def test_unavailable_when_kafka_is_unreachable(settings: Settings) -> None:
    closed = settings.with_overrides(kafka_bootstrap=f"127.0.0.1:{free_port()}")
    with AuditProducer(closed, timeout=1.0) as p:
        with pytest.raises(Unavailable) as info:
            p.send_many([raw_event(0)])
        assert info.value.retry_after and info.value.retry_after > 0
        with pytest.raises(Unavailable):
            p.send(raw_event(1)).result(timeout=10)
        # Validation still answers without Kafka: nothing to send, nothing to wait for.
        results = p.send_many([raw_event(2, action="X")])
        assert [r.status for r in results] == ["rejected"]


def test_a_missing_topic_is_unavailable_and_never_auto_created(settings: Settings) -> None:
    missing = settings.with_overrides(topic_prefix=f"missing{uuid.uuid4().hex[:8]}")
    with AuditProducer(missing, timeout=1.5) as p, pytest.raises(Unavailable):
        p.send_many([raw_event(0)])
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        assert missing.audit_topic not in admin.list_topics()
    finally:
        admin.close()


def test_close_is_idempotent_and_later_sends_are_unavailable(settings: Settings) -> None:
    p = AuditProducer(settings, timeout=5.0)
    assert p.send_many([raw_event(0)])[0].status == "accepted"
    p.close()
    p.close()
    with pytest.raises(Unavailable):
        p.send_many([raw_event(1)])


def test_transform_hook_rewrites_events_before_encoding(settings: Settings) -> None:
    def redact(ev: AuditEvent) -> AuditEvent:
        actor = Actor(ev.actor.type, ev.actor.id, name="tok_" + str(len(ev.actor.name or "")))
        return AuditEvent(**{**_fields(ev), "actor": actor})

    with AuditProducer(settings, transform=redact, timeout=15) as p:
        (result,) = p.send_many([raw_event(0)])
    assert isinstance(result, Accepted)
    ((_, _, _, rec),) = read_topic(settings)
    assert rec["actor"]["name"] == "tok_8"
    assert rec["event_id"] == result.event_id

    def rekey(ev: AuditEvent) -> AuditEvent:
        return AuditEvent(**{**_fields(ev), "tenant_id": "other"})

    with AuditProducer(settings, transform=rekey, timeout=15) as p, pytest.raises(VeloraError):
        p.send_many([raw_event(1)])


def _fields(ev: AuditEvent) -> dict[str, Any]:
    return {name: getattr(ev, name) for name in AuditEvent.__dataclass_fields__}


WRITER_CASES = [
    {},
    {"metadata": {}, "targets": [], "category": None},
    {"metadata": {f"k{i}": "ü" * i for i in range(50)}},
    {"targets": [{"type": "t", "id": str(i), "name": None if i % 2 else "n"} for i in range(50)]},
    {
        "actor": {
            "type": "user",
            "id": "東京-1",
            "name": "👩🏽‍⚕️" + "e\u0301" * 100,
            "user_agent": "x" * 1024,
        }
    },
    {"outcome": {"result": "denied", "reason": "شكرا"}, "crud": "delete"},
    {"occurred_at": "1970-01-01T00:00:00Z"},
]


@pytest.mark.parametrize("changes", WRITER_CASES)
def test_encoding_is_byte_identical_to_the_codec(changes: dict[str, Any]) -> None:
    now = datetime.now(UTC)
    record = to_record(raw_event(7, **changes), now)
    assert Pipeline().encode(record) == CODEC.encode(AUDIT_EVENT, record)
    name, decoded = CODEC.decode(Pipeline().encode(record))
    assert name == AUDIT_EVENT
    assert AuditEvent.from_avro(decoded).to_avro() == record


def test_generated_writer_matches_fastavro_and_falls_back_on_what_it_cannot_write() -> None:
    schema = CODEC.registry.latest(AUDIT_EVENT).parsed
    write = compile_writer(schema)
    assert write is not None
    record = to_record(raw_event(1), datetime.now(UTC))
    # 2**48 .. 2**55: zig-zagged, the edges of the writer's unrolled 8-byte varint
    for extreme in (0, 2**63 - 1, 2**31, 1, 2**48 - 1, 2**48, 2**55 - 1, 2**55, -(2**55)):
        record["occurred_at"] = extreme
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, record)
        assert write(record) == buf.getvalue()
    for bad in (-(2**63) - 1, 2**63, datetime.now(UTC), "1"):
        with pytest.raises((TypeError, KeyError, ValueError, AttributeError, OverflowError)):
            write({**record, "occurred_at": bad})
    with pytest.raises(KeyError):
        write({k: v for k, v in record.items() if k != "schema_version"})
    # The pipeline falls back to fastavro, which fills the field's default.
    shorter = {k: v for k, v in record.items() if k != "schema_version"}
    assert Pipeline().encode(shorter) == CODEC.encode(AUDIT_EVENT, shorter)
    unsupported = {"type": "record", "name": "F", "fields": [{"name": "f", "type": "bytes"}]}
    assert compile_writer(fastavro.parse_schema(unsupported)) is None


def test_oversized_events_are_rejected_per_item(producer: AuditProducer) -> None:
    huge = raw_event(0, metadata={f"k{i}": "v" * 500 for i in range(50)})
    huge["targets"] = [{"type": "t" * 64, "id": "i" * 256, "name": "n" * 256} for _ in range(40)]
    (result,) = producer.send_many([huge])
    assert isinstance(result, Rejected)
    assert result.errors[0].field == "event"
    assert "limit is 32768" in result.errors[0].reason


def test_future_timestamps_are_judged_against_send_time(producer: AuditProducer) -> None:
    soon = (datetime.now(UTC) + timedelta(hours=23)).isoformat()
    late = (datetime.now(UTC) + timedelta(hours=25)).isoformat()
    results = producer.send_many([raw_event(0, occurred_at=soon), raw_event(1, occurred_at=late)])
    assert [r.status for r in results] == ["accepted", "rejected"]

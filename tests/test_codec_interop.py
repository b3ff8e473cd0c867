"""Interop: codec messages read back from the real audit topic decode with Apache ``avro``.

Apache ``avro`` is an independent implementation of the spec. The header's
fingerprint is checked against CRC-64-AVRO of the parsing canonical form, both
computed here from the Avro specification rather than taken from fastavro.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import avro.io
import avro.schema
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from schemas.codec import HEADER_LEN, MAGIC, SCHEMA_DIR, AvroCodec
from schemas.events import Actor, AuditEvent, Outcome, Target
from tests.helpers import wait_for

# -- the Avro specification, independently ----------------------------------------

_EMPTY64 = 0xC15D213AA4D7A795
_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def _table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY64 & -(fp & 1))
        table.append(fp)
    return table


_TABLE = _table()


def crc64_avro(data: bytes) -> bytes:
    """The spec's 64-bit Rabin fingerprint, as the 8 little-endian bytes on the wire."""
    fp = _EMPTY64
    for byte in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ byte) & 0xFF]
    return fp.to_bytes(8, "little")


def canonical(schema: Any, namespace: str | None = None, seen: set[str] | None = None) -> str:
    """Parsing Canonical Form (spec: PRIMITIVES, FULLNAMES, STRIP, ORDER, WHITESPACE)."""
    seen = set() if seen is None else seen
    dump = json.dumps

    def full(name: str, ns: str | None) -> str:
        return name if "." in name or not ns else f"{ns}.{name}"

    if isinstance(schema, str):
        return dump(schema if schema in _PRIMITIVES else full(schema, namespace))
    if isinstance(schema, list):
        return "[" + ",".join(canonical(s, namespace, seen) for s in schema) + "]"
    kind = schema["type"]
    if kind in _PRIMITIVES:  # also drops logicalType: it is not relevant to parsing
        return dump(kind)
    if kind == "array":
        return '{"type":"array","items":' + canonical(schema["items"], namespace, seen) + "}"
    if kind == "map":
        return '{"type":"map","values":' + canonical(schema["values"], namespace, seen) + "}"
    if kind not in ("record", "enum", "fixed"):
        return canonical(kind, namespace, seen)
    name = full(schema["name"], schema.get("namespace", namespace))
    if name in seen:
        return dump(name)
    seen.add(name)
    inner_ns = name.rpartition(".")[0] or None
    out = f'{{"name":{dump(name)},"type":{dump(kind)}'
    if kind == "record":
        fields = (
            f'{{"name":{dump(f["name"])},"type":{canonical(f["type"], inner_ns, seen)}}}'
            for f in schema["fields"]
        )
        out += ',"fields":[' + ",".join(fields) + "]"
    elif kind == "enum":
        out += ',"symbols":' + dump(schema["symbols"], separators=(",", ":"))
    else:
        out += f',"size":{int(schema["size"])}'
    return out + "}"


# Apache Avro's cross-language vectors (share/test/data/schema-tests.txt): input
# schema, its canonical form, and the fingerprint published as a signed 64-bit int.
SPEC_VECTORS = [
    ('"null"', '"null"', 7195948357588979594),
    ('{"type":"null"}', '"null"', 7195948357588979594),
    ('"int"', '"int"', 8247732601305521295),
    ('"string"', '"string"', -8142146995180207161),
    (
        '{"type":"fixed","name":"foo","size":15}',
        '{"name":"foo","type":"fixed","size":15}',
        1756455273707447556,
    ),
    (
        '{"type":"record","name":"foo","fields":[{"name":"f1","type":"boolean"}]}',
        '{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"}]}',
        7843277075252814651,
    ),
]


@pytest.mark.parametrize(("schema", "form", "signed"), SPEC_VECTORS)
def test_reference_implementation_matches_the_spec_vectors(schema, form, signed):
    assert canonical(json.loads(schema)) == form
    assert int.from_bytes(crc64_avro(form.encode()), "little", signed=True) == signed


def test_fingerprints_are_crc64_avro_of_the_canonical_form():
    codec = AvroCodec()
    for sv in codec.registry:
        pcf = canonical(json.loads(sv.path.read_text(encoding="utf-8")))
        assert sv.fingerprint == crc64_avro(pcf.encode("utf-8")), sv.path.name
        # Apache avro agrees on both the form and the checksum of the canonical text.
        # (Its own canonical_form of the raw .avsc keeps {"type":"long"} for logical
        # types, which the spec's PRIMITIVES rule turns into "long"; hence the PCF input.)
        reparsed = avro.schema.parse(pcf)
        assert reparsed.canonical_form == pcf
        assert reparsed.fingerprint("CRC-64-AVRO") == sv.fingerprint


# -- through the real broker --------------------------------------------------------


def sample_events() -> list[AuditEvent]:
    """Events that exercise every field, empty and full, and edge timestamps."""
    t0 = datetime(2025, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)
    events = []
    for i in range(24):
        events.append(
            AuditEvent(
                event_id=f"0197{i:04x}-0000-7000-8000-{i:012x}",
                tenant_id=f"tenant-{i % 5}",
                occurred_at=t0 + timedelta(seconds=i, microseconds=i),
                received_at=t0 + timedelta(seconds=i, milliseconds=5),
                action=("claim.viewed", "patient.updated", "key.créée")[i % 3],
                crud=("create", "read", "update", "delete", "other")[i % 5],
                category=None if i % 2 else "claims",
                actor=Actor(
                    type=("user", "service", "api_key", "system")[i % 4],
                    id=f"actor-{i}",
                    name=None if i % 3 else "Zoë Ångström 🩺",
                    email=None if i % 4 else f"a{i}@example.com",
                    ip=None if i % 2 else "2001:db8::1",
                    user_agent=None if i % 5 else "curl/8.5",
                ),
                targets=tuple(Target(type="claim", id=f"c{j}", name=None) for j in range(i % 4)),
                outcome=Outcome(
                    result=("success", "failure", "denied", "unknown")[i % 4],
                    reason=None if i % 4 in (0, 3) else "policy",
                ),
                request_id=None if i % 3 else f"req-{i}",
                source="claims-service",
                metadata={} if i % 2 else {"k": "v" * i, "ünï": "çødé"},
            )
        )
    # Far from 1970 on both sides, and an input offset other than UTC.
    events.append(
        AuditEvent(
            event_id="edge-past",
            tenant_id="tenant-edge",
            occurred_at=datetime(1901, 12, 13, 20, 45, 52, 1, tzinfo=UTC),
            received_at=datetime(2262, 4, 11, 23, 47, 16, 854775, tzinfo=UTC),
            action="edge.case",
            actor=Actor(type="system", id="sys"),
            outcome=Outcome(),
            source="tests",
        )
    )
    events.append(
        AuditEvent(
            event_id="edge-offset",
            tenant_id="tenant-edge",
            occurred_at=datetime(2025, 1, 1, 9, 0, tzinfo=timezone(timedelta(hours=-5))),
            received_at=datetime(2025, 1, 1, 14, 0, 0, 1, tzinfo=UTC),
            action="edge.case",
            actor=Actor(type="system", id="sys"),
            outcome=Outcome(result="failure", reason="x"),
            source="tests",
        )
    )
    return events


def consume_all(bootstrap: str, topic: str, partitions: int, count: int) -> list[Any]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        got: list[Any] = []

        def drained() -> bool:
            for batch in consumer.poll(timeout_ms=500).values():
                got.extend(batch)
            return len(got) >= count

        wait_for(drained, timeout=30, what=f"{count} records on {topic}")
        return got
    finally:
        consumer.close()


def test_codec_messages_on_the_audit_topic_decode_with_apache_avro(settings):
    codec = AvroCodec()
    events = sample_events()
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    for event in events:
        value = codec.encode("AuditEvent", event.to_avro())
        producer.send(settings.audit_topic, key=event.tenant_id.encode(), value=value)
    producer.flush()
    producer.close()

    records = consume_all(
        settings.kafka_bootstrap, settings.audit_topic, settings.audit_partitions, len(events)
    )
    assert len(records) == len(events)

    writer = codec.registry.latest("AuditEvent")
    schema = avro.schema.parse((SCHEMA_DIR / "AuditEvent.v1.avsc").read_text(encoding="utf-8"))
    expected_fp = crc64_avro(canonical(json.loads(writer.path.read_text())).encode("utf-8"))
    by_id = {e.event_id: e for e in events}
    for message in records:
        value: bytes = message.value
        assert value[:2] == MAGIC
        assert value[2:HEADER_LEN] == expected_fp
        decoded = avro.io.DatumReader(schema).read(
            avro.io.BinaryDecoder(io.BytesIO(value[HEADER_LEN:]))
        )
        original = by_id[decoded["event_id"]]
        assert message.key == original.tenant_id.encode()
        # Every field, via the struct (timestamps compared as instants) ...
        assert AuditEvent.from_avro(decoded) == original
        # ... and the raw records of both implementations are identical.
        assert decoded == codec.decode(value)[1]
        assert decoded["occurred_at"].utcoffset() == timedelta(0)

    # Per-tenant order is log order: one tenant's events share a partition, in send order.
    for tenant in {e.tenant_id for e in events}:
        mine = [m for m in records if m.key == tenant.encode()]
        assert len({m.partition for m in mine}) == 1
        sent = [e.event_id for e in events if e.tenant_id == tenant]
        got = [codec.decode(m.value)[1]["event_id"] for m in sorted(mine, key=lambda m: m.offset)]
        assert got == sent


def test_apache_avro_messages_decode_with_the_codec():
    """The other direction: a body written by Apache avro, framed by hand, decodes."""
    codec = AvroCodec()
    schema = avro.schema.parse((SCHEMA_DIR / "AuditEvent.v1.avsc").read_text(encoding="utf-8"))
    fp = codec.registry.latest("AuditEvent").fingerprint
    for event in sample_events():
        record = event.to_avro()
        record["occurred_at"] = event.occurred_at
        record["received_at"] = event.received_at
        body = io.BytesIO()
        avro.io.DatumWriter(schema).write(record, avro.io.BinaryEncoder(body))
        name, decoded = codec.decode(MAGIC + fp + body.getvalue())
        assert name == "health.velora.audit.AuditEvent"
        assert AuditEvent.from_avro(decoded) == event
        assert codec.encode("AuditEvent", event.to_avro()) == MAGIC + fp + body.getvalue()

"""Schema evolution: a v2 reader reads v1 messages and a v1 reader reads v2 messages.

The v2 schema lives in ``tests/fixtures/evolution`` only (it adds one optional
field with a default); v1 there is a copy of the production ``AuditEvent.v1``.
Apache ``avro`` resolves the same messages and must agree with the codec.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import pytest

from schemas.codec import HEADER_LEN, SCHEMA_DIR, AvroCodec, SchemaRegistry
from tests.fixtures.records import audit_record
from velora.errors import DecodeError, EncodeError

FIXTURES = Path(__file__).parent / "fixtures" / "evolution"
NAME = "health.velora.audit.AuditEvent"


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry.load(FIXTURES)


@pytest.fixture(scope="module")
def codec(registry: SchemaRegistry) -> AvroCodec:
    return AvroCodec(registry)


def avro_resolve(data: bytes, writer_file: str, reader_file: str) -> dict[str, Any]:
    """Decode a message body with Apache avro, resolving writer to reader schema."""
    writer = avro.schema.parse((FIXTURES / writer_file).read_text(encoding="utf-8"))
    reader = avro.schema.parse((FIXTURES / reader_file).read_text(encoding="utf-8"))
    decoder = avro.io.BinaryDecoder(io.BytesIO(data[HEADER_LEN:]))
    return avro.io.DatumReader(writer, reader).read(decoder)


def test_fixture_v1_is_the_production_v1(registry):
    production = SchemaRegistry.load(SCHEMA_DIR).version(NAME, 1)
    assert registry.version(NAME, 1).fingerprint == production.fingerprint
    assert json.loads((FIXTURES / "AuditEvent.v1.avsc").read_text()) == production.raw


def test_v2_adds_exactly_one_optional_field_with_a_default(registry):
    v1 = [f["name"] for f in registry.version(NAME, 1).raw["fields"]]
    v2_fields = registry.version(NAME, 2).raw["fields"]
    added = [f for f in v2_fields if f["name"] not in v1]
    assert [f["name"] for f in v2_fields if f["name"] in v1] == v1
    assert len(added) == 1
    assert "default" in added[0] and added[0]["default"] is None
    assert registry.latest(NAME).version == 2
    assert registry.version(NAME, 1).fingerprint != registry.version(NAME, 2).fingerprint


def test_v2_reader_reads_v1_message_with_the_default(codec, registry):
    record = audit_record()
    data = codec.encode("AuditEvent", record, version=1)
    assert codec.writer_of(data) is registry.version(NAME, 1)

    name, decoded = codec.decode(data)  # default reader: the latest, v2
    assert name == NAME
    assert decoded == {**record, "trace_id": None}
    assert avro_resolve(data, "AuditEvent.v1.avsc", "AuditEvent.v2.avsc") == decoded


def test_v1_reader_reads_v2_message_without_the_new_field(codec, registry):
    record = audit_record(trace_id="4bf92f3577b34da6a3ce929d0e0e4736")
    data = codec.encode("AuditEvent", record)  # writers use the latest, v2
    assert codec.writer_of(data) is registry.version(NAME, 2)

    name, decoded = codec.decode(data, reader=registry.version(NAME, 1))
    assert name == NAME
    assert "trace_id" not in decoded
    assert decoded == {k: v for k, v in record.items() if k != "trace_id"}
    assert avro_resolve(data, "AuditEvent.v2.avsc", "AuditEvent.v1.avsc") == decoded


def test_v2_round_trip_keeps_the_new_field(codec):
    record = audit_record(trace_id="abc")
    assert codec.decode(codec.encode("AuditEvent", record))[1] == record
    assert codec.decode(codec.encode("AuditEvent", audit_record()))[1]["trace_id"] is None


def test_a_log_mixing_versions_reads_in_order(codec, registry):
    messages = [
        codec.encode("AuditEvent", audit_record(event_id=f"e{i}"), version=1 + i % 2)
        for i in range(10)
    ]
    latest = [codec.decode(m)[1] for m in messages]
    oldest = [codec.decode(m, reader=registry.version(NAME, 1))[1] for m in messages]
    assert [r["event_id"] for r in latest] == [f"e{i}" for i in range(10)]
    assert all(r["trace_id"] is None for r in latest)
    assert all("trace_id" not in r for r in oldest)


def test_v1_writer_cannot_write_the_v2_field(codec):
    with pytest.raises(EncodeError, match="unknown field"):
        codec.encode("AuditEvent", audit_record(trace_id="x"), version=1)


def test_a_registry_without_the_writer_schema_cannot_read(codec):
    """Schema files must be deployed to readers before any writer uses them."""
    v2_message = codec.encode("AuditEvent", audit_record())
    with pytest.raises(DecodeError, match="unknown schema fingerprint"):
        AvroCodec(SchemaRegistry.load(SCHEMA_DIR)).decode(v2_message)

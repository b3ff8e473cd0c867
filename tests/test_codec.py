"""The codec: single-object framing, round trips, and bad input as the project's own errors.

Every bad input must raise :class:`EncodeError` or :class:`DecodeError` (both
:class:`VeloraError`) with a message that names the field or the problem; no
``ValueError``, ``TypeError`` or fastavro exception may leak out.
"""

from __future__ import annotations

import copy
import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from schemas.codec import HEADER_LEN, MAGIC, SCHEMA_DIR, AvroCodec, SchemaRegistry
from tests.fixtures.records import T0, audit_record
from velora.errors import CodecError, DecodeError, EncodeError, SchemaError, VeloraError

# Every schema version ever written is immutable: its parsing canonical form,
# and so its fingerprint, must never change (old messages name it).
WRITTEN_FINGERPRINTS = {
    ("health.velora.audit.AuditEvent", 1): "fa16d75761c2faee",
    ("health.velora.control.ApiKey", 1): "0bd2ab4e203b5d7a",
    ("health.velora.control.ApiKey", 2): "29dc7e5a9a6a1d63",
    ("health.velora.control.TenantSettings", 1): "06734747d4f6334f",
    ("health.velora.control.TenantSettings", 2): "99ad39f3f740663e",
    ("health.velora.control.PhiKeyset", 1): "e436a0a2064937bc",
    ("health.velora.control.WebhookEndpoint", 1): "ba321f1f83898d33",
    ("health.velora.control.WebhookHealth", 1): "3a1062b2703c40a8",
    ("health.velora.webhooks.WebhookJob", 1): "305c23c8b0f3de11",
    ("health.velora.webhooks.WebhookAttempt", 1): "b03db1718ecd5fa4",
}


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec()


def raises_own(exc_type: type[CodecError], fn: Any, *args: Any, **kwargs: Any) -> CodecError:
    """Call ``fn`` and return the project error it raised; fail on anything else."""
    with pytest.raises(VeloraError) as info:
        fn(*args, **kwargs)
    exc = info.value
    assert isinstance(exc, exc_type), f"{type(exc).__name__}: {exc}"
    assert not isinstance(exc, ValueError | TypeError | KeyError)
    assert exc.__cause__ is None or isinstance(exc.__cause__, VeloraError)
    return exc


# -- framing and round trips ------------------------------------------------------


def test_header_is_magic_and_writer_fingerprint(codec):
    data = codec.encode("AuditEvent", audit_record())
    assert data[:2] == MAGIC == b"\xc3\x01"
    sv = codec.registry.latest("AuditEvent")
    assert data[2:HEADER_LEN] == sv.fingerprint
    assert codec.writer_of(data) is sv


def test_round_trip_keeps_every_field(codec):
    record = audit_record()
    name, decoded = codec.decode(codec.encode("AuditEvent", record))
    assert name == "health.velora.audit.AuditEvent"
    assert decoded == record
    assert decoded["occurred_at"].utcoffset() == timedelta(0)


def test_defaults_fill_omitted_optional_fields(codec):
    record = audit_record()
    for optional in ("crud", "category", "targets", "request_id", "metadata", "schema_version"):
        del record[optional]
    del record["outcome"]["result"]
    _, decoded = codec.decode(codec.encode("AuditEvent", record))
    assert decoded["crud"] == "other"
    assert decoded["outcome"]["result"] == "unknown"
    assert decoded["category"] is None and decoded["request_id"] is None
    assert decoded["targets"] == [] and decoded["metadata"] == {}
    assert decoded["schema_version"] == 1


def test_non_utc_offset_is_stored_as_the_same_instant(codec):
    plus_two = T0.astimezone(timezone(timedelta(hours=2)))
    _, decoded = codec.decode(codec.encode("AuditEvent", audit_record(occurred_at=plus_two)))
    assert decoded["occurred_at"] == T0
    assert decoded["occurred_at"].utcoffset() == timedelta(0)


def test_decode_accepts_bytearray_and_memoryview(codec):
    data = codec.encode("AuditEvent", audit_record())
    assert codec.decode(bytearray(data)) == codec.decode(memoryview(data)) == codec.decode(data)


@pytest.mark.parametrize(("name", "version"), sorted(WRITTEN_FINGERPRINTS))
def test_written_schema_versions_never_change(codec, name, version):
    assert (
        codec.registry.version(name, version).fingerprint.hex()
        == (WRITTEN_FINGERPRINTS[(name, version)])
    )


def test_every_schema_file_is_pinned():
    found = {
        (sv.full_name, sv.version) for sv in SchemaRegistry.load(SCHEMA_DIR)
    }  # a new version must be added to WRITTEN_FINGERPRINTS when it is first written
    assert found == set(WRITTEN_FINGERPRINTS)


# -- bad input to encode ----------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (lambda r: r.update(event_id=7), "event_id", "expected string, got int"),
        (lambda r: r["actor"].update(id=5), "Actor.id", "expected string, got int"),
        (lambda r: r["targets"][1].update(name=3), "Target.name", "null or string, got int"),
        (lambda r: r.update(targets="claim"), "targets", "expected array, got str"),
        (lambda r: r.update(actor=None), "actor", "expected record, got NoneType"),
        (lambda r: r["metadata"].update(count=1), "metadata", "expected string, got int"),
        (lambda r: r.update(occurred_at="2025-01-01"), "occurred_at", "timestamp-micros"),
        (lambda r: r.update(crud="destroy"), "crud", "one of create, read, update"),
        (lambda r: r["outcome"].update(result="maybe"), "Outcome.result", "one of success"),
        (lambda r: r.update(schema_version="1"), "schema_version", "expected int, got str"),
    ],
)
def test_wrong_types_name_the_field(codec, change, field, words):
    record = audit_record()
    change(record)
    exc = raises_own(EncodeError, codec.encode, "AuditEvent", record)
    assert field in str(exc) and words in str(exc)
    assert any(field in d.field for d in exc.details)


def test_error_messages_do_not_echo_values(codec):
    secretish = "Jane Doe, DOB 1970-01-01"
    exc = raises_own(
        EncodeError, codec.encode, "AuditEvent", audit_record(schema_version=secretish)
    )
    assert secretish not in str(exc)
    assert all(secretish not in d.reason for d in exc.details)


@pytest.mark.parametrize(
    ("drop", "shown"),
    [
        (lambda r: r.pop("tenant_id"), "tenant_id"),
        (lambda r: r.pop("source"), "source"),
        (lambda r: r["actor"].pop("id"), "actor.id"),
        (lambda r: r["targets"][1].pop("type"), "targets[1].type"),
    ],
)
def test_missing_required_field_is_named(codec, drop, shown):
    record = audit_record()
    drop(record)
    exc = raises_own(EncodeError, codec.encode, "AuditEvent", record)
    assert "missing required field" in str(exc) and shown in str(exc)
    assert [d.field for d in exc.details] == [shown]


def test_unknown_field_is_rejected_not_dropped(codec):
    exc = raises_own(EncodeError, codec.encode, "AuditEvent", audit_record(tenant="typo"))
    assert "unknown field" in str(exc) and "tenant" in str(exc)
    record = audit_record()
    record["actor"]["mail"] = "x@example.com"
    assert "actor.mail" in str(raises_own(EncodeError, codec.encode, "AuditEvent", record))


@pytest.mark.parametrize("path", [("occurred_at",), ("received_at",)])
def test_naive_datetime_is_rejected(codec, path):
    exc = raises_own(
        EncodeError, codec.encode, "AuditEvent", audit_record(**{path[0]: T0.replace(tzinfo=None)})
    )
    assert f"{path[0]} is a naive datetime" in str(exc)
    assert [d.field for d in exc.details] == [path[0]]


def test_naive_optional_timestamp_in_control_record_is_rejected(codec):
    key = {
        "key_id": "0a1b2c3d",
        "tenant_id": "t",
        "scopes": ["audit:read"],
        "secret_hash": "00" * 32,
        "created_at": T0,
        "updated_at": T0,
        "expires_at": datetime(2030, 1, 1),  # noqa: DTZ001 - the point of the test
    }
    exc = raises_own(EncodeError, codec.encode, "ApiKey", key)
    assert "expires_at is a naive datetime" in str(exc)


@pytest.mark.parametrize("value", [2**31, -(2**31) - 1, 2**40])
def test_int_out_of_32_bit_range_is_rejected(codec, value):
    exc = raises_own(EncodeError, codec.encode, "AuditEvent", audit_record(schema_version=value))
    assert "schema_version does not fit an Avro int" in str(exc)


def test_int_range_edges_are_accepted(codec):
    for value in (2**31 - 1, -(2**31)):
        _, decoded = codec.decode(codec.encode("AuditEvent", audit_record(schema_version=value)))
        assert decoded["schema_version"] == value


@pytest.mark.parametrize("record", [None, [("event_id", "e")], "event", b"\xc3\x01"])
def test_non_mapping_record(codec, record):
    exc = raises_own(EncodeError, codec.encode, "AuditEvent", record)
    assert "must be a mapping" in str(exc)


def test_unknown_schema_name_is_a_schema_error(codec):
    with pytest.raises(SchemaError, match="unknown schema 'Nope'"):
        codec.encode("Nope", audit_record())


# -- bad input to decode ----------------------------------------------------------


def test_unknown_fingerprint(codec):
    data = codec.encode("AuditEvent", audit_record())
    exc = raises_own(DecodeError, codec.decode, MAGIC + b"\x00" * 8 + data[HEADER_LEN:])
    assert "unknown schema fingerprint 0000000000000000" in str(exc)


def test_wrong_magic(codec):
    data = codec.encode("AuditEvent", audit_record())
    exc = raises_own(DecodeError, codec.decode, b"\x00\x01" + data[2:])
    assert "C3 01" in str(exc)


def test_shorter_than_header(codec):
    exc = raises_own(DecodeError, codec.decode, MAGIC + b"\x01\x02")
    assert "4 bytes, shorter than the 10-byte header" in str(exc)


def test_truncated_body(codec):
    data = codec.encode("AuditEvent", audit_record())
    exc = raises_own(DecodeError, codec.decode, data[:-5])
    assert "corrupt health.velora.audit.AuditEvent body" in str(exc)


def test_trailing_garbage(codec):
    data = codec.encode("AuditEvent", audit_record())
    exc = raises_own(DecodeError, codec.decode, data + b"\x00\x00")
    assert "2 trailing bytes" in str(exc)


@pytest.mark.parametrize("value", [None, "c301", 12, [0xC3, 0x01]])
def test_non_bytes_input(codec, value):
    exc = raises_own(DecodeError, codec.decode, value)
    assert "expected bytes" in str(exc)


def test_reader_of_another_schema(codec):
    data = codec.encode("AuditEvent", audit_record())
    exc = raises_own(DecodeError, codec.decode, data, reader="TenantSettings")
    assert "not health.velora.control.TenantSettings" in str(exc)


def test_every_truncation_raises_decode_error(codec):
    data = codec.encode("AuditEvent", audit_record())
    for length in range(len(data)):
        raises_own(DecodeError, codec.decode, data[:length])


def test_corrupted_bodies_decode_or_raise_decode_error(codec):
    """A seeded fuzz: flipped, dropped and inserted bytes never leak another exception."""
    data = codec.encode("AuditEvent", audit_record())
    rng = random.Random(20250314)
    outcomes = {"decoded": 0, "rejected": 0}
    for _ in range(3000):
        mutated = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            pos = rng.randrange(HEADER_LEN, len(mutated))
            op = rng.random()
            if op < 0.6:
                mutated[pos] = rng.randrange(256)
            elif op < 0.8:
                del mutated[pos]
            else:
                mutated.insert(pos, rng.randrange(256))
        try:
            codec.decode(bytes(mutated))
            outcomes["decoded"] += 1
        except DecodeError:
            outcomes["rejected"] += 1
    assert outcomes["rejected"] > 1000
    assert sum(outcomes.values()) == 3000


# -- the registry -----------------------------------------------------------------


def _write(folder: Path, name: str, schema: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(schema), encoding="utf-8")


SMALL = {
    "type": "record",
    "name": "Thing",
    "namespace": "t",
    "fields": [{"name": "a", "type": "int"}],
}


def test_registry_rejects_badly_named_files(tmp_path):
    _write(tmp_path, "Thing.avsc", SMALL)
    with pytest.raises(SchemaError, match=r"must be named <Name>\.v<N>\.avsc"):
        SchemaRegistry.load(tmp_path)


def test_registry_rejects_a_file_name_that_does_not_match_the_record(tmp_path):
    _write(tmp_path, "Other.v1.avsc", SMALL)
    with pytest.raises(SchemaError, match=r"does not match record t\.Thing"):
        SchemaRegistry.load(tmp_path)


def test_registry_rejects_two_identical_versions(tmp_path):
    _write(tmp_path, "Thing.v1.avsc", SMALL)
    _write(tmp_path, "Thing.v2.avsc", {**SMALL, "doc": "only the doc differs"})
    with pytest.raises(SchemaError, match="identical"):
        SchemaRegistry.load(tmp_path)


def test_registry_rejects_invalid_avro(tmp_path):
    _write(tmp_path, "Thing.v1.avsc", {**SMALL, "fields": [{"name": "a", "type": "integer"}]})
    with pytest.raises(SchemaError, match=r"Thing\.v1\.avsc"):
        SchemaRegistry.load(tmp_path)


def test_registry_rejects_an_empty_folder(tmp_path):
    with pytest.raises(SchemaError, match=r"no \.avsc files"):
        SchemaRegistry.load(tmp_path)


def test_encode_does_not_mutate_the_record(codec):
    record = audit_record()
    before = copy.deepcopy(record)
    codec.encode("AuditEvent", record)
    assert record == before

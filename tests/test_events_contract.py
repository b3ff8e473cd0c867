"""The typed structs in ``schemas.events`` stay in step with the latest ``.avsc``.

For every struct and its Avro record: the same field names, the same optionality
(a dataclass default exactly where the schema has a default, with equal values),
matching types and nullability, the same enum symbols; and a struct survives
``to_avro`` -> codec -> ``from_avro`` unchanged.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas import events
from schemas.codec import AvroCodec
from schemas.events import (
    Actor,
    ApiKey,
    AuditEvent,
    Outcome,
    PhiKeyset,
    Target,
    TenantSettings,
    WebhookAttempt,
    WebhookEndpoint,
    WebhookHealth,
    WebhookJob,
)
from velora.errors import EncodeError

CODEC = AvroCodec()


def _named_records(schema: Any, out: dict[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Every record defined inside ``schema``, by short name."""
    if isinstance(schema, list):
        for s in schema:
            _named_records(s, out)
    elif isinstance(schema, Mapping):
        if schema.get("type") == "record":
            out[schema["name"].rsplit(".", 1)[-1]] = schema
            for f in schema["fields"]:
                _named_records(f["type"], out)
        for key in ("items", "values"):
            if key in schema:
                _named_records(schema[key], out)
        if isinstance(schema.get("type"), Mapping | list):
            _named_records(schema["type"], out)
    return out


RECORDS: dict[str, Mapping[str, Any]] = {}
SCHEMA_NAMES = (
    "AuditEvent",
    "ApiKey",
    "TenantSettings",
    "PhiKeyset",
    "WebhookEndpoint",
    "WebhookHealth",
    "WebhookJob",
    "WebhookAttempt",
)
for _name in SCHEMA_NAMES:
    _named_records(CODEC.registry.latest(_name).raw, RECORDS)

STRUCTS: dict[str, type] = {
    "AuditEvent": AuditEvent,
    "Actor": Actor,
    "Target": Target,
    "Outcome": Outcome,
    "ApiKey": ApiKey,
    "TenantSettings": TenantSettings,
    "PhiKeyset": PhiKeyset,
    "WebhookEndpoint": WebhookEndpoint,
    "WebhookHealth": WebhookHealth,
    "WebhookJob": WebhookJob,
    "WebhookAttempt": WebhookAttempt,
}


def python_type(avro_type: Any) -> Any:
    """The annotation a struct field must carry for ``avro_type``."""
    if isinstance(avro_type, list):
        branches = [python_type(t) for t in avro_type if t != "null"]
        assert len(branches) == 1, f"only [null, T] unions are mapped: {avro_type}"
        return branches[0] | None if "null" in avro_type else branches[0]
    if isinstance(avro_type, str):
        if avro_type in STRUCTS:
            return STRUCTS[avro_type]
        return {
            "string": str,
            "int": int,
            "long": int,
            "boolean": bool,
            "double": float,
            "bytes": bytes,
        }[avro_type]
    if str(avro_type.get("logicalType", "")).startswith("timestamp"):
        return datetime
    kind = avro_type["type"]
    if kind == "enum":
        return str
    if kind == "record":
        return STRUCTS[avro_type["name"].rsplit(".", 1)[-1]]
    if kind == "array":
        return tuple[python_type(avro_type["items"]), ...]
    if kind == "map":
        return Mapping[str, python_type(avro_type["values"])]
    return python_type(kind)


def struct_default(f: dataclasses.Field[Any]) -> Any:
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Mapping):
        return dict(value)
    return value


def test_every_record_in_the_schemas_has_a_struct():
    assert set(RECORDS) == set(STRUCTS)


@pytest.mark.parametrize("name", sorted(STRUCTS))
def test_field_names_match(name):
    avsc = [f["name"] for f in RECORDS[name]["fields"]]
    struct = [f.name for f in dataclasses.fields(STRUCTS[name])]
    assert set(struct) == set(avsc)
    assert len(struct) == len(avsc)


@pytest.mark.parametrize("name", sorted(STRUCTS))
def test_optionality_and_defaults_match(name):
    avsc = {f["name"]: f for f in RECORDS[name]["fields"]}
    for f in dataclasses.fields(STRUCTS[name]):
        has_default = (
            f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        )
        assert has_default == ("default" in avsc[f.name]), f"{name}.{f.name}"
        if has_default:
            assert struct_default(f) == avsc[f.name]["default"], f"{name}.{f.name}"


@pytest.mark.parametrize("name", sorted(STRUCTS))
def test_types_and_nullability_match(name):
    hints = typing.get_type_hints(STRUCTS[name])
    for f in RECORDS[name]["fields"]:
        assert hints[f["name"]] == python_type(f["type"]), f"{name}.{f['name']}"


@pytest.mark.parametrize(
    ("constant", "record", "field"),
    [
        (events.CRUD, "AuditEvent", "crud"),
        (events.OUTCOME_RESULTS, "Outcome", "result"),
        (events.PHI_MODES, "TenantSettings", "phi_mode"),
        (events.WEBHOOK_FORMATS, "WebhookEndpoint", "format"),
        (events.WEBHOOK_TRIGGERS, "WebhookJob", "trigger"),
        (events.WEBHOOK_TRIGGERS, "WebhookAttempt", "trigger"),
        (events.WEBHOOK_OUTCOMES, "WebhookAttempt", "outcome"),
    ],
)
def test_enum_constants_match_the_symbols(constant, record, field):
    (avro_field,) = [f for f in RECORDS[record]["fields"] if f["name"] == field]
    assert list(constant) == avro_field["type"]["symbols"]


def test_struct_names_are_the_schema_full_names():
    for full_name, struct in events.STRUCTS.items():
        assert CODEC.registry.latest(full_name).full_name == full_name
        assert STRUCTS[full_name.rsplit(".", 1)[-1]] is struct


# -- round trips ------------------------------------------------------------------

T0 = datetime(2025, 2, 3, 4, 5, 6, 789012, tzinfo=UTC)

FULL_EVENT = AuditEvent(
    event_id="0194c0de-0000-7000-8000-000000000001",
    tenant_id="tenant-a",
    occurred_at=T0,
    received_at=T0 + timedelta(milliseconds=1),
    action="claim.viewed",
    crud="read",
    category="claims",
    actor=Actor(
        type="user", id="u1", name="Ana", email="ana@example.com", ip="::1", user_agent="x"
    ),
    targets=(Target(type="claim", id="c1", name="C1"), Target(type="file", id="f1")),
    outcome=Outcome(result="denied", reason="scope"),
    request_id="req-1",
    source="claims",
    metadata={"k": "v"},
    schema_version=1,
)
MINIMAL_EVENT = AuditEvent(
    event_id="e",
    tenant_id="t",
    occurred_at=T0,
    received_at=T0,
    action="a",
    actor=Actor(type="system", id="s"),
    outcome=Outcome(),
    source="s",
)
KEYS = [
    ApiKey(
        key_id="0a1b2c3d",
        tenant_id="tenant-a",
        scopes=("audit:read", "keys:write"),
        secret_hash="ab" * 32,
        created_at=T0,
        updated_at=T0 + timedelta(days=1),
        name="ci",
        expires_at=T0 + timedelta(days=90),
        revoked_at=T0 + timedelta(days=2),
        rotated_to="99aa88bb",
    ),
    ApiKey(
        key_id="0a1b2c3e",
        tenant_id="tenant-a",
        scopes=(),
        secret_hash="cd" * 32,
        created_at=T0,
        updated_at=T0,
    ),
]
SETTINGS = [
    *(TenantSettings(tenant_id="t", updated_at=T0, phi_mode=m) for m in events.PHI_MODES),
    TenantSettings("t", T0, "server", phi_metadata_keys=("mrn", "dob")),
    PhiKeyset(tenant_id="t", wrapped="v1.abc", primary_kid="0a1b2c3d", updated_at=T0),
]
WEBHOOK_STRUCTS = [
    WebhookEndpoint(
        endpoint_id="we_" + "a" * 24,
        tenant_id="tenant-a",
        url="https://siem.example.com/hook",
        secret_enc="v1:abc",
        created_at=T0,
        updated_at=T0 + timedelta(seconds=1),
        description="SIEM",
        event_types=("claim.*", "member.viewed"),
        format="splunk_hec",
        previous_secret_enc="v1:def",
        previous_secret_expires_at=T0 + timedelta(days=1),
        splunk_token_enc="v1:ghi",
        enabled=False,
    ),
    WebhookEndpoint(
        endpoint_id="we_" + "b" * 24,
        tenant_id="t",
        url="https://x.example.com",
        secret_enc="v1:x",
        created_at=T0,
        updated_at=T0,
    ),
    WebhookHealth(endpoint_id="we_1", tenant_id="t", updated_at=T0),
    WebhookHealth(
        endpoint_id="we_1",
        tenant_id="t",
        updated_at=T0,
        failing_since=T0 - timedelta(days=5),
        disabled_at=T0,
        disabled_reason="failing",
    ),
    WebhookJob(
        delivery_id="d1",
        endpoint_id="we_1",
        tenant_id="t",
        attempt=3,
        due_at=T0 + timedelta(minutes=5),
        created_at=T0,
        trigger="retry",
        deferrals=2,
        events=(b"\xc3\x01abc", b""),
    ),
    WebhookAttempt(
        attempt_id="0194c0de-0000-7000-8000-000000000009",
        delivery_id="d1",
        endpoint_id="we_1",
        tenant_id="t",
        event_ids=("e1", "e2"),
        event_type="velora.batch",
        attempt=2,
        attempted_at=T0,
        trigger="replay",
        status_code=503,
        latency_ms=12.5,
        outcome="retry_scheduled",
        error_class="http_503",
        next_attempt_at=T0 + timedelta(seconds=5),
    ),
]


@pytest.mark.parametrize(
    "struct",
    [FULL_EVENT, MINIMAL_EVENT, *KEYS, *SETTINGS, *WEBHOOK_STRUCTS],
    ids=lambda s: type(s).__name__,
)
def test_struct_round_trips_through_the_codec(struct):
    schema = type(struct).__name__
    record = struct.to_avro()
    assert set(record) == {f["name"] for f in RECORDS[schema]["fields"]}
    name, decoded = CODEC.decode(CODEC.encode(schema, record))
    assert events.STRUCTS[name] is type(struct)
    back = type(struct).from_avro(decoded)
    assert back == struct
    for f in dataclasses.fields(back):
        value = getattr(back, f.name)
        if isinstance(value, datetime):
            assert value.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "make",
    [
        lambda: dataclasses.replace(FULL_EVENT, occurred_at=T0.replace(tzinfo=None)).to_avro(),
        lambda: dataclasses.replace(KEYS[0], expires_at=T0.replace(tzinfo=None)).to_avro(),
        lambda: dataclasses.replace(SETTINGS[0], updated_at=T0.replace(tzinfo=None)).to_avro(),
        lambda: dataclasses.replace(WEBHOOK_STRUCTS[4], due_at=T0.replace(tzinfo=None)).to_avro(),  # type: ignore[arg-type]
    ],
)
def test_to_avro_refuses_naive_datetimes(make):
    with pytest.raises(EncodeError, match="naive datetime"):
        make()


def test_structs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        FULL_EVENT.tenant_id = "other"  # type: ignore[misc]


# -- ApiKey v1 -> v2 -------------------------------------------------------------------


def test_v1_api_key_records_read_as_v2_with_the_defaults():
    """Keys written before v2 keep working: the legacy pepper, live, no allow-list."""
    v1 = CODEC.registry.version("ApiKey", 1)
    assert CODEC.registry.latest("ApiKey").version == 2
    record = {
        k: v for k, v in KEYS[0].to_avro().items() if k in {f["name"] for f in v1.raw["fields"]}
    }
    old = CODEC.encode("ApiKey", record, version=1)
    _name, decoded = CODEC.decode(old)
    key = ApiKey.from_avro(decoded)
    assert key == dataclasses.replace(KEYS[0], pepper_id=None, environment="live", allowed_ips=())


def test_v2_api_key_records_read_by_a_v1_reader_drop_the_new_fields():
    v1 = CODEC.registry.version("ApiKey", 1)
    staged = dataclasses.replace(
        KEYS[0], pepper_id="p2", environment="staging", allowed_ips=("10.0.0.0/8",)
    )
    _, decoded = CODEC.decode(CODEC.encode("ApiKey", staged.to_avro()), reader=v1)
    assert set(decoded) == {f["name"] for f in v1.raw["fields"]}
    assert decoded["key_id"] == staged.key_id and decoded["revoked_at"] == staged.revoked_at

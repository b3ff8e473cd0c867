"""Every validation rule of ingest (``ingest.validation``), one event at a time; no broker."""

from __future__ import annotations

import copy
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from ingest import validate_event
from ingest.validation import (
    MAX_EVENT_BYTES,
    check_encoded_size,
    event_as_mapping,
    to_record,
)
from schemas import Actor, AuditEvent, Outcome, Target
from velora.errors import ValidationError

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def event(**changes: Any) -> dict[str, Any]:
    """A valid raw event; keyword arguments replace (or, with None, remove) fields."""
    raw: dict[str, Any] = {
        "tenant_id": "acme-health",
        "occurred_at": "2025-06-01T11:59:00.250000+00:00",
        "action": "claim.viewed",
        "crud": "read",
        "category": "claims",
        "actor": {
            "type": "user",
            "id": "u-17",
            "name": "Dr. Ana Ruiz",
            "email": "ana@example.org",
            "ip": "10.0.0.7",
            "user_agent": "Mozilla/5.0",
        },
        "targets": [{"type": "claim", "id": "c-1", "name": "Claim 1"}],
        "outcome": {"result": "success", "reason": None},
        "request_id": "req-1",
        "source": "claims-api",
        "metadata": {"page": "2"},
    }
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    return raw


def nested(path: str, value: Any) -> dict[str, Any]:
    """A valid event with one nested field (``actor.ip``, ``targets.0.id``) replaced."""
    raw = copy.deepcopy(event())
    *parents, last = path.split(".")
    node: Any = raw
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    node[int(last) if last.isdigit() else last] = value
    return raw


def errors_of(raw: Any) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        validate_event(raw, NOW)
    return {d.field: d.reason for d in info.value.details}


def test_a_valid_event_becomes_a_typed_audit_event() -> None:
    ev = validate_event(event(), NOW)
    assert isinstance(ev, AuditEvent)
    assert ev.tenant_id == "acme-health"
    assert ev.occurred_at == datetime(2025, 6, 1, 11, 59, 0, 250000, tzinfo=UTC)
    assert ev.actor == Actor(
        "user", "u-17", "Dr. Ana Ruiz", "ana@example.org", "10.0.0.7", "Mozilla/5.0"
    )
    assert ev.targets == (Target("claim", "c-1", "Claim 1"),)
    assert ev.outcome == Outcome("success", None)
    assert ev.metadata == {"page": "2"}


def test_missing_event_id_becomes_a_uuid7_and_received_at_becomes_now() -> None:
    ev = validate_event(event(), NOW)
    assert uuid.UUID(ev.event_id).version == 7
    assert str(uuid.UUID(ev.event_id)) == ev.event_id
    assert ev.received_at == NOW
    other = validate_event(event(), NOW)
    assert other.event_id != ev.event_id


def test_a_given_event_id_and_received_at_are_kept_as_is() -> None:
    given = "0190a5c4-7d2e-7b1f-8a3c-1234567890ab"
    ev = validate_event(event(event_id=given, received_at="2025-06-01T11:59:30Z"), NOW)
    assert ev.event_id == given
    assert ev.received_at == datetime(2025, 6, 1, 11, 59, 30, tzinfo=UTC)


def test_defaults_for_optional_fields() -> None:
    ev = validate_event(
        event(crud=None, category=None, targets=None, outcome=None, metadata=None), NOW
    )
    assert (ev.crud, ev.category, ev.targets, ev.metadata) == ("other", None, (), {})
    assert ev.outcome == Outcome("unknown", None)


@pytest.mark.parametrize("field", ["tenant_id", "occurred_at", "action", "actor", "source"])
def test_required_fields(field: str) -> None:
    assert errors_of(event(**{field: None})) == {field: "is required"}


@pytest.mark.parametrize("path", ["actor.type", "actor.id", "targets.0.type", "targets.0.id"])
def test_required_nested_fields(path: str) -> None:
    raw = nested(path, None)
    field = path.replace(".0.", "[0].")
    assert errors_of(raw) == {field: "is required"}


@pytest.mark.parametrize(
    "action",
    ["claim.viewed", "a.b", "audit_logs.viewed", "x1.y_2.z3", "patient.record.exported"],
)
def test_action_pattern_accepts(action: str) -> None:
    assert validate_event(event(action=action), NOW).action == action


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"action": "audit_log.viewed"}, "action"),
        ({"action": "audit_log.auth_failed"}, "action"),
        ({"action": "audit_log.anything_else"}, "action"),
        ({"source": "velora.query_api"}, "source"),
        ({"source": "velora.anything"}, "source"),
    ],
)
def test_reserved_names_are_refused_unless_system(changes: dict[str, str], field: str) -> None:
    """Only Velora writes audit_log. actions and velora. sources (issue 8, finding 10)."""
    errors = errors_of(event(**changes))
    assert list(errors) == [field]
    assert "reserved" in errors[field]
    typed = validate_event(event(**changes), NOW, system=True)
    assert getattr(typed, field) == changes[field]


def test_reserved_check_is_not_bypassed_by_the_cache_of_known_actions() -> None:
    validate_event(event(action="audit_log.viewed"), NOW, system=True)  # now a known action
    assert "action" in errors_of(event(action="audit_log.viewed"))


def test_a_restricted_token_writes_only_its_sources() -> None:
    allowed = frozenset({"claims-service", "billing"})
    assert validate_event(event(source="billing"), NOW, sources=allowed).source == "billing"
    with pytest.raises(ValidationError) as info:
        validate_event(event(source="pharmacy"), NOW, sources=allowed)
    assert [(d.field, d.reason) for d in info.value.details] == [
        ("source", "not a source this service token may write")
    ]


@pytest.mark.parametrize(
    "action",
    [
        "viewed",
        "Claim.viewed",
        "claim.",
        ".claim",
        "1claim.x",
        "claim..x",
        "claim.viewed ",
        "claim.vïewed",
        "claim.view-ed",
        "a." + "b" * 200,
        42,
        ["claim.viewed"],
    ],
)
def test_action_pattern_rejects(action: Any) -> None:
    assert list(errors_of(event(action=action))) == ["action"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-06-01T12:00:00Z", datetime(2025, 6, 1, 12, tzinfo=UTC)),
        ("2025-06-01T14:00:00+02:00", datetime(2025, 6, 1, 12, tzinfo=UTC)),
        ("2025-06-01T07:30:00.000001-04:30", datetime(2025, 6, 1, 12, 0, 0, 1, tzinfo=UTC)),
        ("2025-06-01t12:00:00z", datetime(2025, 6, 1, 12, tzinfo=UTC)),  # RFC 3339 allows t, z
        ("2025-06-01T12:00:00-00:00", datetime(2025, 6, 1, 12, tzinfo=UTC)),
        ("2025-06-01T12:00:00.123456789Z", datetime(2025, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)),
        ("2025-06-01T12:00:00.5Z", datetime(2025, 6, 1, 12, 0, 0, 500000, tzinfo=UTC)),
        (
            datetime(2025, 6, 1, 13, tzinfo=timezone(timedelta(hours=1))),
            datetime(2025, 6, 1, 12, tzinfo=UTC),
        ),
    ],
)
def test_timestamps_with_an_offset_are_normalised_to_utc(value: Any, expected: datetime) -> None:
    ev = validate_event(event(occurred_at=value), NOW)
    assert ev.occurred_at == expected
    assert ev.occurred_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("value", "reason_part"),
    [
        ("2025-06-01T12:00:00", "RFC 3339 date-time with an offset"),
        ("2025-06-01", "RFC 3339 date-time with an offset"),
        (datetime(2025, 6, 1, 12), "UTC offset"),  # noqa: DTZ001 - the naive input under test
        ("yesterday", "RFC 3339"),
        ("2025-13-01T00:00:00Z", "not a valid date-time"),
        ("2025-02-29T00:00:00Z", "not a valid date-time"),
        ("2025-06-01T12:00:60Z", "not a valid date-time"),  # a leap second
        ("2025-06-01T12:00:00Z" + " " * 80, "RFC 3339"),
        (1717243200, "RFC 3339"),
        # ISO 8601 forms that RFC 3339 does not allow (datetime.fromisoformat takes them)
        ("2025-W22-7T12:00:00Z", "RFC 3339"),  # ISO week date
        ("2025-152T12:00:00Z", "RFC 3339"),  # ordinal date
        ("20250601T120000Z", "RFC 3339"),  # basic format
        ("2025-06-01 12:00:00Z", "RFC 3339"),  # space instead of T
        ("2025-06-01T12:00Z", "RFC 3339"),  # no seconds
        ("2025-06-01T12:00:00+02", "RFC 3339"),  # hour-only offset
        ("2025-06-01T12:00:00+0200", "RFC 3339"),  # offset without colon
        ("2025-06-01T12:00:00,5Z", "RFC 3339"),  # comma fraction
        ("2025-06-01T12:00:00.Z", "RFC 3339"),  # empty fraction
        ("\uff12\uff10\uff12\uff15-06-01T12:00:00Z", "RFC 3339"),  # fullwidth digits
        (" 2025-06-01T12:00:00Z", "RFC 3339"),
        ((NOW + timedelta(hours=24, seconds=1)).isoformat(), "24 hours"),
        ("1969-12-31T23:59:59Z", "1970"),
        ("0001-01-01T00:00:00+01:00", "1970"),
        ("9999-12-31T23:59:59-01:00", "24 hours"),
    ],
)
def test_timestamp_rules(value: Any, reason_part: str) -> None:
    for field in ("occurred_at", "received_at"):
        errs = errors_of(event(**{field: value}))
        assert list(errs) == [field]
        assert reason_part in errs[field]


def test_a_timestamp_exactly_24h_ahead_is_accepted() -> None:
    ahead = NOW + timedelta(hours=24)
    assert validate_event(event(occurred_at=ahead.isoformat()), NOW).occurred_at == ahead


@pytest.mark.parametrize(
    "event_id",
    [
        "0190A5C4-7D2E-7B1F-8A3C-1234567890AB",
        "0190a5c47d2e7b1f8a3c1234567890ab",
        "{0190a5c4-7d2e-7b1f-8a3c-1234567890ab}",
        "not-a-uuid",
        "",
        7,
        "0190a5c4-7d2e-7b1f-8a3c-1234567890ab\n",
    ],
)
def test_event_id_must_be_a_canonical_lowercase_uuid(event_id: Any) -> None:
    assert list(errors_of(event(event_id=event_id))) == ["event_id"]


def test_any_uuid_version_is_kept() -> None:
    v4 = str(uuid.uuid4())
    assert validate_event(event(event_id=v4), NOW).event_id == v4


@pytest.mark.parametrize(
    "tenant_id",
    ["", "-acme", "acme health", "acme/health", "ácme", "a" * 65, "acme\x00", 12, "acme\u200b"],
)
def test_tenant_id_is_a_bounded_safe_identifier(tenant_id: Any) -> None:
    assert list(errors_of(event(tenant_id=tenant_id))) == ["tenant_id"]


@pytest.mark.parametrize("tenant_id", ["a", "acme", "Acme_Health.eu:1-2", "9" * 64])
def test_tenant_id_accepts(tenant_id: str) -> None:
    assert validate_event(event(tenant_id=tenant_id), NOW).tenant_id == tenant_id


@pytest.mark.parametrize(("field", "value"), [("crud", "view"), ("crud", "READ"), ("crud", 1)])
def test_crud_enum(field: str, value: Any) -> None:
    assert list(errors_of(event(**{field: value}))) == ["crud"]


@pytest.mark.parametrize("result", ["ok", "SUCCESS", 1, ""])
def test_outcome_result_enum(result: Any) -> None:
    assert list(errors_of(nested("outcome.result", result))) == ["outcome.result"]


@pytest.mark.parametrize(
    "ip", ["10.0.0.256", "1.2.3", "::g", "10.0.0.7/24", "localhost", "10.0.0.7 ", "", 10]
)
def test_actor_ip_must_be_an_address(ip: Any) -> None:
    assert list(errors_of(nested("actor.ip", ip))) == ["actor.ip"]


@pytest.mark.parametrize(
    ("ip", "canonical"),
    [
        ("192.168.1.20", "192.168.1.20"),
        ("2001:DB8:0:0::1", "2001:db8::1"),
        ("::ffff:10.0.0.1", "::ffff:a00:1"),
    ],
)
def test_actor_ip_is_normalised(ip: str, canonical: str) -> None:
    assert validate_event(nested("actor.ip", ip), NOW).actor.ip == canonical


@pytest.mark.parametrize("email", ["ana", "ana @example.org", "", "a" * 321])
def test_actor_email(email: str) -> None:
    assert list(errors_of(nested("actor.email", email))) == ["actor.email"]


@pytest.mark.parametrize(
    ("path", "limit"),
    [
        ("source", 128),
        ("request_id", 128),
        ("category", 64),
        ("actor.type", 32),
        ("actor.id", 256),
        ("actor.name", 256),
        ("actor.user_agent", 1024),
        ("targets.0.type", 64),
        ("targets.0.id", 256),
        ("targets.0.name", 256),
        ("outcome.reason", 1024),
    ],
)
def test_string_lengths_are_bounded(path: str, limit: int) -> None:
    ok = validate_event(nested(path, "x" * limit), NOW)
    assert isinstance(ok, AuditEvent)
    errs = errors_of(nested(path, "x" * (limit + 1)))
    field = path.replace(".0.", "[0].")
    assert errs == {field: f"must be at most {limit} characters"}


IDENTIFIER_PATHS = ["source", "request_id", "category", "actor.type", "actor.id", "targets.0.id"]
FREE_TEXT_PATHS = ["actor.name", "actor.user_agent", "targets.0.name", "outcome.reason"]


@pytest.mark.parametrize("path", IDENTIFIER_PATHS)
@pytest.mark.parametrize(
    "bad",
    [
        "a\x00b",
        "a\nb",
        "a\tb",
        "a\x1bb",
        "a\u200bb",
        "a\u202eb",
        "a\u200fb",
        "a\ufeffb",
        "a\ud800b",
        "a\u2028b",
    ],
)
def test_identifiers_reject_control_format_and_separator_characters(path: str, bad: str) -> None:
    field = path.replace(".0.", "[0].")
    assert list(errors_of(nested(path, bad))) == [field]


@pytest.mark.parametrize("path", IDENTIFIER_PATHS)
def test_identifiers_accept_printable_unicode(path: str) -> None:
    value = "ñandú-Ärzt-東京"
    ev = event_as_mapping(validate_event(nested(path, value), NOW))
    node: Any = ev
    for p in path.split("."):
        node = node[int(p)] if p.isdigit() else node[p]
    assert node == value


@pytest.mark.parametrize("path", FREE_TEXT_PATHS)
@pytest.mark.parametrize(
    "text",
    [
        "شكرا لك",
        "a\u200fb\u202ec",
        "👩🏽‍⚕️ checked 🧾",
        "e\u0301\u0301\u0301",
        "zero\u200bwidth",
        "東京",
    ],
)
def test_free_text_keeps_any_unicode(path: str, text: str) -> None:
    ev = event_as_mapping(validate_event(nested(path, text), NOW))
    node: Any = ev
    for p in path.split("."):
        node = node[int(p)] if p.isdigit() else node[p]
    assert node == text


@pytest.mark.parametrize("path", FREE_TEXT_PATHS)
@pytest.mark.parametrize(
    "bad", ["a\x00b", "line\nbreak", "tab\there", "\x1b[31mred", "a\x85b", "a\ud800b", "\udfff"]
)
def test_free_text_rejects_control_characters_and_lone_surrogates(path: str, bad: str) -> None:
    field = path.replace(".0.", "[0].")
    assert list(errors_of(nested(path, bad))) == [field]


def test_metadata_limits() -> None:
    assert validate_event(event(metadata={f"k{i}": "v" for i in range(50)}), NOW)
    assert errors_of(event(metadata={f"k{i}": "v" for i in range(51)})) == {
        "metadata": "must have at most 50 keys"
    }
    assert validate_event(event(metadata={"k" * 40: "v" * 500}), NOW)
    assert list(errors_of(event(metadata={"k" * 41: "v"}))) == ["metadata." + "k" * 37 + "..."]
    assert errors_of(event(metadata={"k": "v" * 501})) == {
        "metadata.k": "must be at most 500 characters"
    }


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"k": 1}, "metadata.k"),
        ({"k": None}, "metadata.k"),
        ({"k": ["v"]}, "metadata.k"),
        ({"k": "a\x00"}, "metadata.k"),
        ({"": "v"}, "metadata."),
        ({"bad key": "v"}, "metadata.bad key"),
        ({"ключ": "v"}, "metadata.ключ"),
        (["k", "v"], "metadata"),
        ("k=v", "metadata"),
    ],
)
def test_metadata_shape(metadata: Any, field: str) -> None:
    assert list(errors_of(event(metadata=metadata))) == [field]


def test_targets_shape_and_count() -> None:
    assert (
        len(
            validate_event(
                event(targets=[{"type": "t", "id": str(i)} for i in range(50)]), NOW
            ).targets
        )
        == 50
    )
    assert list(errors_of(event(targets=[{"type": "t", "id": "1"}] * 51))) == ["targets"]
    assert list(errors_of(event(targets={"type": "t", "id": "1"}))) == ["targets"]
    assert list(errors_of(event(targets=["c-1"]))) == ["targets[0]"]


@pytest.mark.parametrize("field", ["actor", "outcome"])
def test_nested_objects_must_be_objects(field: str) -> None:
    assert errors_of(event(**{field: "x"})) == {field: "must be an object"}


def test_unknown_fields_are_rejected_by_name() -> None:
    assert errors_of(event(colour="blue")) == {"colour": "unknown field"}
    assert errors_of(nested("actor.role", "admin")) == {"actor.role": "unknown field"}
    assert errors_of(nested("targets.0.kind", "x")) == {"targets[0].kind": "unknown field"}


def test_schema_version_must_be_1() -> None:
    assert validate_event(event(schema_version=1), NOW).schema_version == 1
    assert list(errors_of(event(schema_version=2))) == ["schema_version"]


@pytest.mark.parametrize("raw", [[], "event", 1, None])
def test_a_non_object_event_is_rejected(raw: Any) -> None:
    assert errors_of(raw) == {"event": "must be an object"}


def test_every_failed_rule_is_reported_and_values_are_never_echoed() -> None:
    secret = "Jane-Doe-MRN-0042"
    raw = event(action="Bad", tenant_id=" ", crud="x")
    raw["actor"] = {"type": "user", "id": secret + "\x00", "ip": secret}
    with pytest.raises(ValidationError) as info:
        validate_event(raw, NOW)
    fields = {d.field for d in info.value.details}
    assert fields == {"action", "tenant_id", "crud", "actor.id", "actor.ip"}
    assert "and 4 more" in info.value.message
    rendered = repr(info.value.details) + info.value.message
    assert secret not in rendered


def test_typed_events_go_through_the_same_rules() -> None:
    good = validate_event(event(), NOW)
    again = validate_event(event_as_mapping(good), NOW)
    assert again == good
    bad = AuditEvent(
        event_id="",
        tenant_id="acme",
        occurred_at=NOW,
        received_at=NOW,
        action="NotAnAction",
        actor=Actor("user", "u\u202e1"),
        outcome=Outcome(),
        source="svc",
    )
    assert errors_of(event_as_mapping(bad)) == {
        "action": "must match ^[a-z][a-z0-9_]*(\\.[a-z0-9_]+)+$ (at most 128)",
        "actor.id": "must not contain control, format or separator characters",
    }


def test_to_record_is_the_avro_record_with_epoch_micros() -> None:
    record = to_record(event(), NOW)
    assert record["occurred_at"] == 1_748_779_140_250_000
    assert record["received_at"] == 1_748_779_200_000_000
    assert record["targets"] == [{"type": "claim", "id": "c-1", "name": "Claim 1"}]
    assert AuditEvent.from_avro(record).to_avro() == record


def test_encoded_size_cap() -> None:
    check_encoded_size(b"x" * MAX_EVENT_BYTES)
    with pytest.raises(ValidationError) as info:
        check_encoded_size(b"x" * (MAX_EVENT_BYTES + 1))
    assert info.value.details[0].field == "event"

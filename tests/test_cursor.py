"""Keyset cursors: opaque, integrity-protected, bound to tenant and filters."""

from __future__ import annotations

import base64
import json

import pytest

from query_api import cursor
from query_api.cursor import Position
from query_api.filters import Filters, parse_list_query
from tests.api_support import Api, insert_events, make_event, running_api
from velora.errors import ValidationError
from velora.settings import Secret

SECRET = Secret("cursor-secret-for-tests")
FP = Filters().fingerprint()
EVENTS = "/api/v2/public/audit/events"


def test_round_trip_and_binding():
    pos = Position(1_700_000_000_123_456, "0190b5a0-0000-7000-8000-000000000001")
    token = cursor.encode(SECRET, "acme", FP, pos)
    assert cursor.decode(SECRET, "acme", FP, token) == pos
    other_filters = Filters(action="claim.viewed").fingerprint()
    for tenant, fp, secret in [
        ("evil", FP, SECRET),
        ("acme", other_filters, SECRET),
        ("acme", FP, Secret("another-cursor-secret")),
    ]:
        with pytest.raises(ValidationError) as info:
            cursor.decode(secret, tenant, fp, token)
        assert info.value.details[0].field == "cursor"


def test_tampering_is_detected():
    pos = Position(1, "e1")
    token = cursor.encode(SECRET, "acme", FP, pos)
    body, tag = token.split(".")
    forged_payload = json.dumps({"v": 1, "o": 999, "e": "e1"}, separators=(",", ":")).encode()
    forged = base64.urlsafe_b64encode(forged_payload).rstrip(b"=").decode() + "." + tag
    flipped = body + "." + ("A" if tag[0] != "A" else "B") + tag[1:]
    padding_bits = token[:-1] + ("B" if token[-1] == "A" else "A")  # same bytes, other text
    bad_cursors = [forged, flipped, body, "." + tag, token + "x", "", "é.é", "%%%.%%%", token[:-2]]
    for bad in [*bad_cursors, padding_bits]:
        with pytest.raises(ValidationError):
            cursor.decode(SECRET, "acme", FP, bad)


def test_fingerprint_normalises_time_zones():
    a = parse_list_query([("since", "2025-03-01T14:00:00+02:00")]).filters
    b = parse_list_query([("since", "2025-03-01T12:00:00Z")]).filters
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != Filters().fingerprint()


@pytest.fixture
def api(settings):
    with running_api(settings) as api:
        insert_events(api.reader, [make_event("acme", i) for i in range(6)])
        insert_events(api.reader, [make_event("evil", i) for i in range(6)], start_offset=100)
        yield api


def test_fingerprints_do_not_change_across_releases():
    """Cursors handed out before a deploy name these digests; they must stay valid after it."""
    from datetime import UTC, datetime

    assert Filters().fingerprint() == (
        "8ce649b60194a7c83bbcf0472c0d34593c1d0650c3a51ecccc9a4f6c9f1e2f59"
    )
    many = Filters(
        since=datetime(2026, 1, 1, tzinfo=UTC),
        until=datetime(2026, 2, 1, 12, 30, tzinfo=UTC),
        action_prefix="claim.",
        actor_id="usr_1",
        outcome="failure",
        source="Zoë",
        actor_ids=("a", "b"),  # widened by the PHI mode: not part of the digest
    )
    assert many.fingerprint() == (
        "d8c6ba89a3c73e0ba1d9be482db51b2eb363789125fa0b578e5bb5f008e4cd02"
    )


def test_api_refuses_foreign_or_reused_cursors(api: Api):
    acme, evil = api.issue("acme"), api.issue("evil")
    page = api.get(EVENTS, acme.token, params={"limit": 2, "action": "claim.*"}).json()
    token = page["page"]["next_cursor"]
    ok = api.get(EVENTS, acme.token, params={"limit": 4, "action": "claim.*", "cursor": token})
    assert ok.status_code == 200  # the limit may change between pages
    assert len(ok.json()["events"]) == 4
    for key, params in [
        (evil, {"action": "claim.*", "cursor": token}),  # another tenant's key
        (acme, {"cursor": token}),  # other filters
        (acme, {"action": "claim.viewed", "cursor": token}),
        (acme, {"action": "claim.*", "cursor": token[:-1] + ("A" if token[-1] != "A" else "B")}),
    ]:
        resp = api.get(EVENTS, key.token, params=params)
        assert resp.status_code == 422, params
        assert resp.json()["error"]["details"][0]["field"] == "cursor"


def _forge(payload: object, tenant: str = "acme", fp: str = FP, secret: Secret = SECRET) -> str:
    """A cursor with a valid tag over any payload: what a leaked secret allows."""
    raw = (
        json.dumps(payload, separators=(",", ":")).encode()
        if not isinstance(payload, bytes)
        else payload
    )
    return cursor._b64(raw) + "." + cursor._b64(cursor._tag(secret, tenant, fp, raw))


OUT_OF_RANGE = [
    b'{"v":1,"o":1e400,"e":"x"}',  # float('inf'): int() raised OverflowError (a 500)
    b'{"v":1,"o":1234567890123456789012345678901234567890,"e":"x"}',
    {"v": 1, "o": -1, "e": "x"},
    {"v": 1, "o": True, "e": "x"},
    {"v": True, "o": 1, "e": "x"},
    {"v": 1.0, "o": 1, "e": "x"},
    {"v": 1, "o": 1.5, "e": "x"},
    {"v": 1, "o": 1, "e": 7},
    {"v": 1, "o": 1, "e": ""},
    {"v": 1, "o": 1, "e": "x" * 129},
    {"v": 1, "o": 1, "e": None},
    {"v": 2, "o": 1, "e": "x"},
    {"v": 1, "o": "1", "e": "x"},
    {"v": 1, "o": 253402300800000000, "e": "x"},  # past the year 9999
    [1, 2, 3],
    "just a string",
    None,
    b'{"v":1,"o":' + b"[" * 5000 + b"]" * 5000 + b',"e":"x"}',  # deep nesting
    b"\xff\xfe not json",
]


@pytest.mark.parametrize("payload", OUT_OF_RANGE, ids=range(len(OUT_OF_RANGE)))
def test_forged_out_of_range_cursors_are_422_not_500(payload):
    """Issue 8 finding 9: a forged cursor with huge numbers gave 500 via OverflowError."""
    with pytest.raises(ValidationError) as info:
        cursor.decode(SECRET, "acme", FP, _forge(payload))
    assert info.value.details[0].field == "cursor"


def test_the_largest_valid_position_round_trips():
    pos = Position(cursor.MAX_OCCURRED_US, "e" * 128)
    assert cursor.decode(SECRET, "acme", FP, cursor.encode(SECRET, "acme", FP, pos)) == pos


def test_forged_cursor_through_the_api_is_422(settings):
    with running_api(settings) as api:
        key = api.issue("acme")
        forged = _forge(OUT_OF_RANGE[0], fp=FP, secret=settings.cursor_secret)
        resp = api.get(EVENTS, key.token, params={"cursor": forged})
        assert resp.status_code == 422, resp.text
        assert resp.json()["error"]["details"][0]["field"] == "cursor"

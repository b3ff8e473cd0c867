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

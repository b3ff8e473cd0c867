"""Authentication and authorization: the 401/403 matrix, tenant isolation, revocation."""

from __future__ import annotations

import logging

import pytest

from cli.keys import revoke_key, rotate_key
from tests.api_support import Api, insert_events, make_event, running_api
from tests.helpers import wait_for

EVENTS = "/api/v2/public/audit/events"


@pytest.fixture
def api(settings):
    with running_api(settings) as api:
        yield api


def _assert_401(resp):
    assert resp.status_code == 401, resp.text
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    body = resp.json()
    assert body["error"]["type"] == "authentication_error"
    assert set(body["error"]) == {"type", "message", "details"}


def test_auth_matrix(api: Api, caplog):
    caplog.set_level(logging.DEBUG)
    good = api.issue("acme")
    wrong_secret = good.token[:-4] + ("0000" if not good.token.endswith("0000") else "1111")
    unknown = "vlk_live_" + "0" * 8 + "_" + "a" * 32
    if good.record.key_id == "00000000":  # pragma: no cover - 1 in 4 billion
        unknown = "vlk_live_" + "1" * 8 + "_" + "a" * 32
    cases = {
        "no header": {},
        "empty header": {"Authorization": ""},
        "wrong scheme": {"Authorization": f"Basic {good.token}"},
        "scheme only": {"Authorization": "Bearer"},
        "malformed key": {"Authorization": "Bearer vlk_live_XYZ"},
        "uppercase hex": {"Authorization": f"Bearer {good.token.upper()}"},
        "test prefix": {"Authorization": "Bearer " + good.token.replace("live", "test")},
        "unknown key": {"Authorization": f"Bearer {unknown}"},
        "wrong secret": {"Authorization": f"Bearer {wrong_secret}"},
    }
    for name, headers in cases.items():
        resp = api.client.get(EVENTS, headers=headers)
        _assert_401(resp)
        assert "RateLimit-Remaining" in resp.headers, name
    assert api.get(EVENTS, good.token).status_code == 200
    assert good.token not in caplog.text
    assert good.token[-32:] not in caplog.text


def test_revoked_key_is_refused_within_two_seconds(api: Api):
    issued = api.issue("acme")
    assert api.get(EVENTS, issued.token).status_code == 200
    _, offset = revoke_key(api.settings, issued.record.key_id)
    # The node follows the control topic on its own; no help from the test.
    wait_for(
        lambda: api.get(EVENTS, issued.token).status_code == 401,
        timeout=2.0,
        what="revocation applied",
    )
    _assert_401(api.get(EVENTS, issued.token))
    assert api.control.position > offset


def test_rotation_keeps_old_key_for_the_grace_period(settings):
    short = settings.with_overrides(key_rotation_grace_seconds=0)
    with running_api(settings) as api:
        old = api.issue("acme")
        new, retired = rotate_key(settings, old.record.key_id)
        api.await_control(new.offset)
        assert retired.rotated_to == new.record.key_id
        assert retired.expires_at is not None
        assert api.get(EVENTS, new.token).status_code == 200
        assert api.get(EVENTS, old.token).status_code == 200  # 24 h grace by default
        old2 = api.issue("acme")
        new2, _ = rotate_key(short, old2.record.key_id)
        api.await_control(new2.offset)
        _assert_401(api.get(EVENTS, old2.token))  # no grace: expired at once
        assert set(new2.record.scopes) == set(old2.record.scopes)


def test_missing_scope_is_403_naming_the_scope(api: Api):
    issued = api.issue("acme", ("webhooks:write",))
    resp = api.get(EVENTS, issued.token)
    assert resp.status_code == 403
    err = resp.json()["error"]
    assert err["type"] == "permission_denied"
    assert "audit:read" in err["message"]
    assert err["details"] == [{"field": "scope", "reason": "requires audit:read"}]
    assert api.get(f"{EVENTS}/whatever", issued.token).status_code == 403


def test_tenant_comes_from_the_key_never_the_request(api: Api):
    a_events = [make_event("tenant-a", i) for i in range(5)]
    b_events = [make_event("tenant-b", i) for i in range(5)]
    insert_events(api.reader, a_events + b_events)
    key_a = api.issue("tenant-a")
    resp = api.get(EVENTS, key_a.token, params={"limit": 100})
    assert resp.status_code == 200
    got = resp.json()["events"]
    assert {e["tenant_id"] for e in got} == {"tenant-a"}
    assert len(got) == 5
    # Another tenant's event id is a 404, exactly like an unknown one.
    other = api.get(f"{EVENTS}/{b_events[0].event_id}", key_a.token)
    assert other.status_code == 404
    unknown = api.get(f"{EVENTS}/00000000-0000-7000-8000-000000000000", key_a.token)
    assert unknown.status_code == 404
    assert other.json()["error"] == unknown.json()["error"]
    # A tenant parameter is not a thing: it is refused, not honoured.
    resp = api.get(EVENTS, key_a.token, params={"tenant_id": "tenant-b"})
    assert resp.status_code == 422
    assert resp.json()["error"]["details"][0]["field"] == "tenant_id"
    own = api.get(f"{EVENTS}/{a_events[0].event_id}", key_a.token)
    assert own.status_code == 200 and own.json()["event_id"] == a_events[0].event_id


def test_repeated_auth_failures_from_one_client_are_throttled(settings):
    limited = settings.with_overrides(auth_failure_limit=3)
    with running_api(limited) as api:
        good = api.issue("acme")
        bad = {"Authorization": "Bearer vlk_live_nothexxx_" + "0" * 32}
        for _ in range(3):
            _assert_401(api.client.get(EVENTS, headers=bad))
        resp = api.client.get(EVENTS, headers=bad)
        assert resp.status_code == 429
        assert int(resp.headers["Retry-After"]) >= 1
        assert resp.json()["error"]["type"] == "rate_limited"
        # The client is throttled as a whole until its failure bucket refills.
        assert api.get(EVENTS, good.token).status_code == 429

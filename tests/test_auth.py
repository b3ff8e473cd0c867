"""Authentication and authorization: the 401/403 matrix, tenant isolation, revocation,
failure throttling behind a proxy, auth_failed records, environments, allow-lists, peppers."""

from __future__ import annotations

import logging
import threading

import httpx
import pytest

from cli.keys import create_key, revoke_key, rotate_key
from ledger.control import ControlState
from ledger.control import _consumer as control_consumer
from ledger.duck import LedgerFile
from query_api.app import create_app
from query_api.openapi import PREFIX
from tests.api_support import (
    Api,
    audit_sink,
    audit_trail,
    insert_events,
    live_server,
    make_event,
    running_api,
)
from tests.helpers import wait_for
from velora.settings import Secret

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


def _wrong_secret(token: str, n: int) -> str:
    secret = f"{n:032x}"
    return token[:-32] + (secret if secret != token[-32:] else "f" * 32)


def test_failed_authentications_are_throttled_but_valid_keys_never(settings):
    """Issue 8 finding 5: the failure gate no longer refuses valid credentials."""
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
        # A valid key from the same client is served: only failures are throttled.
        assert api.get(EVENTS, good.token).status_code == 200
        assert api.client.get(EVENTS, headers=bad).status_code == 429


def test_failures_are_throttled_per_key_id_from_any_address(settings):
    limited = settings.with_overrides(auth_failure_limit=3, trusted_proxies=("127.0.0.1/32",))
    with running_api(limited) as api:
        good = api.issue("acme")
        for n in range(3):  # wrong secrets for one key id, each from another address
            forwarded = {"X-Forwarded-For": f"198.51.100.{n + 1}"}
            _assert_401(api.get(EVENTS, _wrong_secret(good.token, n), headers=forwarded))
        resp = api.get(
            EVENTS, _wrong_secret(good.token, 9), headers={"X-Forwarded-For": "192.0.2.1"}
        )
        assert resp.status_code == 429 and int(resp.headers["Retry-After"]) >= 1
        # The key itself still works, from anywhere.
        assert (
            api.get(EVENTS, good.token, headers={"X-Forwarded-For": "192.0.2.1"}).status_code == 200
        )
        # An unknown key id from a fresh address is not held back by that key id's bucket.
        unknown = "vlk_live_" + "0" * 8 + "_" + "a" * 32
        _assert_401(api.get(EVENTS, unknown, headers={"X-Forwarded-For": "192.0.2.2"}))


def test_lock_out_a_thousand_bad_tokens_behind_a_trusted_proxy(settings):
    """Issue 8 "Done when": 1,000 bad tokens from one forwarded IP do not stop a valid key
    from a different forwarded IP, or from the same one."""
    proxied = settings.with_overrides(trusted_proxies=("127.0.0.0/8",))
    with running_api(proxied) as api:
        good = api.issue("acme")
        attacker = {"X-Forwarded-For": "203.0.113.66"}
        statuses = set()
        for n in range(1000):
            kind = n % 3
            if kind == 0:
                token = _wrong_secret(good.token, n)  # the victim's key id, wrong secret
            elif kind == 1:
                token = f"vlk_live_{n:08x}_{'0' * 32}"  # unknown key ids
            else:
                token = "vlk_live_garbage"
            statuses.add(api.get(EVENTS, token, headers=attacker).status_code)
        assert statuses == {401, 429}
        other = api.get(EVENTS, good.token, headers={"X-Forwarded-For": "198.51.100.20"})
        assert other.status_code == 200, other.text
        same = api.get(EVENTS, good.token, headers=attacker)
        assert same.status_code == 200, same.text
        # Behind two proxies the client is the right-most untrusted address.
        chained = api.get(
            EVENTS, good.token, headers={"X-Forwarded-For": "203.0.113.66, 127.0.0.9"}
        )
        assert chained.status_code == 200


def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(settings):
    """Issue 14 finding 3: with no trusted proxy, X-Forwarded-For changes neither the
    limiter's client nor the address recorded in the trail, even from 127.0.0.1."""
    limited = settings.with_overrides(auth_failure_limit=2)
    assert limited.trusted_proxies == ()
    with running_api(limited) as api:
        good = api.issue("acme")
        for n in range(2):
            spoof = {"X-Forwarded-For": f"203.0.113.{n + 1}"}
            _assert_401(api.get(EVENTS, "vlk_live_garbage", headers=spoof))
        # A third address would be a fresh bucket if the header were believed.
        resp = api.get(EVENTS, "vlk_live_garbage", headers={"X-Forwarded-For": "203.0.113.3"})
        assert resp.status_code == 429
        ok = api.get(EVENTS, good.token, headers={"X-Forwarded-For": "203.0.113.77"})
        assert ok.status_code == 200
        bad = api.get(
            EVENTS, _wrong_secret(good.token, 1), headers={"X-Forwarded-For": "203.0.113.78"}
        )
        assert bad.status_code == 429
    viewed = audit_trail(settings, "audit_log.viewed", 1)
    failed = audit_trail(settings, "audit_log.auth_failed", 1)
    assert {r["actor"]["ip"] for r in viewed + failed} == {"127.0.0.1"}


def test_failed_authentications_of_a_known_key_are_in_its_tenants_trail(settings):
    limited = settings.with_overrides(auth_failure_limit=2, trusted_proxies=("127.0.0.1/32",))
    with running_api(limited) as api:
        good = api.issue("acme")
        revoked = api.issue("acme")
        _, offset = revoke_key(settings, revoked.record.key_id)
        api.await_control(offset)

        def get(token: str, n: int):
            return api.get(EVENTS, token, headers={"X-Forwarded-For": f"198.51.100.{n}"})

        _assert_401(get(_wrong_secret(good.token, 1), 1))
        _assert_401(get(revoked.token, 2))
        unknown = "vlk_live_" + ("0" * 8 if good.record.key_id != "0" * 8 else "1" * 8)
        _assert_401(get(unknown + "_" + "a" * 32, 3))  # no tenant: nothing to record
        _assert_401(get(_wrong_secret(good.token, 4), 4))
        for n in range(5, 9):  # past the key id's limit: 429, recorded once as throttled
            assert get(_wrong_secret(good.token, n), n).status_code == 429
    records = audit_trail(settings, "audit_log.auth_failed", 4)
    reasons = sorted((r["actor"]["id"], r["outcome"]["reason"], r["actor"]["ip"]) for r in records)
    assert reasons == sorted(
        [
            (good.record.key_id, "wrong_secret", "198.51.100.1"),
            (good.record.key_id, "wrong_secret", "198.51.100.4"),
            (good.record.key_id, "throttled", "198.51.100.5"),
            (revoked.record.key_id, "revoked", "198.51.100.2"),
        ]
    )
    for r in records:
        assert r["tenant_id"] == "acme"
        assert r["source"] == "velora.query_api"
        assert r["actor"]["type"] == "api_key"
        assert r["outcome"]["result"] == "denied"
        assert r["metadata"]["reason"] == r["outcome"]["reason"]
        assert good.token[-32:] not in repr(r) and revoked.token[-32:] not in repr(r)


def test_a_node_serves_one_environment(settings):
    """Staging keys (vlk_test_) and live keys: each node answers 401 to the other kind."""
    staging = settings.with_overrides(environment="staging")
    live_key = create_key(settings, "acme", ("audit:read",), environment="live")
    test_key = create_key(settings, "acme", ("audit:read",), environment="staging")
    assert test_key.token.startswith("vlk_test_") and len(test_key.token) == 50
    with running_api(settings) as api:
        api.await_control(test_key.offset)
        assert api.get(EVENTS, live_key.token).status_code == 200
        _assert_401(api.get(EVENTS, test_key.token))
        # A live record presented with the other prefix is refused as well.
        _assert_401(api.get(EVENTS, live_key.token.replace("vlk_live_", "vlk_test_")))
    with running_api(staging) as api:
        api.await_control(test_key.offset)
        assert api.get(EVENTS, test_key.token).status_code == 200
        _assert_401(api.get(EVENTS, live_key.token))
    reasons = {r["outcome"]["reason"] for r in audit_trail(settings, "audit_log.auth_failed", 3)}
    assert reasons == {"wrong_environment"}


def test_allow_listed_keys_answer_403_from_outside_without_naming_the_list(settings):
    proxied = settings.with_overrides(trusted_proxies=("127.0.0.1/32",))
    key = create_key(
        settings, "acme", ("audit:read",), allowed_ips=["203.0.113.0/24", "2001:db8::/32"]
    )
    with running_api(proxied) as api:
        api.await_control(key.offset)
        for inside in ("203.0.113.9", "2001:db8::5", "::ffff:203.0.113.10"):
            resp = api.get(EVENTS, key.token, headers={"X-Forwarded-For": inside})
            assert resp.status_code == 200, (inside, resp.text)
        outside = api.get(EVENTS, key.token, headers={"X-Forwarded-For": "198.51.100.1"})
        assert outside.status_code == 403
        body = outside.json()
        assert body["error"]["type"] == "permission_denied"
        assert body["error"]["details"] == [
            {"field": "client_ip", "reason": "not in the API key's allowed networks"}
        ]
        assert "203.0.113" not in outside.text and "2001:db8" not in outside.text
        # Without the proxy header the client is 127.0.0.1: outside too.
        assert api.get(EVENTS, key.token).status_code == 403
    records = audit_trail(settings, "audit_log.auth_failed", 2)
    assert {(r["outcome"]["reason"], r["actor"]["ip"]) for r in records} == {
        ("ip_not_allowed", "198.51.100.1"),
        ("ip_not_allowed", "127.0.0.1"),
    }


def test_peppers_rotate_without_reissuing_keys(settings):
    legacy = create_key(settings, "acme", ("audit:read",))
    assert legacy.record.pepper_id is None
    v1 = settings.with_overrides(key_peppers=(("p1", Secret("pepper-one-0123456789")),))
    one = create_key(v1, "acme", ("audit:read",))
    v2 = settings.with_overrides(
        key_peppers=(
            ("p2", Secret("pepper-two-0123456789")),
            ("p1", Secret("pepper-one-0123456789")),
        )
    )
    two = create_key(v2, "acme", ("audit:read",))
    assert (one.record.pepper_id, two.record.pepper_id) == ("p1", "p2")
    with running_api(v2) as api:
        api.await_control(two.offset)
        for key in (legacy, one, two):  # every pepper still listed: every key works
            assert api.get(EVENTS, key.token).status_code == 200
    retired = settings.with_overrides(key_peppers=(("p2", Secret("pepper-two-0123456789")),))
    with running_api(retired) as api:
        api.await_control(two.offset)
        assert api.get(EVENTS, two.token).status_code == 200
        assert api.get(EVENTS, legacy.token).status_code == 200  # VELORA_KEY_PEPPER is kept
        _assert_401(api.get(EVENTS, one.token))  # p1 is no longer listed
    assert any(
        r["outcome"]["reason"] == "pepper_retired"
        for r in audit_trail(settings, "audit_log.auth_failed", 1)
    )


def test_no_authenticated_route_is_served_before_the_key_state_is_loaded(settings, tmp_path):
    """Issue 8 finding 7: no partial fold after a 30 s timeout; 503 until caught up."""
    issued = create_key(settings, "acme", ("audit:read",))
    revoke_key(settings, issued.record.key_id)
    reader = LedgerFile(tmp_path / "gate.duckdb")
    control = ControlState(settings)  # not started yet: nothing folded
    app = create_app(settings, reader, control=control, audit_sink=audit_sink(settings))
    try:
        with live_server(app) as url, httpx.Client(base_url=url) as client:
            resp = client.get(EVENTS, headers={"Authorization": f"Bearer {issued.token}"})
            assert resp.status_code == 503
            assert int(resp.headers["Retry-After"]) >= 1
            assert resp.json()["error"]["type"] == "unavailable"
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["control"]["reason"] == "control state still loading"
            assert client.get(f"{PREFIX}/openapi.json").status_code == 200  # open paths stay open
            assert control.start(wait_timeout=30)
            _assert_401(client.get(EVENTS, headers={"Authorization": f"Bearer {issued.token}"}))
            assert client.get("/readyz").json()["control"]["ready"] is True
    finally:
        control.stop()
        reader.close()


def test_stale_key_state_answers_503_and_readyz_says_so(settings, tmp_path):
    from tests.test_control import LosingConsumer

    LosingConsumer.broken = threading.Event()

    def factory(s):
        consumer, tp = control_consumer(s)
        return LosingConsumer(consumer), tp

    quick = settings.with_overrides(control_max_staleness_s=1)
    issued = create_key(settings, "acme", ("audit:read",))
    reader = LedgerFile(tmp_path / "stale.duckdb")
    control = ControlState(quick, consumer_factory=factory)
    assert control.start(wait_timeout=30)
    app = create_app(quick, reader, control=control, audit_sink=audit_sink(quick))
    auth = {"Authorization": f"Bearer {issued.token}"}
    try:
        with live_server(app) as url, httpx.Client(base_url=url) as client:
            assert client.get(EVENTS, headers=auth).status_code == 200
            LosingConsumer.broken.set()
            wait_for(lambda: client.get(EVENTS, headers=auth).status_code == 503, timeout=10)
            resp = client.get(EVENTS, headers=auth)
            assert "stale" in resp.json()["error"]["message"] and resp.headers["Retry-After"]
            ready = client.get("/readyz").json()
            assert ready["ready"] is False and ready["control"]["stale"] is True
            LosingConsumer.broken.clear()
            wait_for(lambda: client.get(EVENTS, headers=auth).status_code == 200, timeout=30)
    finally:
        control.stop()
        reader.close()


def test_velora_node_ignores_forwarded_for_from_loopback(settings, tmp_path, monkeypatch):
    """Issue 14 finding 3 against the real ``velora node`` process: uvicorn's default of
    trusting X-Forwarded-For from 127.0.0.1 is off, in the limiter and in the trail."""
    import tests.test_node as node_tests

    base_env = node_tests.node_env
    monkeypatch.setattr(
        node_tests, "node_env", lambda s: {**base_env(s), "VELORA_AUTH_FAILURE_LIMIT": "2"}
    )
    key = create_key(settings, "acme", ("audit:read",))
    node = node_tests.NodeProcess(settings, tmp_path / "node.log")
    try:
        wait_for(lambda: node.get("/readyz").status_code == 200, timeout=90, what="ready")
        url = f"http://127.0.0.1:{node.port}{EVENTS}"

        def get(token: str, forwarded: str) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}", "X-Forwarded-For": forwarded}
            return httpx.get(url, headers=headers, timeout=10)

        assert get("vlk_live_garbage", "203.0.113.1").status_code == 401
        assert get("vlk_live_garbage", "203.0.113.2").status_code == 401
        assert get("vlk_live_garbage", "203.0.113.3").status_code == 429  # one client: us
        assert get(key.token, "203.0.113.4").status_code == 200
    finally:
        assert node.terminate() == 0, node.tail()
    viewed = audit_trail(settings, "audit_log.viewed", 1)
    assert {r["actor"]["ip"] for r in viewed} == {"127.0.0.1"}

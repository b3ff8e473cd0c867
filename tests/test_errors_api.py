"""One error shape everywhere; hostile filter values never cause a 5xx."""

from __future__ import annotations

import logging

import httpx
import pytest

from ledger.control import ControlState
from query_api.app import create_app
from query_api.filters import PARAMETERS
from tests.api_support import Api, audit_sink, insert_events, live_server, make_event, running_api

EVENTS = "/api/v2/public/audit/events"
HOSTILE = [
    "' OR '1'='1",
    '"; DROP TABLE audit_events; --',
    "x'); SELECT * FROM audit_events; --",
    "-- comment",
    "claim.viewed' --",
    "%",
    "_",
    "\\",
    "ñandú 🦙 \u202e",
    "\u0000",
    "a\u0000b",
    "x" * 10_000,
    "claim.*' OR 1=1 --.*",
    "2025-01-01T00:00:00+00:00' OR '1'='1",
    "99999-01-01T00:00:00+00:00",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    " ",
]


def _assert_error_shape(resp: httpx.Response, status: int, type_: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"type", "message", "details"}
    assert "Traceback" not in resp.text and 'File "' not in resp.text
    if type_:
        assert body["error"]["type"] == type_
    return body["error"]


@pytest.fixture
def api(settings):
    with running_api(settings.with_overrides(rate_limit_burst=10_000)) as api:
        insert_events(api.reader, [make_event("acme", i) for i in range(5)])
        insert_events(api.reader, [make_event("evil", i) for i in range(5)], start_offset=100)
        yield api


def test_hostile_values_in_every_filter_are_422_or_empty(api: Api):
    key = api.issue("acme")
    for name in [p for p in PARAMETERS if p != "limit"] + ["limit"]:
        for value in HOSTILE:
            resp = api.get(EVENTS, key.token, params={name: value})
            assert resp.status_code in (200, 422), (name, value, resp.status_code, resp.text)
            if resp.status_code == 200:
                assert resp.json()["events"] == [] or name in ("since", "until"), (name, value)
                assert {e["tenant_id"] for e in resp.json()["events"]} <= {"acme"}
            else:
                _assert_error_shape(resp, 422, "validation_error")
    # The table is intact and still answers.
    assert len(api.get(EVENTS, key.token).json()["events"]) == 5
    for value in HOSTILE[:9]:
        resp = api.get(f"{EVENTS}/{httpx.URL(path=value).raw_path.decode()}", key.token)
        assert resp.status_code in (404, 422), (value, resp.status_code)


def test_starlette_404_and_405_have_the_common_shape(api: Api):
    key = api.issue("acme")
    err = _assert_error_shape(api.client.get("/nowhere"), 404, "not_found")
    assert "/nowhere" in err["message"]
    _assert_error_shape(api.get("/api/v2/public/nowhere", key.token), 404, "not_found")
    resp = api.client.post(EVENTS, headers={"Authorization": f"Bearer {key.token}"})
    _assert_error_shape(resp, 405, "method_not_allowed")
    assert "GET" in resp.headers["Allow"]
    # Unauthenticated requests under the public prefix are 401 before any routing.
    _assert_error_shape(api.client.get("/api/v2/public/nowhere"), 401, "authentication_error")


class _Exploding:
    """Fault injection: a ledger whose reads raise an unexpected error."""

    async def read(self, fn):
        raise RuntimeError("secret-internal-detail vlk_live_deadbeef")

    def readiness(self):
        return {"ready": True}


def test_unexpected_error_is_a_bare_500_and_is_logged(settings, caplog):
    caplog.set_level(logging.ERROR)
    control = ControlState(settings)
    control.start()
    app = create_app(settings, _Exploding(), control=control, audit_sink=audit_sink(settings))
    try:
        with live_server(app) as url:
            from cli.keys import create_key

            issued = create_key(settings, "acme", ("audit:read",))
            assert control.wait_for_offset(issued.offset, 10)
            resp = httpx.get(f"{url}{EVENTS}", headers={"Authorization": f"Bearer {issued.token}"})
    finally:
        control.stop()
    err = _assert_error_shape(resp, 500, "internal_error")
    assert "secret-internal-detail" not in resp.text and "RuntimeError" not in resp.text
    assert err["details"] == []
    assert resp.headers["RateLimit-Limit"]  # rate-limit headers on a 500 too
    assert "RuntimeError" in caplog.text


def test_ledger_failure_is_503_with_retry_after(api: Api):
    key = api.issue("acme")
    api.reader.close()  # DuckDB is gone: the query fails inside duckdb
    resp = api.get(EVENTS, key.token)
    err = _assert_error_shape(resp, 503, "unavailable")
    assert int(resp.headers["Retry-After"]) >= 1
    assert "duckdb" not in err["message"].lower() or "Error" in err["message"]

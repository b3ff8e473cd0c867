"""The webhook management API: CRUD, validation and SSRF 422s, tenants, rotation, attempts.

Real parts: the app under uvicorn, the control topic (endpoints are written and
folded back), DuckDB for the attempt log. DNS is the one seam: a resolver that
maps test names to chosen addresses (no network here), used for "a name that
resolves to 127.0.0.1" and for public names.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from schemas.codec import AvroCodec
from schemas.events import WebhookAttempt
from tests.api_support import audit_trail, running_api
from webhooks.secrets import SecretBox

BASE = "/api/v2/public/webhooks/endpoints"
NAMES = {
    "siem.example.com": ["93.184.216.34"],
    "rebind.example.com": ["127.0.0.1"],
    "sneaky.example.com": ["93.184.216.34", "10.1.2.3"],
}


def resolver(host: str, port: int) -> list[str]:
    return list(NAMES.get(host, ["127.0.0.1"] if host == "localhost" else []))


@pytest.fixture
def api(settings):
    s = settings.with_overrides(webhooks_allow_insecure_loopback=True)
    with running_api(s) as api:
        api.app.state.webhook_resolver = resolver
        yield api


def post(api, path, token, body, **kw):
    return api.client.post(path, json=body, headers={"Authorization": f"Bearer {token}"}, **kw)


def call(api, method, path, token, **kw):
    return api.client.request(method, path, headers={"Authorization": f"Bearer {token}"}, **kw)


def test_crud_round_trip_and_secret_shown_once(api):
    key = api.issue("acme", ("webhooks:write",)).token
    made = post(
        api, BASE, key, {"url": "https://siem.example.com/hook", "event_types": ["claim.*"]}
    )
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["secret"].startswith("whsec_") and len(body["secret"]) >= 6 + 32
    assert body["event_types"] == ["claim.*"] and body["format"] == "json" and body["enabled"]
    eid = body["id"]
    one = call(api, "GET", f"{BASE}/{eid}", key)
    assert one.status_code == 200 and "secret" not in one.json()
    assert one.json()["stats"] == {
        "delivered": 0, "failed_attempts": 0, "retries_pending": 0,
        "failed_deliveries": 0, "dropped": 0,
    }  # fmt: skip
    listed = call(api, "GET", BASE, key).json()["endpoints"]
    assert [e["id"] for e in listed] == [eid] and "secret" not in listed[0]
    # the secret is stored encrypted, never in plaintext
    stored = api.control.webhook_endpoint(eid)
    assert body["secret"] not in stored.secret_enc
    box = SecretBox(api.settings.secrets_key)
    assert box.decrypt(stored.secret_enc, eid, "secret") == body["secret"]
    changed = call(
        api, "PATCH", f"{BASE}/{eid}", key, json={"description": "SIEM", "enabled": False}
    )
    assert changed.status_code == 200 and changed.json()["description"] == "SIEM"
    assert changed.json()["enabled"] is False
    assert call(api, "DELETE", f"{BASE}/{eid}", key).status_code == 204
    assert call(api, "GET", f"{BASE}/{eid}", key).status_code == 404


def test_changes_are_in_the_trail_as_what_they_did(api):
    key = api.issue("acme", ("webhooks:write",))
    made = post(api, BASE, key.token, {"url": "https://siem.example.com/hook"})
    eid = made.json()["id"]
    assert call(api, "PATCH", f"{BASE}/{eid}", key.token, json={"enabled": 7}).status_code == 422
    assert call(api, "POST", f"{BASE}/{eid}/rotate-secret", key.token).status_code == 200
    assert call(api, "DELETE", f"{BASE}/{eid}", key.token).status_code == 204
    assert call(api, "GET", BASE, key.token).status_code == 200
    expected = {
        "webhook_endpoint.created": ("create", "success"),
        "webhook_endpoint.updated": ("update", "failure"),
        "webhook_endpoint.secret_rotated": ("update", "success"),
        "webhook_endpoint.deleted": ("delete", "success"),
    }
    for action, (crud, result) in expected.items():
        [record] = [
            r for r in audit_trail(api.settings, action, 1) if r["actor"]["id"] == key.record.key_id
        ]
        assert record["tenant_id"] == "acme" and record["crud"] == crud, record
        assert record["category"] == "webhooks" and record["outcome"]["result"] == result
        assert record["targets"][0] == {"type": "webhook_endpoint", "id": eid, "name": None}
    listed = [
        r
        for r in audit_trail(api.settings, "audit_log.viewed", 1)
        if r["actor"]["id"] == key.record.key_id
    ]
    assert [(r["crud"], r["metadata"]["method"]) for r in listed] == [("read", "GET")]


def test_another_tenants_endpoint_is_404_and_scope_is_needed(api):
    acme = api.issue("acme", ("webhooks:write",)).token
    globex = api.issue("globex", ("webhooks:write",)).token
    reader = api.issue("acme", ("audit:read",)).token
    eid = post(api, BASE, acme, {"url": "https://siem.example.com/"}).json()["id"]
    for method, path in (
        ("GET", f"{BASE}/{eid}"),
        ("PATCH", f"{BASE}/{eid}"),
        ("DELETE", f"{BASE}/{eid}"),
        ("POST", f"{BASE}/{eid}/rotate-secret"),
        ("POST", f"{BASE}/{eid}/test"),
        ("GET", f"{BASE}/{eid}/deliveries"),
    ):
        kw = {"json": {}} if method == "PATCH" else {}
        assert call(api, method, path, globex, **kw).status_code == 404, (method, path)
    assert call(api, "GET", BASE, globex).json() == {"endpoints": []}
    denied = call(api, "GET", BASE, reader)
    assert denied.status_code == 403 and "webhooks:write" in denied.json()["error"]["message"]


@pytest.mark.parametrize(
    "url",
    [
        "http://siem.example.com/hook",  # http
        "https://10.0.0.5/hook",  # private
        "https://192.168.1.1/",
        "https://169.254.169.254/latest/meta-data/",  # metadata
        "https://[fd00:ec2::254]/",  # metadata (IPv6)
        "https://[::ffff:169.254.169.254]/",
        "https://224.0.0.1/",  # multicast
        "https://127.0.0.1/",  # loopback over https
        "https://localhost/hook",  # a name that resolves to 127.0.0.1
        "https://rebind.example.com/hook",
        "https://sneaky.example.com/",  # one private address among public ones
        "https://nowhere.example.com/",  # does not resolve
        "http://localhost:8000/",  # insecure loopback only as the 127.0.0.1 literal
        "https://user:pw@siem.example.com/",
        "ftp://siem.example.com/",
        "https://siem.example.com/" + "a" * 2100,
    ],
)
def test_ssrf_and_bad_urls_are_422_naming_url(api, url):
    key = api.issue("acme", ("webhooks:write",)).token
    resp = post(api, BASE, key, {"url": url})
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["type"] == "validation_error"
    assert [d["field"] for d in error["details"]] == ["url"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "https://siem.example.com/", "event_types": ["Claim.*"]}, "event_types"),
        ({"url": "https://siem.example.com/", "event_types": ["claim.**"]}, "event_types"),
        ({"url": "https://siem.example.com/", "event_types": ["*"]}, "event_types"),
        ({"url": "https://siem.example.com/", "event_types": "claim.*"}, "event_types"),
        ({"url": "https://siem.example.com/", "event_types": ["a.b"] * 51}, "event_types"),
        ({"url": "https://siem.example.com/", "event_types": ["a." + "b" * 130]}, "event_types"),
        ({"url": "https://siem.example.com/", "description": "x" * 257}, "description"),
        ({"url": "https://siem.example.com/", "description": "a\nb"}, "description"),
        ({"url": "https://siem.example.com/", "format": "xml"}, "format"),
        ({"url": "https://siem.example.com/", "format": "splunk_hec"}, "splunk_token"),
        ({"url": "https://siem.example.com/", "splunk_token": "t"}, "splunk_token"),
        (
            {"url": "https://siem.example.com/", "format": "splunk_hec", "splunk_token": "x" * 200},
            "splunk_token",
        ),
        ({"url": "https://siem.example.com/", "enabled": "yes"}, "enabled"),
        ({"url": "https://siem.example.com/", "colour": "red"}, "colour"),
        ({}, "url"),
    ],
)
def test_bad_fields_are_422_naming_the_field(api, body, field):
    key = api.issue("acme", ("webhooks:write",)).token
    resp = post(api, BASE, key, body)
    assert resp.status_code == 422, resp.text
    assert field in [d["field"] for d in resp.json()["error"]["details"]]


def test_bodies_must_be_small_json_objects(api):
    key = api.issue("acme", ("webhooks:write",)).token
    auth = {"Authorization": f"Bearer {key}"}
    text = api.client.post(BASE, content=b"url=x", headers={**auth, "Content-Type": "text/plain"})
    assert text.status_code == 415
    big = api.client.post(
        BASE,
        content=b"{" + b" " * 20_000 + b"}",
        headers={**auth, "Content-Type": "application/json"},
    )
    assert big.status_code == 413
    broken = api.client.post(
        BASE, content=b"{", headers={**auth, "Content-Type": "application/json"}
    )
    assert broken.status_code == 422
    assert post(api, BASE, key, ["https://siem.example.com/"]).status_code == 422


def test_rotation_keeps_the_old_secret_for_the_overlap(api):
    key = api.issue("acme", ("webhooks:write",)).token
    made = post(api, BASE, key, {"url": "https://siem.example.com/"}).json()
    rotated = call(api, "POST", f"{BASE}/{made['id']}/rotate-secret", key)
    assert rotated.status_code == 200
    body = rotated.json()
    assert body["secret"].startswith("whsec_") and body["secret"] != made["secret"]
    expires = datetime.fromisoformat(body["previous_secret_expires_at"])
    overlap = timedelta(seconds=api.settings.webhooks_rotation_overlap_s)
    assert abs(expires - (datetime.now(UTC) + overlap)) < timedelta(seconds=30)
    stored = api.control.webhook_endpoint(made["id"])
    box = SecretBox(api.settings.secrets_key)
    assert box.decrypt(stored.previous_secret_enc, made["id"], "secret") == made["secret"]


def test_deliveries_page_newest_first_with_keyset_cursors(api):
    key = api.issue("acme", ("webhooks:write",)).token
    eid = post(api, BASE, key, {"url": "https://siem.example.com/"}).json()["id"]
    codec = AvroCodec()
    t0 = datetime(2025, 6, 1, tzinfo=UTC)
    rows = []
    for i in range(25):
        a = WebhookAttempt(
            attempt_id=f"0198{i:04d}-0000-7000-8000-{uuid.uuid4().hex[:12]}",
            delivery_id=f"evt-{i}",
            endpoint_id=eid,
            tenant_id="acme",
            event_ids=(f"evt-{i}",),
            event_type="claim.viewed",
            attempt=1 + i % 3,
            attempted_at=t0 + timedelta(seconds=i // 2),  # ties on the time: the id decides
            status_code=503 if i % 3 else 200,
            latency_ms=1.5,
            outcome="retry_scheduled" if i % 3 else "delivered",
            error_class="http_503" if i % 3 else None,
            next_attempt_at=t0 + timedelta(minutes=5) if i % 3 else None,
        )
        rows.append(a)
    import pyarrow as pa

    from ledger.attempts import SCHEMA

    records = []
    for n, a in enumerate(rows):
        _, value = codec.decode(codec.encode("WebhookAttempt", a.to_avro()))
        records.append({**value, "kafka_partition": 0, "kafka_offset": n})
    cur = api.reader.connection.cursor()
    cur.register("_t", pa.Table.from_pylist(records, schema=SCHEMA))
    cur.execute("INSERT INTO webhook_attempts SELECT * FROM _t")
    cur.close()
    seen, cursor = [], None
    while True:
        params = {"limit": 10, **({"cursor": cursor} if cursor else {})}
        page = call(api, "GET", f"{BASE}/{eid}/deliveries", key, params=params)
        assert page.status_code == 200, page.text
        data = page.json()
        seen += data["deliveries"]
        cursor = data["page"]["next_cursor"]
        if cursor is None:
            break
        assert 'rel="next"' in page.headers["link"]
    assert len(seen) == 25 and len({d["attempt_id"] for d in seen}) == 25
    keys = [(d["attempted_at"], d["attempt_id"]) for d in seen]
    assert keys == sorted(keys, reverse=True)
    first = seen[0]
    assert set(first) >= {
        "delivery_id", "event_ids", "attempt", "status_code", "latency_ms",
        "error_class", "next_attempt_at", "outcome",
    }  # fmt: skip
    stats = call(api, "GET", f"{BASE}/{eid}", key).json()["stats"]
    assert stats["delivered"] == 9 and stats["retries_pending"] == 16
    other = api.issue("globex", ("webhooks:write",)).token
    other_eid = post(api, BASE, other, {"url": "https://siem.example.com/"}).json()["id"]
    forged = call(
        api, "GET", f"{BASE}/{other_eid}/deliveries", other, params={"cursor": cursor or "x.y"}
    )
    assert forged.status_code == 422
    assert call(api, "GET", f"{BASE}/{eid}/deliveries", key, params={"limit": 0}).status_code == 422
    assert call(api, "GET", f"{BASE}/{eid}/deliveries", key, params={"x": 1}).status_code == 422


def test_retry_and_replay_validate_their_input(api):
    key = api.issue("acme", ("webhooks:write",)).token
    eid = post(api, BASE, key, {"url": "https://siem.example.com/"}).json()["id"]
    missing = call(api, "POST", f"{BASE}/{eid}/deliveries/nope/retry", key)
    assert missing.status_code == 404
    for body, field in (
        ({"since": "2025-01-01"}, "since"),
        ({"since": "2025-01-01T00:00:00Z"}, "until"),
        ({"since": "2025-01-02T00:00:00Z", "until": "2025-01-01T00:00:00Z"}, "until"),
        ({"since": "2025-01-01T00:00:00Z", "until": "2025-01-02T00:00:00Z", "x": 1}, "body"),
    ):
        resp = post(api, f"{BASE}/{eid}/replay", key, body)
        assert resp.status_code == 422, (body, resp.text)
        assert field in [d["field"] for d in resp.json()["error"]["details"]]


def test_live_answers_match_the_openapi_document(api):
    import jsonschema_rs

    from query_api.openapi import openapi_document

    doc = openapi_document()

    def valid(name, value):
        root = {
            **doc,
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$ref": f"#/components/schemas/{name}",
        }
        jsonschema_rs.Draft202012Validator(root).validate(value)

    key = api.issue("acme", ("webhooks:write",)).token
    made = post(api, BASE, key, {"url": "https://siem.example.com/", "format": "ndjson"})
    valid("WebhookEndpointWithSecret", made.json())
    eid = made.json()["id"]
    valid("WebhookEndpointList", call(api, "GET", BASE, key).json())
    valid("WebhookEndpointDetail", call(api, "GET", f"{BASE}/{eid}", key).json())
    valid("WebhookDeliveryPage", call(api, "GET", f"{BASE}/{eid}/deliveries", key).json())
    valid("Error", post(api, BASE, key, {"url": "http://x"}).json())
    paths = openapi_document()["paths"]
    assert f"{BASE}/{{endpoint_id}}/replay" in paths
    assert set(paths[BASE]["post"]["responses"]) >= {"201", "401", "403", "413", "415", "422"}

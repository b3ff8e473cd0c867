"""The OpenAPI 3.1 document matches the routes and live answers; the reference page is local."""

from __future__ import annotations

import jsonschema_rs
import pytest

from query_api.filters import PARAMETERS
from query_api.openapi import openapi_document
from tests.api_support import Api, insert_events, make_event, running_api

PREFIX = "/api/v2/public"


@pytest.fixture
def api(settings):
    with running_api(settings) as api:
        yield api


def _validator(doc: dict, name: str):
    root = {
        **doc,
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$ref": f"#/components/schemas/{name}",
    }
    return jsonschema_rs.Draft202012Validator(root)


def test_document_is_served_and_describes_the_routes(api: Api):
    resp = api.client.get(f"{PREFIX}/openapi.json")
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["openapi"] == "3.1.0"
    assert doc["servers"] == [{"url": api.base_url}]
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        **doc["components"]["securitySchemes"]["bearerAuth"],
        "type": "http",
        "scheme": "bearer",
    }
    list_op = doc["paths"][f"{PREFIX}/audit/events"]["get"]
    assert {p["name"] for p in list_op["parameters"]} == set(PARAMETERS)
    assert set(list_op["responses"]) == {"200", "401", "403", "422", "429", "500", "503"}
    get_op = doc["paths"][f"{PREFIX}/audit/events/{{event_id}}"]["get"]
    assert set(get_op["responses"]) == {"200", "401", "403", "404", "422", "429", "500", "503"}
    assert "Retry-After" in list_op["responses"]["429"]["headers"]
    assert "WWW-Authenticate" in list_op["responses"]["401"]["headers"]
    routes = {getattr(r, "path", None) for r in api.app.routes}
    for path in doc["paths"]:
        assert path in routes
    assert doc == openapi_document(api.base_url)


def test_live_answers_match_the_schemas(api: Api):
    doc = openapi_document()
    events = [make_event("acme", i) for i in range(3)]
    insert_events(api.reader, events)
    key = api.issue("acme")
    page = api.get(f"{PREFIX}/audit/events", key.token, params={"limit": 2})
    _validator(doc, "EventPage").validate(page.json())
    one = api.get(f"{PREFIX}/audit/events/{events[0].event_id}", key.token)
    _validator(doc, "AuditEvent").validate(one.json())
    error = _validator(doc, "Error")
    for resp in (
        api.client.get(f"{PREFIX}/audit/events"),
        api.get(f"{PREFIX}/audit/events", key.token, params={"since": "2025-01-01"}),
        api.get(f"{PREFIX}/audit/events/nope", key.token),
    ):
        assert resp.status_code >= 400
        error.validate(resp.json())
        for header in ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"):
            assert resp.headers[header].isdigit()
    assert not _validator(doc, "EventPage").is_valid({"events": "nope"})


def test_reference_page_is_served_from_the_package_not_a_cdn(api: Api):
    page = api.client.get(f"{PREFIX}/docs")
    assert page.status_code == 200
    assert "SwaggerUIBundle" in page.text and f"{PREFIX}/openapi.json" in page.text
    assert "https://" not in page.text and "http://" not in page.text
    js = api.client.get(f"{PREFIX}/docs/static/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    css = api.client.get(f"{PREFIX}/docs/static/swagger-ui.css")
    assert css.status_code == 200 and "swagger" in css.text


def test_analytics_and_export_answers_match_the_schemas(api: Api):
    doc = openapi_document()
    insert_events(
        api.reader, [make_event("acme", i, action=("a.x", "b.y")[i % 2]) for i in range(9)]
    )
    key = api.issue("acme", ("audit:read", "audit:export"))
    window = {"since": "2025-03-01T00:00:00Z", "until": "2025-03-02T00:00:00Z"}
    for path, params, schema in (
        ("analytics/timeseries", {"group_by": "action"}, "TimeSeries"),
        ("analytics/timeseries", {"interval": "minute"}, "TimeSeries"),
        ("analytics/top", {"dimension": "target"}, "TopKeys"),
        ("analytics/summary", {}, "Summary"),
    ):
        resp = api.get(f"{PREFIX}/{path}", key.token, params={**window, **params})
        assert resp.status_code == 200, resp.text
        _validator(doc, schema).validate(resp.json())
    job = api.client.post(
        f"{PREFIX}/audit/exports", params=window, headers={"Authorization": f"Bearer {key.token}"}
    )
    assert job.status_code == 202
    _validator(doc, "ExportJob").validate(job.json())
    ops = {(path, method): op for path, item in doc["paths"].items() for method, op in item.items()}
    assert ops[(f"{PREFIX}/audit/export-files/{{job_id}}", "get")]["security"] == []
    for path in ("analytics/timeseries", "analytics/top", "analytics/summary", "audit/export"):
        params = {p["name"]: p for p in ops[(f"{PREFIX}/{path}", "get")]["parameters"]}
        assert params["since"]["required"] and params["until"]["required"]
        assert "cursor" not in params

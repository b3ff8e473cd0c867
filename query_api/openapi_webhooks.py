"""The webhook part of the OpenAPI document: paths and schemas of ``query_api.webhooks``."""

from __future__ import annotations

from typing import Any

from webhooks.endpoints import MAX_DESCRIPTION, MAX_EVENT_TYPES, MAX_PATTERN, MAX_SPLUNK_TOKEN
from webhooks.urls import MAX_URL

_NULLABLE = {"type": ["string", "null"]}
_TIME = {"type": "string", "format": "date-time"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_ENDPOINT_PROPS: dict[str, Any] = {
    "id": {"type": "string", "pattern": "^we_[0-9a-f]{24}$"},
    "url": {"type": "string"},
    "description": _NULLABLE,
    "event_types": {"type": "array", "items": {"type": "string"}},
    "format": {"type": "string", "enum": ["json", "ndjson", "splunk_hec"]},
    "enabled": {"type": "boolean"},
    "disabled_reason": {"type": ["string", "null"], "description": "by_tenant, gone or failing"},
    "has_splunk_token": {"type": "boolean"},
    "previous_secret_expires_at": {"type": ["string", "null"], "format": "date-time"},
    "failing_since": {"type": ["string", "null"], "format": "date-time"},
    "created_at": _TIME,
    "updated_at": _TIME,
}
_FIELDS: dict[str, Any] = {
    "url": {"type": "string", "minLength": 1, "maxLength": MAX_URL, "format": "uri"},
    "description": {"type": ["string", "null"], "maxLength": MAX_DESCRIPTION},
    "event_types": {
        "type": "array",
        "maxItems": MAX_EVENT_TYPES,
        "items": {"type": "string", "maxLength": MAX_PATTERN, "examples": ["claim.*"]},
    },
    "format": {"type": "string", "enum": ["json", "ndjson", "splunk_hec"], "default": "json"},
    "splunk_token": {"type": ["string", "null"], "maxLength": MAX_SPLUNK_TOKEN},
    "enabled": {"type": "boolean", "default": True},
}

SCHEMAS: dict[str, Any] = {
    "WebhookEndpoint": {
        "type": "object",
        "required": list(_ENDPOINT_PROPS),
        "properties": _ENDPOINT_PROPS,
    },
    "WebhookEndpointWithSecret": {
        "allOf": [
            _ref("WebhookEndpoint"),
            {
                "type": "object",
                "required": ["secret"],
                "properties": {"secret": {"type": "string", "pattern": "^whsec_"}},
            },
        ]
    },
    "WebhookEndpointDetail": {
        "allOf": [
            _ref("WebhookEndpoint"),
            {
                "type": "object",
                "required": ["stats"],
                "properties": {
                    "stats": {
                        "type": "object",
                        "additionalProperties": {"type": "integer", "minimum": 0},
                    }
                },
            },
        ]
    },
    "WebhookEndpointList": {
        "type": "object",
        "required": ["endpoints"],
        "properties": {"endpoints": {"type": "array", "items": _ref("WebhookEndpoint")}},
    },
    "WebhookEndpointCreate": {
        "type": "object",
        "required": ["url"],
        "additionalProperties": False,
        "properties": _FIELDS,
    },
    "WebhookEndpointUpdate": {
        "type": "object",
        "additionalProperties": False,
        "properties": _FIELDS,
    },
    "WebhookAttempt": {
        "type": "object",
        "required": [
            "attempt_id",
            "delivery_id",
            "event_ids",
            "event_type",
            "attempt",
            "trigger",
            "attempted_at",
            "status_code",
            "latency_ms",
            "outcome",
            "error_class",
            "next_attempt_at",
        ],
        "properties": {
            "attempt_id": {"type": "string"},
            "delivery_id": {"type": "string", "description": "the webhook-id"},
            "event_ids": {"type": "array", "items": {"type": "string"}},
            "event_type": {"type": "string"},
            "attempt": {"type": "integer", "minimum": 1},
            "trigger": {"type": "string", "enum": ["event", "retry", "manual", "replay", "test"]},
            "attempted_at": _TIME,
            "status_code": {"type": ["integer", "null"]},
            "latency_ms": {"type": ["number", "null"]},
            "outcome": {
                "type": "string",
                "enum": ["delivered", "retry_scheduled", "failed", "dropped"],
            },
            "error_class": _NULLABLE,
            "next_attempt_at": {"type": ["string", "null"], "format": "date-time"},
        },
    },
    "WebhookDeliveryPage": {
        "type": "object",
        "required": ["deliveries", "page"],
        "properties": {
            "deliveries": {"type": "array", "items": _ref("WebhookAttempt")},
            "page": {
                "type": "object",
                "required": ["next_cursor", "limit"],
                "properties": {"next_cursor": _NULLABLE, "limit": {"type": "integer"}},
            },
        },
    },
    "WebhookAccepted": {"type": "object", "additionalProperties": True},
    "WebhookReplay": {
        "type": "object",
        "required": ["since", "until"],
        "additionalProperties": False,
        "properties": {"since": _TIME, "until": _TIME},
    },
}


def paths(prefix: str, errors: dict[str, Any], headers: dict[str, Any]) -> dict[str, Any]:
    """The webhook paths; ``errors`` are the common error answers, ``headers`` the rate ones."""

    def ok(status: str, description: str, schema: str | None) -> dict[str, Any]:
        answer: dict[str, Any] = {"description": description, "headers": headers}
        if schema is not None:
            answer["content"] = {"application/json": {"schema": _ref(schema)}}
        return {status: answer}

    def op(
        op_id: str,
        summary: str,
        answers: dict[str, Any],
        *,
        body: str | None = None,
        params: list[dict[str, Any]] | None = None,
        extra: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "operationId": op_id,
            "summary": summary,
            "description": "Requires scope `webhooks:write`. Another tenant's endpoint is a 404.",
            "responses": {
                **answers,
                **{k: errors[k] for k in ("401", "403", "422", "429", "500", "503", *extra)},
            },
        }
        if params:
            out["parameters"] = params
        if body is not None:
            out["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref(body)}},
            }
            out["responses"].update({k: errors[k] for k in ("413", "415")})
        return out

    eid = {
        "name": "endpoint_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "maxLength": 64},
    }
    did = {
        "name": "delivery_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "maxLength": 128},
    }
    base = f"{prefix}/webhooks/endpoints"
    one = f"{base}/{{endpoint_id}}"
    page = [
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
        },
        {
            "name": "cursor",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "minLength": 1, "maxLength": 512},
        },
    ]
    return {
        base: {
            "post": op(
                "createWebhookEndpoint",
                "Create an endpoint (its secret is shown once)",
                ok("201", "Created.", "WebhookEndpointWithSecret"),
                body="WebhookEndpointCreate",
            ),
            "get": op(
                "listWebhookEndpoints",
                "The tenant's endpoints",
                ok("200", "The endpoints.", "WebhookEndpointList"),
            ),
        },
        one: {
            "get": op(
                "getWebhookEndpoint",
                "One endpoint, with delivery stats",
                ok("200", "The endpoint.", "WebhookEndpointDetail"),
                params=[eid],
                extra=("404",),
            ),
            "patch": op(
                "updateWebhookEndpoint",
                "Change an endpoint",
                ok("200", "The endpoint.", "WebhookEndpoint"),
                params=[eid],
                body="WebhookEndpointUpdate",
                extra=("404",),
            ),
            "delete": op(
                "deleteWebhookEndpoint",
                "Delete an endpoint",
                ok("204", "Deleted.", None),
                params=[eid],
                extra=("404",),
            ),
        },
        f"{one}/rotate-secret": {
            "post": op(
                "rotateWebhookSecret",
                "A new signing secret; the old one signs for the overlap",
                ok("200", "The endpoint and its new secret.", "WebhookEndpointWithSecret"),
                params=[eid],
                extra=("404",),
            ),
        },
        f"{one}/test": {
            "post": op(
                "testWebhookEndpoint",
                "Send a signed velora.ping",
                ok("202", "Queued.", "WebhookAccepted"),
                params=[eid],
                extra=("404",),
            ),
        },
        f"{one}/deliveries": {
            "get": op(
                "listWebhookDeliveries",
                "The attempt log, newest first",
                ok("200", "One page of attempts.", "WebhookDeliveryPage"),
                params=[eid, *page],
                extra=("404",),
            ),
        },
        f"{one}/deliveries/{{delivery_id}}/retry": {
            "post": op(
                "retryWebhookDelivery",
                "Send one delivery again",
                ok("202", "Queued.", "WebhookAccepted"),
                params=[eid, did],
                extra=("404",),
            ),
        },
        f"{one}/replay": {
            "post": op(
                "replayWebhookEvents",
                "Send the matching events of a time range again",
                ok("202", "Queued.", "WebhookAccepted"),
                params=[eid],
                body="WebhookReplay",
                extra=("404",),
            ),
        },
    }

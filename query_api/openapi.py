"""The OpenAPI 3.1 document of the public API, written by hand to match the behaviour.

``tests/test_openapi.py`` checks it against the routes and validates live answers
against it; ``tests/test_schemathesis.py`` fuzzes the running server with it.
"""

from __future__ import annotations

from typing import Any

from query_api import openapi_webhooks
from query_api.filters import DEFAULT_LIMIT, MAX_LIMIT
from query_api.tokens import SCOPES
from schemas.limits import MAX_FILTER_TEXT
from schemas.rules import CONTROL_CLASS

PREFIX = "/api/v2/public"
_TEXT = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_FILTER_TEXT,
    "pattern": f"^[^{CONTROL_CLASS}]+$",
}
_NULLABLE_STRING = {"type": ["string", "null"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _header(description: str, schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": schema}


_RATE_HEADERS = {
    "RateLimit-Limit": {"$ref": "#/components/headers/RateLimit-Limit"},
    "RateLimit-Remaining": {"$ref": "#/components/headers/RateLimit-Remaining"},
    "RateLimit-Reset": {"$ref": "#/components/headers/RateLimit-Reset"},
}


def _error(description: str, **extra_headers: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {**_RATE_HEADERS, **extra_headers},
        "content": {"application/json": {"schema": _ref("Error")}},
    }


_ERRORS = {
    "401": _error(
        "Missing, malformed, unknown, revoked or expired API key, or a key of the other "
        "environment (vlk_live_ / vlk_test_).",
        **{"WWW-Authenticate": _header("Always `Bearer`.", {"type": "string"})},
    ),
    "403": _error(
        "The API key lacks the scope this operation needs (named in the message), or the call "
        "comes from outside the key's IP allow-list (`details[].field` is `client_ip`)."
    ),
    "422": _error("A query parameter is invalid (named in `details[].field`)."),
    "429": _error(
        "Rate limit exceeded for this key, or too many failed authentications from this client "
        "or for this key id (valid keys are never refused by the latter).",
        **{"Retry-After": _header("Seconds to wait before retrying.", {"type": "integer"})},
    ),
    "500": _error("Unexpected server error (no internals in the body)."),
    "503": _error(
        "The ledger or the API-key state is temporarily unavailable (loading, or stale), or "
        "the read could not be recorded in the audit trail.",
        **{"Retry-After": _header("Seconds to wait before retrying.", {"type": "integer"}, False)},
    ),
}


def _param(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


_TIME = {"type": "string", "format": "date-time", "maxLength": MAX_FILTER_TEXT}
_LIST_PARAMETERS = [
    _param(
        "limit",
        f"Events per page, 1..{MAX_LIMIT}.",
        {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT},
    ),
    _param(
        "cursor",
        "`page.next_cursor` of the previous page, verbatim, with the same filters. "
        "Opaque; a tampered cursor or one from other filters answers 422.",
        _TEXT,
    ),
    _param(
        "since",
        "Only events with `occurred_at >= since`. An RFC 3339 date-time "
        "(`2025-01-31T00:00:00Z` or `...+01:00`); anything looser (no offset, a date "
        "alone, ISO week dates, the basic format) is a 422.",
        _TIME,
    ),
    _param("until", "Only events with `occurred_at < until`. An RFC 3339 date-time.", _TIME),
    _param(
        "action",
        "Exact action (`claim.viewed`) or a prefix ending in `.*` (`claim.*`).",
        {**_TEXT, "pattern": f"^[^*{CONTROL_CLASS}]+(\\.\\*)?$"},
    ),
    _param("actor_id", "Exact actor id.", _TEXT),
    _param("actor_type", "Exact actor type (`user`, `service`, `api_key`, `system`).", _TEXT),
    _param("target_id", "Events with a target of this id.", _TEXT),
    _param(
        "target_type",
        "Events with a target of this type (with `target_id`: the same target).",
        _TEXT,
    ),
    _param(
        "outcome",
        "Outcome result.",
        {"type": "string", "enum": ["success", "failure", "denied", "unknown"]},
    ),
    _param("source", "Exact emitting service.", _TEXT),
]

_SCHEMAS: dict[str, Any] = {
    "Actor": {
        "type": "object",
        "required": ["type", "id", "name", "email", "ip", "user_agent"],
        "properties": {
            "type": {"type": "string", "description": "user, service, api_key, system"},
            "id": {"type": "string"},
            "name": _NULLABLE_STRING,
            "email": _NULLABLE_STRING,
            "ip": _NULLABLE_STRING,
            "user_agent": _NULLABLE_STRING,
        },
    },
    "Target": {
        "type": "object",
        "required": ["type", "id", "name"],
        "properties": {
            "type": {"type": "string"},
            "id": {"type": "string"},
            "name": _NULLABLE_STRING,
        },
    },
    "Outcome": {
        "type": "object",
        "required": ["result", "reason"],
        "properties": {
            "result": {"type": "string", "enum": ["success", "failure", "denied", "unknown"]},
            "reason": _NULLABLE_STRING,
        },
    },
    "AuditEvent": {
        "type": "object",
        "description": "One action taken on the tenant's data; mirrors the Avro AuditEvent.",
        "required": [
            "event_id",
            "tenant_id",
            "occurred_at",
            "received_at",
            "action",
            "crud",
            "category",
            "actor",
            "targets",
            "outcome",
            "request_id",
            "source",
            "metadata",
            "schema_version",
        ],
        "properties": {
            "event_id": {"type": "string", "description": "UUIDv7"},
            "tenant_id": {"type": "string"},
            "occurred_at": {
                "type": "string",
                "format": "date-time",
                "description": "UTC, ISO-8601 with +00:00",
            },
            "received_at": {"type": "string", "format": "date-time"},
            "action": {"type": "string", "examples": ["claim.viewed"]},
            "crud": {"type": "string", "enum": ["create", "read", "update", "delete", "other"]},
            "category": _NULLABLE_STRING,
            "actor": _ref("Actor"),
            "targets": {"type": "array", "items": _ref("Target")},
            "outcome": _ref("Outcome"),
            "request_id": _NULLABLE_STRING,
            "source": {"type": "string"},
            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
            "schema_version": {"type": "integer"},
        },
    },
    "EventPage": {
        "type": "object",
        "required": ["events", "page"],
        "properties": {
            "events": {
                "type": "array",
                "items": _ref("AuditEvent"),
                "description": "Newest first by (occurred_at, event_id).",
            },
            "page": {
                "type": "object",
                "required": ["next_cursor", "limit"],
                "properties": {
                    "next_cursor": {
                        "type": ["string", "null"],
                        "description": "Pass as `cursor` for the next page; null on the last page.",
                    },
                    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
                },
            },
        },
    },
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["type", "message", "details"],
                "properties": {
                    "type": {"type": "string", "examples": ["validation_error"]},
                    "message": {"type": "string"},
                    "details": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["field", "reason"],
                            "properties": {
                                "field": {"type": "string"},
                                "reason": {"type": "string"},
                                "index": {"type": "integer"},
                            },
                        },
                    },
                },
            }
        },
    },
}


def openapi_document(server_url: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document; ``server_url`` becomes its only server when given."""
    from query_api import openapi_extra  # analytics and exports (it imports this module)

    list_errors = dict(_ERRORS)
    get_errors = dict(_ERRORS)
    get_errors["422"] = _error("A query parameter was given; this operation takes none.")
    get_errors["404"] = _error("No such event for this tenant (also another tenant's event).")
    webhook_errors = {
        **_ERRORS,
        "404": _error("No such endpoint or delivery for this tenant (also another tenant's)."),
        "413": _error("The body is over 16 KiB."),
        "415": _error("The body is not application/json."),
        "422": _error("A field is invalid (named in `details[].field`; `url` for the SSRF rules)."),
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Velora Public API",
            "version": "2.0.0",
            "description": "Programmatic access to your tenant's audit trail. "
            "Authenticate with `Authorization: Bearer vlk_live_<8 hex>_<32 hex>`.",
        },
        "servers": [{"url": server_url or "https://api.velora.health"}],
        "security": [{"bearerAuth": []}],
        "paths": {
            f"{PREFIX}/audit/events": {
                "get": {
                    "operationId": "listAuditEvents",
                    "summary": "List audit events, newest first",
                    "description": "Requires scope `audit:read`. Keyset-paginated; paging "
                    "while new events arrive neither skips nor repeats. Unknown query "
                    "parameters answer 422.",
                    "parameters": _LIST_PARAMETERS,
                    "responses": {
                        "200": {
                            "description": "One page of events.",
                            "headers": {
                                **_RATE_HEADERS,
                                "Link": _header(
                                    '`<next page URL>; rel="next"` when there is a next page.',
                                    {"type": "string"},
                                    False,
                                ),
                            },
                            "content": {"application/json": {"schema": _ref("EventPage")}},
                        },
                        **list_errors,
                    },
                }
            },
            f"{PREFIX}/audit/events/{{event_id}}": {
                "get": {
                    "operationId": "getAuditEvent",
                    "summary": "One audit event",
                    "description": "Requires scope `audit:read`. Another tenant's event is a 404.",
                    "parameters": [
                        {
                            "name": "event_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 128},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "The event.",
                            "headers": _RATE_HEADERS,
                            "content": {"application/json": {"schema": _ref("AuditEvent")}},
                        },
                        **get_errors,
                    },
                }
            },
            **openapi_extra.paths(PREFIX),
            **openapi_webhooks.paths(PREFIX, webhook_errors, _RATE_HEADERS),
        },
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "vlk_live_<8 hex key id>_<32 hex secret> (50 characters)",
                    "description": f"API keys are minted by Velora operators. Scopes: "
                    f"{', '.join(SCOPES)}.",
                }
            },
            "headers": {
                "RateLimit-Limit": _header("Requests allowed in a burst.", {"type": "integer"}),
                "RateLimit-Remaining": _header("Requests left now.", {"type": "integer"}),
                "RateLimit-Reset": _header(
                    "Seconds until the allowance is full again.", {"type": "integer"}
                ),
            },
            "schemas": {**_SCHEMAS, **openapi_extra.SCHEMAS, **openapi_webhooks.SCHEMAS},
        },
    }

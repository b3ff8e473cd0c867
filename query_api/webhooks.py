"""Routes: webhook endpoint management under ``/api/v2/public/webhooks/endpoints``.

Every route needs the ``webhooks:write`` scope; the tenant is always the key's, and
another tenant's endpoint id answers 404.

============================================  ======================================
``POST   /webhooks/endpoints``                create; the answer holds ``secret``
                                              (``whsec_...``), shown this once
``GET    /webhooks/endpoints``                the tenant's endpoints
``GET    /webhooks/endpoints/{id}``           one endpoint, with delivery ``stats``
``PATCH  /webhooks/endpoints/{id}``           change fields; ``enabled: true`` also
                                              lifts a dispatcher's disabling
``DELETE /webhooks/endpoints/{id}``           delete (204)
``POST   .../{id}/rotate-secret``             new secret; the old one also signs for
                                              ``VELORA_WEBHOOKS_ROTATION_OVERLAP_S``
``POST   .../{id}/test``                      a signed ``velora.ping`` delivery (202)
``GET    .../{id}/deliveries``                the attempt log, newest first, keyset
                                              cursors
``POST   .../{id}/deliveries/{did}/retry``    send one delivery again (202)
``POST   .../{id}/replay``                    ``{"since", "until"}``: send the
                                              matching events of that range again
============================================  ======================================

A ``url`` is checked by :func:`webhooks.urls.check_destination` (422 naming
``url``); bodies are JSON objects of at most :data:`MAX_BODY` bytes (413), sent as
``application/json`` (415). Changes are written to the control topic and the
answer comes once this node's control state has folded them (read-your-writes).
Tests, retries and replays are jobs on the request topic that the dispatchers
take at once.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import uuid_utils
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ledger.control import ControlState
from query_api import cursor, webhook_store
from query_api.auth import Principal, require_scope
from query_api.filters import parse_time
from query_api.read_audit import AuditAction
from query_api.serialize import iso
from schemas.events import Target, WebhookEndpoint, WebhookHealth, WebhookJob
from velora.errors import (
    ErrorDetail,
    NotFound,
    PayloadTooLarge,
    Unavailable,
    UnsupportedMediaType,
    ValidationError,
)
from velora.settings import Settings
from webhooks import envelope
from webhooks.endpoints import (
    ENDPOINT_ID_RE,
    MAX_ENDPOINTS_PER_TENANT,
    matches,
    new_record,
    parse_fields,
    public_view,
    rotated_record,
    updated_record,
)
from webhooks.secrets import SecretBox
from webhooks.urls import check_destination, system_resolver

SCOPE = "webhooks:write"
MAX_BODY = 16 * 1024
DEFAULT_DELIVERIES = 20
MAX_DELIVERIES = 100
MAX_REPLAY_EVENTS = 100_000
FOLD_WAIT_S = 10.0


# -- plumbing -----------------------------------------------------------------------
def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def _control(request: Request) -> ControlState:
    return request.app.state.control  # type: ignore[no-any-return]


def _writer(request: Request) -> webhook_store.RequestWriter:
    return request.app.state.webhook_writer  # type: ignore[no-any-return]


def _box(request: Request) -> SecretBox:
    box = getattr(request.app.state, "secret_box", None)
    if box is None:
        box = request.app.state.secret_box = SecretBox(_settings(request).secrets_key)
    return box


async def _read(request: Request, fn: Any) -> Any:
    reader = getattr(request.app.state, "ledger", None)
    if reader is None:
        raise Unavailable("the ledger is not available on this node", retry_after=5)
    return await reader.read(fn)


async def _body(request: Request) -> Any:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise UnsupportedMediaType(
            "send the body as application/json",
            (ErrorDetail("Content-Type", "must be application/json"),),
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise PayloadTooLarge(f"the body is over {MAX_BODY} bytes")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise PayloadTooLarge(f"the body is over {MAX_BODY} bytes")
    try:
        return json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise ValidationError(
            "the body is not valid JSON", (ErrorDetail("body", "invalid JSON"),)
        ) from None


def _no_query(request: Request, allowed: tuple[str, ...] = ()) -> None:
    for name, _ in request.query_params.multi_items():
        if name not in allowed:
            raise ValidationError(
                f"unknown query parameter {name[:64]!r}",
                (ErrorDetail(name[:64], "unknown parameter"),),
            )


def _endpoint(request: Request, principal: Principal) -> WebhookEndpoint:
    endpoint_id = request.path_params["endpoint_id"]
    request.scope["state"]["audit_target"] = _target(endpoint_id[:64])
    record = None
    if ENDPOINT_ID_RE.fullmatch(endpoint_id):
        record = _control(request).webhook_endpoint(endpoint_id)
    if record is None or record.tenant_id != principal.tenant_id:
        raise NotFound("no such webhook endpoint")
    return record


def _audit_as(request: Request, action: str, crud: str) -> None:
    """Record this call in the tenant's trail as ``action`` (set before anything can fail)."""
    request.scope["state"]["audit_action"] = AuditAction(action, crud, "webhooks")


def _target(endpoint_id: str) -> Target:
    return Target("webhook_endpoint", endpoint_id)


async def _folded(request: Request, offset: int) -> None:
    control = _control(request)
    if not await asyncio.to_thread(control.wait_for_offset, offset, FOLD_WAIT_S):
        raise Unavailable("the change is written but not yet visible here", retry_after=2)


async def _check_url(request: Request, url: str) -> None:
    settings = _settings(request)
    resolve = getattr(request.app.state, "webhook_resolver", None) or system_resolver
    await asyncio.to_thread(
        check_destination, url, settings.webhooks_allow_insecure_loopback, resolve
    )


def _view(request: Request, record: WebhookEndpoint) -> dict[str, Any]:
    return public_view(record, _control(request).webhook_health(record.endpoint_id))


# -- endpoints ---------------------------------------------------------------------
async def create_endpoint(request: Request) -> JSONResponse:
    """Create an endpoint; its signing secret is in this answer only."""
    _audit_as(request, "webhook_endpoint.created", "create")
    principal = require_scope(request, SCOPE)
    _no_query(request)
    settings = _settings(request)
    fields = parse_fields(
        await _body(request),
        creating=True,
        allow_insecure_loopback=settings.webhooks_allow_insecure_loopback,
    )
    if len(_control(request).webhook_endpoints(principal.tenant_id)) >= MAX_ENDPOINTS_PER_TENANT:
        raise ValidationError(
            f"a tenant has at most {MAX_ENDPOINTS_PER_TENANT} webhook endpoints",
            (ErrorDetail("endpoints", f"at most {MAX_ENDPOINTS_PER_TENANT}"),),
        )
    await _check_url(request, fields["url"])
    record, secret = new_record(_box(request), principal.tenant_id, fields, datetime.now(UTC))
    writer = _writer(request)
    offset = await asyncio.to_thread(writer.control().put_webhook_endpoint, record)
    await _folded(request, offset)
    request.scope["state"]["audit_target"] = _target(record.endpoint_id)
    return JSONResponse({**_view(request, record), "secret": secret}, status_code=201)


async def list_endpoints(request: Request) -> JSONResponse:
    """The tenant's endpoints, oldest first."""
    principal = require_scope(request, SCOPE)
    _no_query(request)
    control = _control(request)
    views = [_view(request, e) for e in control.webhook_endpoints(principal.tenant_id)]
    return JSONResponse({"endpoints": views})


async def get_endpoint(request: Request) -> JSONResponse:
    """One endpoint and its delivery stats (from the attempt log)."""
    principal = require_scope(request, SCOPE)
    _no_query(request)
    record = _endpoint(request, principal)
    stats = await _read(
        request,
        lambda cur: webhook_store.attempt_stats(cur, principal.tenant_id, record.endpoint_id),
    )
    return JSONResponse({**_view(request, record), "stats": stats})


async def update_endpoint(request: Request) -> JSONResponse:
    """Change some fields of an endpoint."""
    _audit_as(request, "webhook_endpoint.updated", "update")
    principal = require_scope(request, SCOPE)
    _no_query(request)
    settings = _settings(request)
    record = _endpoint(request, principal)
    fields = parse_fields(
        await _body(request),
        creating=False,
        allow_insecure_loopback=settings.webhooks_allow_insecure_loopback,
    )
    if "url" in fields:
        await _check_url(request, fields["url"])
    now = datetime.now(UTC)
    updated = updated_record(_box(request), record, fields, now)
    control = _writer(request).control()
    offset = await asyncio.to_thread(control.put_webhook_endpoint, updated)
    health = _control(request).webhook_health(record.endpoint_id)
    if fields.get("enabled") is True and health is not None and health.disabled_at is not None:
        cleared = WebhookHealth(record.endpoint_id, record.tenant_id, now)
        offset = await asyncio.to_thread(control.put_webhook_health, cleared)
    await _folded(request, offset)
    return JSONResponse(_view(request, updated))


async def delete_endpoint(request: Request) -> Response:
    """Delete an endpoint (its attempt log stays readable until the node is rebuilt)."""
    _audit_as(request, "webhook_endpoint.deleted", "delete")
    principal = require_scope(request, SCOPE)
    _no_query(request)
    record = _endpoint(request, principal)
    control = _writer(request).control()
    offset = await asyncio.to_thread(control.delete_webhook_endpoint, record.endpoint_id)
    await _folded(request, offset)
    return Response(status_code=204)


async def rotate_secret(request: Request) -> JSONResponse:
    """A new signing secret; the old one keeps signing during the overlap."""
    _audit_as(request, "webhook_endpoint.secret_rotated", "update")
    principal = require_scope(request, SCOPE)
    _no_query(request)
    record = _endpoint(request, principal)
    overlap = timedelta(seconds=_settings(request).webhooks_rotation_overlap_s)
    rotated, secret = rotated_record(_box(request), record, overlap, datetime.now(UTC))
    control = _writer(request).control()
    offset = await asyncio.to_thread(control.put_webhook_endpoint, rotated)
    await _folded(request, offset)
    return JSONResponse({**_view(request, rotated), "secret": secret})


def _job(
    record: WebhookEndpoint, delivery_id: str, trigger: str, events: list[bytes], attempt: int = 1
) -> WebhookJob:
    now = datetime.now(UTC)
    return WebhookJob(
        delivery_id=delivery_id,
        endpoint_id=record.endpoint_id,
        tenant_id=record.tenant_id,
        attempt=attempt,
        due_at=now,
        created_at=now,
        trigger=trigger,
        events=tuple(events),
    )


async def test_endpoint(request: Request) -> JSONResponse:
    """Send a signed ``velora.ping`` delivery through the dispatchers."""
    _audit_as(request, "webhook_endpoint.tested", "other")
    principal = require_scope(request, SCOPE)
    _no_query(request)
    record = _endpoint(request, principal)
    ping_id = f"ping_{uuid_utils.uuid7().hex}"
    await asyncio.to_thread(_writer(request).send_jobs, [_job(record, ping_id, "test", [])])
    return JSONResponse({"delivery_id": ping_id, "type": envelope.PING}, status_code=202)


# -- deliveries ----------------------------------------------------------------------
def _attempt_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "attempt_id": row["attempt_id"],
        "delivery_id": row["delivery_id"],
        "event_ids": list(row["event_ids"]),
        "event_type": row["event_type"],
        "attempt": row["attempt"],
        "trigger": row["trigger"],
        "attempted_at": iso(row["attempted_us"]),
        "status_code": row["status_code"],
        "latency_ms": row["latency_ms"],
        "outcome": row["outcome"],
        "error_class": row["error_class"],
        "next_attempt_at": None if row["next_us"] is None else iso(row["next_us"]),
    }


async def list_deliveries(request: Request) -> JSONResponse:
    """The endpoint's attempts, newest first, with a keyset cursor."""
    principal = require_scope(request, SCOPE)
    _no_query(request, ("limit", "cursor"))
    record = _endpoint(request, principal)
    params = request.query_params
    raw_limit = params.get("limit", str(DEFAULT_DELIVERIES))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_DELIVERIES:
        raise ValidationError(
            f"limit must be an integer from 1 to {MAX_DELIVERIES}",
            (ErrorDetail("limit", f"1..{MAX_DELIVERIES}"),),
        )
    limit = int(raw_limit)
    secret = _settings(request).cursor_secret
    fingerprint = f"webhook_deliveries:{record.endpoint_id}"
    after = None
    if params.get("cursor") is not None:
        after = cursor.decode(secret, principal.tenant_id, fingerprint, params["cursor"])
    rows = await _read(
        request,
        lambda cur: webhook_store.list_attempts(
            cur, principal.tenant_id, record.endpoint_id, after, limit + 1
        ),
    )
    page, more = rows[:limit], len(rows) > limit
    next_cursor = None
    headers: dict[str, str] = {}
    if more:
        last = page[-1]
        position = cursor.Position(last["attempted_us"], last["attempt_id"])
        next_cursor = cursor.encode(secret, principal.tenant_id, fingerprint, position)
        query = urlencode({"limit": limit, "cursor": next_cursor})
        headers["Link"] = f'<{request.url.replace(query=query)}>; rel="next"'
    body = {
        "deliveries": [_attempt_json(r) for r in page],
        "page": {"next_cursor": next_cursor, "limit": limit},
    }
    return JSONResponse(body, headers=headers)


async def retry_delivery(request: Request) -> JSONResponse:
    """Send one delivery (as its attempts name it) again, now."""
    _audit_as(request, "webhook_delivery.retried", "other")
    principal = require_scope(request, SCOPE)
    _no_query(request)
    record = _endpoint(request, principal)
    delivery_id = request.path_params["delivery_id"]
    attempts = []
    if len(delivery_id) <= 128 and delivery_id.isprintable():
        attempts = await _read(
            request,
            lambda cur: webhook_store.delivery_attempts(
                cur, principal.tenant_id, record.endpoint_id, delivery_id
            ),
        )
    if not attempts:
        raise NotFound("no such delivery for this endpoint")
    last = attempts[0]
    writer = _writer(request)
    raw: list[bytes] = []
    if last["event_type"] != envelope.PING:
        events = await _read(
            request,
            lambda cur: webhook_store.events_by_id(
                cur, principal.tenant_id, list(last["event_ids"])
            ),
        )
        raw = [writer.encode_event(e) for e in events]
        if not raw:
            raise NotFound("the events of this delivery are not in the ledger")
    job = _job(record, delivery_id, "manual", raw, attempt=int(last["attempt"]) + 1)
    await asyncio.to_thread(writer.send_jobs, [job])
    return JSONResponse({"delivery_id": delivery_id, "events": len(raw)}, status_code=202)


async def replay(request: Request) -> JSONResponse:
    """Send the endpoint's matching events of ``[since, until)`` again."""
    _audit_as(request, "webhook_endpoint.replayed", "other")
    principal = require_scope(request, SCOPE)
    _no_query(request)
    record = _endpoint(request, principal)
    body = await _body(request)
    if not isinstance(body, dict) or set(body) - {"since", "until"}:
        raise ValidationError(
            'the body must be {"since": ..., "until": ...}',
            (ErrorDetail("body", "only since and until"),),
        )
    errors, bounds = [], {}
    for name in ("since", "until"):
        value = body.get(name)
        if not isinstance(value, str) or len(value) > 64:
            errors.append(ErrorDetail(name, "is required: ISO-8601 with an offset"))
            continue
        try:
            bounds[name] = parse_time(name, value)
        except ValidationError as exc:
            errors.extend(exc.details)
    if not errors and bounds["since"] >= bounds["until"]:
        errors.append(ErrorDetail("until", "must be after since"))
    if errors:
        raise ValidationError("invalid replay range", tuple(errors))
    events = await _read(
        request,
        lambda cur: webhook_store.events_in_range(
            cur, principal.tenant_id, bounds["since"], bounds["until"], MAX_REPLAY_EVENTS + 1
        ),
    )
    if len(events) > MAX_REPLAY_EVENTS:
        raise ValidationError(
            f"the range holds more than {MAX_REPLAY_EVENTS} events; replay a narrower one",
            (ErrorDetail("until", "range too large"),),
        )
    events = [e for e in events if matches(record.event_types, e.action)]
    writer = _writer(request)
    size = 1 if record.format == "json" else _settings(request).webhooks_batch_max_events
    jobs = []
    for i in range(0, len(events), size):
        chunk = events[i : i + size]
        ids = [e.event_id for e in chunk]
        delivery_id = ids[0] if size == 1 else envelope.batch_id(record.endpoint_id, ids)
        jobs.append(_job(record, delivery_id, "replay", [writer.encode_event(e) for e in chunk]))
    if jobs:
        await asyncio.to_thread(writer.send_jobs, jobs)
    replay_id = f"replay_{uuid.uuid4().hex}"
    return JSONResponse({"replay_id": replay_id, "events": len(events)}, status_code=202)


def webhook_routes(prefix: str) -> list[Route]:
    """The webhook management routes under ``prefix`` (``/api/v2/public``)."""
    base = f"{prefix}/webhooks/endpoints"
    one = f"{base}/{{endpoint_id}}"
    return [
        Route(base, create_endpoint, methods=["POST"]),
        Route(base, list_endpoints, methods=["GET"]),
        Route(one, get_endpoint, methods=["GET"]),
        Route(one, update_endpoint, methods=["PATCH"]),
        Route(one, delete_endpoint, methods=["DELETE"]),
        Route(f"{one}/rotate-secret", rotate_secret, methods=["POST"]),
        Route(f"{one}/test", test_endpoint, methods=["POST"]),
        Route(f"{one}/deliveries", list_deliveries, methods=["GET"]),
        Route(f"{one}/deliveries/{{delivery_id}}/retry", retry_delivery, methods=["POST"]),
        Route(f"{one}/replay", replay, methods=["POST"]),
    ]

"""What a delivery carries: the envelope of one event and the body of each format.

The envelope of one event is ``{"id", "type", "created", "tenant_id", "data"}``:
``id`` is the event id, ``type`` its action, ``created`` its ``occurred_at``
(ISO-8601, ``+00:00``) and ``data`` the event in the public API's shape (the same
JSON as ``GET /api/v2/public/audit/events/{id}``; a test compares the two). A test
delivery is a ``velora.ping`` envelope whose ``data`` names the endpoint.

Bodies, by the endpoint's ``format``:

- ``json``: one envelope per POST (``application/json``).
- ``ndjson``: one envelope per line, a batch per POST (``application/x-ndjson``).
- ``splunk_hec``: HEC event objects one after another, no array and no commas, as
  Splunk's HTTP Event Collector takes a batch: ``{"time": <epoch s.ms>, "source":
  "velora", "sourcetype": "velora:audit", "event": <envelope>}``.

A server-mode tenant's PHI is opened in ``data`` (``reveal``, from
:mod:`webhooks.reveal`), so the envelope equals the API's answer for that tenant too.

The ``webhook-id`` of a batch is :func:`batch_id` of its events: the same events
make the same id, so a batch that is retried keeps its id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson

from phi.policy import Revealer
from schemas.events import AuditEvent

PING = "velora.ping"
BATCH = "velora.batch"
SOURCE = "velora"
SOURCETYPE = "velora:audit"
CONTENT_TYPES = {
    "json": "application/json",
    "ndjson": "application/x-ndjson",
    "splunk_hec": "application/json",
}


def _iso(value: datetime) -> str:
    return value.isoformat()


def event_data(e: AuditEvent) -> dict[str, Any]:
    """The event as the public API shows it."""
    a, o = e.actor, e.outcome
    return {
        "event_id": e.event_id,
        "tenant_id": e.tenant_id,
        "occurred_at": _iso(e.occurred_at),
        "received_at": _iso(e.received_at),
        "action": e.action,
        "crud": e.crud,
        "category": e.category,
        "actor": {
            "type": a.type,
            "id": a.id,
            "name": a.name,
            "email": a.email,
            "ip": a.ip,
            "user_agent": a.user_agent,
        },
        "targets": [{"type": t.type, "id": t.id, "name": t.name} for t in e.targets],
        "outcome": {"result": o.result, "reason": o.reason},
        "request_id": e.request_id,
        "source": e.source,
        "metadata": dict(e.metadata),
        "schema_version": e.schema_version,
    }


def event_envelope(e: AuditEvent, reveal: Revealer | None = None) -> dict[str, Any]:
    """The envelope of one audit event (its PHI opened by ``reveal``, the event tenant's)."""
    data = event_data(e)
    created = data["occurred_at"]
    if reveal is not None and reveal.active:
        if reveal.tenant_id != e.tenant_id:
            raise ValueError("an event is opened only with its own tenant's keyset")
        data = dict(reveal.event(data))
    return {
        "id": e.event_id,
        "type": e.action,
        "created": created,
        "tenant_id": e.tenant_id,
        "data": data,
    }


def ping_envelope(ping_id: str, tenant_id: str, endpoint_id: str, at: datetime) -> dict[str, Any]:
    """The envelope of a test delivery (``POST .../{id}/test``)."""
    return {
        "id": ping_id,
        "type": PING,
        "created": _iso(at),
        "tenant_id": tenant_id,
        "data": {"endpoint_id": endpoint_id},
    }


def _dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON (orjson: the envelope is most of a json delivery's CPU)."""
    return orjson.dumps(value)


def body(fmt: str, envelopes: Sequence[dict[str, Any]], times: Sequence[datetime]) -> bytes:
    """The POST body of ``envelopes`` in format ``fmt`` (``times`` for Splunk's ``time``)."""
    if fmt == "json":
        if len(envelopes) != 1:
            raise ValueError("a json delivery holds exactly one event")
        return _dumps(envelopes[0])
    if fmt == "ndjson":
        return b"\n".join(_dumps(e) for e in envelopes) + b"\n"
    if fmt == "splunk_hec":
        return b"".join(
            _dumps(
                {
                    "time": round(at.timestamp(), 3),
                    "source": SOURCE,
                    "sourcetype": SOURCETYPE,
                    "event": e,
                }
            )
            for e, at in zip(envelopes, times, strict=True)
        )
    raise ValueError(f"unknown webhook format {fmt!r}")


def batch_id(endpoint_id: str, delivery_ids: Sequence[str]) -> str:
    """The ``webhook-id`` of a batch: a digest of the endpoint and its events' ids."""
    digest = hashlib.sha256("\n".join([endpoint_id, *delivery_ids]).encode("utf-8"))
    return "batch_" + digest.hexdigest()[:32]

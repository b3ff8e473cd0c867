"""Rows of ``audit_events`` as the public JSON shape, which mirrors the Avro ``AuditEvent``.

``actor``, ``targets`` and ``outcome`` are nested objects, ``metadata`` an object of
strings, and every timestamp is ISO-8601 in UTC with an explicit ``+00:00``.

**PHI leaves through one door.** Detokenizing on the way out is
:class:`phi.policy.Revealer`'s (made per request from the tenant's policy, which
:func:`tenant_phi` looks up): a server-mode tenant's tokens become plaintext; other
modes return what is stored (tokens in client- and sidecar-mode). Every serializer
of events calls it: :func:`event_json` here (list and get), the export encoders
(:mod:`query_api.exports`, a column at a time), analytics ``top`` keys
(:mod:`query_api.analytics`) and the webhook envelopes (:mod:`webhooks.envelope`).

**Pages rendered by DuckDB.** A list page for a tenant whose revealer is inactive
(every mode but ``server``: what is stored is what is shown) does not go through
Python dicts at all: :data:`ledger.event_json.EVENT_JSON_SQL` makes DuckDB render each row as the
exact bytes ``orjson.dumps(event_json(row))`` gives (same key order, same
timestamp form, same string escapes), and :func:`page_json` joins them into the
answer. Rendering in DuckDB has a fixed cost per query and saves about 40 us of
CPU per row, so only pages of at least :data:`SQL_PAGE_MIN` events take that path
(a page of 50: 13.9 ms of CPU against 11.6 ms through Python; of 500: 22.5 ms
against 39.7 ms; single process, 1M-row file, median of 5). The one difference
in DuckDB's JSON writer, upper-case hex digits in the ``\\u00XX`` escapes of
control characters (orjson writes lower case), is undone by
``ledger.event_json.event_json_text``; ``tests/test_serialize_sql.py`` compares both renderers
over every code point and over rows of every shape. A server-mode tenant's page
still goes through :func:`event_json`, so PHI is revealed only by the Revealer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from ledger.event_json import event_json_text
from phi.policy import NO_PHI, Revealer, TenantPhi
from schemas.times import from_micros


def iso(micros: int) -> str:
    """Epoch microseconds as ``YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00``."""
    return from_micros(micros).isoformat()


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    # Older DuckDB clients return a MAP as {"key": [...], "value": [...]}.
    return dict(zip(value["key"], value["value"], strict=True))  # pragma: no cover


def tenant_phi(app_state: Any, tenant_id: str) -> TenantPhi:
    """The PHI policy of ``tenant_id`` from the app's ``phi`` directory (none: no PHI handling)."""
    directory = getattr(app_state, "phi", None)
    return NO_PHI if directory is None else directory.tenant(tenant_id)


def event_json(row: Mapping[str, Any], reveal: Revealer | None = None) -> dict[str, Any]:
    """One event in the public shape, its PHI revealed by ``reveal`` (None: as stored)."""
    out = {
        "event_id": row["event_id"],
        "tenant_id": row["tenant_id"],
        "occurred_at": iso(row["occurred_us"]),
        "received_at": iso(row["received_us"]),
        "action": row["action"],
        "crud": row["crud"],
        "category": row["category"],
        "actor": {
            "type": row["actor_type"],
            "id": row["actor_id"],
            "name": row["actor_name"],
            "email": row["actor_email"],
            "ip": row["actor_ip"],
            "user_agent": row["actor_user_agent"],
        },
        "targets": [
            {"type": t["type"], "id": t["id"], "name": t["name"]} for t in row["targets"] or ()
        ],
        "outcome": {"result": row["outcome_result"], "reason": row["outcome_reason"]},
        "request_id": row["request_id"],
        "source": row["source"],
        "metadata": _metadata(row["metadata"]),
        "schema_version": row["schema_version"],
    }
    return out if reveal is None or not reveal.active else dict(reveal.event(out))


SQL_PAGE_MIN = 100
"""Pages of at least this many events are rendered by DuckDB (about where it starts to pay)."""


def page_json(events: Sequence[str], page: Mapping[str, Any]) -> bytes:
    """``orjson.dumps({"events": [...], "page": page})`` from events already rendered."""
    joined = ",".join(event_json_text(e) for e in events)
    return b'{"events":[' + joined.encode() + b'],"page":' + orjson.dumps(page) + b"}"

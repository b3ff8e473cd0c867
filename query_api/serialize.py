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
Python dicts at all: :data:`EVENT_JSON_SQL` makes DuckDB render each row as the
exact bytes ``orjson.dumps(event_json(row))`` gives (same key order, same
timestamp form, same string escapes), and :func:`page_json` joins them into the
answer. Rendering in DuckDB has a fixed cost per query and saves about 40 us of
CPU per row, so only pages of at least :data:`SQL_PAGE_MIN` events take that path
(a page of 50: 13.9 ms of CPU against 11.6 ms through Python; of 500: 22.5 ms
against 39.7 ms; single process, 1M-row file, median of 5). The one difference
in DuckDB's JSON writer, upper-case hex digits in the ``\\u00XX`` escapes of
control characters (orjson writes lower case), is undone by
:func:`_lower_escapes`; ``tests/test_serialize_sql.py`` compares both renderers
over every code point and over rows of every shape. A server-mode tenant's page
still goes through :func:`event_json`, so PHI is revealed only by the Revealer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

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


def _iso_sql(column: str) -> str:
    """SQL for :func:`iso` of a TIMESTAMPTZ column (UTC, fraction only when not zero)."""
    ts = f"make_timestamp(epoch_us({column}))"  # a plain UTC TIMESTAMP: no session time zone
    return (
        f"strftime({ts}, '%Y-%m-%dT%H:%M:%S') || CASE WHEN epoch_us({column}) % 1000000 = 0 "
        f"THEN '' ELSE strftime({ts}, '.%f') END || '+00:00'"
    )


EVENT_JSON_SQL = (
    "json_object("
    "'event_id', event_id, 'tenant_id', tenant_id, "
    f"'occurred_at', {_iso_sql('occurred_at')}, 'received_at', {_iso_sql('received_at')}, "
    "'action', action, 'crud', crud, 'category', category, "
    "'actor', json_object('type', actor_type, 'id', actor_id, 'name', actor_name, "
    "'email', actor_email, 'ip', actor_ip, 'user_agent', actor_user_agent), "
    "'targets', to_json(targets), "
    "'outcome', json_object('result', outcome_result, 'reason', outcome_reason), "
    "'request_id', request_id, 'source', source, 'metadata', to_json(metadata), "
    "'schema_version', schema_version)::VARCHAR"
)
"""One ``audit_events`` row as the bytes of ``orjson.dumps(event_json(row))`` (no reveal),
up to :func:`_lower_escapes`."""

_UPPER_ESCAPE = re.compile(r"(\\+)u00([0-9A-F]{2})")


def _lower_escapes(text: str) -> str:
    r"""``\u001A`` -> ``\u001a`` where the backslash starts an escape (an odd run of them)."""

    def lower(m: re.Match[str]) -> str:
        slashes = m.group(1)
        if len(slashes) % 2 == 0:  # an escaped backslash followed by the text "u00.."
            return m.group(0)
        return f"{slashes}u00{m.group(2).lower()}"

    return _UPPER_ESCAPE.sub(lower, text)


def event_json_text(rendered: str) -> str:
    """A row rendered by :data:`EVENT_JSON_SQL` as orjson renders :func:`event_json`."""
    return _lower_escapes(rendered) if "\\u00" in rendered else rendered


def page_json(events: Sequence[str], page: Mapping[str, Any]) -> bytes:
    """``orjson.dumps({"events": [...], "page": page})`` from events already rendered."""
    joined = ",".join(event_json_text(e) for e in events)
    return b'{"events":[' + joined.encode() + b'],"page":' + orjson.dumps(page) + b"}"

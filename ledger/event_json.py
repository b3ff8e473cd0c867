"""A stored row of ``audit_events`` as its public JSON, rendered by DuckDB.

:data:`EVENT_JSON_SQL` makes DuckDB render a row as the exact bytes that
``orjson.dumps(query_api.serialize.event_json(row))`` gives for it (same key order,
same timestamp form, same string escapes) once :func:`event_json_text` has lowered the
one difference in DuckDB's JSON writer: upper-case hex digits in the ``\\u00XX``
escapes of control characters (orjson writes lower case). It renders what is stored,
nothing revealed. ``tests/test_serialize_sql.py`` compares both renderers over every
code point and over rows of every shape.

It lives with the ledger because both the list pages (:mod:`query_api.queries`) and
the page bodies (:mod:`ledger.page_bodies`) render rows with it.
"""

from __future__ import annotations

import re


def _iso_sql(column: str) -> str:
    """SQL for ``iso`` of a TIMESTAMPTZ column (UTC, fraction only when not zero)."""
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
"""One ``audit_events`` row as its public JSON (no reveal), up to :func:`event_json_text`."""

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
    """A row rendered by :data:`EVENT_JSON_SQL` as orjson renders it."""
    return _lower_escapes(rendered) if "\\u00" in rendered else rendered

"""List pages rendered by DuckDB (``EVENT_JSON_SQL``) are byte for byte what
``orjson.dumps(event_json(row))`` renders, for every code point and every row shape."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from ledger.duck import LedgerFile
from query_api import queries
from query_api.filters import Filters
from query_api.serialize import SQL_PAGE_MIN, event_json, page_json
from schemas.events import Actor, AuditEvent, Outcome, Target
from tests.api_support import insert_events, make_event, running_api

NOW = datetime(2025, 6, 1, tzinfo=UTC)
EVENTS = "/api/v2/public/audit/events"
# every code point but the surrogates (a DuckDB string is valid UTF-8) and NUL
CODE_POINTS = [chr(c) for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF]


def _both(reader: LedgerFile, tenant: str, limit: int) -> tuple[list[bytes], list[bytes]]:
    """Each row of ``tenant`` rendered by DuckDB, and by event_json + orjson."""
    cur = reader.cursor()
    rows = queries.list_events(cur, tenant, Filters(), None, limit, now=NOW)
    rendered = queries.list_events_json(cur, tenant, Filters(), None, limit, now=NOW)
    assert [(r[1], r[2]) for r in rendered] == [(r["occurred_us"], r["event_id"]) for r in rows]
    sql = [page_json([r[0]], {})[len(b'{"events":[') : -len(b'],"page":{}}')] for r in rendered]
    return sql, [orjson.dumps(event_json(r)) for r in rows]


def test_every_code_point_is_escaped_as_orjson_escapes_it(tmp_path):
    reader = LedgerFile(tmp_path / "chars.duckdb")
    events = []
    for n, i in enumerate(range(0, len(CODE_POINTS), 4096)):
        text = "".join(CODE_POINTS[i : i + 4096])
        e = make_event("t", n, occurred_at=NOW - timedelta(minutes=n))
        events.append(
            replace(
                e,
                actor=replace(e.actor, name=text, user_agent=text[::-1]),
                targets=(Target("claim", text[:64], text),),
                metadata={text[:16]: text, "k": text[::-1]},
            )
        )
    insert_events(reader, events)
    sql, reference = _both(reader, "t", len(events) + 1)
    assert len(sql) == len(events)
    assert sql == reference


@pytest.mark.parametrize(
    "text",
    [
        "\x1a", "\x0b\x0e\x0f\x1b\x1c\x1d\x1e\x1f", "\\u001A", "\\\x1a", "\\\\\x1f",
        '"\\/\b\f\n\r\t', "\u2028\u2029\x7f", "é€😀", "",
    ],
    ids=repr,
)  # fmt: skip
def test_escapes_next_to_backslashes(tmp_path, text):
    """The upper-case escapes DuckDB writes are lowered only where they are escapes."""
    reader = LedgerFile(tmp_path / "esc.duckdb")
    e = make_event("t", 0, occurred_at=NOW - timedelta(minutes=1))
    insert_events(reader, [replace(e, actor=replace(e.actor, name=text), metadata={text: text})])
    sql, reference = _both(reader, "t", 2)
    assert sql == reference


def test_every_row_shape(tmp_path):
    """Nulls, empty and several targets, empty metadata, whole and fractional seconds."""
    reader = LedgerFile(tmp_path / "shapes.duckdb")
    full = AuditEvent(
        event_id="00000000-0000-7000-8000-000000000001",
        tenant_id="t",
        occurred_at=NOW - timedelta(seconds=1, microseconds=1),
        received_at=NOW - timedelta(microseconds=999_999),
        action="member.updated",
        crud="update",
        category="members",
        actor=Actor("user", "u-1", "Dana", "dana@example.com", "10.0.0.1", "Mozilla/5.0"),
        targets=(Target("member", "m-1", "Kim"), Target("claim", "c-1", None)),
        outcome=Outcome("failure", "denied"),
        request_id="req-1",
        source="svc",
        metadata={"b": "2", "a": "1"},
        schema_version=2,
    )
    bare = AuditEvent(
        event_id="00000000-0000-7000-8000-000000000002",
        tenant_id="t",
        occurred_at=datetime(1970, 1, 1, tzinfo=UTC),
        received_at=NOW - timedelta(hours=1),
        action="x",
        crud="read",
        category=None,
        actor=Actor("service", "s", None, None, None, None),
        targets=(),
        outcome=Outcome("success", None),
        request_id=None,
        source="svc",
        metadata={},
    )
    far = replace(
        bare,
        event_id="00000000-0000-7000-8000-000000000003",
        occurred_at=datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
    )
    insert_events(reader, [full, bare, far])
    sql, reference = _both(reader, "t", 10)
    assert len(sql) == 3
    assert sql == reference


def test_page_json_is_orjson_of_the_page():
    events = [orjson.dumps({"a": i, "b": [None, "é"]}).decode() for i in range(3)]
    for page in ({"next_cursor": None, "limit": 3}, {"next_cursor": "abc", "limit": 1}):
        expected = orjson.dumps({"events": [orjson.loads(e) for e in events], "page": page})
        assert page_json(events, page) == expected
    assert page_json([], {"limit": 1}) == b'{"events":[],"page":{"limit":1}}'


@pytest.mark.parametrize("limit", [SQL_PAGE_MIN - 1, SQL_PAGE_MIN, 500])
def test_list_answers_are_the_bytes_of_the_dict_renderer(settings, limit):
    """Through the API, below and above SQL_PAGE_MIN: the answer is byte for byte
    orjson of event_json's dicts, and the cursor continues where the page ended."""
    with running_api(settings) as api:
        events = [make_event("acme", i, occurred_at=NOW - timedelta(seconds=i)) for i in range(600)]
        odd = events[3]
        events[3] = replace(odd, actor=replace(odd.actor, name='\x1a\\\x1f"é'), metadata={})
        insert_events(api.reader, events)
        key = api.issue("acme")
        resp = api.get(EVENTS, key.token, params={"limit": limit})
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "application/json"
        page = resp.json()["page"]
        rows = queries.list_events(api.reader.cursor(), "acme", Filters(), None, limit, now=NOW)
        expected = {"events": [event_json(r) for r in rows], "page": page}
        assert resp.content == orjson.dumps(expected)
        assert page["next_cursor"] is not None
        nxt = api.get(EVENTS, key.token, params={"limit": limit, "cursor": page["next_cursor"]})
        assert nxt.json()["events"][0]["event_id"] == events[limit].event_id

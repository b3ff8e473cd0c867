"""Page bodies (ledger/page_bodies.py), and the list pages that take them (body_pages.py)."""

from __future__ import annotations

from dataclasses import replace

import duckdb
import orjson

from ledger import page_bodies, sorted_copies
from ledger.duck import LedgerFile
from ledger.page_bodies import PageBodies
from query_api import body_pages
from query_api.queries import COLUMN_NAMES, COLUMNS
from query_api.serialize import event_json
from schemas.events import Target
from tests.api_support import insert_events, make_event, running_api


def _public_json(reader: LedgerFile) -> dict[int, str]:
    rows = reader.cursor().execute(f"SELECT seq, {COLUMNS} FROM audit_events").fetchall()
    return {
        r[0]: orjson.dumps(event_json(dict(zip(COLUMN_NAMES, r[1:], strict=True)))).decode()
        for r in rows
    }


def test_a_body_is_the_rows_public_json(tmp_path):
    reader = LedgerFile(tmp_path / "l.duckdb", bodies=True)
    odd = replace(make_event("acme", 99), request_id="req-\x1a-\u00e9-\\u001A")
    insert_events(reader, [make_event("acme", i) for i in range(30)] + [odd])
    assert reader.bodies is not None and reader.bodies.high == 0
    assert reader.build_bodies() == 31
    expected = _public_json(reader)
    assert reader.bodies.get(list(expected)) == expected
    assert "\\u001a" in expected[max(expected)]  # a control character, escaped as orjson does
    assert reader.bodies.get([max(expected) + 1]) == {}  # no such row: no body
    reader.close()


def test_steps_go_on_from_the_newest_body_across_gaps(tmp_path):
    reader = LedgerFile(tmp_path / "l.duckdb", bodies=True)
    assert reader.bodies is not None
    insert_events(reader, [make_event("acme", i) for i in range(10)])
    assert reader.build_bodies() == 10 and reader.bodies.high == 10
    insert_events(reader, [make_event("acme", 10 + i) for i in range(10)])
    # rows 12 and 20 are replaced (deleted) before a step sees them: a gap, and the end
    reader.cursor().execute("DELETE FROM audit_events WHERE seq IN (12, 20)")
    assert reader.build_bodies() == 8
    assert reader.bodies.high == 19  # the newest committed row, not past it
    insert_events(reader, [make_event("acme", 30)])  # numbered after the newest stored row
    assert reader.build_bodies() == 1 and reader.bodies.high == 20
    expected = _public_json(reader)
    assert reader.bodies.get(list(expected)) == expected
    reader.close()


def test_the_bodies_of_another_ledger_file_are_dropped(tmp_path):
    path = tmp_path / "l.duckdb"
    reader = LedgerFile(path, bodies=True)
    insert_events(reader, [make_event("acme", i) for i in range(10)])
    reader.build_bodies()
    reader.close()
    for p in (path, tmp_path / "l.duckdb.wal"):
        p.unlink(missing_ok=True)  # rebuilt from the log: a new file, the same path
    reader = LedgerFile(path, bodies=True)
    assert reader.bodies is not None and reader.bodies.high == 0
    assert reader.bodies.get([1, 2]) == {}
    insert_events(reader, [make_event("other", i) for i in range(3)])
    reader.build_bodies()
    assert reader.bodies.get([1, 2, 3]) == _public_json(reader)
    reader.close()


def test_bodies_past_the_ledgers_newest_row_are_dropped_at_open(tmp_path):
    path = tmp_path / "l.duckdb"
    reader = LedgerFile(path, bodies=True)
    insert_events(reader, [make_event("acme", i) for i in range(10)])
    reader.build_bodies()
    reader.close()
    con = duckdb.connect(str(path))  # an older copy of the ledger, restored
    con.execute("DELETE FROM audit_events WHERE seq > 6")
    con.close()
    bodies = PageBodies(page_bodies.path_for(path), duckdb.connect(str(path)).cursor())
    assert bodies.high == 6
    assert sorted(bodies.get(list(range(1, 11)))) == [1, 2, 3, 4, 5, 6]
    bodies.close()


def test_a_damaged_store_is_made_again(tmp_path, caplog):
    path = tmp_path / "l.duckdb"
    reader = LedgerFile(path, bodies=True)
    insert_events(reader, [make_event("acme", i) for i in range(3)])
    reader.close()
    page_bodies.path_for(path).write_bytes(b"not a database" * 1000)
    reader = LedgerFile(path, bodies=True)
    assert reader.bodies is not None and reader.bodies.high == 0
    assert "unusable (DatabaseError); making them again" in caplog.text
    reader.build_bodies()
    assert reader.bodies.get([1, 2, 3]) == _public_json(reader)
    reader.close()


def test_a_closed_store_answers_nothing_and_counts_it(tmp_path):
    reader = LedgerFile(tmp_path / "l.duckdb", bodies=True)
    insert_events(reader, [make_event("acme", i) for i in range(3)])
    reader.build_bodies()
    bodies = reader.bodies
    assert bodies is not None
    bodies.close()
    assert bodies.get([1, 2, 3]) == {} and bodies.errors == 1
    reader.close()


def test_pages_with_bodies_are_the_pages_without(settings, monkeypatch):
    answered: list[tuple[int, int]] = []  # (rows with a body, rows found) per page
    wholes: list[int] = []
    get = PageBodies.get

    def counting_get(self, seqs):
        found = get(self, seqs)
        answered.append((len(found), len(seqs)))
        return found

    monkeypatch.setattr(PageBodies, "get", counting_get)
    with running_api(settings.with_overrides(rate_limit_burst=100_000)) as api:  # many pages
        events = [
            make_event("acme", i, actor_id=f"user-{i % 4}", target=Target("claim", f"C{i % 7}"))
            for i in range(60)
        ]
        insert_events(api.reader, events)
        bodies = PageBodies(page_bodies.path_for(settings.duckdb_path), api.reader.cursor())
        api.reader.bodies = bodies
        api.reader.build_bodies()
        sorted_copies.catch_up(api.reader.connection.cursor())
        api.reader.copies.mark = sorted_copies.mark_of(sorted_copies.runs(api.reader.cursor()))
        token = api.issue("acme").token

        def pages(params: dict, limit: int = 4) -> list[dict]:
            got, cursor = [], None
            while True:
                query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
                response = api.get("/api/v2/public/audit/events", token, params=query)
                assert response.status_code == 200, response.text
                body = response.json()
                got += body["events"]
                cursor = body["page"]["next_cursor"]
                if cursor is None:
                    return got

        filters = ({}, {"actor_id": "user-1"}, {"target_id": "C3"}, {"action": "claim.viewed"})
        sorted_only = {str(f): pages(f) for f in filters}  # the copies alone hold the rows
        assert answered and all(n == found for n, found in answered)
        api.reader.bodies = None
        assert sorted_only == {str(f): pages(f) for f in filters}  # what DuckDB alone answers
        api.reader.bodies = bodies
        newer = [make_event("acme", 100 + i, actor_id="user-1") for i in range(5)]
        insert_events(api.reader, newer)  # committed since the last step: no bodies yet
        with_bodies = {str(f): pages(f) for f in filters}
        assert any(n == found > 0 for n, found in answered)  # pages all from bodies
        assert any(0 < found - n <= body_pages.MAX_RENDERED for n, found in answered)  # + by seq
        api.reader.bodies = None
        for f in filters:
            assert with_bodies[str(f)] == pages(f), f  # what DuckDB alone answers
        assert len(with_bodies[str({"actor_id": "user-1"})]) == 15 + 5
        api.reader.bodies = bodies

        whole = body_pages.body_page
        monkeypatch.setattr(
            body_pages,
            "body_page",
            lambda c, b, f, w: whole(c, b, f, lambda cur: wholes.append(1) or w(cur)),
        )
        insert_events(api.reader, [make_event("acme", 200 + i) for i in range(30)])
        big = pages({}, limit=40)  # more rows without a body than a page renders by seq
        assert wholes
        api.reader.bodies = None
        assert big == pages({}, limit=40)


def test_a_node_keeps_the_bodies_of_what_it_commits(settings):
    from kafka import KafkaProducer

    from ledger.node import QueryNode
    from tests.factory import EventFactory
    from tests.helpers import wait_for

    factory = EventFactory(templates=20)
    node = QueryNode(settings.with_overrides(page_bodies=True))
    node.start()
    try:
        wait_for(lambda: node.readiness()["ready"], timeout=60)
        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        sent = [factory.make() for _ in range(40)]
        metas = [producer.send(settings.audit_topic, key=e.key, value=e.value) for e in sent]
        last = [m.get(30) for m in metas][-1]
        producer.close()
        assert node.wait_for_offset(last.partition, last.offset, timeout=30)
        bodies = node.bodies
        assert bodies is not None
        wait_for(lambda: node.readiness()["page_bodies"]["rows_behind"] == 0, timeout=30)
        rows = node.cursor().execute(f"SELECT seq, {COLUMNS} FROM audit_events").fetchall()
        assert len(rows) == 40
        expected = {
            r[0]: orjson.dumps(event_json(dict(zip(COLUMN_NAMES, r[1:], strict=True)))).decode()
            for r in rows
        }
        assert bodies.get(list(expected)) == expected
        assert node.readiness()["page_bodies"]["lookup_errors"] == 0
    finally:
        node.stop()
    assert node.bodies is None and page_bodies.path_for(settings.duckdb_path).exists()


def test_a_node_without_bodies_keeps_none(settings):
    from ledger.node import QueryNode

    node = QueryNode(settings.with_overrides(page_bodies=False))
    node.start()
    try:
        assert node.bodies is None and "page_bodies" not in node.readiness()
    finally:
        node.stop()
    assert not page_bodies.path_for(settings.duckdb_path).exists()

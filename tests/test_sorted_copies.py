"""The sorted copies (ledger/sorted_copies.py) agree with ``audit_events`` at every step.

A real DuckDB ledger is written through ``LedgerStore.write_batch`` (new rows, late
rows, ties, resends that take the dedup path, a copy on a lower partition that
replaces a stored row) while the keeper adds runs and merges them, with sizes made
small so that every kind of step happens. After every batch and every step, each
copy must hold exactly the rows up to its mark, and every page of one actor or one
target id (first pages, cursors, with the other filters) read through the copies
must equal the list query's page over ``audit_events`` alone.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import timedelta

import pytest

import ledger.sorted_copies as sc
from ledger import sorted_copies
from ledger.copy_keeper import CopyKeeper
from ledger.duck import LedgerFile
from ledger.sorted_copies import ReadMark, Run, mismatch, next_step, size_class
from ledger.store import LedgerStore
from query_api import queries, sorted_pages
from query_api.cursor import Position
from query_api.filters import Filters
from query_api.serialize import SQL_PAGE_MIN
from tests.api_support import insert_events, make_event, running_api
from tests.test_head import TENANTS, Writer


def _settle(stored: list[Run], last: int, flush: bool = True) -> list[Run]:
    """The runs after every step there is (as ``sorted_copies.step`` keeps them)."""
    while (found := next_step(stored, last, flush)) is not None:
        stored = sc.after_step(stored, *found)
    return stored


def test_size_classes_and_the_next_step(monkeypatch):
    monkeypatch.setattr(sc, "RUN_ROWS", 10)
    monkeypatch.setattr(sc, "FANIN", 4)
    monkeypatch.setattr(sc, "TOP_ROWS", 160)
    monkeypatch.setattr(sc, "BACKLOG_ROWS", 40)
    assert [size_class(n) for n in (1, 39, 40, 159, 160, 639, 640)] == [0, 0, 1, 1, 2, 2, 3]
    # a backlog is cut into runs of BACKLOG_ROWS
    assert next_step([], 0) is None
    assert next_step([], 400) == (Run(1, 40), [])
    assert next_step([Run(1, 40), Run(41, 80)], 400) == (Run(81, 120), [])
    # fewer new rows than RUN_ROWS wait, unless they have waited long enough
    assert next_step([Run(1, 160)], 169, flush=False) is None
    assert next_step([Run(1, 160)], 170, flush=False) == (Run(161, 170), [])
    assert next_step([Run(1, 160)], 165) == (Run(161, 165), [])
    # the newest FANIN runs of one class are merged, whatever came before them, and
    # before any new rows are taken
    four = [Run(1 + 40 * k, 40 * (k + 1)) for k in range(4)]
    assert next_step(four, 400) == (Run(1, 160), four)
    small = [Run(161 + 5 * k, 165 + 5 * k) for k in range(4)]
    assert next_step([Run(1, 160), *small], 180) == (Run(161, 180), small)
    assert next_step([Run(1, 160), *small], 400) == (Run(161, 180), small)
    assert next_step([Run(1, 160), *small[:3]], 175) is None
    mixed = [Run(141, 180), *small[1:]]  # 40 rows are of class 1, the others of class 0
    assert next_step([Run(1, 140), *mixed], 180) is None
    # top runs are never merged again
    top = [Run(1 + 160 * k, 160 * (k + 1)) for k in range(4)]
    assert next_step(top, 640) is None
    # a backlog ends in top runs (merged as it goes, not only its newest runs) ...
    tops = [Run(1 + 160 * k, 160 * (k + 1)) for k in range(6)]
    assert _settle([], 1000) == [*tops, Run(961, 1000)]
    # ... and so does a steady ingest, in two levels of merges
    stored: list[Run] = []
    for last in range(10, 641, 10):
        stored = _settle(stored, last, flush=False)
        assert len(stored) <= 3 * (sc.FANIN - 1) + 1
    assert stored == top


def _pages(store_or_file, tenant: str, filters: Filters, mark: int | None, n: int = 3):
    """The first ``n`` pages of 4 rows (each after the last one's final row), as rows and
    as the public JSON DuckDB renders (from the copies: their stored bodies)."""
    cur = store_or_file.cursor()
    pages, after = [], None
    for _ in range(n):
        rows = queries.list_events(cur, tenant, filters, after, 5, copies=mark)
        rendered = queries.list_events_json(cur, tenant, filters, after, 5, copies=mark)
        pages.append((rows, rendered))
        if len(rows) < 5:
            break
        after = Position(rows[3]["occurred_us"], rows[3]["event_id"])
    return pages


def _rare_filters(rng: random.Random, rows: list[dict]) -> list[Filters]:
    row = rng.choice(rows)
    target = row["targets"][0]["id"] if row["targets"] else "claim-none"
    return [
        Filters(actor_id=row["actor_id"]),
        Filters(actor_id="user-1"),
        Filters(actor_id="nobody"),
        Filters(actor_id=row["actor_id"], action=row["action"]),
        Filters(actor_id=row["actor_id"], actor_ids=(row["actor_id"], "user-2", "user-3")),
        Filters(target_id=target),
        Filters(target_id="claim-hot"),
        Filters(target_id=target, target_type="claim"),
        Filters(target_id="claim-hot", until=row["occurred_at"] + timedelta(minutes=1)),
        Filters(target_id=target, target_ids=(target, "claim-hot")),  # the list query's
    ]


def check_agree(store: LedgerStore, rng: random.Random, tails: Counter[str]) -> int:
    """Copies hold their rows; pages through them equal the list query's; pages compared.

    Each page reads past the mark as the API does, only when one of its ids may have a
    row there (``tails`` counts how often it did, and how often it did not while rows
    lay past the mark)."""
    cur = store.cursor()
    assert mismatch(cur) == []
    # drawn by the test's own seeded rng (SQL's SAMPLE would not repeat run to run)
    rows = cur.execute(
        "SELECT actor_id, action, occurred_at, "
        "[{'id': t.id} FOR t IN targets] AS targets FROM audit_events ORDER BY seq"
    ).fetchall()
    rows = [*rng.sample(rows, min(20, len(rows))), *rows[-3:]]  # the newest: past the mark
    sample = [
        dict(zip(("actor_id", "action", "occurred_at", "targets"), r, strict=True)) for r in rows
    ]
    compared = 0
    for tenant in rng.sample(TENANTS, 2):
        for f in rng.sample(_rare_filters(rng, sample), 4):
            mark = store.copies.for_reads(sorted_pages.noted_keys(tenant, f))
            assert mark is not None
            if store.copies.last > mark.mark:
                tails["read past the mark" if mark.newer else "not read past the mark"] += 1
            got = _pages(store, tenant, f, mark)
            assert got == _pages(store, tenant, f, None), (tenant, f, mark)
            compared += sum(len(rows) for rows, _ in got)
    return compared


def test_copies_agree_with_the_ledger_through_every_kind_of_write(tmp_path, monkeypatch):
    monkeypatch.setattr(sc, "RUN_ROWS", 4)
    monkeypatch.setattr(sc, "FANIN", 3)
    monkeypatch.setattr(sc, "TOP_ROWS", 4 * 3 * 3)
    monkeypatch.setattr(sc, "BACKLOG_ROWS", 4 * 3)  # the second class, as at full size
    store = LedgerStore(tmp_path / "l.duckdb")
    keeper = CopyKeeper(store)
    rng = random.Random(7)
    w = Writer(store, 7)
    w.write(w.batch(90))  # a backlog: two top runs (each of three merged) and two smaller
    compared, merges, seen_runs, tails = 0, 0, set(), Counter()
    for step in range(24):
        kind = step % 6
        if kind == 3:  # a resend of stored events (the dedup path) with new ones
            stored = store.cursor().execute("SELECT event_id::VARCHAR, tenant_id FROM audit_events")
            records = w.batch(3)
            for event_id, tenant in rng.sample(stored.fetchall(), 3):
                copy = w.event(tenant)
                copy["event_id"] = event_id
                records.append(copy)
            w.write(records)
        elif kind == 4:  # a copy on a lower partition replaces a row the copies hold
            cur = store.cursor()
            # DuckDB samples before WHERE, so SAMPLE 1 ROWS then a filter can find nothing
            held = cur.execute(
                "SELECT event_id::VARCHAR, tenant_id FROM audit_by_actor "
                "WHERE kafka_partition = 1 ORDER BY seq"
            ).fetchall()
            event_id, tenant = rng.choice(held)
            copy = w.event(tenant)
            copy["event_id"] = event_id
            copy["actor"]["id"] = "user-moved"  # the old row must leave its actor's pages
            w.write([copy], partition=0)
            assert cur.execute(
                "SELECT count(*) FROM audit_by_actor WHERE event_id = ?::UUID", [event_id]
            ).fetchone() == (0,)
        else:
            w.write(w.batch(rng.randrange(1, 9), late=rng.randrange(3)))
        compared += check_agree(store, rng, tails)  # rows past the mark: audit_events
        while keeper.step(None if rng.random() < 0.7 else store.copies.mark + 2):
            runs = sc.runs(store.cursor())
            seen_runs.add(len(runs))
            merges += len(runs) < max(seen_runs)
            compared += check_agree(store, rng, tails)
    while keeper.step():
        pass
    assert merges > 3  # runs were merged, not only added
    assert store.copies.mark == store.copies.last  # the keeper caught up
    assert keeper.status()["rows_behind"] == 0
    assert compared > 500
    assert min(tails.values()) > 10 and len(tails) == 2, tails
    store.close()


def test_pages_leave_the_copies_while_too_many_rows_are_past_their_mark(tmp_path, monkeypatch):
    store = LedgerStore(tmp_path / "l.duckdb")
    w = Writer(store, 3)
    w.write(w.batch(50))
    assert store.copies.for_reads() == ReadMark(0)  # nothing sorted yet, but few rows
    monkeypatch.setattr(sc, "TAIL_READ_MAX", 49)
    assert store.copies.for_reads() is None  # the list query's own probing instead
    CopyKeeper(store).step()
    assert store.copies.for_reads() == ReadMark(store.copies.last, newer=False)
    store.close()
    # a file opened on its own reads as far as its copies reached
    reader = LedgerFile(tmp_path / "l.duckdb", create=False)
    try:
        assert reader.copies.mark == reader.copies.last > 0
    finally:
        reader.close()


@pytest.mark.parametrize("restart", [False, True])
def test_seq_numbers_rise_across_restarts_and_never_fall_to_the_mark(tmp_path, restart):
    store = LedgerStore(tmp_path / "l.duckdb")
    w = Writer(store, 5)
    w.write(w.batch(20))
    CopyKeeper(store).step()
    mark = store.copies.mark
    if restart:
        store.close()
        store = LedgerStore(tmp_path / "l.duckdb")
        w.store = store
    w.write(w.batch(5))
    seqs = [
        r[0]
        for r in store.cursor().execute("SELECT seq FROM audit_events ORDER BY rowid").fetchall()
    ]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert min(seqs[-5:]) > mark  # new rows lie past the mark, where pages look for them
    store.close()


def test_the_api_reads_actor_and_target_pages_through_the_copies(settings, monkeypatch):
    # Every request's filters go through with_phi, which always sets actor_ids and
    # target_ids: the copies must still be taken for a tenant's plain filters.
    calls = []
    page_sql = sorted_pages.page_sql
    monkeypatch.setattr(
        sorted_pages, "page_sql", lambda *a, **k: calls.append(a[7]) or page_sql(*a, **k)
    )
    with running_api(settings) as api:
        events = [make_event("acme", i, actor_id=f"user-{i % 4}") for i in range(60)]
        insert_events(api.reader, events)
        sorted_copies.catch_up(api.reader.connection.cursor())
        api.reader.copies.mark = sorted_copies.mark_of(sorted_copies.runs(api.reader.cursor()))
        insert_events(
            api.reader, [make_event("acme", 100 + i, actor_id="user-1") for i in range(5)]
        )
        token = api.issue("acme").token

        def pages(params: dict) -> list[dict]:
            got, cursor = [], None
            while True:
                query = {**params, "limit": 4, **({"cursor": cursor} if cursor else {})}
                body = api.get("/api/v2/public/audit/events", token, params=query).json()
                got += body["events"]
                cursor = body["page"]["next_cursor"]
                if cursor is None:
                    return got

        def big_page(params: dict) -> dict:  # rendered by DuckDB: a query of its own form
            query = {**params, "limit": SQL_PAGE_MIN}
            return api.get("/api/v2/public/audit/events", token, params=query).json()

        for params in ({"actor_id": "user-1"}, {"target_id": "CLM-7"}):
            through_copies = pages(params)
            # the copies answered with their stored bodies, for small pages as for big
            assert calls and all(calls), params
            calls.clear()
            rendered = big_page(params)
            assert calls and all(calls), params
            copies, api.reader.copies = api.reader.copies, None
            try:
                assert through_copies == pages(params)  # what the list query answers
                assert rendered == big_page(params)
            finally:
                api.reader.copies = copies
            calls.clear()
        assert len(pages({"actor_id": "user-1"})) == 15 + 5  # sorted ones and newer ones

"""Which head a list page is cut from (``query_api.routes._read_page``).

A loaded scoped head (one actor, one target, an action, an ``until`` bound) is asked
first and alone: it holds every row of its scope that the tenant's head holds, so a
page it cannot cut goes to DuckDB without scanning the tenant's head or loading it.
The ledger is a real DuckDB file written through ``LedgerStore``; the reader runs
each read on it at once and counts the reads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import duckdb

from ledger.head import Scope, TenantHeads
from ledger.store import LedgerStore
from query_api import head_pages, queries, routes
from query_api.cursor import Position
from query_api.filters import Filters
from tests.test_head import BASE, DEPTH, Writer, _load


class CountingReader:
    """A ledger reader over ``store`` that runs each read at once, and counts them."""

    def __init__(self, store: LedgerStore) -> None:
        self.store = store
        self.heads = store.heads
        self.reads = 0

    async def read(self, fn: Callable[[duckdb.DuckDBPyConnection], Any]) -> Any:
        self.reads += 1
        return fn(self.store.cursor())


def _page(reader: CountingReader, f: Filters, after: Position | None, limit: int) -> Any:
    def from_sql(cur: duckdb.DuckDBPyConnection) -> list[dict]:
        return queries.list_events(cur, "tenant-a", f, after, limit)

    return asyncio.run(routes._read_page(reader, "tenant-a", f, after, limit, None, from_sql))


def test_a_loaded_scoped_head_is_asked_first_and_alone(tmp_path):
    store = LedgerStore(tmp_path / "l.duckdb")
    heads = store.heads = TenantHeads(DEPTH, id_capacity=2)
    w = Writer(store, 21)
    for _ in range(20):
        w.write(w.batch(40))
    scope: Scope = ("@", "user-1")
    assert _load(heads, store, "tenant-a", scope) is not None
    reader = CountingReader(store)
    f = head_pages.scope_filters(scope)
    want = queries.list_events(store.cursor(), "tenant-a", f, None, 5)

    held, rendered = _page(reader, f, None, 5)
    assert rendered is None and [r.row for r in held] == want
    assert reader.reads == 0  # cut in the event loop
    assert heads.get("tenant-a") is None  # the tenant's head was not loaded for it

    floor = heads.get("tenant-a", scope).floor
    assert floor is not None, "the actor has more rows than the head holds"
    below = Position(*floor)
    held, rendered = _page(reader, f, below, 5)
    assert held is None and rendered == queries.list_events(store.cursor(), "tenant-a", f, below, 5)
    assert reader.reads == 1  # DuckDB's page, with no load of the tenant's head before it
    assert heads.get("tenant-a") is None
    store.close()


def test_without_a_scoped_head_the_tenants_head_still_cuts_its_pages(tmp_path):
    store = LedgerStore(tmp_path / "l.duckdb")
    heads = store.heads = TenantHeads(DEPTH, id_capacity=2)
    w = Writer(store, 22)
    w.write(w.batch(60))
    reader = CountingReader(store)
    f = Filters(until=BASE + timedelta(days=1))
    held, _ = _page(reader, Filters(), None, 5)  # loads the tenant's head: one read
    assert held is not None and reader.reads == 1 and heads.get("tenant-a") is not None
    held, _ = _page(reader, f, None, 3)  # a bound above every row: the tenant's head cuts it
    assert [r.row for r in held] == queries.list_events(store.cursor(), "tenant-a", f, None, 3)
    assert reader.reads == 1
    assert heads.ids == 0  # an until head is loaded on a second ask, and none was needed
    store.close()

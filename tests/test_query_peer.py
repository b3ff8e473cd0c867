"""The query benchmark's Postgres peer (bench/postgres.py, bench/peer_app.py) answers
exactly what the node answers, on the benchmark's own rows and scenarios, and the
benchmark's identity check notices a single differing field."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import pytest

from bench.postgres import LocalPostgres, load_from_duckdb
from bench.query import TENANTS, _stop, check_identical, generate, scenarios, start_peer
from tests.api_support import running_api
from velora.errors import LedgerMismatch


async def _execute(dsn: str, sql: str, *args: object) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.execute(sql, *args)
    finally:
        await conn.close()


def test_peer_serves_the_nodes_answers_and_the_check_catches_a_difference(settings, tmp_path):
    db = tmp_path / "query.duckdb"
    end = datetime.now(UTC)
    generate(db, 40_000, end)
    smallest = f"tenant-{TENANTS - 1:02d}"
    with LocalPostgres(shared_buffers="32MB") as pg:
        load_from_duckdb(pg, db)  # before the node opens the file
        with running_api(settings, db) as api:
            _check(api, pg, end, smallest)
    assert not pg.root.exists()  # the temp cluster is deleted with the server


def _check(api, pg: LocalPostgres, end: datetime, smallest: str) -> None:
    big, small = api.issue("tenant-00").token, api.issue(smallest).token
    proc, peer_url = start_peer(pg.dsn, {big: "tenant-00", small: smallest})
    try:
        node_sc = scenarios(api.base_url, big, small, end)
        peer_sc = scenarios(peer_url, big, small, end)
        assert set(node_sc) == set(peer_sc)
        # 37 pages: 5 full ones, 16 of one actor each (a few events apiece at 40k: the 8
        # actors cycled over, and the last 8 of those each asked once), 16 of one target
        # (the 8 cycled over, the last 8 of those each asked once; an event or two each)
        assert check_identical(api.base_url, node_sc, peer_url, peer_sc) >= 5 * 50 + 16 + 16

        newest = api.get(node_sc["first page, biggest tenant"][1][0], big).json()
        first_id = newest["events"][0]["event_id"]
        changed = asyncio.run(_execute(
            pg.dsn, "UPDATE audit_events SET actor_name = 'someone else' WHERE event_id = $1",
            first_id,
        ))  # fmt: skip
        assert changed == "UPDATE 1"
        with pytest.raises(LedgerMismatch, match="first page, biggest tenant: event 0"):
            check_identical(api.base_url, node_sc, peer_url, peer_sc)
    finally:
        _stop(proc)

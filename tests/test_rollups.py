"""Rollups count exactly the rows of audit_events, at every commit, whatever path wrote them."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest
import uuid_utils

from ledger.decode import EventDecoder
from ledger.rollups import ALL_ROLLUPS, ROLLUP_TABLES, mismatch_sql
from ledger.store import LedgerStore
from tests.factory import EventFactory
from tests.ledger_support import encoded
from velora.errors import Unavailable

TOPIC = "t.audit.v1"


def assert_rollups_exact(cur) -> int:
    """Fail with the first disagreeing cells; return the rows counted."""
    for table, unit in ALL_ROLLUPS:
        wrong = cur.execute(mismatch_sql(table, unit)).fetchall()
        assert wrong == [], (table, wrong[:5])
    total = cur.execute("SELECT count(*) FROM audit_events").fetchall()[0][0]
    for table, _ in ALL_ROLLUPS:
        summed = cur.execute(f"SELECT coalesce(sum(events), 0) FROM {table}").fetchall()[0][0]
        assert summed == total, table
    return total


@pytest.fixture(scope="module")
def factory():
    return EventFactory(templates=300)


def _decoded(values, partition: int, first_offset: int) -> pa.Table:
    return (
        EventDecoder()
        .decode(
            list(values),
            np.full(len(values), partition, dtype=np.int32),
            np.arange(first_offset, first_offset + len(values), dtype=np.int64),
        )
        .table
    )


def test_fast_and_dedup_paths_count_exactly_the_inserted_rows(tmp_path, factory):
    store = LedgerStore(tmp_path / "l.duckdb")
    try:
        events = [factory.make() for _ in range(600)]
        store.write_batch(_decoded([e.value for e in events[:300]], 0, 0), TOPIC, {0: 300})
        assert assert_rollups_exact(store.cursor()) == 300
        # half of this batch are stored keys (the dedup path), plus copies inside the batch
        again = [e.value for e in events[150:450]] + [events[400].value, events[10].value]
        store.write_batch(_decoded(again, 0, 300), TOPIC, {0: 602})
        assert assert_rollups_exact(store.cursor()) == 450
        # the next batches stay on the dedup path for a while: still exact
        store.write_batch(_decoded([e.value for e in events[450:]], 0, 602), TOPIC, {0: 752})
        assert assert_rollups_exact(store.cursor()) == 600
    finally:
        store.close()


def test_a_replaced_row_is_subtracted_and_its_replacement_added(tmp_path):
    """Across partitions a stored row can lose to a batch copy with another action."""
    event_id = str(uuid_utils.uuid7())
    late = encoded("acme", event_id, seed=2, action="claim.exported")  # partition 2, stored first
    early = encoded("acme", event_id, seed=1, action="claim.viewed")  # partition 0 wins
    store = LedgerStore(tmp_path / "l.duckdb")
    try:
        store.write_batch(_decoded([late.value], 2, 0), TOPIC, {2: 1})
        store.write_batch(_decoded([early.value], 0, 5), TOPIC, {0: 6})
        cur = store.cursor()
        assert cur.execute("SELECT action FROM audit_events").fetchall() == [("claim.viewed",)]
        assert assert_rollups_exact(cur) == 1
        by_action = cur.execute(
            "SELECT action, sum(events) FROM audit_rollup_hour GROUP BY 1 HAVING sum(events) <> 0"
        ).fetchall()
        assert by_action == [("claim.viewed", 1)]
    finally:
        store.close()


def test_a_quarantined_row_is_not_counted(tmp_path, factory):
    class Refusing(LedgerStore):
        """Fault injection: DuckDB refuses one row for its data (as a bad value would)."""

        def _write(self, cur, table, losers, topic, offsets, quarantine):
            if any(o == 3 for o in table.column("kafka_offset").to_pylist()):
                raise duckdb.ConversionException("refused (injected)")
            super()._write(cur, table, losers, topic, offsets, quarantine)

        def _find_poison(self, cur, table):
            return [i for i, o in enumerate(table.column("kafka_offset").to_pylist()) if o == 3]

    store = Refusing(tmp_path / "l.duckdb")
    try:
        store.write_batch(_decoded([factory.make().value for _ in range(8)], 0, 0), TOPIC, {0: 8})
        assert store.quarantined == 1
        assert assert_rollups_exact(store.cursor()) == 7
    finally:
        store.close()


def test_a_failed_commit_leaves_the_rollups_untouched(tmp_path, factory):
    class FailingCommit(LedgerStore):
        fail = True

        def _commit(self, cur):
            if self.fail:
                raise duckdb.IOException("disk full (injected)")
            super()._commit(cur)

    store = FailingCommit(tmp_path / "l.duckdb")
    try:
        table = _decoded([factory.make().value for _ in range(40)], 1, 0)
        with pytest.raises(Unavailable):
            store.write_batch(table, TOPIC, {1: 40})
        assert assert_rollups_exact(store.cursor()) == 0
        store.fail = False
        store.write_batch(table, TOPIC, {1: 40})
        assert assert_rollups_exact(store.cursor()) == 40
    finally:
        store.close()


def test_buckets_are_utc_whatever_the_session_time_zone(tmp_path, factory):
    store = LedgerStore(tmp_path / "l.duckdb")
    try:
        store._writer.execute("SET TimeZone = 'Asia/Kolkata'")  # +05:30: hours start at :30 UTC
        store.write_batch(_decoded([factory.make().value for _ in range(50)], 0, 0), TOPIC, {0: 50})
        cur = store.cursor()
        cur.execute("SET TimeZone = 'America/St_Johns'")  # -03:30 for the recount
        for table, unit in ROLLUP_TABLES:
            step = 60_000_000 if unit == "minute" else 3_600_000_000
            off = cur.execute(f"SELECT max(epoch_us(bucket) % {step}) FROM {table}").fetchall()
            assert off == [(0,)], table
        assert_rollups_exact(cur)
    finally:
        store.close()

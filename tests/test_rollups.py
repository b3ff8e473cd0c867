"""Rollups count exactly the rows of audit_events, at every commit, whatever path wrote them."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest
import uuid_utils

from ledger import target_sets
from ledger.decode import EventDecoder
from ledger.rollups import (
    ACTOR_TABLE,
    ALL_ROLLUPS,
    EVENT_COUNTS,
    ROLLUP_TABLES,
    TARGET_TABLE,
    mismatch_sql,
    rebuild_sql,
)
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
    assert target_sets.mismatch(cur) == []
    total = cur.execute("SELECT count(*) FROM audit_events").fetchall()[0][0]
    for table, _ in EVENT_COUNTS:  # the target table counts (event, target id) pairs
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


def test_a_replaced_row_leaves_the_actor_failures_and_the_targets(tmp_path):
    """The stored row's failure and target go with it; the winner's are counted."""
    event_id = str(uuid_utils.uuid7())
    failed = {"result": "denied", "reason": None}
    late = encoded(  # partition 2, stored first: a denied event naming T-late
        "acme", event_id, seed=2, outcome=failed,
        targets=[{"type": "claim", "id": "T-late", "name": None}],
    )  # fmt: skip
    early = encoded(  # partition 0 wins: a success naming T-early twice
        "acme", event_id, seed=2, outcome={"result": "success", "reason": None},
        targets=[{"type": "claim", "id": "T-early", "name": None},
                 {"type": "claim", "id": "T-early", "name": "again"}],
    )  # fmt: skip
    store = LedgerStore(tmp_path / "l.duckdb")
    try:
        store.write_batch(_decoded([late.value], 2, 0), TOPIC, {2: 1})
        cur = store.cursor()
        assert cur.execute(f"SELECT sum(failures) FROM {ACTOR_TABLE}").fetchall() == [(1,)]
        store.write_batch(_decoded([early.value], 0, 5), TOPIC, {0: 6})
        assert assert_rollups_exact(cur) == 1
        assert cur.execute(f"SELECT sum(failures) FROM {ACTOR_TABLE}").fetchall() == [(0,)]
        targets = cur.execute(
            f"SELECT target_id, sum(events) FROM {TARGET_TABLE} GROUP BY 1 HAVING sum(events) <> 0"
        ).fetchall()
        assert targets == [("T-early", 1)]  # once per event
        (number,) = cur.execute(
            "SELECT no FROM audit_target_numbers WHERE key = md5_number('4:acme:T-early')"
        ).fetchall()[0]
        for grain in ("hour", "day"):  # T-late left its cells; only T-early's number is there
            blobs = cur.execute(
                "SELECT targets FROM audit_target_sets WHERE grain = ?", [grain]
            ).fetchall()
            assert list(target_sets.union(b for (b,) in blobs)) == [number]
    finally:
        store.close()


@pytest.mark.parametrize(
    ("table", "cell"),
    [
        ("audit_rollup_hour", "'acme', TIMESTAMPTZ '2025-05-01 12:00:00+00', 'x.y', 'success', "
                              "'portal', 'user', 1"),
        (ACTOR_TABLE, "'acme', TIMESTAMPTZ '2025-05-01 00:00:00+00', 'user-1', 'x.y', 1, 0"),
        (ACTOR_TABLE, "'acme', TIMESTAMPTZ '2025-05-01 00:00:00+00', 'user-1', 'x.y', 0, 1"),
        (TARGET_TABLE, "'acme', TIMESTAMPTZ '2025-05-01 00:00:00+00', 'user-1', 'x.y', "
                       "'claim-1', 1"),
    ],
)  # fmt: skip
def test_a_wrong_cell_is_found_and_a_rebuild_recounts_it(tmp_path, factory, table, cell):
    """Every table (and the actor table's failures on their own) is checked against a
    recount; ``rebuild_sql`` puts a wrong table right."""
    store = LedgerStore(tmp_path / "l.duckdb")
    try:
        store.write_batch(_decoded([factory.make().value for _ in range(60)], 0, 0), TOPIC, {0: 60})
        cur = store.cursor()
        assert_rollups_exact(cur)
        cur.execute(f"INSERT INTO {table} VALUES ({cell})")
        unit = dict(ALL_ROLLUPS)[table]
        wrong = cur.execute(mismatch_sql(table, unit)).fetchall()
        assert len(wrong) == 1, wrong
        cur.execute(rebuild_sql())
        assert assert_rollups_exact(cur) == 60
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

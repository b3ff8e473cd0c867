"""Target sets hold exactly the targets of each cell's rows, whatever wrote the rows, and
reads count exactly however far behind the keeper is."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pyroaring import BitMap

from ledger import target_sets
from ledger.rollups import TARGET_IDS_SQL
from ledger.store import LedgerStore
from ledger.target_keeper import TargetSetKeeper
from query_api import analytics_summary
from query_api.filters import Filters
from tests.factory import EventFactory
from tests.helpers import wait_for
from tests.ledger_support import encoded
from tests.test_rollups import TOPIC, _decoded, assert_rollups_exact


@pytest.fixture(scope="module")
def factory():
    return EventFactory(templates=300)


def _rows_per_cell(cur) -> int:
    return cur.execute(
        "SELECT max(n) FROM (SELECT count(*) AS n FROM audit_target_sets "
        "GROUP BY tenant_id, grain, bucket, action)"
    ).fetchall()[0][0]


def _marks(cur) -> dict[int, int]:
    return dict(
        cur.execute("SELECT kafka_partition, next_offset FROM audit_target_marks").fetchall()
    )


def test_the_keeper_adds_new_rows_in_steps_and_compacts_cells(tmp_path):
    """The writer leaves the sets alone; each step adds the rows past the marks (one
    delta row per touched cell) and moves the marks; a cell is merged past COMPACT_ROWS."""
    store = LedgerStore(tmp_path / "l.duckdb")
    keeper = TargetSetKeeper(store)
    try:
        cur = store.cursor()
        batches = 3 * target_sets.COMPACT_ROWS
        for i in range(batches):  # one event per step, all in the same two cells
            made = encoded("acme", targets=[{"type": "claim", "id": f"T-{i}", "name": None}])
            store.write_batch(_decoded([made.value], 0, i), TOPIC, {0: i + 1})
            assert cur.execute("SELECT count(*) FROM audit_target_numbers").fetchall() == [(i,)]
            assert keeper.step() == 1 and keeper.step() == 0
            assert _marks(cur) == {0: i + 1}
            assert _rows_per_cell(cur) <= target_sets.COMPACT_ROWS
        cells = cur.execute(
            "SELECT grain, count(*) FROM audit_target_sets GROUP BY ALL ORDER BY 1"
        ).fetchall()
        assert [g for g, _ in cells] == ["day", "hour"]  # one cell of each grain
        assert assert_rollups_exact(cur) == batches
        blobs = cur.execute("SELECT targets FROM audit_target_sets WHERE grain = 'day'").fetchall()
        assert len(target_sets.union(b for (b,) in blobs)) == batches
    finally:
        store.close()


def test_a_step_takes_at_most_its_share_of_each_partition(tmp_path, factory):
    store = LedgerStore(tmp_path / "l.duckdb")
    try:
        for partition in (0, 1):
            values = [factory.make().value for _ in range(30)]
            store.write_batch(_decoded(values, partition, 100), TOPIC, {partition: 130})
        cur = store.cursor()
        cur.execute("BEGIN TRANSACTION")
        assert target_sets.catch_up(cur, step=20) == 40
        cur.execute("COMMIT")
        assert _marks(cur) == {0: 120, 1: 120}
        assert assert_rollups_exact(cur) == 60  # the rest is past the marks: still exact
        cur.execute("BEGIN TRANSACTION")
        assert target_sets.catch_up(cur, step=20) == 20
        cur.execute("COMMIT")
        assert _marks(cur) == {0: 130, 1: 130}
        assert target_sets.mismatch(cur) == []
    finally:
        store.close()


def test_distinct_targets_are_exact_however_far_behind_the_keeper_is(tmp_path):
    """Rows past the marks are counted from the rows: numbered targets by number, new
    ones by key; before any step, after a partial one and after all."""
    store = LedgerStore(tmp_path / "l.duckdb")
    at = datetime(2025, 5, 1, 12, tzinfo=UTC)
    try:
        events = []
        for i in range(40):  # 25 distinct targets, some named again later
            target = [{"type": "claim", "id": f"T-{i % 25}", "name": None}]
            events.append(encoded("acme", targets=target, seed=i % 3).value)
        store.write_batch(_decoded(events[:20], 0, 0), TOPIC, {0: 20})
        store.write_batch(_decoded(events[20:], 1, 0), TOPIC, {1: 20})
        cur = store.cursor()
        window = Filters(since=at - timedelta(days=2), until=at + timedelta(days=2))
        expected = cur.execute(
            f"SELECT count(DISTINCT t) FROM (SELECT {TARGET_IDS_SQL} AS t FROM audit_events)"
        ).fetchall()[0][0]
        assert expected == 25

        def distinct() -> int:
            cur.execute("BEGIN TRANSACTION")
            try:
                return analytics_summary.summary(cur, "acme", window, "day")["current"][
                    "distinct_targets"
                ]
            finally:
                cur.execute("ROLLBACK")

        assert distinct() == 25  # nothing in the sets: every target from the rows, by key
        cur.execute("BEGIN TRANSACTION")
        target_sets.catch_up(cur, step=10)  # half of each partition
        cur.execute("COMMIT")
        assert distinct() == 25
        cur.execute("BEGIN TRANSACTION")
        target_sets.catch_up(cur)
        cur.execute("COMMIT")
        assert distinct() == 25
        cur.execute("DELETE FROM audit_target_sets")  # the sets are what is read now
        assert distinct() == 0
    finally:
        store.close()


def test_numbers_are_one_to_one_and_never_reused(tmp_path, factory):
    store = LedgerStore(tmp_path / "l.duckdb")
    keeper = TargetSetKeeper(store)
    try:
        first = [factory.make() for _ in range(50)]
        store.write_batch(_decoded([e.value for e in first], 0, 0), TOPIC, {0: 50})
        keeper.step()
        cur = store.cursor()
        before = dict(cur.execute("SELECT key, no FROM audit_target_numbers").fetchall())
        again = [factory.make() for _ in range(50)]  # new targets and some known ones
        store.write_batch(_decoded([e.value for e in again], 0, 50), TOPIC, {0: 100})
        keeper.step()
        after = dict(cur.execute("SELECT key, no FROM audit_target_numbers").fetchall())
        assert {k: after[k] for k in before} == before  # a number never changes
        assert len(set(after.values())) == len(after)
        per_tenant = cur.execute(
            f"SELECT count(*) FROM (SELECT DISTINCT tenant_id, {TARGET_IDS_SQL} FROM audit_events)"
        ).fetchall()[0][0]
        assert len(after) == per_tenant  # a number per tenant and target id
        assert assert_rollups_exact(cur) == 100
    finally:
        store.close()


def test_a_wrong_or_missing_set_is_found_and_a_rebuild_puts_it_right(tmp_path, factory):
    store = LedgerStore(tmp_path / "l.duckdb")
    try:
        store.write_batch(_decoded([factory.make().value for _ in range(60)], 0, 0), TOPIC, {0: 60})
        TargetSetKeeper(store).step()
        cur = store.cursor()
        assert target_sets.mismatch(cur) == []
        (tenant, grain, bucket, action) = cur.execute(
            "SELECT tenant_id, grain, bucket, action FROM audit_target_sets LIMIT 1"
        ).fetchall()[0]
        cur.execute(
            "INSERT INTO audit_target_sets VALUES (?, ?, ?, ?, ?)",
            [tenant, grain, bucket, action, BitMap([4_000_000]).serialize()],
        )
        assert target_sets.mismatch(cur) == [(tenant, grain, bucket, action)]
        cur.execute("DELETE FROM audit_target_numbers WHERE no = 0")
        assert ("numbers", "(unnumbered targets)") in {w[:2] for w in target_sets.mismatch(cur)}
        cur.execute("BEGIN TRANSACTION")
        target_sets.rebuild(cur)
        cur.execute("COMMIT")
        assert target_sets.mismatch(cur) == []
        assert _marks(cur) == {0: 60}
    finally:
        store.close()


def test_a_partition_without_a_mark_is_read_whole(tmp_path):
    """The offset bound that lets reads skip old row groups holds only while every
    stored partition has a mark: rows of a new partition (offsets from 0) still count."""
    store = LedgerStore(tmp_path / "l.duckdb")
    at = datetime(2025, 5, 1, 12, tzinfo=UTC)
    window = Filters(since=at - timedelta(days=2), until=at + timedelta(days=2))

    def batch(partition: int, first: int, names: range) -> None:
        values = [
            encoded("acme", targets=[{"type": "claim", "id": f"T-{n}", "name": None}]).value
            for n in names
        ]
        store.write_batch(
            _decoded(values, partition, first), TOPIC, {partition: first + len(values)}
        )

    try:
        batch(0, 500, range(0, 10))
        batch(1, 500, range(10, 20))
        TargetSetKeeper(store, TOPIC).step()
        cur = store.cursor()
        clause, params = target_sets.uncovered(cur)
        assert clause.startswith("kafka_offset >= ?") and params[0] == 510
        batch(2, 0, range(20, 25))  # a partition added to the topic: offsets from 0
        clause, _ = target_sets.uncovered(cur)
        assert not clause.startswith("kafka_offset")
        cur.execute("BEGIN TRANSACTION")
        summary = analytics_summary.summary(cur, "acme", window, "day")
        cur.execute("ROLLBACK")
        assert summary["current"]["distinct_targets"] == 25
    finally:
        store.close()


def test_the_keeper_thread_catches_up_behind_the_writer(tmp_path, factory):
    store = LedgerStore(tmp_path / "l.duckdb")
    keeper = TargetSetKeeper(store, TOPIC, interval=0.05)
    keeper.start()
    try:
        for i in range(5):
            values = [factory.make().value for _ in range(40)]
            store.write_batch(_decoded(values, i % 2, 40 * i), TOPIC, {i % 2: 40 * (i + 1)})
        cur = store.cursor()
        wait_for(lambda: _marks(cur) == {0: 160 + 40, 1: 160}, timeout=30, what="the marks")
        # the counters follow a step's commit (the marks are seen first, a moment before)
        wait_for(lambda: keeper.status()["rows"] == 200, timeout=30, what="the step counted")
        assert keeper.error is None
        status = keeper.status()
        assert status["rows"] == 200 and status["steps"] >= 1 and status["error"] is None
        assert 0 <= status["last_step_s_ago"] < 30
        assert assert_rollups_exact(cur) == 200
        clause, _ = target_sets.uncovered(cur)
        late = cur.execute(f"SELECT count(*) FROM audit_events WHERE {clause}", _).fetchall()
        assert late == [(0,)]
    finally:
        keeper.stop()
        store.close()

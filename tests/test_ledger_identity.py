"""Per-tenant identity: the key is (tenant_id, event_id), the first copy in log order wins,
conflicting copies are recorded, and an older ledger layout is rebuilt from the log."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import uuid_utils

from ledger.decode import EventDecoder
from ledger.layout import LedgerState
from ledger.node import QueryNode
from ledger.store import LedgerStore
from ledger.tables import LAYOUT_VERSION
from tests.factory import produce
from tests.helpers import wait_for
from tests.ledger_support import (
    CHECKSUM,
    encoded,
    materialize,
    partition_of,
    tenants_on_distinct_partitions,
)
from velora.errors import LedgerMismatch

TOPIC = "t.audit.v1"


def _ids_of(store: LedgerStore, tenant: str) -> set[str]:
    rows = store.cursor().execute(
        "SELECT event_id::VARCHAR FROM audit_events WHERE tenant_id = ?", [tenant]
    )
    return {r[0] for r in rows.fetchall()}


def test_two_tenants_with_the_same_event_ids_keep_their_own_events(settings, tmp_path):
    """Finding 1: tenant B's event with tenant A's id was acknowledged, then dropped."""
    a, b = tenants_on_distinct_partitions(settings.audit_partitions)
    ids = [str(uuid_utils.uuid7()) for _ in range(400)]
    events = []
    for i, event_id in enumerate(ids):  # interleaved, A and B on different partitions
        events.append(encoded(a, event_id, seed=i))
        events.append(encoded(b, event_id, seed=10_000 + i))
    # A re-sends 10 ids with other content (conflicts); B re-sends 10 byte-identical copies
    events += [
        encoded(a, event_id, seed=i, action="claim.deleted") for i, event_id in enumerate(ids[:10])
    ]
    events += [e for e in events[1:20:2]]
    assert produce(settings, events) == len(events)

    digests = []
    for run, max_batch in enumerate((5000, 37)):  # different poll and transaction boundaries
        s = settings.with_overrides(materializer_max_batch=max_batch)
        store = materialize(s, tmp_path / f"run-{run}.duckdb")
        try:
            assert _ids_of(store, a) == set(ids)
            assert _ids_of(store, b) == set(ids)
            kept = store.cursor().execute(
                "SELECT count(*) FROM audit_events "
                "WHERE tenant_id = ? AND action = 'claim.deleted'",
                [a],
            )
            assert kept.fetchone() == (0,)  # the first copy in log order won
            conflicts = (
                store.cursor()
                .execute(
                    "SELECT tenant_id, event_id, kept_offset < dropped_offset, "
                    "kept_hash <> dropped_hash FROM ledger_conflicts ORDER BY event_id"
                )
                .fetchall()
            )
            assert conflicts == [(a, i, True, True) for i in sorted(ids[:10])]
            assert store.conflicts == 10
            digests.append(
                (
                    store.cursor().execute(CHECKSUM).fetchone(),
                    store.cursor()
                    .execute("SELECT * FROM ledger_conflicts ORDER BY ALL")
                    .fetchall(),
                )
            )
        finally:
            store.close()
    assert digests[0] == digests[1]
    assert digests[0][0][0] == 800


def _decoded(made, partition: int, offset: int) -> pa.Table:
    return (
        EventDecoder()
        .decode(
            [made.value],
            np.asarray([partition], dtype=np.int32),
            np.asarray([offset], dtype=np.int64),
        )
        .table
    )


def test_across_partitions_the_lowest_position_wins_whatever_the_read_order(tmp_path):
    """A tenant moved by added partitions: the same rule decides, whichever copy comes first."""
    event_id = str(uuid_utils.uuid7())
    early = encoded("acme", event_id, seed=1)  # partition 0 (lower), read second below
    late = encoded("acme", event_id, seed=2, action="claim.exported")  # partition 2
    outcomes = []
    for order in ((late, 2, 0, early, 0, 5), (early, 0, 5, late, 2, 0)):
        first, p1, o1, second, p2, o2 = order
        store = LedgerStore(tmp_path / f"{p1}.duckdb")
        try:
            store.write_batch(_decoded(first, p1, o1), TOPIC, {p1: o1 + 1})
            store.write_batch(_decoded(second, p2, o2), TOPIC, {p2: o2 + 1})
            cur = store.cursor()
            rows = cur.execute("SELECT kafka_partition, kafka_offset, action FROM audit_events")
            row = rows.fetchall()
            found = cur.execute("SELECT kept_partition, dropped_partition FROM ledger_conflicts")
            conflicts = found.fetchall()
            outcomes.append((row, conflicts, store.count()))
        finally:
            store.close()
    assert outcomes[0] == outcomes[1]
    rows, conflicts, count = outcomes[0]
    assert count == 1 and rows[0][:2] == (0, 5)
    assert conflicts == [(0, 2)]


def test_identical_resends_are_absorbed_without_a_conflict(tmp_path):
    made = encoded("acme", seed=3)
    store = LedgerStore(tmp_path / "l.duckdb")
    try:
        store.write_batch(_decoded(made, 0, 0), TOPIC, {0: 1})
        store.write_batch(_decoded(made, 0, 7), TOPIC, {0: 8})
        assert store.count() == 1
        assert store.conflicts == 0
        assert store.stored_offsets(TOPIC) == {0: 8}
    finally:
        store.close()


def test_conflicts_are_counted_in_readiness(settings):
    """Issue 14 finding 6: a differing resend is recorded, counted and visible."""
    event_id = str(uuid_utils.uuid7())
    produce(
        settings,
        [encoded("acme", event_id, seed=1), encoded("acme", event_id, seed=1, action="x.changed")],
    )
    node = QueryNode(settings)
    node.start()
    try:
        wait_for(lambda: node.readiness()["ready"], timeout=60, what="ready")
        state = node.readiness()
        assert state["conflicts"] == 1 and state["quarantined"] == 0
        p = partition_of("acme", settings.audit_partitions)
        first = node.store.stored_offsets(settings.audit_topic)[p] - 2
        row = node.cursor().execute(
            "SELECT tenant_id, event_id, kept_offset, dropped_offset FROM ledger_conflicts"
        )
        assert row.fetchall() == [("acme", event_id, first, first + 1)]
    finally:
        node.stop()


V1_DDL = """
CREATE TABLE audit_events (event_id VARCHAR PRIMARY KEY, tenant_id VARCHAR NOT NULL,
    kafka_partition INTEGER NOT NULL, kafka_offset BIGINT NOT NULL);
CREATE TABLE ledger_offsets (topic VARCHAR NOT NULL, partition INTEGER NOT NULL,
    next_offset BIGINT NOT NULL, updated_at TIMESTAMPTZ NOT NULL, PRIMARY KEY (topic, partition));
INSERT INTO audit_events VALUES ('e1', 'acme', 0, 0);
"""


def test_an_older_layout_is_moved_aside_and_rebuilt_from_the_log(settings):
    path = settings.duckdb_path
    con = duckdb.connect(str(path))
    con.execute(V1_DDL)
    con.close()
    produce(settings, [encoded(f"tenant-{i % 4}", seed=i) for i in range(60)])
    try:
        LedgerStore(path)
    except LedgerMismatch as exc:  # a store never writes into a file of another layout
        assert "layout v1" in exc.message
    else:
        raise AssertionError("LedgerStore opened a v1 ledger")

    node = QueryNode(settings)
    node.start()
    try:
        assert node.state is LedgerState.REBUILD and node.replaying
        assert path.with_name(path.name + ".v1.old").exists()
        wait_for(lambda: node.readiness()["ready"], timeout=60, what="rebuilt")
        assert node.store.count() == 60
        assert node.store.meta("layout_version") == str(LAYOUT_VERSION)
    finally:
        node.stop()
    again = QueryNode(settings)
    again.start()
    try:
        assert again.state is LedgerState.CURRENT and not again.replaying
    finally:
        again.stop()

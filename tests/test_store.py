"""LedgerStore: the one-transaction write, ON CONFLICT dedup, and fault injection at commit."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from ledger.decode import LEDGER_SCHEMA, EventDecoder
from ledger.store import DEDUP_BATCHES, LedgerStore
from tests.factory import EventFactory
from velora.errors import Unavailable

TOPIC = "t.audit.v1"


@pytest.fixture(scope="module")
def factory():
    return EventFactory(templates=200)


def _table(factory, n, partition=0, first_offset=0, events=None):
    events = events or [factory.make() for _ in range(n)]
    decoded = EventDecoder(factory.codec).decode(
        [e.value for e in events],
        np.full(len(events), partition, dtype=np.int32),
        np.arange(first_offset, first_offset + len(events), dtype=np.int64),
    )
    return decoded.table, events


class FailingCommit(LedgerStore):
    """A fake at the seam: the commit fails after the insert and the upsert ran."""

    fail = True

    def _commit(self, cur):
        if self.fail:
            raise duckdb.IOException("disk full (injected)")
        super()._commit(cur)


def test_write_batch_inserts_rows_and_next_offsets(tmp_path, factory):
    store = LedgerStore(tmp_path / "l.duckdb")
    table, events = _table(factory, 50)
    store.write_batch(table, TOPIC, {0: 50})
    assert store.count() == 50
    assert store.stored_offsets(TOPIC) == {0: 50}
    ids = {
        r[0]
        for r in store.cursor().execute("SELECT event_id::VARCHAR FROM audit_events").fetchall()
    }
    assert ids == {e.event_id for e in events}
    store.close()


def test_conflicting_event_ids_are_ignored_and_offsets_still_advance(tmp_path, factory):
    store = LedgerStore(tmp_path / "l.duckdb")
    table, events = _table(factory, 20)
    store.write_batch(table, TOPIC, {0: 20})
    again, _ = _table(factory, 0, first_offset=20, events=[*events[:5], factory.make()])
    assert store._dedup_left == 0  # no duplicate so far: the fast insert was used
    store.write_batch(again, TOPIC, {0: 26})
    assert store._dedup_left == DEDUP_BATCHES - 1  # the duplicate forced ON CONFLICT
    assert store.count() == 21
    first = store.cursor().execute(
        "SELECT kafka_offset FROM audit_events WHERE event_id = ?", [events[0].event_id]
    )
    assert first.fetchone() == (0,)  # the first occurrence in the log wins
    assert store.stored_offsets(TOPIC) == {0: 26}
    store.close()


def test_failed_commit_leaves_neither_rows_nor_offsets(tmp_path, factory):
    store = FailingCommit(tmp_path / "l.duckdb")
    table, _ = _table(factory, 30)
    with pytest.raises(Unavailable):
        store.write_batch(table, TOPIC, {0: 30, 1: 4})
    assert store.count() == 0
    assert store.stored_offsets(TOPIC) == {}
    store.fail = False
    store.write_batch(table, TOPIC, {0: 30, 1: 4})
    assert store.count() == 30
    assert store.stored_offsets(TOPIC) == {0: 30, 1: 4}
    store.close()


def test_empty_batch_only_moves_offsets(tmp_path):
    store = LedgerStore(tmp_path / "l.duckdb")
    store.write_batch(LEDGER_SCHEMA.empty_table(), TOPIC, {2: 7})
    assert store.count() == 0
    assert store.stored_offsets(TOPIC) == {2: 7}
    store.close()


def test_data_survives_reopen(tmp_path, factory):
    path = tmp_path / "l.duckdb"
    store = LedgerStore(path)
    table, _ = _table(factory, 10, partition=1, first_offset=100)
    store.write_batch(table, TOPIC, {1: 110})
    store.close()
    store = LedgerStore(path)
    assert store.count() == 10
    assert store.stored_offsets(TOPIC) == {1: 110}
    store.close()


def test_duckdb_errors_are_translated(tmp_path):
    (tmp_path / "dir.duckdb").mkdir()
    with pytest.raises(Unavailable) as info:
        LedgerStore(tmp_path / "dir.duckdb")
    assert isinstance(info.value.__cause__, duckdb.Error)


def test_a_deleted_ledgers_leftover_wal_is_not_replayed(tmp_path, factory):
    path = tmp_path / "l.duckdb"
    store = LedgerStore(path)
    table, _ = _table(factory, 10)
    store.write_batch(table, TOPIC, {0: 10})
    store.close()
    wal = path.with_name(path.name + ".wal")
    wal.write_bytes(b"left behind")  # as if the node had died before a checkpoint
    path.unlink()
    store = LedgerStore(path)
    try:
        assert store.count() == 0
        assert store.stored_offsets(TOPIC) == {}
    finally:
        store.close()


def test_commits_do_not_checkpoint_until_the_wal_passes_the_threshold(tmp_path, factory):
    """DuckDB's 16 MiB default checkpointed inside a commit every few tens of thousands of
    rows; the store lets the WAL grow to CHECKPOINT_THRESHOLD first (closing checkpoints)."""
    path = tmp_path / "l.duckdb"
    wal = path.with_name(path.name + ".wal")
    store = LedgerStore(path)
    table, _ = _table(factory, 5000)
    keys = table.column("ledger_key").to_pylist()
    offset = 0
    while not wal.exists() or wal.stat().st_size < 24 * 2**20:
        fresh = table.set_column(0, "ledger_key", pa.array([f"{k}-{offset}" for k in keys]))
        offset += table.num_rows
        store.write_batch(fresh, TOPIC, {0: offset})
        assert offset < 500_000, "the WAL did not grow"
    assert store.count() == offset
    store.close()
    assert not wal.exists()  # closed: checkpointed
    assert LedgerStore(path).count() == offset

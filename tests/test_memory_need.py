"""The ledger's DuckDB memory: the primary key's index needs what ledger.memory_need says,
a write DuckDB refuses for want of memory names the setting to raise, and a database
DuckDB invalidated stops the node instead of leaving it unable to read or write."""

from __future__ import annotations

import duckdb
import pytest

from ledger import memory_need
from ledger.memory_need import SETTING, is_out_of_memory, needed_mb, shortfall
from ledger.node import QueryNode
from ledger.store import LedgerStore
from ledger.tables import ledger_key
from tests.helpers import wait_for
from tests.test_ledger_faults import _load, _recovers, fast_retries  # noqa: F401 (fixture)
from velora.errors import Unavailable


def test_the_index_takes_about_the_documented_memory_per_event(tmp_path):
    """A limit fills at about INDEX_MB_PER_MILLION per million keys of the ledger's shape,
    and the limit it fills at is one that shortfall() warns about."""
    limit_mb = 96
    con = duckdb.connect(str(tmp_path / "index.duckdb"))
    con.execute("CREATE TABLE t (ledger_key VARCHAR PRIMARY KEY, n BIGINT)")
    con.execute(f"SET memory_limit = '{limit_mb}MB'")
    shape = ledger_key("tenant-00", "00000000-0000-0000-0000-000000000000")
    stored, batch, refused = 0, 20_000, None
    while stored < 4_000_000 and refused is None:
        try:
            con.execute(
                "INSERT INTO t SELECT '9:tenant-' || lpad((r % 20)::VARCHAR, 2, '0') || ':' "
                "|| uuid()::VARCHAR, r FROM range(?, ?) s(r)",
                [stored, stored + batch],
            )
            stored += batch
        except duckdb.Error as exc:
            refused = exc
    con.close()
    assert len(shape) == len("9:tenant-00:") + 36  # the keys above have the ledger's length
    assert refused is not None and is_out_of_memory(refused), refused
    per_million = limit_mb / (stored / 1_000_000)
    assert 0.67 < per_million / memory_need.INDEX_MB_PER_MILLION < 1.5, per_million
    assert shortfall(limit_mb, stored) is not None
    assert shortfall(limit_mb, stored // 4) is None  # a quarter of the way, no warning


def test_shortfall_names_the_setting_and_what_the_ledger_needs():
    assert shortfall(0, 10**9) is None  # DuckDB's default: 80% of RAM
    assert shortfall(64, 0) is None  # the smallest limit the setting takes
    assert needed_mb(10_000_000) == memory_need.WORKING_MB + 1_000
    text = shortfall(512, 10_000_000)
    assert text is not None
    assert f"{SETTING}=512" in text and "1,064 MB" in text and "10,000,000 events" in text
    assert shortfall(1_064, 10_000_000) is None
    assert not is_out_of_memory(duckdb.ConstraintException("duplicate key"))
    assert not is_out_of_memory(ValueError("failed to allocate"))  # only DuckDB's own


class StarvedWrite(LedgerStore):
    """Fault injection: the first write runs under a 1 MB limit, so DuckDB really refuses it."""

    starved = 1

    def write_batch(self, *args, **kwargs):
        if not StarvedWrite.starved:
            return super().write_batch(*args, **kwargs)
        StarvedWrite.starved -= 1
        self.db.connection.execute("SET memory_limit = '1MB'")
        try:
            return super().write_batch(*args, **kwargs)
        finally:
            self.db.connection.execute("RESET memory_limit")


def test_a_write_out_of_memory_names_the_setting_and_recovers(settings, monkeypatch):
    expected = _load(settings)
    StarvedWrite.starved = 1
    node = QueryNode(settings, store_factory=StarvedWrite)
    try:
        reason = f"write failed: DuckDB is out of memory at {SETTING}=0"
        _recovers(node, expected, reason, monkeypatch)
    finally:
        node.stop()


class InvalidatedAfterWrite(LedgerStore):
    """Fault injection: after the first write, a checkpoint under a 1 MB limit; DuckDB
    fails it with a fatal error and invalidates the database, as it does when memory or
    disk runs out in a checkpoint."""

    def write_batch(self, *args, **kwargs):
        super().write_batch(*args, **kwargs)
        _checkpoint_starved(self.db.connection)


def _checkpoint_starved(con: duckdb.DuckDBPyConnection) -> None:
    """Lower DuckDB's limit to the least it accepts, then checkpoint (a fatal error)."""
    for kb in range(1024, 256 * 1024, 128):  # 1 MB .. 256 MB, in steps of half a block
        try:
            con.execute(f"SET memory_limit = '{kb}KB'")
            break
        except duckdb.OutOfMemoryException:  # it holds more than that and cannot evict it
            continue
    con.execute("FORCE CHECKPOINT")  # even with another transaction open


def test_an_invalidated_ledger_stops_the_node_and_reopens_with_its_rows(settings):
    expected = _load(settings)
    node = QueryNode(settings, store_factory=InvalidatedAfterWrite)
    node.start()
    try:
        wait_for(lambda: node.fatal, timeout=60, what="the node's fatal reason")
        fatal = node.fatal
        assert fatal.startswith("DuckDB invalidated the ledger after a fatal error (")
        assert f"DuckDB is out of memory at {SETTING}=0" in fatal
        assert "restart the node" in fatal
        state = node.readiness()
        assert state["ready"] is False and state["reason"] == fatal
        with pytest.raises(Unavailable):  # every statement fails now; nothing is served
            node.store.db.read_now(lambda cur: cur.execute("SELECT 1").fetchall())
        assert node.materializer.status().restarts == 0  # stopped, not retried forever
    finally:
        node.stop()  # closes what can be closed, without a checkpoint
    reopened = QueryNode(settings)
    reopened.start()
    try:
        wait_for(lambda: reopened.readiness()["ready"], timeout=60, what="the reopened node")
        assert reopened.store.count() == expected
        assert reopened.fatal is None
    finally:
        reopened.stop()


def test_a_read_that_meets_an_invalidated_database_stops_the_node(settings):
    node = QueryNode(settings)
    node.start()
    try:
        wait_for(lambda: node.readiness()["ready"], timeout=60, what="ready")
        db = node.store.db
        db.connection.execute("CREATE TABLE pending (n INTEGER); INSERT INTO pending VALUES (1)")
        with pytest.raises(duckdb.FatalException):
            _checkpoint_starved(db.connection)
        assert node.fatal is None  # noticed by the node's own statements, not this test's
        with pytest.raises(Unavailable):
            db.read_now(lambda cur: cur.execute("SELECT count(*) FROM audit_events").fetchall())
        assert node.fatal == db.invalidated
        assert "a read failed: FatalException" in node.fatal
        assert node.readiness()["reason"] == node.fatal
    finally:
        node.stop()


def test_a_node_warns_when_its_limit_is_below_what_the_events_need(settings, caplog):
    """The events stored plus those the log still holds for the node: 5,200 need 65 MB."""
    events = _load(settings, 5_200)
    fresh = settings.duckdb_path.with_name("fresh.duckdb")
    starts = [
        (settings.with_overrides(duckdb_path=fresh, duckdb_memory_limit_mb=64), True),  # replay
        (settings, False),  # the same log into the test's own file, DuckDB's default limit
        (settings.with_overrides(duckdb_memory_limit_mb=4096), False),
        (settings.with_overrides(duckdb_memory_limit_mb=64), True),  # all stored now
    ]
    for run_settings, warned in starts:
        caplog.clear()
        node = QueryNode(run_settings)
        node.start()
        try:
            wait_for(lambda n=node: n.readiness()["ready"], timeout=60, what="ready")
            assert node.store.count() == events
        finally:
            node.stop()
        warnings = [r.getMessage() for r in caplog.records if SETTING in r.getMessage()]
        limit = run_settings.duckdb_memory_limit_mb
        assert warnings == ([shortfall(limit, events)] if warned else []), limit
    assert needed_mb(events) == 65

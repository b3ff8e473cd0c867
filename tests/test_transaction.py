"""ledger.transaction on a real DuckDB file: what commits, what rolls back, what is seen."""

from __future__ import annotations

import duckdb
import pytest

from ledger.transaction import snapshot, transaction


@pytest.fixture()
def con(tmp_path):
    con = duckdb.connect(str(tmp_path / "t.duckdb"))
    con.execute("CREATE TABLE t (n INTEGER)")
    yield con
    con.close()


def _count(cur: duckdb.DuckDBPyConnection) -> int:
    return cur.execute("SELECT count(*) FROM t").fetchone()[0]


def test_a_transaction_commits_its_block_or_none_of_it(con):
    with transaction(con):
        con.execute("INSERT INTO t VALUES (1)")
    assert _count(con.cursor()) == 1
    with pytest.raises(ValueError, match="in the block"):
        with transaction(con):
            con.execute("INSERT INTO t VALUES (2)")
            raise ValueError("in the block")
    assert _count(con.cursor()) == 1


def test_a_failed_commit_raises_its_own_error_not_the_rollbacks(con):
    con.execute("ALTER TABLE t ADD PRIMARY KEY (n)")
    con.execute("INSERT INTO t VALUES (1)")
    other = con.cursor()
    with pytest.raises(duckdb.Error) as caught:
        with transaction(con):
            con.execute("INSERT INTO t VALUES (5)")
            other.execute("INSERT INTO t VALUES (5)")  # commits first: ours conflicts
    assert "Failed to commit" in str(caught.value)
    assert "no transaction is active" not in str(caught.value)
    assert _count(other) == 2


def test_a_snapshot_sees_one_state_while_others_commit(con):
    reader, writer = con.cursor(), con.cursor()
    with snapshot(reader):
        before = _count(reader)
        writer.execute("INSERT INTO t VALUES (7)")
        assert _count(reader) == before
    assert _count(reader) == before + 1


def test_a_snapshot_raises_the_blocks_error_when_its_rollback_fails(con):
    with pytest.raises(ValueError, match="in the block"):
        with snapshot(con):
            con.execute("ROLLBACK")  # the block ends the transaction itself
            raise ValueError("in the block")
    assert _count(con) == 0  # the cursor is usable again

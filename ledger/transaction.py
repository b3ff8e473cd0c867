"""One DuckDB transaction around a block: a write that commits, or a read's snapshot."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import duckdb


@contextlib.contextmanager
def transaction(cur: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """The block in one transaction on ``cur``: committed when it ends, rolled back when
    it raises (the block's error is the one raised, never the rollback's)."""
    cur.execute("BEGIN TRANSACTION")
    try:
        yield
        cur.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(duckdb.Error):  # a failed COMMIT ended it already
            cur.execute("ROLLBACK")
        raise


@contextlib.contextmanager
def snapshot(cur: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """The block's reads on ``cur`` in one transaction, so they see one snapshot of the
    file whatever commits meanwhile; rolled back when the block ends (it writes nothing).
    When the block raises, its error is the one raised, never the rollback's."""
    cur.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        with contextlib.suppress(duckdb.Error):  # the block may have ended it
            cur.execute("ROLLBACK")
        raise
    cur.execute("ROLLBACK")

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
        rollback(cur)  # a failed COMMIT ended it already
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
        rollback(cur)  # the block may have ended it
        raise
    cur.execute("ROLLBACK")


def rollback(cur: duckdb.DuckDBPyConnection) -> None:
    """Roll back the open transaction on ``cur``, if any: a failed statement or COMMIT
    may already have ended it, and the error that did so is the one to report."""
    with contextlib.suppress(duckdb.Error):
        cur.execute("ROLLBACK")

"""One DuckDB transaction around a block, for the writers that run beside the materializer."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import duckdb


@contextlib.contextmanager
def transaction(cur: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """The block in one transaction on ``cur``: committed when it ends, rolled back when
    it raises."""
    cur.execute("BEGIN TRANSACTION")
    try:
        yield
        cur.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(duckdb.Error):  # a failed COMMIT ended it already
            cur.execute("ROLLBACK")
        raise

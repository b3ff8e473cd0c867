"""What the public API needs from the ledger.

The query node (``ledger.node.QueryNode``) satisfies :class:`LedgerReader`: it owns
the one DuckDB connection of its process and runs ``fn(cursor)`` in a worker
thread. ``ledger.duck.LedgerFile`` does the same over a DuckDB file that nothing
else holds (a database built for a test or a benchmark: a real DuckDB, not a mock).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

import duckdb

T = TypeVar("T")


class LedgerReader(Protocol):
    """Runs a read against the ledger's DuckDB in a worker thread."""

    async def read(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """``fn(cursor)`` on a DuckDB cursor of the worker thread; its result."""
        ...

    def readiness(self) -> dict[str, object]:
        """``{"ready": bool, ...}`` for the readiness probe."""
        ...

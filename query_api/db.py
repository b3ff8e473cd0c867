"""What the public API needs from the ledger, and a plain DuckDB reader that provides it.

The query node (``ledger.node.QueryNode``) satisfies :class:`LedgerReader`: it owns
the one DuckDB connection of its process and runs ``fn(cursor)`` in a worker
thread. :class:`DuckDBReader` does the same over a DuckDB file that nothing else
holds: a database built for a test or a benchmark (a real DuckDB, not a mock).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

import duckdb

from ledger.tables import ALL_DDL
from velora.errors import Unavailable

T = TypeVar("T")


class LedgerReader(Protocol):
    """Runs a read against the ledger's DuckDB in a worker thread."""

    async def read(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """``fn(cursor)`` on a DuckDB cursor of the worker thread; its result."""
        ...

    def readiness(self) -> dict[str, object]:
        """``{"ready": bool, ...}`` for the readiness probe."""
        ...


class DuckDBReader:
    """A :class:`LedgerReader` over a DuckDB file opened by this process alone."""

    def __init__(self, path: Path | str, *, create: bool = True) -> None:
        try:
            self._con = duckdb.connect(str(path))
            if create:
                for ddl in ALL_DDL:
                    self._con.execute(ddl)
        except duckdb.Error as exc:
            raise Unavailable(f"cannot open ledger {path}: {type(exc).__name__}") from exc
        self._local = threading.local()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._lock = threading.Lock()

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """The underlying connection (for loading data in tests and benchmarks)."""
        return self._con

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB cursor for the calling thread."""
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            with self._lock:
                cur = self._con.cursor()
                self._cursors.append(cur)
            self._local.cursor = cur
        return cur

    async def read(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run ``fn(cursor)`` in a worker thread; DuckDB errors become Unavailable (503)."""

        def call() -> T:
            try:
                return fn(self.cursor())
            except duckdb.Error as exc:
                raise Unavailable(
                    f"ledger read failed: {type(exc).__name__}", retry_after=1
                ) from exc

        return await asyncio.to_thread(call)

    def readiness(self) -> dict[str, object]:
        """Always ready: the file is loaded before the reader is made."""
        return {"ready": True, "lag": 0}

    def close(self) -> None:
        """Close every cursor and the connection."""
        with self._lock:
            for cur in self._cursors:
                cur.close()
            self._cursors.clear()
        self._con.close()

"""The query node's ledger: one DuckDB file, its materializer, and reads for the API.

DuckDB admits one writing process per file, so the materializer and the query API
live in the same process and share one connection: the materializer writes
through its own cursor, and every reader thread gets a cursor of its own
(:class:`~ledger.duck.SharedConnection`). :meth:`QueryNode.read` runs a blocking
DuckDB call in a worker thread so the event loop never waits on it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import duckdb

from ledger.materializer import BatchCallback, Materializer
from ledger.store import LedgerStore
from velora.errors import Unavailable
from velora.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")


class QueryNode:
    """A DuckDB ledger kept up to date from the audit topic, readable from many threads."""

    def __init__(
        self,
        settings: Settings,
        *,
        on_batch: BatchCallback | None = None,
        store_factory: Callable[[Path], LedgerStore] = LedgerStore,
    ) -> None:
        """``store_factory`` opens the DuckDB file (a seam for fault-injection tests)."""
        self.settings = settings
        self._on_batch = on_batch
        self._store_factory = store_factory
        self.store: LedgerStore | None = None
        self.materializer: Materializer | None = None
        self._lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> None:
        """Open DuckDB and start materializing (returns at once; see :meth:`readiness`)."""
        with self._lock:
            if self.store is not None:
                return
            self.store = self._store_factory(self.settings.duckdb_path)
            self.materializer = Materializer(self.settings, self.store, on_batch=self._on_batch)
            self.materializer.start()
        log.info("query node ledger open at %s", self.settings.duckdb_path)

    def stop(self) -> None:
        """Stop the materializer (committing the batch in flight), close DuckDB."""
        with self._lock:
            materializer, store = self.materializer, self.store
            self.materializer = self.store = None
        if materializer is not None:
            materializer.stop()
        if store is not None:
            try:
                store.checkpoint()
            except Unavailable as exc:  # the WAL is replayed on the next open instead
                log.warning("checkpoint on stop failed: %s", exc)
            store.close()

    # -- readiness ----------------------------------------------------------------
    def readiness(self) -> dict[str, object]:
        """``ready`` once caught up to the end offsets seen at start; ``lag`` in records."""
        materializer = self.materializer
        if materializer is None:
            return {"ready": False, "lag": None, "reason": "not started"}
        s = materializer.status()
        out: dict[str, object] = {
            "ready": s.caught_up and s.running,
            "lag": s.lag,
            "partitions": {
                str(p): {
                    "stored": s.stored.get(p, 0),
                    "end": end,
                    "target": None if s.target is None else s.target.get(p),
                }
                for p, end in sorted(s.end.items())
            },
        }
        if materializer.skipped:
            out["skipped"] = materializer.skipped
        if s.error:
            out["error"] = s.error
        return out

    def wait_for_offset(self, partition: int, offset: int, timeout: float) -> bool:
        """Read-your-writes: wait until the audit record at ``offset`` is materialized."""
        materializer = self.materializer
        return materializer is not None and materializer.wait_for_offset(partition, offset, timeout)

    # -- reads --------------------------------------------------------------------
    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor of the shared connection for the calling thread."""
        return self._store().cursor()

    async def read(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run ``fn(cursor)`` in a ledger worker thread; DuckDB errors become Unavailable."""
        return await self._store().db.read(fn)

    def _store(self) -> LedgerStore:
        store = self.store
        if store is None:
            raise Unavailable("the query node is not started", retry_after=1)
        return store

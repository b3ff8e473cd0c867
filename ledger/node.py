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

from ledger import page_bodies
from ledger.attempts import AttemptLog
from ledger.body_keeper import BodyKeeper
from ledger.copy_keeper import CopyKeeper
from ledger.copy_warmer import CopyWarmer
from ledger.decode import EventDecoder
from ledger.head import TenantHeads
from ledger.layout import LedgerState, prepare_ledger
from ledger.materializer import BatchCallback, Materializer, Status
from ledger.page_bodies import PageBodies
from ledger.sorted_copies import CopyMarks
from ledger.store import LedgerStore
from ledger.target_keeper import BUSY_LAG, TargetSetKeeper
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
        store_factory: Callable[[Path], LedgerStore] | None = None,
        decoder: EventDecoder | None = None,
    ) -> None:
        """``store_factory`` opens the DuckDB file and ``decoder`` decodes the log (seams
        for fault-injection tests)."""
        self.settings = settings
        self._on_batch = on_batch
        self._store_factory = store_factory or self._open_store
        self._decoder = decoder
        self.store: LedgerStore | None = None
        self.materializer: Materializer | None = None
        self.attempts: AttemptLog | None = None
        """The webhook attempt log's loop (``webhook_attempts``), beside the materializer."""
        self.target_keeper: TargetSetKeeper | None = None
        """Adds new rows to the target sets (:mod:`ledger.target_keeper`), behind the writer."""
        self.copy_keeper: CopyKeeper | None = None
        """Sorts new rows into the sorted copies (:mod:`ledger.copy_keeper`), behind the writer."""
        self.bodies: PageBodies | None = None
        """Each row's public JSON by ``seq`` (:mod:`ledger.page_bodies`); None: not kept."""
        self.body_keeper: BodyKeeper | None = None
        self.copy_warmer: CopyWarmer | None = None
        """Keeps the sorted copies in DuckDB's buffer pool (:mod:`ledger.copy_warmer`)."""
        self.state: LedgerState | None = None
        """What the node found at start: a fresh, current or outdated (rebuilt) ledger."""
        self._lock = threading.Lock()
        self.heads: TenantHeads | None = None
        """Each tenant's newest events in memory, kept by the commit path (:mod:`ledger.head`)."""
        if settings.head_events > 0:
            self.heads = TenantHeads(
                settings.head_events,
                settings.head_tenants,
                settings.head_actions,
                settings.head_ids,
            )

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> None:
        """Open DuckDB and start materializing (returns at once; see :meth:`readiness`).

        A ledger file of an older layout is moved aside first and rebuilt from the log
        (:attr:`state` is then ``REBUILD``), so a layout change never needs a migration.
        """
        with self._lock:
            if self.store is not None:
                return
            self.state = prepare_ledger(self.settings.duckdb_path)
            self.store = self._store_factory(self.settings.duckdb_path)
            if self.heads is not None:
                with self.heads.lock:  # nothing held from a file this node opened before
                    self.heads.clear()
            self.store.heads = self.heads
            self.materializer = Materializer(
                self.settings, self.store, decoder=self._decoder, on_batch=self._on_batch
            )
            self.materializer.start()
            self.attempts = AttemptLog(self.settings, self.store)
            self.attempts.start()
            self.target_keeper = TargetSetKeeper(
                self.store, self.settings.audit_topic, busy=self._replaying_backlog
            )
            self.target_keeper.start()
            self.copy_keeper = CopyKeeper(self.store, busy=self._replaying_backlog)
            self.copy_keeper.start()
            if self.settings.warm_copies:
                self.copy_warmer = CopyWarmer(self.store, busy=self._replaying_backlog)
                self.copy_warmer.start()
            if self.settings.page_bodies:
                path = page_bodies.path_for(self.settings.duckdb_path)
                self.bodies = page_bodies.open_store(path, self.store.cursor())
            if self.bodies is not None:
                self.body_keeper = BodyKeeper(self.store, self.bodies, busy=self._replaying_backlog)
                self.body_keeper.start()
        log.info("query node ledger open at %s (%s)", self.settings.duckdb_path, self.state.value)

    def _replaying_backlog(self) -> bool:
        """Whether the materializer is far behind the log (the keepers wait meanwhile)."""
        materializer = self.materializer
        return materializer is not None and materializer.status().lag > BUSY_LAG

    @property
    def replaying(self) -> bool:
        """Whether this start replays the whole log (a new or rebuilt ledger)."""
        return self.state in (LedgerState.FRESH, LedgerState.REBUILD)

    def stop(self) -> None:
        """Stop the materializer (committing the batch in flight), close DuckDB."""
        with self._lock:
            materializer, store, attempts = self.materializer, self.store, self.attempts
            keeper, self.target_keeper = self.target_keeper, None
            copy_keeper, self.copy_keeper = self.copy_keeper, None
            warmer, self.copy_warmer = self.copy_warmer, None
            body_keeper, self.body_keeper = self.body_keeper, None
            bodies, self.bodies = self.bodies, None
            self.materializer = self.store = self.attempts = None
        if attempts is not None:
            attempts.stop()
        if materializer is not None:
            materializer.stop()
        if keeper is not None:
            keeper.stop()
        if copy_keeper is not None:
            copy_keeper.stop()
        if warmer is not None:
            warmer.stop()
        if body_keeper is not None:
            body_keeper.stop()
        if bodies is not None:
            bodies.close()
        if store is not None:
            try:
                store.checkpoint()
            except Unavailable as exc:  # the WAL is replayed on the next open instead
                log.warning("checkpoint on stop failed: %s", exc)
            store.close()

    # -- readiness ----------------------------------------------------------------
    def readiness(self) -> dict[str, object]:
        """``ready`` once caught up to the end offsets seen at start and working.

        Not ready, with a ``reason``, while the materializer restarts after an error,
        while a partition is held for a schema that is not deployed, after a fatal
        mismatch with the log, or while catching up. Reasons name stages, error classes,
        partitions and offsets, never addresses or data.
        """
        materializer, store = self.materializer, self.store
        if materializer is None or store is None:
            return {"ready": False, "lag": None, "reason": "not started"}
        s = materializer.status()
        reason = store.db.invalidated or _reason(s)
        out: dict[str, object] = {
            "ready": reason is None,
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
        out["restarts"] = s.restarts
        out["quarantined"] = store.quarantined
        out["conflicts"] = store.conflicts
        if reason is not None:
            out["reason"] = reason
        if self.attempts is not None:
            out["webhook_attempts"] = self.attempts.status()
        if self.target_keeper is not None:
            out["target_sets"] = self.target_keeper.status()
        if self.copy_keeper is not None:
            out["sorted_copies"] = self.copy_keeper.status()
        if self.copy_warmer is not None:
            out["copy_warmer"] = self.copy_warmer.status()
        if self.body_keeper is not None:
            out["page_bodies"] = self.body_keeper.status()
        if self.heads is not None:
            out["heads"] = self.heads.status()
        if s.held:
            out["held"] = {
                str(p): {"offset": o, "fingerprint": fp} for p, (o, fp) in sorted(s.held.items())
            }
        return out

    @property
    def fatal(self) -> str | None:
        """Why the node must stop: the ledger does not match the log, or DuckDB
        invalidated the database (only reopening the file makes it usable again)."""
        materializer, store = self.materializer, self.store
        fatal = None if materializer is None else materializer.status().fatal
        if fatal is None and store is not None:
            fatal = store.db.invalidated
        return fatal

    def wait_for_offset(self, partition: int, offset: int, timeout: float) -> bool:
        """Read-your-writes: wait until the audit record at ``offset`` is materialized."""
        materializer = self.materializer
        return materializer is not None and materializer.wait_for_offset(partition, offset, timeout)

    # -- reads --------------------------------------------------------------------
    @property
    def copies(self) -> CopyMarks | None:
        """How far the sorted copies reach (:mod:`ledger.sorted_copies`); None: not open."""
        store = self.store
        return None if store is None else store.copies

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor of the shared connection for the calling thread."""
        return self._store().cursor()

    async def read(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run ``fn(cursor)`` in a ledger worker thread; DuckDB errors become Unavailable."""
        return await self._store().db.read(fn)

    def _open_store(self, path: Path) -> LedgerStore:
        limit = self.settings.duckdb_memory_limit_mb
        return LedgerStore(path, memory_limit=f"{limit}MB" if limit else None)

    def _store(self) -> LedgerStore:
        store = self.store
        if store is None:
            raise Unavailable("the query node is not started", retry_after=1)
        return store


def _reason(s: Status) -> str | None:
    """Why a node is not ready, or None when it is."""
    if s.fatal:
        return s.fatal
    if s.error:
        return f"materializer restarting: {s.error}"
    if s.held:
        p, (offset, fp) = min(s.held.items())
        return f"partition {p} held at offset {offset}: deploy schema {fp}"
    if not s.running:
        return "materializer not running"
    if not s.caught_up:
        return "catching up with the log"
    return None

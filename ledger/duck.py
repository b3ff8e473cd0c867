"""The one DuckDB access helper: a cursor per thread, reads in a worker pool, errors translated.

DuckDB admits one process per database file, and a connection's cursors may be
used from different threads, one thread each. :class:`SharedConnection` owns one
connection and hands each thread its own cursor (:meth:`~SharedConnection.cursor`);
:meth:`~SharedConnection.read` runs a blocking read in a small thread pool so an
event loop never waits on DuckDB. :func:`duckdb_errors` is the boundary where
``duckdb.Error`` becomes :class:`~velora.errors.Unavailable` (the message names the
operation, never the SQL or its values).

:class:`LedgerFile` opens a ledger file that nothing else holds (a database built
for a test or a benchmark) and offers the same reads as a query node.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import duckdb

from ledger import page_bodies, sorted_copies
from ledger.head import TenantHeads
from ledger.page_bodies import PageBodies
from ledger.sorted_copies import CopyMarks
from ledger.tables import ALL_DDL
from velora.errors import Unavailable

T = TypeVar("T")
READ_THREADS = 4


@contextmanager
def duckdb_errors(what: str) -> Iterator[None]:
    """Translate DuckDB's errors raised inside the block into :class:`Unavailable`."""
    try:
        yield
    except duckdb.Error as exc:
        raise Unavailable(f"ledger {what} failed: {type(exc).__name__}", retry_after=1) from exc


def duckdb_error(exc: BaseException | None) -> duckdb.Error | None:
    """DuckDB's own error behind ``exc``: ``exc`` itself, or the cause that
    :func:`duckdb_errors` kept when it translated it; None for any other error."""
    for err in (exc, None if exc is None else exc.__cause__):
        if isinstance(err, duckdb.Error):
            return err
    return None


class SharedConnection:
    """One DuckDB connection used from many threads, each through a cursor of its own."""

    def __init__(self, con: duckdb.DuckDBPyConnection, *, threads: int = READ_THREADS) -> None:
        self._con = con
        self._local = threading.local()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="ledger-read")
        self.invalidated: str | None = None
        """Why DuckDB invalidated this database, or None. After a fatal error (such as
        running out of memory or disk in a checkpoint) every statement fails until the
        process opens the file again; committed rows are kept."""

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """The connection itself (schema changes at open, loading data in tests)."""
        return self._con

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """The calling thread's cursor (made on first use)."""
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self._local.cursor = self.new_cursor()
        return cur

    def new_cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor for one user at a time (closed with the connection)."""
        with self._lock:
            if self._closed:
                raise Unavailable("the ledger is closed", retry_after=1)
            cur = self._con.cursor()
            self._cursors.append(cur)
        return cur

    async def read(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run ``fn(cursor)`` in a worker thread; DuckDB errors become :class:`Unavailable`."""
        if self._closed:
            raise Unavailable("the ledger is closed", retry_after=1)
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.read_now, fn)

    def read_now(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run ``fn(cursor)`` on the calling thread's cursor, translating DuckDB's errors."""
        cur = self.cursor()
        try:
            with duckdb_errors("read"):
                return fn(cur)
        except Unavailable as exc:
            if isinstance(duckdb_error(exc), duckdb.FatalException):
                self.invalidate("a read failed: FatalException")
            raise
        finally:
            # A result left half-fetched (fetchone) would make this thread's next query
            # on the cursor fail; drop it.
            try:
                cur.abort()
            except duckdb.Error:
                pass

    def invalidate(self, cause: str) -> str:
        """Note that DuckDB invalidated the database (the first cause is kept); the reason."""
        with self._lock:
            if self.invalidated is None:
                self.invalidated = (
                    f"DuckDB invalidated the ledger after a fatal error ({cause}); "
                    "restart the node: it opens the file again, with every committed row"
                )
            return self.invalidated

    def close(self) -> None:
        """Wait for reads in flight, then close every cursor and the connection (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._pool.shutdown(wait=True)
        with self._lock:
            for cur in self._cursors:
                try:
                    cur.close()
                except duckdb.Error:
                    pass
            self._cursors.clear()
            self._con.close()


class LedgerFile(SharedConnection):
    """A ledger DuckDB file opened by this process alone, read like a query node's.

    With ``heads``, the API answers first pages from them as a node does; nothing
    updates them, so only for a file that is not written once it is read (a
    benchmark's). Its sorted copies (:mod:`ledger.sorted_copies`) are read as far as
    they reached when it was opened; with ``bodies``, its page bodies
    (:mod:`ledger.page_bodies`) as far as they were built (:meth:`build_bodies`).
    """

    def __init__(
        self,
        path: Path | str,
        *,
        create: bool = True,
        heads: TenantHeads | None = None,
        memory_limit: str | None = None,
        bodies: bool = False,
    ) -> None:
        with duckdb_errors(f"open {Path(path).name}"):
            con = duckdb.connect(str(path))
            if memory_limit:
                con.execute(f"SET memory_limit = '{memory_limit}'")
            if create:
                for ddl in ALL_DDL:
                    con.execute(ddl)
            self.copies: CopyMarks = sorted_copies.marks(con)
            self.bodies: PageBodies | None = None
            if bodies:
                self.bodies = page_bodies.open_store(page_bodies.path_for(path), con.cursor())
        super().__init__(con)
        self.heads = heads

    def build_bodies(self) -> int:
        """Bring the page bodies up to every row of the file; how many were added."""
        if self.bodies is None:
            return 0
        added, before = 0, -1
        cur = self.new_cursor()
        while self.bodies.high != before:
            before = self.bodies.high
            added += self.bodies.step(cur)
        return added

    def close(self) -> None:
        """Close the page bodies, then the connection (idempotent)."""
        if self.bodies is not None:
            self.bodies.close()
        super().close()

    def readiness(self) -> dict[str, object]:
        """Always ready: the file is loaded before the reader is made."""
        return {"ready": True, "lag": 0}

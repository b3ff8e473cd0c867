"""The ledger's DuckDB file: open it, apply the layout, and write batches exactly once.

:meth:`LedgerStore.write_batch` is the exactly-once step. In ONE transaction it
inserts an Arrow batch (``ON CONFLICT (event_id) DO NOTHING``) and upserts the
offset of the *next* record to read for every partition the batch covers. (It
first tries the same transaction without the conflict clause, which DuckDB runs
2-3x faster; a duplicate event_id makes that attempt fail and roll back whole, and
the batch is then written with the clause.) Either
both land or neither does, so after a crash the materializer resumes at the
stored offsets and re-reads exactly the records whose rows were not committed;
a record that is read twice (a re-sent duplicate, or an overlap) is absorbed by
the primary key.

DuckDB admits one writing process per file, and other processes cannot open it
while it is held, so the query API reads through cursors of the same connection
(:attr:`LedgerStore.db`, a :class:`~ledger.duck.SharedConnection`). Every
``duckdb.Error`` becomes :class:`~velora.errors.Unavailable`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa

from ledger.duck import SharedConnection, duckdb_errors
from ledger.tables import ALL_DDL, AUDIT_COLUMNS
from velora.errors import Unavailable

log = logging.getLogger(__name__)

_COLUMNS = ", ".join(AUDIT_COLUMNS)
# One round trip for the whole transaction body: every DuckDB call re-takes the GIL,
# and the materializer's reader thread holds it most of the time.
_UPSERT_OFFSETS = (
    "INSERT INTO ledger_offsets (topic, partition, next_offset, updated_at) "
    "SELECT topic, partition, next_offset, updated_at FROM _offsets "
    "ON CONFLICT (topic, partition) DO UPDATE SET "
    "next_offset = excluded.next_offset, updated_at = excluded.updated_at"
)
_INSERT = f"INSERT INTO audit_events ({_COLUMNS}) SELECT {_COLUMNS} FROM _batch"  # noqa: S608
# The dedup the ledger relies on: a row whose event_id is already there is dropped.
WRITE_DEDUP = f"BEGIN TRANSACTION; {_INSERT} ON CONFLICT (event_id) DO NOTHING; {_UPSERT_OFFSETS}"
# The same without the conflict clause: 2-3x faster in DuckDB, and correct whenever no
# event_id of the batch is stored yet; a duplicate makes it fail as a whole instead.
WRITE_FRESH = f"BEGIN TRANSACTION; {_INSERT}; {_UPSERT_OFFSETS}"
# After a batch with a duplicate, this many batches go straight to WRITE_DEDUP.
DEDUP_BATCHES = 16

_OFFSETS_SCHEMA = pa.schema(
    [
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("next_offset", pa.int64()),
        ("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)


class LedgerStore:
    """One open ledger DuckDB file, with the layout applied."""

    def __init__(self, path: Path | str, *, memory_limit: str | None = None) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        orphan = self.path.with_name(self.path.name + ".wal")
        if not self.path.exists() and orphan.exists():
            # the database file was deleted (to rebuild) but not its write-ahead log:
            # replaying that into a new file would mix old rows into the rebuild
            log.warning("removing %s left behind by a deleted ledger", orphan.name)
            orphan.unlink()
        with duckdb_errors(f"open {self.path.name}"):
            con = duckdb.connect(str(self.path))
            if memory_limit:
                con.execute(f"SET memory_limit = '{memory_limit}'")
            for ddl in ALL_DDL:
                con.execute(ddl)
        self.db = SharedConnection(con)
        self._writer = self.db.new_cursor()
        self._dedup_left = 0  # batches to write with WRITE_DEDUP before trying WRITE_FRESH

    # -- reads ------------------------------------------------------------------
    def cursor(self) -> duckdb.DuckDBPyConnection:
        """The calling thread's cursor of the shared connection."""
        return self.db.cursor()

    def stored_offsets(self, topic: str) -> dict[int, int]:
        """Partition -> the next offset to read, as committed with the rows."""
        with duckdb_errors("read offsets"):
            rows = (
                self.cursor()
                .execute(
                    "SELECT partition, next_offset FROM ledger_offsets WHERE topic = ?", [topic]
                )
                .fetchall()
            )
        return {int(p): int(o) for p, o in rows}

    def count(self) -> int:
        """Rows in ``audit_events``."""
        with duckdb_errors("count"):
            rows = self.cursor().execute("SELECT count(*) FROM audit_events").fetchall()
        return int(rows[0][0])

    # -- the exactly-once write -------------------------------------------------
    def write_batch(self, table: pa.Table, topic: str, offsets: Mapping[int, int]) -> None:
        """Insert ``table`` and store ``offsets`` (partition -> next offset) in one transaction.

        Called by the materializer thread only. On any failure the transaction is
        rolled back (neither rows nor offsets remain) and :class:`Unavailable` raised.
        """
        cur = self._writer
        parts = sorted(offsets)
        now = datetime.now(UTC)
        offsets_table = pa.Table.from_arrays(
            [
                pa.array([topic] * len(parts), pa.string()),
                pa.array(parts, pa.int32()),
                pa.array([offsets[p] for p in parts], pa.int64()),
                pa.array([now] * len(parts), _OFFSETS_SCHEMA.field("updated_at").type),
            ],
            schema=_OFFSETS_SCHEMA,
        )
        with duckdb_errors("write batch"):
            cur.register("_batch", table)
            cur.register("_offsets", offsets_table)
            try:
                if self._dedup_left == 0 and self._attempt(cur, WRITE_FRESH):
                    return
                self._dedup_left = max(0, self._dedup_left - 1)
                if not self._attempt(cur, WRITE_DEDUP):  # pragma: no cover - DO NOTHING
                    raise Unavailable("ON CONFLICT DO NOTHING raised a constraint error")
            finally:
                cur.unregister("_batch")
                cur.unregister("_offsets")

    def _attempt(self, cur: duckdb.DuckDBPyConnection, sql: str) -> bool:
        """Run one write transaction; False (rolled back) on a duplicate event_id."""
        try:
            cur.execute(sql)
            self._commit(cur)
        except duckdb.ConstraintException:
            _rollback(cur)
            self._dedup_left = DEDUP_BATCHES
            return False
        except BaseException:
            _rollback(cur)
            raise
        return True

    def _commit(self, cur: duckdb.DuckDBPyConnection) -> None:
        """Commit the open transaction (the seam the fault-injection tests replace)."""
        cur.execute("COMMIT")

    # -- lifecycle --------------------------------------------------------------
    def checkpoint(self) -> None:
        """Fold the WAL into the database file."""
        with duckdb_errors("checkpoint"):
            self._writer.execute("CHECKPOINT")

    def close(self) -> None:
        """Close every cursor and the connection (idempotent)."""
        self.db.close()


def _rollback(cur: duckdb.DuckDBPyConnection) -> None:
    try:
        cur.execute("ROLLBACK")
    except duckdb.Error:
        pass  # the failed statement may already have ended the transaction

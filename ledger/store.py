"""The ledger's DuckDB file: open it, apply the layout, and write batches exactly once.

:meth:`LedgerStore.write_batch` is the exactly-once step. In ONE transaction it
inserts an Arrow batch, upserts the offset of the *next* record to read for every
partition the batch covers, and records the batch's quarantined records and
conflicts. Either all of it lands or none does, so after a crash the materializer
resumes at the stored offsets and re-reads exactly the records whose rows were not
committed.

Duplicates of a ``(tenant_id, event_id)`` (see :mod:`ledger.duplicates`) are
absorbed by the primary key. A batch is first tried without a conflict clause,
which DuckDB runs 2-3x faster; a stored key makes that attempt fail and roll back
whole, and the batch (and the next :data:`DEDUP_BATCHES`) is then written with
``ON CONFLICT DO NOTHING RETURNING``, which names the keys that collided; only
those are looked up and resolved.

A row that DuckDB refuses for its data (a conversion or constraint error that is
not a duplicate) is found by bisection, *quarantined* with its topic, partition,
offset and the error class, and the rest of the batch written, all in the same
transaction as the offset advance: a poison record is never retried forever, and
a replay quarantines the same record. Other DuckDB errors (I/O, memory) leave
nothing written and raise :class:`~velora.errors.Unavailable`; the materializer
retries them.

DuckDB admits one writing process per file, and other processes cannot open it
while it is held, so the query API reads through cursors of the same connection
(:attr:`LedgerStore.db`, a :class:`~ledger.duck.SharedConnection`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from ledger import duplicates, rollups, sorted_copies, target_sets
from ledger.duck import SharedConnection, duckdb_errors
from ledger.head import TenantHeads
from ledger.layout import LAYOUT_KEY, stored_layout
from ledger.sorted_copies import CopyMarks
from ledger.tables import ALL_DDL, LAYOUT_VERSION, SEQ_COLUMN, STORED_COLUMNS
from ledger.transaction import rollback
from velora.errors import LedgerMismatch

log = logging.getLogger(__name__)

_COLUMNS = ", ".join(STORED_COLUMNS)  # a batch carries its seq (LedgerStore._numbered)
# One round trip for the whole transaction body: every DuckDB call re-takes the GIL,
# and the materializer's reader thread holds it most of the time.
_UPSERT_OFFSETS = (
    "INSERT INTO ledger_offsets (topic, partition, next_offset, updated_at) "
    "SELECT topic, partition, next_offset, updated_at FROM _offsets "
    "ON CONFLICT (topic, partition) DO UPDATE SET "
    "next_offset = excluded.next_offset, updated_at = excluded.updated_at"
)
_QUARANTINE = "INSERT INTO ledger_quarantine SELECT * FROM _quarantine ON CONFLICT DO NOTHING"
_INSERT = f"INSERT INTO audit_events ({_COLUMNS}) SELECT {_COLUMNS} FROM _batch"  # noqa: S608
# Without the conflict clause: 2-3x faster in DuckDB, and correct whenever no key of
# the batch is stored yet; a duplicate makes the whole transaction fail instead.
# The rollups (ledger/rollups.py) count exactly the rows inserted, in the same transaction.
_COUNT_BATCH = rollups.add_sql("SELECT * FROM _batch")
WRITE_FRESH = f"BEGIN TRANSACTION; {_INSERT}; {_COUNT_BATCH}; {_UPSERT_OFFSETS}"
INSERT_DEDUP = f"{_INSERT} ON CONFLICT DO NOTHING RETURNING ledger_key"
# The rollups count the rows RETURNING reported as inserted, no others.
_COUNT_INSERTED = rollups.add_sql(
    "SELECT * FROM _batch WHERE ledger_key IN (SELECT ledger_key FROM _inserted)"
)
# The batch copies that replace stored rows (only across partitions): the first of each key.
_REPLACEMENTS = (
    "SELECT * FROM _losers WHERE ledger_key IN (SELECT ledger_key FROM _replace) "
    "QUALIFY row_number() OVER (PARTITION BY ledger_key "
    "ORDER BY kafka_partition, kafka_offset) = 1"
)
_REPLACED = "SELECT * FROM audit_events WHERE ledger_key IN (SELECT ledger_key FROM _replace)"
# DuckDB checkpoints inside the COMMIT that takes the WAL past this size, rewriting the
# changed row groups and the primary-key index; at its 16 MB default that happened every
# ~40,000 rows and made a 500-row commit take up to 1.6 s (600,000 rows in 500-row
# transactions: 50 s wall and 14 s CPU, against 22 s and 11 s at 128 MiB). A larger WAL
# lengthens the replay after a crash, and holds more appended rows in memory meanwhile.
CHECKPOINT_THRESHOLD = "128MiB"
# After a batch with a duplicate, this many batches go straight to the dedup path.
DEDUP_BATCHES = 16
# DuckDB errors that a row's data causes (so bisection can find the row).
DATA_ERRORS: tuple[type[duckdb.Error], ...] = (
    duckdb.ConversionException,
    duckdb.InvalidInputException,
    duckdb.OutOfRangeException,
    duckdb.ConstraintException,
    duckdb.TypeMismatchException,
)

_OFFSETS_SCHEMA = pa.schema(
    [
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("next_offset", pa.int64()),
        ("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)
QUARANTINE_SCHEMA = pa.schema(
    [
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("stage", pa.string()),
        ("reason", pa.string()),
    ]
)
_CONFLICTS_SCHEMA = pa.schema(
    [
        ("topic", pa.string()),
        ("tenant_id", pa.string()),
        ("event_id", pa.string()),
        ("kept_partition", pa.int32()),
        ("kept_offset", pa.int64()),
        ("kept_hash", pa.string()),
        ("dropped_partition", pa.int32()),
        ("dropped_offset", pa.int64()),
        ("dropped_hash", pa.string()),
    ]
)

Quarantined = tuple[int, int, str]
"""``(partition, offset, reason)`` of a record that can never become a row."""


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
            try:
                self._apply_layout(con, memory_limit)
            except BaseException:
                con.close()
                raise
        self.db = SharedConnection(con)
        self._writer = self.db.new_cursor()
        self._dedup_left = 0  # batches to write with the dedup path before trying WRITE_FRESH
        self.heads: TenantHeads | None = None
        """The query node's heads, updated with every commit (:mod:`ledger.head`)."""
        self.target_lock = threading.Lock()
        """Held by a transaction that writes the target sets (:mod:`ledger.target_sets`):
        a step of the keeper, or a dedup-path batch (replaced rows recompute their cells),
        so the two never write the same cells at once."""
        self.copies_lock = threading.Lock()
        """Held by a transaction that may change which rows the sorted copies hold (a
        keeper step, a dedup-path batch: :mod:`ledger.sorted_copies`)."""
        with duckdb_errors("read marks"):
            marks = sorted_copies.marks(self.cursor())
        self.copies: CopyMarks = marks
        """How far the sorted copies reach, and the newest ``seq`` committed."""
        self._next_seq = max(marks.mark, marks.last) + 1
        self.quarantined = self._count("ledger_quarantine")
        self.conflicts = self._count("ledger_conflicts")

    @staticmethod
    def _apply_layout(con: duckdb.DuckDBPyConnection, memory_limit: str | None) -> None:
        con.execute("SET TimeZone = 'UTC'")  # to_json and casts render times the same everywhere
        con.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
        if memory_limit:
            con.execute(f"SET memory_limit = '{memory_limit}'")
        found = stored_layout(con)
        if found is not None and found != LAYOUT_VERSION:
            raise LedgerMismatch(
                f"the ledger has layout v{found} and this node writes v{LAYOUT_VERSION}; "
                "start a query node (it rebuilds from the log) or run `velora ledger rebuild`"
            )
        for ddl in ALL_DDL:
            con.execute(ddl)
        con.execute(
            "INSERT INTO ledger_meta VALUES (?, ?) ON CONFLICT DO NOTHING",
            [LAYOUT_KEY, str(LAYOUT_VERSION)],
        )

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
        return self._count("audit_events")

    def _count(self, table: str) -> int:
        with duckdb_errors("count"):
            rows = self.cursor().execute(f"SELECT count(*) FROM {table}").fetchall()  # noqa: S608
        return int(rows[0][0])

    def meta(self, key: str) -> str | None:
        """A value recorded in ``ledger_meta`` (e.g. the audit topic's id), or None."""
        with duckdb_errors("read meta"):
            row = (
                self.cursor()
                .execute("SELECT value FROM ledger_meta WHERE key = ?", [key])
                .fetchone()
            )
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Record ``key = value`` in ``ledger_meta`` (first write wins)."""
        with duckdb_errors("write meta"):
            self._writer.execute(
                "INSERT INTO ledger_meta VALUES (?, ?) ON CONFLICT DO NOTHING", [key, value]
            )

    # -- the exactly-once write -------------------------------------------------
    def write_batch(
        self,
        table: pa.Table,
        topic: str,
        offsets: Mapping[int, int],
        quarantine: Sequence[Quarantined] = (),
    ) -> None:
        """Insert ``table``, store ``offsets`` (partition -> next offset) and ``quarantine``.

        All in one transaction; called by the materializer thread only. On any
        failure nothing is written and :class:`Unavailable` is raised.
        """
        cur = self._writer
        winners, losers = duplicates.first_copies(self._numbered(table))
        quarantine = [(p, o, "decode", why) for p, o, why in quarantine]
        with duckdb_errors("write batch"):
            try:
                self._write(cur, winners, losers, topic, offsets, quarantine)
            except DATA_ERRORS as exc:
                poison = self._find_poison(cur, winners)
                if not poison or (len(poison) == winners.num_rows > 1):
                    raise  # not a row's fault: nothing is quarantined, the write is retried
                why = f"insert refused: {type(exc).__name__}"
                parts = winners.column("kafka_partition").to_numpy()
                offs = winners.column("kafka_offset").to_numpy()
                for i in poison:
                    log.error(
                        "quarantining record at partition %d offset %d: %s",
                        parts[i],
                        offs[i],
                        why,
                    )
                    quarantine.append((int(parts[i]), int(offs[i]), "insert", why))
                keep = np.ones(winners.num_rows, dtype=bool)
                keep[poison] = False
                self._write(cur, winners.filter(pa.array(keep)), losers, topic, offsets, quarantine)

    def _numbered(self, table: pa.Table) -> pa.Table:
        """``table`` with the next ``seq`` numbers (:data:`ledger.tables.SEQ_COLUMN`);
        numbers of a write that fails are not used again. They are published as the
        newest (``copies.last``), with the keys of the rows, before the write commits, so
        no page that starts after the commit skips the rows past the sorted copies' mark."""
        first = self._next_seq
        self._next_seq += table.num_rows
        self.copies.publish(first, self._next_seq - 1, table)
        seq = pa.array(np.arange(first, self._next_seq, dtype=np.int64))
        return table.append_column(SEQ_COLUMN, seq)

    def _write(
        self,
        cur: duckdb.DuckDBPyConnection,
        table: pa.Table,
        losers: pa.Table | None,
        topic: str,
        offsets: Mapping[int, int],
        quarantine: list[tuple[int, int, str, str]],
    ) -> None:
        cur.register("_batch", table)
        cur.register("_offsets", _offsets_table(topic, offsets))
        if quarantine:
            cur.register("_quarantine", _quarantine_table(topic, quarantine))
        try:
            if (
                losers is not None
                or self._dedup_left > 0
                or not self._fresh(cur, table, bool(quarantine))
            ):
                self._dedup_left = max(0, self._dedup_left - 1)
                if self._dedup(cur, table, losers, topic, bool(quarantine)):
                    self.conflicts = self._count("ledger_conflicts")
        finally:
            for name in ("_batch", "_offsets", "_quarantine", "_losers", "_inserted", "_replace"):
                try:
                    cur.unregister(name)
                except duckdb.Error:
                    pass
        if quarantine:
            self.quarantined = self._count("ledger_quarantine")

    def _fresh(self, cur: duckdb.DuckDBPyConnection, table: pa.Table, quarantine: bool) -> bool:
        """The fast transaction; False (rolled back) when a key of the batch is stored."""
        try:
            cur.execute(WRITE_FRESH + (f"; {_QUARANTINE}" if quarantine else ""))
            heads = self.heads
            if heads is None:
                self._commit(cur)
            else:
                with heads.lock:  # no head loads between the commit and its rows in the heads
                    self._commit(cur)
                    heads.committed(cur, "_batch", table)
        except duckdb.ConstraintException:
            rollback(cur)
            self._dedup_left = DEDUP_BATCHES
            return False
        except BaseException:
            rollback(cur)
            raise
        return True

    def _dedup(
        self,
        cur: duckdb.DuckDBPyConnection,
        table: pa.Table,
        losers: pa.Table | None,
        topic: str,
        quarantine: bool,
    ) -> bool:
        """Insert what is new, resolve what collided, record conflicts; one transaction.

        Returns whether conflicts were recorded.
        """
        # replaced rows recompute target sets and leave the sorted copies: no keeper step
        # of either meanwhile
        with self.target_lock, self.copies_lock:
            cur.execute("BEGIN TRANSACTION")
            try:
                inserted = {r[0] for r in cur.execute(INSERT_DEDUP).fetchall()}
                cur.register("_inserted", pa.table({"ledger_key": pa.array(inserted, pa.string())}))
                cur.execute(_COUNT_INSERTED)
                conflicts = False
                if table.num_rows > len(inserted) or losers is not None:
                    conflicts = self._resolve(cur, table, losers, inserted, topic)
                cur.execute(_UPSERT_OFFSETS)
                if quarantine:
                    cur.execute(_QUARANTINE)
                heads = self.heads
                if heads is None:
                    self._commit(cur)
                else:
                    with heads.lock:  # copies may have replaced rows: those tenants load again
                        self._commit(cur)
                        heads.forget((table, losers))
            except BaseException:
                rollback(cur)
                raise
            return conflicts

    def _resolve(
        self,
        cur: duckdb.DuckDBPyConnection,
        table: pa.Table,
        losers: pa.Table | None,
        inserted: set[str],
        topic: str,
    ) -> bool:
        keys = table.column("ledger_key").to_pylist()
        mask = np.fromiter((k not in inserted for k in keys), dtype=bool, count=len(keys))
        candidates = table.filter(pa.array(mask))
        if losers is not None:
            candidates = pa.concat_tables([candidates, losers])
        cur.register("_losers", candidates)
        copies = duplicates.batch_copies(cur, "_losers")
        stored = duplicates.stored_copies(cur, {c.key for _, c in copies})
        outcome = duplicates.resolve(copies, stored)
        if outcome.replace:
            # only across partitions: the stored row loses to a copy of this batch
            # the rollups lose the stored rows and gain their replacements
            cur.register("_replace", pa.table({"ledger_key": sorted(outcome.replace)}))
            cells = target_sets.touched(cur, _REPLACED)  # before the rows go
            cur.execute(rollups.subtract_sql(_REPLACED))
            sorted_copies.forget_keys(cur, "_replace")
            cur.execute(
                "DELETE FROM audit_events WHERE ledger_key IN (SELECT ledger_key FROM _replace)"
            )
            cur.execute(
                f"INSERT INTO audit_events ({_COLUMNS}) SELECT {_COLUMNS} FROM ({_REPLACEMENTS})"  # noqa: S608
            )
            cur.execute(rollups.add_sql(_REPLACEMENTS))
            cells = pa.concat_tables([cells, target_sets.touched(cur, _REPLACEMENTS)])
            target_sets.recompute(cur, cells.group_by(cells.column_names).aggregate([]))
        if not outcome.conflicts:
            return False
        conflicts = pa.Table.from_pylist(
            [
                {
                    "topic": topic,
                    "tenant_id": tenant,
                    "event_id": kept.event_id,
                    "kept_partition": kept.partition,
                    "kept_offset": kept.offset,
                    "kept_hash": kept.content,
                    "dropped_partition": dropped.partition,
                    "dropped_offset": dropped.offset,
                    "dropped_hash": dropped.content,
                }
                for tenant, kept, dropped in outcome.conflicts
            ],
            schema=_CONFLICTS_SCHEMA,
        )
        cur.register("_conflicts", conflicts)
        try:
            cur.execute(
                "INSERT INTO ledger_conflicts SELECT * FROM _conflicts ON CONFLICT DO NOTHING"
            )
        finally:
            cur.unregister("_conflicts")
        for tenant, kept, dropped in outcome.conflicts:
            log.warning(
                "conflicting copy of an event of tenant %s at partition %d offset %d "
                "differs from the kept copy at partition %d offset %d",
                tenant,
                dropped.partition,
                dropped.offset,
                kept.partition,
                kept.offset,
            )
        return True

    def _find_poison(self, cur: duckdb.DuckDBPyConnection, table: pa.Table) -> list[int]:
        """Rows of ``table`` that DuckDB refuses on their own (trial inserts, rolled back)."""

        def refused(lo: int, hi: int) -> list[int]:
            cur.register("_probe", table.slice(lo, hi - lo))
            try:
                cur.execute("BEGIN TRANSACTION")
                cur.execute(
                    f"INSERT INTO audit_events ({_COLUMNS}) SELECT {_COLUMNS} "  # noqa: S608
                    "FROM _probe ON CONFLICT DO NOTHING"
                )
                ok = True
            except DATA_ERRORS:
                ok = False
            finally:
                rollback(cur)
                cur.unregister("_probe")
            if ok:
                return []
            if hi - lo == 1:
                return [lo]
            mid = (lo + hi) // 2
            return refused(lo, mid) + refused(mid, hi)

        return refused(0, table.num_rows) if table.num_rows else []

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


def _offsets_table(topic: str, offsets: Mapping[int, int]) -> pa.Table:
    parts = sorted(offsets)
    now = datetime.now(UTC)
    return pa.Table.from_arrays(
        [
            pa.array([topic] * len(parts), pa.string()),
            pa.array(parts, pa.int32()),
            pa.array([offsets[p] for p in parts], pa.int64()),
            pa.array([now] * len(parts), _OFFSETS_SCHEMA.field("updated_at").type),
        ],
        schema=_OFFSETS_SCHEMA,
    )


def _quarantine_table(topic: str, rows: list[tuple[int, int, str, str]]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {"topic": topic, "partition": p, "offset": o, "stage": stage, "reason": why}
            for p, o, stage, why in rows
        ],
        schema=QUARANTINE_SCHEMA,
    )

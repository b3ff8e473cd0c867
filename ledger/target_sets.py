"""Target sets: the distinct targets of each tenant's hour and day by action, as bitmaps.

A summary's distinct targets are an exact count of distinct ids. Counting them from
per-event cells costs what hashing every cell costs (measured at 10M events, biggest
tenant 5M with a million distinct targets: 0.44 s for 30 days, however the cells are
keyed). Sets make it a union instead. Every (tenant, target id) gets a number
(``audit_target_numbers``: one numbering for all tenants, looked up by a 128-bit key,
:data:`KEY_SQL`), and ``audit_target_sets`` holds, per tenant, UTC hour or day and
action, a roaring bitmap (pyroaring, portable format) of the numbers of the targets
its events name. A 30-day range's distinct targets are the union of its whole days'
sets, the whole hours' sets at either edge, and the numbers of the targets of the
rows in what is left (less than an hour on each side).

**Kept behind the writer.** Numbering a batch's targets scans every number, which
per batch cost the writer more than all the rollups, so the materializer commits rows
without touching the sets. :class:`~ledger.target_keeper.TargetSetKeeper` calls
:func:`catch_up` instead, in its own transactions: the rows past the per-partition
marks (``audit_target_marks``) get numbers for new targets and one *delta* row per
touched cell holding their numbers there (a union needs no read of what is stored),
and the marks move past them in the same transaction. A cell is compacted into one
row once it holds more than :data:`COMPACT_ROWS` deltas. Reads add the rows past the
marks themselves (:func:`uncovered`), so a count never depends on the keeper's lag.
Rows replaced by a copy (only across partitions) can take targets out of a cell:
:func:`recompute` rebuilds the touched cells from ``audit_events`` in the writer's
transaction. Numbers are never reused or removed (a target that no longer occurs keeps
its number; sets hold only what occurs). :func:`mismatch` checks every cell against
the rows (``tests/test_target_sets.py``, and every rollup check), and :func:`rebuild`
recomputes all three tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from pyroaring import BitMap

from ledger.rollups import TARGET_IDS_SQL, utc_trunc

NUMBERS_TABLE = "audit_target_numbers"
SETS_TABLE = "audit_target_sets"

GRAINS: tuple[tuple[str, int], ...] = (("hour", 3_600_000_000), ("day", 86_400_000_000))
"""``(grain, length in us)`` of the sets, finest first (the shape ``analytics.plan`` takes)."""

COMPACT_ROWS = 8
"""A cell holding more delta rows than this is merged into one row by the writer."""

NUMBERS_DDL = (
    f"CREATE TABLE IF NOT EXISTS {NUMBERS_TABLE} (\n"
    "    key         UHUGEINT NOT NULL,\n"
    "    no          UINTEGER NOT NULL\n"
    ")"
)

SETS_DDL = (
    f"CREATE TABLE IF NOT EXISTS {SETS_TABLE} (\n"
    "    tenant_id   VARCHAR NOT NULL,\n"
    "    grain       VARCHAR NOT NULL,\n"
    "    bucket      TIMESTAMPTZ NOT NULL,\n"
    "    action      VARCHAR NOT NULL,\n"
    "    targets     BLOB NOT NULL\n"
    ")"
)

MARKS_TABLE = "audit_target_marks"
MARKS_DDL = (
    f"CREATE TABLE IF NOT EXISTS {MARKS_TABLE} (\n"
    "    kafka_partition INTEGER PRIMARY KEY,\n"
    "    next_offset     BIGINT NOT NULL,\n"
    "    topic           VARCHAR\n"
    ")"
)

DDL: tuple[str, ...] = (NUMBERS_DDL, SETS_DDL, MARKS_DDL)

STEP_OFFSETS = 200_000
"""At most this many offsets of each partition are added to the sets per step."""

_CELL = ("tenant_id", "grain", "bucket", "action")
_CELL_SCHEMA = pa.schema(
    [
        ("tenant_id", pa.string()),
        ("grain", pa.string()),
        ("bucket", pa.timestamp("us", tz="UTC")),
        ("action", pa.string()),
    ]
)
_NO_BUCKET = datetime.min.replace(tzinfo=UTC)
_SETS_SCHEMA = _CELL_SCHEMA.append(pa.field("targets", pa.binary()))


KEY_SQL = "md5_number(length(tenant_id)::VARCHAR || ':' || tenant_id || ':' || target_id)"
"""SQL: the 128-bit key of a tenant's target id (MD5 of the pair, the tenant
length-prefixed as in ``ledger_key``), from a row with ``tenant_id`` and ``target_id``.

Numbers are looked up by this key: a join of a 40,000-row batch's targets on a
128-bit integer scans the 4.7M numbers of a 10M-event ledger in ~90 ms, on the two
strings in ~200 ms. Two different targets of a tenant sharing a number would need an
MD5 collision between their ids: never by chance (2^-128), and only a tenant's own
crafted ids could merge two of its own targets in its own count."""


def targets_sql(relation: str) -> str:
    """One row per event and distinct target of ``relation`` (shaped like audit_events):
    ``tenant_id, occurred_at, action, key``."""
    return (
        f"SELECT tenant_id, occurred_at, action, {KEY_SQL} AS key FROM ("  # noqa: S608
        f"SELECT tenant_id, occurred_at, action, {TARGET_IDS_SQL} AS target_id "
        f"FROM ({relation}))"
    )


def _numbered(
    cur: duckdb.DuckDBPyConnection,
    relation: str,
    params: Sequence[object] = (),
    *,
    assign: bool = True,
) -> None:
    """``_target_rows`` (a temp table: ``tenant_id, occurred_at, action, key, no``): the
    targets of ``relation``'s events with their numbers (one scan of the numbers table
    for the look-up); with ``assign``, new targets get the next numbers, else their
    ``no`` stays NULL."""
    cur.execute(
        "CREATE OR REPLACE TEMP TABLE _target_rows AS "  # noqa: S608
        "SELECT e.tenant_id, e.occurred_at, e.action, e.key, d.no "
        f"FROM ({targets_sql(relation)}) e LEFT JOIN {NUMBERS_TABLE} d ON d.key = e.key",
        list(params),
    )
    if not assign:
        return
    cur.execute(
        "CREATE OR REPLACE TEMP TABLE _target_new AS "  # noqa: S608
        f"SELECT key, ((SELECT coalesce(max(no)::BIGINT, -1) FROM {NUMBERS_TABLE}) "
        "+ row_number() OVER (ORDER BY key))::UINTEGER AS no "
        "FROM (SELECT DISTINCT key FROM _target_rows WHERE no IS NULL)"
    )
    cur.execute(
        f"INSERT INTO {NUMBERS_TABLE} SELECT key, no FROM _target_new; "  # noqa: S608
        "UPDATE _target_rows r SET no = n.no FROM _target_new n "
        "WHERE r.no IS NULL AND r.key = n.key; DROP TABLE _target_new"
    )


def _cells_sql() -> str:
    """``tenant_id, grain, bucket, action, nos`` (the distinct numbers, as a list) of every
    cell the numbered events of ``_target_rows`` touch, both grains."""
    return " UNION ALL ".join(
        f"SELECT tenant_id, '{grain}' AS grain, {utc_trunc(grain, 'occurred_at')} AS bucket, "  # noqa: S608
        "action, list(DISTINCT no) AS nos FROM _target_rows WHERE no IS NOT NULL GROUP BY ALL"
        for grain, _ in GRAINS
    )


def _cells(
    cur: duckdb.DuckDBPyConnection, relation: str, params: Sequence[object] = ()
) -> pa.Table:
    """The cells (``_cells_sql``'s shape) of ``relation``'s events, numbering new targets."""
    _numbered(cur, relation, params)
    try:
        return cur.sql(_cells_sql()).to_arrow_table()
    finally:
        cur.execute("DROP TABLE IF EXISTS _target_rows")


def _with_sets(cells: pa.Table, blobs: list[bytes]) -> pa.Table:
    """The cell keys of ``cells`` with ``blobs`` (one serialized bitmap each): rows to insert."""
    return pa.table(
        [*(cells.column(c) for c in _CELL), pa.array(blobs, pa.binary())], schema=_SETS_SCHEMA
    )


def _bitmaps(rows: pa.Table) -> pa.Table:
    """The cells of ``rows`` (``_cells_sql``'s shape) with each list of numbers as a bitmap."""
    return _with_sets(rows, [BitMap(nos).serialize() for nos in rows.column("nos").to_pylist()])


def _insert(cur: duckdb.DuckDBPyConnection, sets: pa.Table) -> None:
    if sets.num_rows == 0:
        return
    cur.register("_target_sets", sets)
    try:
        cur.execute(f"INSERT INTO {SETS_TABLE} SELECT * FROM _target_sets ORDER BY bucket")  # noqa: S608
    finally:
        cur.unregister("_target_sets")


def _delete(cur: duckdb.DuckDBPyConnection, cells: pa.Table) -> None:
    """Delete every row of ``cells`` (a table of cell keys)."""
    if cells.num_rows == 0:
        return
    cur.register("_target_cells", cells.select(list(_CELL)))
    try:
        match = " AND ".join(f"s.{c} = c.{c}" for c in _CELL)
        cur.execute(f"DELETE FROM {SETS_TABLE} s USING _target_cells c WHERE {match}")  # noqa: S608
    finally:
        cur.unregister("_target_cells")


def _stored(cur: duckdb.DuckDBPyConnection, cells: pa.Table, more_than: int) -> pa.Table:
    """The cells of ``cells`` stored in more than ``more_than`` rows, with all their blobs.

    Counted first without the blobs, over the buckets of ``cells`` only (the zone maps
    of ``bucket`` skip the rest: rows are appended about in time order)."""
    keys = cells.select(list(_CELL))
    cur.register("_target_cells", keys)
    try:
        lo, hi = pc.min_max(keys.column("bucket")).values()
        match = " AND ".join(f"s.{c} = c.{c}" for c in _CELL)
        near = "s.bucket >= ? AND s.bucket <= ?"
        crowded = cur.sql(
            f"SELECT s.tenant_id, s.grain, s.bucket, s.action FROM {SETS_TABLE} s "  # noqa: S608
            f"JOIN _target_cells c ON {match} WHERE {near} "
            f"GROUP BY ALL HAVING count(*) > {int(more_than)}",
            params=[lo.as_py(), hi.as_py()],
        ).to_arrow_table()
        if crowded.num_rows == 0:
            return crowded.append_column("blobs", pa.array([], pa.list_(pa.binary())))
        cur.unregister("_target_cells")
        cur.register("_target_cells", crowded)
        return cur.sql(
            f"SELECT s.tenant_id, s.grain, s.bucket, s.action, list(s.targets) AS blobs "  # noqa: S608
            f"FROM {SETS_TABLE} s JOIN _target_cells c ON {match} WHERE {near} GROUP BY ALL",
            params=[lo.as_py(), hi.as_py()],
        ).to_arrow_table()
    finally:
        cur.unregister("_target_cells")


def _merge(stored: pa.Table) -> pa.Table:
    """One row per cell of ``stored`` (``_stored``'s shape): the union of its blobs."""
    return _with_sets(stored, [union(b).serialize() for b in stored.column("blobs").to_pylist()])


def add(cur: duckdb.DuckDBPyConnection, relation: str) -> None:
    """Add the targets of ``relation``'s events (rows just inserted) to their cells.

    ``relation`` is a constant SQL relation shaped like ``audit_events`` (a registered
    batch, or a ``SELECT`` of it), never request text. Runs inside the caller's
    transaction.
    """
    deltas = _bitmaps(_cells(cur, relation))
    if deltas.num_rows == 0:
        return
    _insert(cur, deltas)
    crowded = _stored(cur, deltas, COMPACT_ROWS)
    if crowded.num_rows:
        _delete(cur, crowded)
        _insert(cur, _merge(crowded))


def uncovered(cur: duckdb.DuckDBPyConnection) -> tuple[str, list[Any]]:
    """SQL (a condition over ``audit_events``, and its parameters) for the rows that are
    not in the sets yet: at or past their partition's mark (every row of a partition
    without one). Read in the caller's snapshot, with the sets it reads.

    When every partition the ledger stores offsets for (of the marks' topic) has a
    mark, the condition also bounds ``kafka_offset`` by the lowest mark on its own,
    which the zone maps use to skip the old row groups."""
    marks = cur.execute(f"SELECT kafka_partition, next_offset FROM {MARKS_TABLE}").fetchall()  # noqa: S608
    if not marks:
        return "TRUE", []
    marked = ", ".join(str(int(p)) for p, _ in marks)
    parts = [f"kafka_partition NOT IN ({marked})"]
    params: list[Any] = []
    for partition, offset in marks:
        parts.append("(kafka_partition = ? AND kafka_offset >= ?)")
        params += [partition, offset]
    clause = f"({' OR '.join(parts)})"
    unmarked = cur.execute(
        "SELECT count(*) FROM ledger_offsets WHERE topic IN "  # noqa: S608
        f"(SELECT topic FROM {MARKS_TABLE}) AND partition NOT IN ({marked})"
    ).fetchall()[0][0]
    if unmarked:
        return clause, params
    return f"kafka_offset >= ? AND {clause}", [min(o for _, o in marks), *params]


def catch_up(
    cur: duckdb.DuckDBPyConnection, topic: str | None = None, step: int = STEP_OFFSETS
) -> int:
    """Add the rows not yet in the sets to them, at most ``step`` offsets of each
    partition, and move the marks past them; the rows taken. Inside the caller's
    transaction (the sets and the marks move together). ``topic``: the audit topic,
    whose every stored partition gets a mark (0 when none of it is in the sets)."""
    if topic is not None:
        cur.execute(
            f"INSERT INTO {MARKS_TABLE} SELECT partition, 0, topic FROM ledger_offsets "  # noqa: S608
            "WHERE topic = ? ON CONFLICT (kafka_partition) DO NOTHING",
            [topic],
        )
    clause, params = uncovered(cur)
    cur.execute(
        "CREATE OR REPLACE TEMP TABLE _target_step AS "  # noqa: S608
        "WITH u AS (SELECT tenant_id, occurred_at, action, targets, kafka_partition, "
        f"kafka_offset FROM audit_events WHERE {clause}) "
        "SELECT u.* FROM u JOIN (SELECT kafka_partition, min(kafka_offset) AS lo FROM u "
        "GROUP BY 1) f USING (kafka_partition) WHERE u.kafka_offset < f.lo + ?",
        [*params, step],
    )
    try:
        taken = cur.execute("SELECT count(*) FROM _target_step").fetchall()[0][0]
        if taken:
            add(cur, "SELECT * FROM _target_step")
            cur.execute(
                f"INSERT INTO {MARKS_TABLE} SELECT kafka_partition, max(kafka_offset) + 1, ? "  # noqa: S608
                "FROM _target_step GROUP BY 1 ON CONFLICT (kafka_partition) DO UPDATE "
                "SET next_offset = greatest(next_offset, excluded.next_offset)",
                [topic],
            )
    finally:
        cur.execute("DROP TABLE IF EXISTS _target_step")
    return int(taken)


def touched(cur: duckdb.DuckDBPyConnection, relation: str) -> pa.Table:
    """The cell keys (both grains) of ``relation``'s events: what :func:`recompute` takes."""
    parts = [
        f"SELECT DISTINCT tenant_id, '{grain}' AS grain, "  # noqa: S608
        f"{utc_trunc(grain, 'occurred_at')} AS bucket, action FROM ({relation})"
        for grain, _ in GRAINS
    ]
    return cur.sql(" UNION ".join(parts)).to_arrow_table().cast(_CELL_SCHEMA)


def recompute(cur: duckdb.DuckDBPyConnection, cells: pa.Table) -> None:
    """Recompute ``cells`` (from :func:`touched`) from ``audit_events``, after rows of them
    were replaced (new targets of the replacements get numbers)."""
    if cells.num_rows == 0:
        return
    _delete(cur, cells)
    cur.register("_target_cells", cells)
    try:
        ((lo, hi),) = cur.execute(
            "SELECT min(bucket), max(bucket) + INTERVAL 1 DAY FROM _target_cells"
        ).fetchall()
        rows = (
            "SELECT * FROM audit_events WHERE tenant_id IN "
            "(SELECT tenant_id FROM _target_cells) AND occurred_at >= ? AND occurred_at < ?"
        )
        found = _cells(cur, rows, [lo, hi])
        cur.register("_target_found", found)
        match = " AND ".join(f"a.{c} = c.{c}" for c in _CELL)
        found = cur.sql(
            f"SELECT a.* FROM _target_found a JOIN _target_cells c ON {match}"  # noqa: S608
        ).to_arrow_table()
        cur.unregister("_target_found")
    finally:
        cur.unregister("_target_cells")
    _insert(cur, _bitmaps(found))


def rebuild(cur: duckdb.DuckDBPyConnection) -> None:
    """Recompute both tables from ``audit_events`` (inside the caller's transaction)."""
    cur.execute(
        f"DELETE FROM {SETS_TABLE}; DELETE FROM {NUMBERS_TABLE}; DELETE FROM {MARKS_TABLE}"  # noqa: S608
    )
    tenants = [r[0] for r in cur.execute("SELECT DISTINCT tenant_id FROM audit_events").fetchall()]
    for tenant_id in sorted(tenants):  # one tenant at a time: its lists are what is in memory
        rows = "SELECT * FROM audit_events WHERE tenant_id = ?"
        _insert(cur, _bitmaps(_cells(cur, rows, [tenant_id])))
    cur.execute(
        f"INSERT INTO {MARKS_TABLE} SELECT kafka_partition, max(kafka_offset) + 1, NULL "  # noqa: S608
        "FROM audit_events GROUP BY 1"
    )


def mismatch(cur: duckdb.DuckDBPyConnection) -> list[tuple[str, str, datetime, str]]:
    """The cells whose stored set differs from a recount of ``audit_events``, and a
    ``("numbers", ...)`` entry per tenant whose numbering is not one-to-one or that has
    targets without a number; empty when exact. Changes nothing.
    """
    wrong: list[tuple[str, str, datetime, str]] = [
        ("numbers", "(not one-to-one)", _NO_BUCKET, "")
        for _ in cur.execute(
            f"SELECT 1 FROM {NUMBERS_TABLE} "  # noqa: S608
            "HAVING count(*) <> count(DISTINCT key) OR count(*) <> count(DISTINCT no)"
        ).fetchall()
    ]
    clause, params = uncovered(cur)
    covered = f"SELECT * FROM audit_events WHERE NOT ({clause})"  # noqa: S608
    _numbered(cur, covered, params, assign=False)
    try:
        wrong += [
            ("numbers", "(unnumbered targets)", _NO_BUCKET, tenant_id)
            for (tenant_id,) in cur.execute(
                "SELECT DISTINCT tenant_id FROM _target_rows WHERE no IS NULL"
            ).fetchall()
        ]
        must = {tuple(r[:4]): BitMap(r[4]) for r in cur.execute(_cells_sql()).fetchall()}
    finally:
        cur.execute("DROP TABLE IF EXISTS _target_rows")
    _numbered(cur, "SELECT * FROM audit_events", assign=False)
    try:
        may = {tuple(r[:4]): BitMap(r[4]) for r in cur.execute(_cells_sql()).fetchall()}
    finally:
        cur.execute("DROP TABLE IF EXISTS _target_rows")
    stored: dict[tuple, list[bytes]] = {}
    for *cell, blob in cur.execute(
        f"SELECT tenant_id, grain, bucket, action, targets FROM {SETS_TABLE}"  # noqa: S608
    ).fetchall():
        stored.setdefault(tuple(cell), []).append(blob)
    for cell in sorted(set(must) | set(stored), key=repr):
        have = union(stored.get(cell, []))
        if not must.get(cell, BitMap()) <= have <= may.get(cell, BitMap()):
            wrong.append(cell)  # type: ignore[arg-type]
    return wrong


def union(blobs: Iterable[bytes]) -> BitMap:
    """The union of serialized bitmaps."""
    return BitMap.union(BitMap(), *(BitMap.deserialize(b) for b in blobs))

"""Sorted copies of the ledger for the rare filters: one actor, one target id.

``audit_events`` is stored in log order, so one actor's or one target's rows are
spread over the whole table, and a page of them costs DuckDB a vector of 2,048 rows
of every column for each row it returns (about 20 ms for one actor of 2,000 at 10M
events, and a scan of the tenant's whole history for a rare target). Rows stored
together are cheap to return, so the ledger keeps two copies of its rows, clustered
by the filter:

- ``audit_by_actor``: every row, sorted by ``(k, occurred_at, event_id)`` where ``k``
  is the 128-bit key of ``(tenant_id, actor_id)`` (:func:`key_sql`);
- ``audit_by_target``: one row per event and distinct key of its target ids, sorted
  by ``(k, occurred_at, event_id)``, ``k`` the key of ``(tenant_id, target id)``.

The key is an MD5 number (as the target sets number targets) rather than the two
strings because DuckDB's zone maps keep only 8 bytes of a string: sorted by
``(tenant_id, target_id)``, ids such as ``tenant-00``/``CLA-270866`` share their
first 8 bytes with many others, and one target's page scanned 16 of 86 row groups
(25-30 ms at 10M events); sorted by ``k`` it scans 1 (4.9 ms). A page filters on
the key for pruning and on the tenant and the id themselves for the answer (the list
query's own conditions: the actor, or the event's ``targets`` list), so two ids
sharing a key (an MD5 collision) would only cost pruning. An event has one row per
distinct *key* in the target copy, not per id, so that no event can come twice
even then, and the page needs no filter on the id's own column: DuckDB evaluated
``target_id = ?`` over every row of the pruned row groups, which cost more than
the rest of the page (a target's page from the copy at 10M events, DuckDB alone,
p50/p90: 8.8/13.1 ms with it, 5.4/6.3 without; layout v10).

**Each row's public JSON, stored.** Both copies end in a ``body`` column: the row as
the public API renders it (:data:`ledger.event_json.EVENT_JSON_SQL`, stored values,
nothing revealed), rendered once when a step writes the row. A page of JSON then
reads the copy's order columns and ``body``, not the twenty columns it is rendered
from: at 10M events, one actor's first ask, DuckDB alone, p50/p99 4.5/6.9 ms against
13.6/20.9 ms rendering the page from its columns (layout v11). The column is
compressed with ZSTD, not DuckDB's default dictionary and FSST: at 1M events of the
benchmark's rows, an actor copy of the order columns and ``body`` took 74 MB against
199 MB, for about 1 ms more a page (4.1 against 3.0 ms at p50). It costs a step the
rendering, and the sort the wider rows.

Both hold exactly the rows of ``audit_events`` whose ``seq`` (the order in which
this file committed them, :data:`ledger.tables.SEQ_COLUMN`) is at or below the
*mark*, the highest ``hi_seq`` in ``audit_sorted_runs``. A page reads the copy up
to a mark and ``audit_events`` past it (``seq`` rises with the physical order, so
DuckDB's zone maps skip everything below the mark), and gets what the list query
over ``audit_events`` alone would give (:mod:`query_api.sorted_pages`).

**Kept in the LSM way, behind the writer.** The materializer commits rows without
touching the copies. :class:`~ledger.copy_keeper.CopyKeeper` then sorts the rows
past the mark into a *run* (``seq`` range ``lo..hi``) appended to each copy, and
merges runs: when the newest :data:`FANIN` runs are of one size class, they are
rebuilt as one run, sorted, before any new rows are taken (so that a backlog, cut
into runs of :data:`BACKLOG_ROWS`, ends merged too, not only its newest runs).
Every step rebuilds one ``seq`` range of both copies from ``audit_events`` in one
transaction (the range's old rows out, its rows in, sorted; the runs table with
them), so a step changes where rows lie, never which rows a copy holds. Runs merge
over two levels: eight runs of a row group into one of about a million rows, eight
of those into one of :data:`TOP_ROWS` or more, which is never merged again. A page
reads a slice of every run that holds some of its rows, about 0.5 ms each (at 10M
events, one target id's page, DuckDB on one thread: 9.2-10.8 ms from 8 runs of
1.28M rows, 4.7-5.7 ms from one run).

A copy of a stored row that replaces it (only across partitions,
:mod:`ledger.duplicates`) deletes the stored row from the copies in the writer's
transaction, and its replacement gets a new ``seq``, past the mark; the writer holds
:attr:`ledger.store.LedgerStore.copies_lock` for that transaction, and the keeper
for each step, so a step never puts back a row a replacement took out.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from ledger import tail_keys
from ledger.event_json import EVENT_JSON_SQL
from ledger.tail_keys import TailKeys
from ledger.transaction import transaction

RUNS_TABLE = "audit_sorted_runs"
BY_ACTOR = "audit_by_actor"
BY_TARGET = "audit_by_target"

RUN_ROWS = 122_880
"""A new run waits for this many rows (DuckDB's row group), or for :data:`FLUSH_S`
(see :func:`next_step`): a transaction that appends a row group or more writes it
straight to the database file, so the commit is cheap, where a smaller one goes
through the WAL, and its commit held the writer's commits back (25,000 rows into
both copies: a 268 ms commit; 130,000: 20 ms; and every 128 MiB of WAL a
checkpoint of over a second)."""
FLUSH_S = 60.0
"""Rows past the mark wait at most this long for :data:`RUN_ROWS` more (a quiet ledger)."""
FANIN = 8
"""How many runs of one size class are merged into one (classes: see :func:`size_class`)."""
TOP_ROWS = RUN_ROWS * FANIN**2
"""A run this big (7,864,320 rows: what merging :data:`FANIN` runs of :data:`FANIN`
new runs each gives) is never merged again. Merging one takes about a minute on two
cores, under the node's memory limit (DuckDB spills the sort), while the copies' lock
is held."""
BACKLOG_ROWS = 1_280_000
"""A backlog (a new or rebuilt ledger) is sorted into runs of this many rows (the
second size class: :data:`FANIN` of them are merged into a top run)."""
TAIL_READ_MAX = 500_000
"""Pages read the copies only while at most this many rows lie past the mark (while
the keeper waits out a backlog, the rows past it would cost more than the copy saves).
It covers the rows a steady ingest adds during a top merge (about a minute): at 10M
events, with 500,000 rows past the mark, one actor's page took 41 ms and one target's
48-49 ms, against 55 and 574 ms by the list query's window probing (DuckDB alone,
p50, on a host where the copies alone answered in 12-13 ms)."""

RUNS_DDL = (
    f"CREATE TABLE IF NOT EXISTS {RUNS_TABLE} (\n"
    "    lo_seq  BIGINT NOT NULL,\n"
    "    hi_seq  BIGINT NOT NULL\n"
    ")"
)
BODY = "body"
"""The copies' last column: the row's public JSON (see the module's docstring)."""
_BODY_SQL = f"{EVENT_JSON_SQL} AS {BODY}"


def _copy_ddl(table: str) -> tuple[str, str]:
    """A copy's table: ``k``, the columns of ``audit_events``, then ``body`` (ZSTD, see
    the module's docstring)."""
    return (
        f"CREATE TABLE IF NOT EXISTS {table} AS "  # noqa: S608
        "SELECT NULL::UHUGEINT AS k, * FROM audit_events LIMIT 0",
        f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {BODY} VARCHAR USING COMPRESSION zstd",
    )


DDL: tuple[str, ...] = (RUNS_DDL, *_copy_ddl(BY_ACTOR), *_copy_ddl(BY_TARGET))
"""After ``audit_events`` (the copies take its columns)."""

_RANGE = "seq BETWEEN ? AND ?"


def key_sql(value: str) -> str:
    """SQL: the copy key of a row's ``(tenant_id, value)`` (``value``: a column or an
    expression), the MD5 number of :func:`key_text` (the tenant length-prefixed, as
    in ``ledger_key``)."""
    return f"md5_number(length(tenant_id)::VARCHAR || ':' || tenant_id || ':' || {value})"


def key_text(tenant_id: str, value: str) -> str:
    """What :func:`key_sql` hashes, for a page's ``k = md5_number(?)``."""
    return f"{len(tenant_id)}:{tenant_id}:{value}"


def _actor_rows(where: str) -> str:
    """SQL: the actor copy's rows of the rows of ``audit_events`` matching ``where``."""
    return f"SELECT {key_sql('actor_id')} AS k, *, {_BODY_SQL} FROM audit_events WHERE {where}"  # noqa: S608


def _target_rows(where: str) -> str:
    """SQL: the target copy's rows of the rows matching ``where``: one per event and
    distinct key of its target ids (none for an event without targets)."""
    keys = f"unnest(list_distinct([{key_sql('t.id')} FOR t IN targets])) AS k"
    return f"SELECT {keys}, *, {_BODY_SQL} FROM audit_events WHERE {where}"  # noqa: S608


_ORDER = "ORDER BY k, occurred_at, event_id"
_FILL_ACTOR = f"INSERT INTO {BY_ACTOR} {_actor_rows(_RANGE)} {_ORDER}"
_FILL_TARGET = f"INSERT INTO {BY_TARGET} {_target_rows(_RANGE)} {_ORDER}"


@dataclass(frozen=True)
class Run:
    """One sorted run: the rows of ``seq`` ``lo..hi`` (inclusive)."""

    lo: int
    hi: int

    @property
    def size(self) -> int:
        """The width of its ``seq`` range (its rows, but for gaps and replaced rows)."""
        return self.hi - self.lo + 1


class CopyMarks:
    """How far the copies reach (``mark``) and the newest ``seq`` written (``last``, at
    or past the newest committed), as a node publishes them: the keeper moves ``mark``
    after each commit, the writer ``last`` before each (:meth:`publish`, with the keys
    of its rows: :mod:`ledger.tail_keys`)."""

    def __init__(self, mark: int, last: int) -> None:
        self.mark = mark
        self._last = last
        self._lock = threading.Lock()
        self._tail = TailKeys(unknown_upto=last)  # the rows past the mark now: not noted

    @property
    def last(self) -> int:
        """The newest ``seq`` written."""
        return self._last

    @last.setter
    def last(self, value: int) -> None:
        """A ``seq`` published without the keys of its rows (pages then read past the
        mark whatever their keys, until the mark reaches it)."""
        with self._lock:
            self._last = value
            self._tail.unknown(value)

    def publish(self, lo: int, hi: int, table: pa.Table) -> None:
        """The writer's rows ``table``, numbered ``lo..hi``, are about to be committed."""
        if hi < lo:
            return
        # the keys are computed outside the lock, and not at all for a backlog
        keys = tail_keys.batch_keys(table) if TailKeys.takes(hi, self.mark) else None
        with self._lock:
            if keys is None:
                self._tail.unknown(hi)
            else:
                self._tail.note(lo, hi, keys, self.mark)
            self._last = hi

    def for_reads(self, keys: Iterable[str] | None = None) -> ReadMark | None:
        """How a page may read the copies now, or None (too many rows past the mark).
        With ``keys`` (:func:`ledger.tail_keys.key`), the page's rows past the mark are
        read only when a row of one of them may lie there."""
        with self._lock:
            mark, last = self.mark, self._last
            if last - mark > TAIL_READ_MAX:
                return None
            newer = last > mark if keys is None else self._tail.newer(keys, mark, last)
        return ReadMark(mark, newer)


@dataclass(frozen=True)
class ReadMark:
    """A page reads the copies up to ``mark``, and ``audit_events`` past it when
    ``newer``: rows may lie there (the writer publishes ``last`` before its commit, so
    no committed row is skipped)."""

    mark: int
    newer: bool = True


def size_class(n: int) -> int:
    """The size class of a run of ``n`` rows: 0 below ``RUN_ROWS * FANIN``, ``c`` below
    ``RUN_ROWS * FANIN ** (c + 1)``."""
    c, bound = 0, RUN_ROWS * FANIN
    while n >= bound:
        c, bound = c + 1, bound * FANIN
    return c


def runs(cur: duckdb.DuckDBPyConnection) -> list[Run]:
    """The stored runs, oldest first."""
    rows = cur.execute(f"SELECT lo_seq, hi_seq FROM {RUNS_TABLE} ORDER BY lo_seq").fetchall()  # noqa: S608
    return [Run(int(lo), int(hi)) for lo, hi in rows]


def last_seq(cur: duckdb.DuckDBPyConnection) -> int:
    """The highest ``seq`` stored (0: none); DuckDB answers it from the zone maps."""
    row = cur.execute("SELECT coalesce(max(seq), 0) FROM audit_events").fetchone()
    return int(row[0]) if row else 0


def mark_of(stored: list[Run]) -> int:
    """The seq up to which the copies hold every row (0: none)."""
    return stored[-1].hi if stored else 0


def marks(cur: duckdb.DuckDBPyConnection) -> CopyMarks:
    """The file's marks as stored: how far its copies reach, and its newest ``seq``."""
    return CopyMarks(mark_of(runs(cur)), last_seq(cur))


def next_step(stored: list[Run], last: int, flush: bool = True) -> tuple[Run, list[Run]] | None:
    """The next range to rebuild, and the runs it replaces; None when there is nothing to do.

    Merges first: the newest :data:`FANIN` runs, when they share a size class below
    :data:`TOP_ROWS`. Then new rows: a backlog in runs of :data:`BACKLOG_ROWS`, else the
    rows past the mark once they are :data:`RUN_ROWS` or more, or any of them with
    ``flush`` (they waited long enough).
    """
    tail = stored[-FANIN:]
    if len(tail) == FANIN and all(r.size < TOP_ROWS for r in tail):
        classes = {size_class(r.size) for r in tail}
        if len(classes) == 1:
            return Run(tail[0].lo, tail[-1].hi), tail
    mark = mark_of(stored)
    if last - mark >= RUN_ROWS or (flush and last > mark):
        return Run(mark + 1, min(last, mark + BACKLOG_ROWS)), []
    return None


def after_step(stored: list[Run], run: Run, replaces: list[Run]) -> list[Run]:
    """The runs once ``run`` has been rebuilt in place of ``replaces`` (:func:`next_step`)."""
    return [r for r in stored if r not in replaces] + [run]


def rebuild(cur: duckdb.DuckDBPyConnection, run: Run, replaces: list[Run]) -> None:
    """Rebuild the ``seq`` range of ``run`` in both copies, sorted, and record it in
    place of ``replaces``; inside the caller's transaction."""
    params = [run.lo, run.hi]
    if replaces:
        for table in (BY_ACTOR, BY_TARGET):
            cur.execute(f"DELETE FROM {table} WHERE {_RANGE}", params)  # noqa: S608
        cur.execute(
            f"DELETE FROM {RUNS_TABLE} WHERE lo_seq >= ? AND hi_seq <= ?",  # noqa: S608
            params,
        )
    cur.execute(_FILL_ACTOR, params)
    cur.execute(_FILL_TARGET, params)
    cur.execute(f"INSERT INTO {RUNS_TABLE} VALUES (?, ?)", params)  # noqa: S608


def forget_keys(cur: duckdb.DuckDBPyConnection, relation: str) -> None:
    """Delete the rows whose ``ledger_key`` is in ``relation`` from both copies (a
    replaced row; inside the writer's transaction, holding the copies' lock)."""
    for table in (BY_ACTOR, BY_TARGET):
        cur.execute(
            f"DELETE FROM {table} WHERE ledger_key IN (SELECT ledger_key FROM {relation})"  # noqa: S608
        )


def step(
    cur: duckdb.DuckDBPyConnection, upto: int | None = None, flush: bool = True
) -> tuple[list[Run], bool]:
    """One step (:func:`next_step`) in its own transaction on ``cur``, taking new rows up
    to ``seq`` ``upto`` (None: all committed): the runs after it, and whether there was
    a step to take. The caller holds the copies' lock if others write the file."""
    stored = runs(cur)
    last = last_seq(cur)
    found = next_step(stored, last if upto is None else min(last, upto), flush)
    if found is None:
        return stored, False
    run, replaces = found
    with transaction(cur):
        rebuild(cur, run, replaces)
    return after_step(stored, run, replaces), True


def catch_up(cur: duckdb.DuckDBPyConnection) -> int:
    """Run every step there is (each committed on its own); the steps taken.

    For a file nothing else writes (a benchmark's, a test's); a node's keeper steps
    behind its writer instead.
    """
    steps = 0
    while step(cur)[1]:
        steps += 1
    return steps


def mismatch(cur: duckdb.DuckDBPyConnection) -> list[str]:
    """What differs between the copies and ``audit_events`` up to the mark (empty: none).

    For the tests: each copy must hold exactly the rows at or below the mark, each
    once (per key of its target ids for the target copy), with every column equal."""
    mark = mark_of(runs(cur))
    problems = []
    checks = {
        BY_ACTOR: _actor_rows("seq <= ?"),
        BY_TARGET: _target_rows("seq <= ?"),
    }
    for table, want in checks.items():
        have = f"SELECT * FROM {table}"  # noqa: S608
        for a, b, label, params in ((want, have, "missing", [mark]), (have, want, "extra", [mark])):
            n = cur.execute(f"SELECT count(*) FROM (({a}) EXCEPT ALL ({b}))", params).fetchall()  # noqa: S608
            if n[0][0]:
                problems.append(f"{table}: {n[0][0]} rows {label}")
    return problems

"""The SQL of the public audit API, over ``audit_events`` (see :mod:`ledger.tables`).

Every value is a bound parameter; no request text is ever formatted into SQL.

**Why the list query probes windows.** ``audit_events`` is stored in log order,
so ``occurred_at`` rises with the physical row order and DuckDB's per-row-group
min/max statistics (zone maps) can skip every row group outside a time range. A
plain ``WHERE tenant_id = ? ORDER BY occurred_at DESC LIMIT 51`` cannot use them
and scans the tenant's whole history (millions of rows for a big tenant). So the
query first asks only for ``occurred_at >= anchor - window``, where the anchor is
the cursor's position (or ``until``, or now), for a window of 15 minutes, then
wider by the density it found (x4 to x64; x16 when nothing matched), and finally,
past ~400 days, without bound. As soon as a window holds ``limit`` matching rows,
those are exactly the newest ``limit`` rows (every row outside the window is
older), so the answer is the same as the unbounded query's; only the amount
scanned differs. A window that comes back short but already reaches back past the
oldest stored event (:func:`_oldest`) holds every matching row: that is the
answer. Rows arriving late with an old ``occurred_at`` widen a row group's min/max
and cost pruning, never correctness.

**Window hints.** A sparse tenant, or a rare filter, needs two or three probes
before a window holds a page. :class:`WindowHints` remembers, per tenant and
filter shape (which filters are set, not their values), the window that last
answered, with twice that span as headroom, and the next query of that shape
starts there. A hint that answers at once is shrunk by 3% for next time, so that
it follows a tenant that grows denser (one extra probe when it has become too
small, about once in 20 queries). A hint only chooses where the probing starts;
the rule that a window is used only when it holds ``limit`` rows is unchanged, so
answers are the same with or without hints.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

from ledger.event_json import EVENT_JSON_SQL
from ledger.sorted_copies import ReadMark
from ledger.tables import EVENT_COLUMN_NAMES, EVENT_COLUMNS, ledger_key
from query_api import sorted_pages
from query_api.cursor import Position
from query_api.filters import MAX_LIMIT, Filters
from schemas.times import from_micros

FIRST_WINDOW = timedelta(minutes=15)
MAX_WINDOW = timedelta(days=400)
MIN_GROWTH, EMPTY_GROWTH, MAX_GROWTH = 4.0, 16.0, 64.0

COLUMN_NAMES = EVENT_COLUMN_NAMES
COLUMNS = EVENT_COLUMNS
ORDER = "ORDER BY occurred_at DESC, event_id DESC"
JSON_COLUMNS = f"{EVENT_JSON_SQL}, {sorted_pages.POSITION}"

SEQ_COLUMNS = f"seq, {sorted_pages.POSITION}"

Row = dict[str, Any]
JsonRow = tuple[str, int, str]
"""``(public JSON of the event, occurred_us, event_id)``."""
SeqRow = tuple[int, int, str]
"""``(seq, occurred_us, event_id)``: which row a page holds (:func:`list_event_seqs`)."""
LATE_ROWS_SQL = f"SET late_materialization_max_rows = {MAX_LIMIT + 1}"
"""For the scattered filters (:func:`_scattered`), on the query's own cursor and reset
after it: DuckDB then finds the page's rows by their order columns first and reads
the other columns of those rows alone. Its default stops at a ``LIMIT`` of 50, and
a page asks for 51. Measured at 10M events (DuckDB alone, 8 actors, median): one
actor's page 27.2 ms by default, 21.2 ms with it; a tenant's dense pages (first page,
deep page, an action) got slower with it (4.1-7.0 ms against 5.6-8.3), hence only
these filters."""
HINT_HEADROOM, HINT_DECAY = 2.0, 0.97
HINT_CAPACITY = 10_000
"""Hints kept per node; past it the table starts over (a hint is only a starting point)."""
_BOUND_FILTERS = ("since", "until")


class WindowHints:
    """Where to start probing, per ``(tenant, filter shape)``; shared by a node's read threads.

    Races between threads only pick which of two valid hints is kept.
    """

    def __init__(self, capacity: int = HINT_CAPACITY) -> None:
        self._capacity = capacity
        self._hints: dict[tuple[str, tuple[str, ...]], timedelta] = {}

    @staticmethod
    def key(tenant_id: str, filters: Filters) -> tuple[str, tuple[str, ...]]:
        """The hint key: the tenant and the names of the filters that narrow the rows."""
        shape = tuple(
            name
            for name, value in vars(filters).items()
            if value is not None and name not in _BOUND_FILTERS
        )
        return tenant_id, shape

    def start(self, key: tuple[str, tuple[str, ...]]) -> timedelta:
        """The first window to probe for ``key``."""
        return self._hints.get(key, FIRST_WINDOW)

    def learn(self, key: tuple[str, tuple[str, ...]], window: timedelta, first: bool) -> None:
        """``window`` held a page: start next time at 97% of it if it was the first
        window probed, else at twice it."""
        window = window * (HINT_DECAY if first else HINT_HEADROOM)
        if len(self._hints) >= self._capacity and key not in self._hints:
            self._hints.clear()
        self._hints[key] = max(FIRST_WINDOW, min(MAX_WINDOW, window))


def filter_sql(tenant_id: str, f: Filters) -> tuple[list[str], list[Any]]:
    """``(conditions, params)`` selecting one tenant's rows of ``audit_events`` matching ``f``.

    The one SQL form of the list filters, shared by the list, analytics and exports.
    """
    where = ["tenant_id = ?"]
    params: list[Any] = [tenant_id]
    simple = (
        ("action = ?", f.action),
        ("starts_with(action, ?)", f.action_prefix),
        ("actor_type = ?", f.actor_type),
        ("outcome_result = ?", f.outcome),
        ("source = ?", f.source),
        ("occurred_at >= ?", f.since),
        ("occurred_at < ?", f.until),
    )
    for clause, value in simple:
        if value is not None:
            where.append(clause)
            params.append(value)
    actors = f.actor_ids or (() if f.actor_id is None else (f.actor_id,))
    if actors:
        where.append(_equals_any("actor_id", len(actors)))
        params.extend(actors)
    target_ids = f.target_ids or (() if f.target_id is None else (f.target_id,))
    if target_ids or f.target_type is not None:
        conds, values = [], []
        if target_ids:
            conds.append(_equals_any("t.id", len(target_ids)))
            values.extend(target_ids)
        if f.target_type is not None:
            conds.append("t.type = ?")
            values.append(f.target_type)
        where.append(f"len(list_filter(targets, lambda t: {' AND '.join(conds)})) > 0")
        params.extend(values)
    return where, params


def _equals_any(column: str, n: int) -> str:
    """``column = ?`` or, for several values, ``column IN (?, ...)``."""
    return f"{column} = ?" if n == 1 else f"{column} IN ({', '.join('?' * n)})"


def _fetch(
    cur: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any]
) -> list[tuple[Any, ...]]:
    """Run one query (callers go through ``ledger.duck``, which translates DuckDB's errors)."""
    return cur.execute(sql, params).fetchall()


def list_events(
    cur: duckdb.DuckDBPyConnection,
    tenant_id: str,
    filters: Filters,
    after: Position | None,
    limit: int,
    now: datetime | None = None,
    hints: WindowHints | None = None,
    copies: ReadMark | None = None,
) -> list[Row]:
    """Up to ``limit`` events of one tenant, newest first, strictly after ``after``.

    With ``hints``, probing starts at the window that last answered a query of
    the same tenant and filter shape (see :class:`WindowHints`). With ``copies``, how
    far the sorted copies reach (:mod:`ledger.sorted_copies`), a page of one actor or
    one target id is read from them instead (:mod:`query_api.sorted_pages`)."""
    found = _probe(cur, COLUMNS, tenant_id, filters, after, limit, now, hints, copies)
    return [dict(zip(COLUMN_NAMES, r, strict=True)) for r in found]


def list_events_json(
    cur: duckdb.DuckDBPyConnection,
    tenant_id: str,
    filters: Filters,
    after: Position | None,
    limit: int,
    now: datetime | None = None,
    hints: WindowHints | None = None,
    copies: ReadMark | None = None,
) -> list[JsonRow]:
    """The rows of :func:`list_events`, each rendered by DuckDB as its public JSON.

    ``(json, occurred_us, event_id)`` per row: the JSON as
    :data:`ledger.event_json.EVENT_JSON_SQL` renders it (stored values, nothing
    revealed), the rest for the next cursor. The probing, and so the rows and
    their order, are :func:`list_events`' own.
    """
    return _probe(
        cur, JSON_COLUMNS, tenant_id, filters, after, limit, now, hints, copies, late=True
    )


def list_event_seqs(
    cur: duckdb.DuckDBPyConnection,
    tenant_id: str,
    filters: Filters,
    after: Position | None,
    limit: int,
    now: datetime | None = None,
    hints: WindowHints | None = None,
    copies: ReadMark | None = None,
) -> list[SeqRow]:
    """Which rows :func:`list_events` gives, as ``(seq, occurred_us, event_id)``, with
    the same probing: a page whose bodies come from :mod:`ledger.page_bodies`. DuckDB
    reads three columns of the page's rows instead of twenty."""
    return _probe(
        cur, SEQ_COLUMNS, tenant_id, filters, after, limit, now, hints, copies, narrow=True
    )


def _probe(
    cur: duckdb.DuckDBPyConnection,
    select: str,
    tenant_id: str,
    filters: Filters,
    after: Position | None,
    limit: int,
    now: datetime | None,
    hints: WindowHints | None,
    copies: ReadMark | None,
    late: bool = False,
    narrow: bool = False,
) -> list[tuple[Any, ...]]:
    """The probing of :func:`list_events`, selecting ``select``; with ``late``, ``select``
    is computed on the page's rows only (after the ``LIMIT``); ``narrow``: ``select``
    reads only :data:`~query_api.sorted_pages.SEQ_FIELDS`. A page of one actor or
    target id with ``copies`` reads the sorted copies instead, in one query (with
    ``late``, ``select`` is :data:`JSON_COLUMNS`: the copies' stored bodies)."""
    copy = None if copies is None else sorted_pages.copy_for(filters)
    if copy is not None and copies is not None:
        where, params, _ = _conditions(tenant_id, filters, after, now)
        sql, values = sorted_pages.page_sql(
            select, tenant_id, copy, " AND ".join(where), params, limit, copies, late, narrow
        )
        return _fetch(cur, sql, values)
    if not _scattered(filters):
        return _probe_windows(cur, select, tenant_id, filters, after, limit, now, hints, late)
    cur.execute(LATE_ROWS_SQL, [])
    try:
        return _probe_windows(cur, select, tenant_id, filters, after, limit, now, hints, late)
    finally:
        cur.execute("RESET late_materialization_max_rows", [])


def _scattered(f: Filters) -> bool:
    """Whether ``f`` selects rows spread thinly over the table (an actor, a target):
    DuckDB's late materialization pays off for those, not for a tenant's dense rows."""
    return bool(f.actor_id or f.actor_ids or f.target_id or f.target_ids)


def _probe_windows(
    cur: duckdb.DuckDBPyConnection,
    select: str,
    tenant_id: str,
    filters: Filters,
    after: Position | None,
    limit: int,
    now: datetime | None,
    hints: WindowHints | None,
    late: bool,
) -> list[tuple[Any, ...]]:
    where, params, anchor = _conditions(tenant_id, filters, after, now)
    # Only constant clauses are joined here; every value is a bound parameter. A late
    # select list is computed after the LIMIT (a JSON rendering of every row of a
    # window, before the top-N, would cost many times the page); the plain columns
    # are cheaper selected directly.
    conditions = " AND ".join(where)

    def page_sql(tail: str) -> str:
        rows = f"audit_events WHERE {conditions} {tail}"
        if late:
            return f"SELECT {select} FROM (SELECT * FROM {rows}) {ORDER}"  # noqa: S608
        return f"SELECT {select} FROM {rows}"  # noqa: S608

    key = WindowHints.key(tenant_id, filters) if hints is not None else None
    window = hints.start(key) if hints is not None and key is not None else FIRST_WINDOW
    first = True
    oldest: datetime | None = None
    while window <= MAX_WINDOW:
        lower = _lower_bound(anchor, window)
        if lower is None or (filters.since is not None and lower <= filters.since):
            break  # the since bound is already narrower: the final query covers it
        rows = _fetch(
            cur, page_sql(f"AND occurred_at >= ? {ORDER} LIMIT ?"), [*params, lower, limit]
        )
        if len(rows) >= limit:
            if hints is not None and key is not None:
                hints.learn(key, window, first)
            return rows
        if oldest is None:
            oldest = _oldest(cur)
        if oldest is None or lower <= oldest:
            return rows  # nothing stored is older than the window: these are all the rows
        window *= _growth(len(rows), limit)
        first = False
    return _fetch(cur, page_sql(f"{ORDER} LIMIT ?"), [*params, limit])


def _conditions(
    tenant_id: str, filters: Filters, after: Position | None, now: datetime | None
) -> tuple[list[str], list[Any], datetime]:
    """``(conditions, params, anchor)``: the rows of the page (tenant, filters, strictly
    after the cursor), and the time its windows reach back from."""
    where, params = filter_sql(tenant_id, filters)
    if after is not None:
        at = from_micros(after.occurred_us)
        where.append("occurred_at <= ? AND (occurred_at < ? OR event_id < ?)")
        params.extend([at, at, after.event_id])
        return where, params, at
    if filters.until is not None:
        return where, params, filters.until
    return where, params, now or datetime.now(UTC)


def _oldest(cur: duckdb.DuckDBPyConnection) -> datetime | None:
    """A time no stored event is older than (None: no events at all).

    DuckDB answers it from the table's statistics (~1 ms at 10M rows), which only
    ever widen, so it is at most the true oldest ``occurred_at``: a window reaching
    back to it holds every row, and the probing stops there rather than scanning the
    whole history once more without a bound (a rare filter's page, which no window
    fills, used to scan it twice)."""
    found = _fetch(cur, "SELECT min(occurred_at) FROM audit_events", [])
    return found[0][0] if found else None


def _growth(found: int, limit: int) -> float:
    """How much to widen: by the density seen so far (x4..x64), x16 when nothing matched."""
    if found == 0:
        return EMPTY_GROWTH
    return min(MAX_GROWTH, max(MIN_GROWTH, 1.5 * limit / found))


def _lower_bound(anchor: datetime, window: timedelta | None) -> datetime | None:
    if window is None:
        return None
    try:
        return anchor - window
    except OverflowError:
        return None


def get_event(cur: duckdb.DuckDBPyConnection, tenant_id: str, event_id: str) -> Row | None:
    """One event of one tenant by id (the primary-key index answers it), or None."""
    rows = _fetch(
        cur,
        f"SELECT {COLUMNS} FROM audit_events WHERE ledger_key = ?",  # noqa: S608
        [ledger_key(tenant_id, event_id)],
    )
    return dict(zip(COLUMN_NAMES, rows[0], strict=True)) if rows else None

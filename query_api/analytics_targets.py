"""A summary's distinct targets from the target sets (:mod:`ledger.target_sets`).

For a request filtered by nothing but ``action`` (or a prefix): the union of the
sets of the range's whole days and, around them, whole hours; the targets of the rows
at either edge (less than an hour each side) and of the rows the keeper has not added
yet (past the marks) are looked up by key, in one query for every period.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import duckdb
from pyroaring import BitMap

from ledger import target_sets
from ledger.target_sets import NUMBERS_TABLE, SETS_TABLE, targets_sql, uncovered, union
from query_api.analytics import plan
from query_api.filters import Filters
from query_api.queries import filter_sql


def sets_can_serve(f: Filters) -> bool:
    """Whether the target sets (per hour or day and action) hold ``f``'s distinct targets:
    no filter but ``action`` or an ``action`` prefix."""
    others = (f.actor_id, f.actor_type, f.target_id, f.target_type, f.outcome, f.source)
    return all(v is None for v in others)


def distinct_targets(
    cur: duckdb.DuckDBPyConnection, tenant_id: str, periods: tuple[Filters, ...]
) -> list[int]:
    """Each period's distinct targets from the target sets: whole days, then whole hours
    around them, then the rows at either edge, and the rows the sets do not hold yet
    (past the marks); one union of target numbers per period, plus the distinct
    targets that have no number yet (the rows' targets are looked up once, for all)."""
    found: list[BitMap] = []
    rows: list[tuple[int, str, list[Any]]] = []
    for p, f in enumerate(periods):
        assert f.since is not None and f.until is not None
        held = BitMap()
        for piece in plan(f.since, f.until, None, True, target_sets.GRAINS):
            if piece.source == "rows":
                where, params = filter_sql(tenant_id, replace(f, since=piece.lo, until=piece.hi))
                rows.append((p, " AND ".join(where), params))
            else:
                actions = (f.action, f.action_prefix)
                held |= read(cur, tenant_id, piece.source, piece.lo, piece.hi, actions)
        where, params = filter_sql(tenant_id, f)
        pending = late(cur, where, params)
        if pending is not None:
            rows.append((p, *pending))
        found.append(held)
    extra = row_targets(cur, rows)
    out = []
    for p, held in enumerate(found):
        numbered, new = extra.get(p, (BitMap(), 0))
        out.append(len(held | numbered) + new)
    return out


def late(
    cur: duckdb.DuckDBPyConnection, where: Sequence[str], params: Sequence[object]
) -> tuple[str, list[Any]] | None:
    """The rows of ``audit_events`` matching ``where`` (clauses, with ``params``) that are
    past the marks, as a WHERE clause and its parameters; None when there are none.

    Found first from the row's partition and offset alone, then bounded by their
    times: a condition over the offsets cannot skip reading the other columns of
    every matching row, a time range can (zone maps), and the late rows are recent."""
    clause, marks = uncovered(cur)
    cond = " AND ".join([*where, clause])
    ((n, lo, hi),) = cur.execute(
        f"SELECT count(*), min(occurred_at), max(occurred_at) FROM audit_events WHERE {cond}",  # noqa: S608
        [*params, *marks],
    ).fetchall()
    if not n:
        return None
    return f"{cond} AND occurred_at >= ? AND occurred_at <= ?", [*params, *marks, lo, hi]


def read(
    cur: duckdb.DuckDBPyConnection,
    tenant_id: str,
    grain: str,
    lo: datetime,
    hi: datetime,
    actions: tuple[str | None, str | None] = (None, None),
) -> BitMap:
    """The targets (numbers) of ``tenant_id``'s ``grain`` cells in ``[lo, hi)``; ``actions``:
    ``(action, action prefix)`` filters, each None for any."""
    where = ["tenant_id = ?", "grain = ?", "bucket >= ?", "bucket < ?"]
    params: list[object] = [tenant_id, grain, lo, hi]
    action, prefix = actions
    if action is not None:
        where.append("action = ?")
        params.append(action)
    if prefix is not None:
        where.append("starts_with(action, ?)")
        params.append(prefix)
    blobs = cur.execute(
        f"SELECT targets FROM {SETS_TABLE} WHERE {' AND '.join(where)}",  # noqa: S608
        params,
    ).fetchall()
    return union(b for (b,) in blobs)


def row_targets(
    cur: duckdb.DuckDBPyConnection, parts: Sequence[tuple[int, str, Sequence[object]]]
) -> dict[int, tuple[BitMap, int]]:
    """The targets of rows of ``audit_events``, per label: ``parts`` are ``(label, WHERE
    clause over its columns, params)``. For each label the numbers of the numbered
    targets, and how many distinct targets have no number yet (rows past the marks
    whose targets are new). One look-up for all of them: one scan of the numbers."""
    if not parts:
        return {}
    selects, params = [], []
    for label, where, p in parts:
        rows = f"SELECT * FROM audit_events WHERE {where}"  # noqa: S608
        selects.append(f"SELECT {int(label)} AS label, key FROM ({targets_sql(rows)})")  # noqa: S608
        params += p
    found = cur.execute(
        f"SELECT e.label, list(DISTINCT d.no) FILTER (WHERE d.no IS NOT NULL), "  # noqa: S608
        f"count(DISTINCT e.key) FILTER (WHERE d.no IS NULL) "
        f"FROM ({' UNION ALL '.join(selects)}) e "
        f"LEFT JOIN {NUMBERS_TABLE} d ON d.key = e.key GROUP BY e.label",
        params,
    ).fetchall()
    return {int(label): (BitMap(nos), int(new)) for label, nos, new in found}

"""The SQL of the analytics endpoints: time series, top keys and a period summary.

**Where counts come from.** A count is served from the rollups
(:mod:`ledger.rollups`, per-tenant counts per minute, hour and day by action,
outcome, source and actor type) when every filter is one of their columns (``action``,
``action`` prefix, ``outcome``, ``source``, ``actor_type``) and the grouping is too.
Otherwise, when the only filters are ``action``, an ``action`` prefix and
``actor_id``, two per-day tables serve the whole days of the range: the actor table
(``audit_actor_day``: events and failures per day, actor id and action) for totals,
failures, daily buckets, ``top`` by actor or action and distinct actors, and the
target table (``audit_actor_target_day``: events per day, actor id, action and target
id) for ``top`` by target and distinct targets. Everything else (``target_id``,
``target_type`` filters; ``outcome``, ``source``, ``actor_type`` filters with an
actor, target or source-IP grouping; buckets shorter than a day under an
``actor_id`` filter; source IPs) is counted from the rows of ``audit_events``.

The range ``[since, until)`` is cut into pieces (:func:`plan`): whole days from the
day rollup or a per-day table (only when buckets are a day long or no buckets), whole
hours around them from the hour rollup (buckets of an hour or longer), whole minutes
around those from the minute rollup, and the seconds at either edge from the rows
(the per-day tables have no finer grain: their edges are the rows); the counts of
the pieces are added. The tables are written in the same transaction as the rows,
so both sources give the same numbers at every moment (``tests/test_analytics.py``
recounts the answers in plain Python, and checks the tables are what is read).

The summary (:mod:`query_api.analytics_summary`) builds on the same pieces, but for
its distinct targets under no filter but ``action`` (or a prefix): those are a union
of the target sets (:mod:`ledger.target_sets`, per hour or day and action).

Every value is a bound parameter; only this module's constants and column names are
formatted into SQL. A request's queries run in one read transaction, so its numbers
come from one snapshot of the ledger.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar

import duckdb

from ledger.rollups import (
    ACTOR_TABLE,
    ACTOR_UNIT,
    FAILED_OUTCOMES,
    FAILED_SQL,
    ROLLUP_TABLES,
    TARGET_IDS_SQL,
    TARGET_TABLE,
    TARGET_UNIT,
    utc_trunc,
)
from ledger.transaction import snapshot
from phi.fields import id_domains
from phi.policy import Revealer
from query_api.filters import Filters
from query_api.phi_sql import CanonicalKeys
from query_api.queries import filter_sql
from query_api.ranges import INTERVALS, bucket_starts, iso
from schemas.times import from_micros, micros

T = TypeVar("T")

MAX_SERIES = 20
"""Series of a grouped time series; the other keys are added up in ``other``."""
GROUP_BY: tuple[str, ...] = ("action", "outcome", "actor_type", "source")
TOP_DIMENSIONS: tuple[str, ...] = ("actor", "action", "target", "source_ip")

# Grouping key -> column, in the rows and in the rollups (None: the rollups lack it).
_ROW_COLUMNS = {
    "action": "action",
    "outcome": "outcome_result",
    "actor_type": "actor_type",
    "source": "source",
    "actor": "actor_id",
    "source_ip": "actor_ip",
}
_ROLLUP_COLUMNS = {"action": "action", "outcome": "outcome", "actor_type": "actor_type",
                   "source": "source"}  # fmt: skip
_ROLLUP_TABLES = {unit: table for table, unit in ROLLUP_TABLES}
_GRAINS = tuple((unit, INTERVALS[unit]) for _, unit in ROLLUP_TABLES)
"""``(unit, length in us)`` of every rollup, finest first."""
_ACTOR_GRAINS = (("actors", INTERVALS[ACTOR_UNIT]),)
_TARGET_GRAINS = (("targets", INTERVALS[TARGET_UNIT]),)
_ACTOR_COLUMNS = {"actor": "actor_id", "action": "action"}
"""Grouping key -> column of the actor table."""


@dataclass(frozen=True)
class Piece:
    """A part of the range and where its counts come from: ``rows``, a rollup grain
    (``minute``, ``hour``, ``day``), the actor table (``actors``) or the target table
    (``targets``)."""

    source: str
    lo: datetime
    hi: datetime


def rollups_can_serve(filters: Filters, group: str | None = None) -> bool:
    """Whether every filter (and the grouping) is a column of the rollups."""
    rows_only = (filters.actor_id, filters.target_id, filters.target_type)
    return all(v is None for v in rows_only) and (group is None or group in _ROLLUP_COLUMNS)


def actors_can_serve(filters: Filters) -> bool:
    """Whether the actor and target tables (per day, actor id, action [, target id]) can
    count for ``filters``: no filter but ``action``, an ``action`` prefix or ``actor_id``."""
    other = (filters.outcome, filters.source, filters.actor_type, filters.target_id,
             filters.target_type)  # fmt: skip
    return all(v is None for v in other)


def _ceil(us: int, step: int) -> int:
    return us + (-us % step)


def _floor(us: int, step: int) -> int:
    return us - us % step


def plan(
    since: datetime,
    until: datetime,
    bucket_us: int | None,
    rollups: bool,
    grains: tuple[tuple[str, int], ...] = _GRAINS,
) -> list[Piece]:
    """Cut ``[since, until)`` into pieces served by the rows or a rollup, coarsest inside.

    Whole days come from the day rollup, the whole hours around them from the hour
    rollup, the whole minutes around those from the minute rollup, and the seconds
    at either edge from the rows. A rollup serves only when buckets are at least as
    long as its grain (``bucket_us`` None: no buckets), so every rollup row lies
    inside one bucket (buckets and grains are UTC-aligned). ``grains`` (finest
    first, ``(source, length in us)``) are the tables to use: the actor and target
    tables have only days.
    """
    if not rollups:
        return [Piece("rows", since, until)]
    grains = tuple((n, step) for n, step in grains if bucket_us is None or step <= bucket_us)
    lo_us, hi_us = micros(since), micros(until)
    left: list[tuple[str, int, int]] = []
    right: list[tuple[str, int, int]] = []
    source, lo, hi = "rows", lo_us, hi_us
    for name, step in grains:
        a, b = _ceil(lo, step), _floor(hi, step)
        if a >= b:
            break
        left.append((source, lo, a))
        right.append((source, b, hi))
        source, lo, hi = name, a, b
    spans = [*left, (source, lo, hi), *reversed(right)]
    return [Piece(src, from_micros(a), from_micros(b)) for src, a, b in spans if a < b]


def _bucket_where(
    tenant_id: str, f: Filters, piece: Piece, columns: tuple[tuple[str, Any], ...]
) -> tuple[list[str], list[Any]]:
    """WHERE clauses and parameters over a bucketed table (rollups, per-day tables) for
    one piece: the tenant, the piece's buckets, the action filters and ``columns``' set
    ones."""
    where = ["tenant_id = ?", "bucket >= ?", "bucket < ?"]
    params: list[Any] = [tenant_id, piece.lo, piece.hi]
    for clause, value in (
        ("action = ?", f.action),
        ("starts_with(action, ?)", f.action_prefix),
        *columns,
    ):
        if value is not None:
            where.append(clause)
            params.append(value)
    actors = f.actor_ids or (() if f.actor_id is None else (f.actor_id,))
    if actors:  # a PHI mode may widen the filter to several stored values, as in the rows
        where.append(f"actor_id IN ({', '.join('?' * len(actors))})")
        params.extend(actors)
    return where, params


def _piece_sql(
    tenant_id: str, f: Filters, piece: Piece, unit: str | None, group: str | None,
    failures: bool = False,
) -> tuple[str, list[Any]]:  # fmt: skip
    """``SELECT b, g, n`` (bucket start in epoch us, group key, count; with ``failures``
    also ``fl``, the failed events among them) for one piece."""
    fails = ""
    if piece.source == "rows":
        where, params = filter_sql(tenant_id, replace(f, since=piece.lo, until=piece.hi))
        bucket = f"epoch_us({utc_trunc(unit, 'occurred_at')})" if unit else "NULL::BIGINT"
        if group == "target":
            sql = (
                f"SELECT {bucket} AS b, g, count(*) AS n FROM (SELECT occurred_at, "  # noqa: S608
                f"{TARGET_IDS_SQL} AS g FROM audit_events WHERE {' AND '.join(where)}) "
                "GROUP BY ALL"
            )
            return sql, params
        key = _ROW_COLUMNS[group] if group else "NULL::VARCHAR"
        if group is not None:
            where.append(f"{key} IS NOT NULL")
        table, count = "audit_events", "count(*)"
        fails = f"count(*) FILTER (WHERE {FAILED_SQL})"
    elif piece.source == "actors":
        where, params = _bucket_where(tenant_id, f, piece, ())
        bucket = f"epoch_us({utc_trunc(unit, 'bucket')})" if unit else "NULL::BIGINT"
        key = _ACTOR_COLUMNS[group] if group else "NULL::VARCHAR"
        table, count, fails = ACTOR_TABLE, "sum(events)", "sum(failures)"
    elif piece.source == "targets":
        if unit is not None or group != "target" or failures:
            raise ValueError("the target table counts targets, without buckets")
        where, params = _bucket_where(tenant_id, f, piece, ())
        bucket, key, table, count = "NULL::BIGINT", "target_id", TARGET_TABLE, "sum(events)"
    else:
        where, params = _bucket_where(
            tenant_id,
            f,
            piece,
            (
                ("outcome = ?", f.outcome),
                ("source = ?", f.source),
                ("actor_type = ?", f.actor_type),
            ),
        )
        bucket = f"epoch_us({utc_trunc(unit, 'bucket')})" if unit else "NULL::BIGINT"
        key = _ROLLUP_COLUMNS[group] if group else "NULL::VARCHAR"
        table, count = _ROLLUP_TABLES[piece.source], "sum(events)"
        failed = ", ".join(f"'{o}'" for o in FAILED_OUTCOMES)
        fails = f"sum(events) FILTER (WHERE outcome IN ({failed}))"
    measures = f"{count} AS n" + (f", {fails} AS fl" if failures else "")
    sql = (
        f"SELECT {bucket} AS b, {key} AS g, {measures} FROM {table} "  # noqa: S608
        f"WHERE {' AND '.join(where)} GROUP BY ALL"
    )
    return sql, params


def pieces(f: Filters, unit: str | None, group: str | None, rollups: bool) -> list[Piece]:
    """The pieces of ``f``'s range and their sources, for buckets of ``unit`` grouped by
    ``group`` (``target`` too): the rollups where they can serve, else the actor or
    target table for whole days where they can, else the rows."""
    assert f.since is not None and f.until is not None
    step = INTERVALS[unit] if unit else None
    if group == "target":
        grains: tuple[tuple[str, int], ...] = _TARGET_GRAINS
        use = rollups and actors_can_serve(f) and unit is None
    elif rollups and rollups_can_serve(f, group):
        grains, use = _GRAINS, True
    else:
        grains = _ACTOR_GRAINS
        use = rollups and actors_can_serve(f) and (group is None or group in _ACTOR_COLUMNS)
    return plan(f.since, f.until, step, use, grains)


def _union(
    tenant_id: str,
    f: Filters,
    unit: str | None,
    group: str | None,
    rollups: bool,
    failures: bool = False,
) -> tuple[str, list[Any]]:
    parts, params = [], []
    for piece in pieces(f, unit, group, rollups):
        sql, p = _piece_sql(tenant_id, f, piece, unit, group, failures)
        parts.append(sql)
        params += p
    return " UNION ALL ".join(parts), params


def periods_union(
    tenant_id: str,
    periods: tuple[Filters, ...],
    unit: str | None,
    group: str | None,
    rollups: bool,
    failures: bool = False,
) -> tuple[str, list[Any]]:
    """The pieces of several periods in one relation, ``p`` numbering the period."""
    parts, params = [], []
    for i, f in enumerate(periods):
        union, p = _union(tenant_id, f, unit, group, rollups, failures)
        parts.append(f"SELECT {i} AS p, * FROM ({union})")  # noqa: S608
        params += p
    return " UNION ALL ".join(parts), params


def counts(
    cur: duckdb.DuckDBPyConnection,
    tenant_id: str,
    f: Filters,
    *,
    unit: str | None = None,
    group: str | None = None,
    rollups: bool = True,
) -> list[tuple[int | None, str | None, int]]:
    """``(bucket start us, key, events)`` of the tenant's events matching ``f`` (non-zero)."""
    union, params = _union(tenant_id, f, unit, group, rollups)
    sql = (
        f"SELECT b, g, sum(n)::BIGINT FROM ({union}) GROUP BY ALL "  # noqa: S608
        "HAVING sum(n) <> 0"
    )
    return [(b, g, int(n)) for b, g, n in cur.execute(sql, params).fetchall()]


def total(cur: duckdb.DuckDBPyConnection, tenant_id: str, f: Filters, rollups: bool = True) -> int:
    """How many of the tenant's events match ``f``."""
    return sum(n for _, _, n in counts(cur, tenant_id, f, rollups=rollups))


def in_snapshot(cur: duckdb.DuckDBPyConnection, fn: Callable[[], T]) -> T:
    """Run ``fn`` inside one read transaction of ``cur`` (one snapshot of the ledger)."""
    with snapshot(cur):
        return fn()


# -- the three answers ---------------------------------------------------------------


def timeseries(
    cur: duckdb.DuckDBPyConnection,
    tenant_id: str,
    f: Filters,
    interval: str,
    group_by: str | None = None,
    rollups: bool = True,
) -> dict[str, Any]:
    """Zero-filled UTC buckets over ``[since, until)``; with ``group_by``, up to 20 series."""
    assert f.since is not None and f.until is not None
    starts = bucket_starts(f.since, f.until, INTERVALS[interval])
    index = {s: i for i, s in enumerate(starts)}
    totals = [0] * len(starts)
    per_key: dict[str, list[int]] = {}
    for b, g, n in counts(cur, tenant_id, f, unit=interval, group=group_by, rollups=rollups):
        assert b is not None
        totals[index[b]] += n
        if group_by is not None:
            per_key.setdefault(str(g), [0] * len(starts))[index[b]] += n
    body: dict[str, Any] = {
        "since": f.since.isoformat(),
        "until": f.until.isoformat(),
        "interval": interval,
        "buckets": [iso(s) for s in starts],
        "counts": totals,
        "total": sum(totals),
    }
    if group_by is not None:
        ranked = sorted(per_key.items(), key=lambda kv: (-sum(kv[1]), kv[0]))
        body["group_by"] = group_by
        body["series"] = [{"key": k, "total": sum(c), "counts": c} for k, c in ranked[:MAX_SERIES]]
        rest = ranked[MAX_SERIES:]
        body["other"] = (
            None
            if not rest
            else {
                "keys": len(rest),
                "total": sum(sum(c) for _, c in rest),
                "counts": [sum(c[i] for _, c in rest) for i in range(len(starts))],
            }
        )
    return body


def top(
    cur: duckdb.DuckDBPyConnection,
    tenant_id: str,
    f: Filters,
    dimension: str,
    limit: int,
    rollups: bool = True,
    reveal: Revealer | None = None,
) -> dict[str, Any]:
    """The ``limit`` most frequent keys of ``dimension``: count desc, then key ascending.

    ``reveal`` (a server-mode tenant's) opens PHI keys, the actor ids of members and
    the ids of member, patient and claim targets; after a rotation a value's tokens
    under every key are counted as one key (:class:`query_api.phi_sql.CanonicalKeys`).
    """
    assert f.since is not None and f.until is not None
    union, params = _union(tenant_id, f, None, dimension, rollups)
    grouped = (
        f"SELECT g, sum(n)::BIGINT AS n FROM ({union}) GROUP BY g "  # noqa: S608
        "HAVING sum(n) <> 0"
    )
    domains = PHI_KEY_DOMAINS.get(dimension, ())
    phi = reveal is not None and reveal.active and bool(domains)
    with ExitStack() as stack:
        if phi and reveal is not None and reveal.rotated:
            fn = stack.enter_context(CanonicalKeys(cur, reveal, domains)).name
            grouped = f"SELECT {fn}(g) AS g, sum(n)::BIGINT AS n FROM ({grouped}) GROUP BY 1"  # noqa: S608
        sql = f"SELECT g, n FROM ({grouped}) ORDER BY n DESC, g ASC LIMIT ?"  # noqa: S608
        rows = [(k, int(n)) for k, n in cur.execute(sql, [*params, limit]).fetchall()]
    if phi and reveal is not None:
        rows = _revealed(rows, reveal, domains)
    events = total(cur, tenant_id, f, rollups)
    return {
        "since": f.since.isoformat(),
        "until": f.until.isoformat(),
        "dimension": dimension,
        "limit": limit,
        "total": events,
        "items": [
            {"key": k, "count": n, "share": (n / events) if events else 0.0} for k, n in rows
        ],
    }


PHI_KEY_DOMAINS: dict[str, tuple[str, ...]] = {
    "actor": id_domains("actor_id"),
    "target": id_domains("target_id"),
}
"""``top`` dimensions whose keys may be PHI tokens, and of which domains."""


def _revealed(
    rows: list[tuple[str, int]], reveal: Revealer, domains: tuple[str, ...]
) -> list[tuple[str, int]]:
    """The keys opened; two keys that open to one value (ids in two domains) are added."""
    merged: dict[str, int] = {}
    for key, n in rows:
        plain = reveal.key(key, domains)
        merged[plain] = merged.get(plain, 0) + n
    return sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))

"""The period summary: totals, failures, busiest bucket and distinct actors and targets,
for a period and the one of equal length before it, and the change.

Three queries, each over both periods at once (:func:`query_api.analytics.periods_union`,
``p`` numbering the period): the events and failures per bucket (the totals, the
failure rate and the busiest bucket), the distinct actors and the distinct targets.
Each is served by the rollups, the actor and target tables or the rows as
:mod:`query_api.analytics` decides per piece of the range; the distinct targets of a
request filtered by nothing but ``action`` (or a prefix) come from the target sets
instead (:mod:`query_api.analytics_targets`), a fraction of the cost of counting a
million distinct ids. Distinct counts are exact: a key counts when its cells add up
to more than 0. Shapes: ``docs/analytics.md``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import duckdb

from query_api.analytics import periods_union
from query_api.analytics_targets import distinct_targets, sets_can_serve
from query_api.filters import Filters
from query_api.ranges import iso


def _distinct(
    cur: duckdb.DuckDBPyConnection,
    tenant_id: str,
    periods: tuple[Filters, ...],
    group: str,
    rollups: bool,
) -> list[int]:
    """Distinct keys of ``group`` (``actor`` or ``target``) of each period's matching
    events, in one query (a key counts when its cells add up to more than 0)."""
    union, params = periods_union(tenant_id, periods, None, group, rollups)
    sql = (
        f"SELECT p, count(*) FROM (SELECT p, g FROM ({union}) "  # noqa: S608
        "GROUP BY p, g HAVING sum(n) <> 0) GROUP BY p"
    )
    found = dict(cur.execute(sql, params).fetchall())
    return [int(found.get(i, 0)) for i in range(len(periods))]


def _buckets(
    cur: duckdb.DuckDBPyConnection,
    tenant_id: str,
    periods: tuple[Filters, ...],
    interval: str,
    rollups: bool,
) -> list[list[tuple[int, int, int]]]:
    """``(bucket start us, events, failures)`` of each period's non-empty buckets."""
    union, params = periods_union(tenant_id, periods, interval, None, rollups, failures=True)
    sql = (
        f"SELECT p, b, sum(n)::BIGINT, coalesce(sum(fl), 0)::BIGINT FROM ({union}) "  # noqa: S608
        "GROUP BY ALL HAVING sum(n) <> 0"
    )
    out: list[list[tuple[int, int, int]]] = [[] for _ in periods]
    for p, b, n, fl in cur.execute(sql, params).fetchall():
        out[p].append((b, int(n), int(fl)))
    return out


def _figures(
    f: Filters, buckets: list[tuple[int, int, int]], actors: int, targets: int
) -> dict[str, Any]:
    assert f.since is not None and f.until is not None
    events = sum(n for _, n, _ in buckets)
    failures = sum(fl for _, _, fl in buckets)
    busiest = min(buckets, key=lambda r: (-r[1], r[0]), default=None)
    return {
        "since": f.since.isoformat(),
        "until": f.until.isoformat(),
        "total": events,
        "distinct_actors": actors,
        "distinct_targets": targets,
        "failures": failures,
        "failure_rate": failures / events if events else None,
        "busiest_bucket": (
            None if busiest is None else {"start": iso(busiest[0]), "count": busiest[1]}
        ),
    }


def _change(now: float | None, before: float | None) -> dict[str, float | None]:
    if now is None or before is None:
        return {"absolute": None, "relative": None}
    return {
        "absolute": now - before,
        "relative": (now - before) / before if before else None,
    }


CHANGED = ("total", "distinct_actors", "distinct_targets", "failures", "failure_rate")


def summary(
    cur: duckdb.DuckDBPyConnection,
    tenant_id: str,
    f: Filters,
    interval: str,
    rollups: bool = True,
) -> dict[str, Any]:
    """The period's figures, the previous period of equal length's, and the change."""
    assert f.since is not None and f.until is not None
    length = f.until - f.since
    periods = (f, replace(f, since=f.since - length, until=f.since))
    buckets = _buckets(cur, tenant_id, periods, interval, rollups)
    actors = _distinct(cur, tenant_id, periods, "actor", rollups)
    if rollups and sets_can_serve(f):
        targets = distinct_targets(cur, tenant_id, periods)
    else:
        targets = _distinct(cur, tenant_id, periods, "target", rollups)
    now, before = (_figures(p, buckets[i], actors[i], targets[i]) for i, p in enumerate(periods))
    return {
        "interval": interval,
        "current": now,
        "previous": before,
        "change": {name: _change(now[name], before[name]) for name in CHANGED},
    }

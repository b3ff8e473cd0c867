"""List pages cut from a tenant's head (:mod:`ledger.head`) instead of DuckDB.

A head holds exactly the tenant's committed rows above its floor, so the rows
of a page (newest first, strictly below the cursor, matching the filters) are
the head's own whenever the page fills up above the floor, or the head holds
every row (no floor), or the ``since`` bound lies above the floor. Otherwise
:func:`page` answers None and the caller reads DuckDB. The same holds for an action
head (:func:`scope`): it holds exactly the tenant's rows of its action or prefix
above its floor, and every page it is asked for has that filter; so does an id head,
for one actor id or one target id.

:func:`matches` is the Python twin of :func:`query_api.queries.filter_sql`; both
compare strings by code point (DuckDB's ``VARCHAR`` order and equality, UTF-8
byte order, are the same) and a NULL never matches. ``tests/test_head.py``
checks the head's pages against DuckDB's for every filter.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from ledger.head import Scope
from ledger.head_rows import Head, HeadRow, Position
from query_api.cursor import Position as CursorPosition
from query_api.filters import Filters
from schemas.times import EPOCH, micros


def page(
    head: Head, filters: Filters, after: CursorPosition | None, limit: int
) -> list[HeadRow] | None:
    """Up to ``limit`` rows as the list query returns them, or None when the head cannot tell."""
    start: Position | None = None if after is None else (after.occurred_us, after.event_id)
    floor = head.floor
    complete = floor is None or (filters.since is not None and micros(filters.since) > floor[0])
    if not complete and start is not None and floor is not None and start <= floor:
        return None  # the page starts below the floor
    plain = _plain(filters)
    out: list[HeadRow] = []
    rows = head.rows
    for i in range(head.below(start) - 1, -1, -1):
        row = rows[i]
        if plain or matches(row.row, filters):
            out.append(row)
            if len(out) == limit:
                return out
    return out if complete else None


def scope(f: Filters) -> Scope | None:
    """The scoped head for a page of ``f`` (asked first when loaded, see
    ``query_api.routes._read_page``): the filter's one actor id, else its one target
    id, else its action, else its action prefix, else its ``until`` bound; None
    without any of those (or with several ids, as a PHI mode may ask, and no action or
    bound)."""
    actors = f.actor_ids or (() if f.actor_id is None else (f.actor_id,))
    if len(actors) == 1:
        return ("@", actors[0])
    targets = f.target_ids or (() if f.target_id is None else (f.target_id,))
    if len(targets) == 1:
        return ("#", targets[0])
    if f.action is not None:
        return ("=", f.action)
    if f.action_prefix:
        return ("^", f.action_prefix)
    if f.until is not None:
        return ("<", str(micros(f.until)))
    return None


def scope_filters(scope: Scope | None) -> Filters:
    """The filter a head of ``scope`` holds the rows of (None: the tenant's, no filter);
    the inverse of :func:`scope`, which a head's load reads with."""
    if scope is None:
        return Filters()
    kind, value = scope
    if kind == "@":
        return Filters(actor_id=value)
    if kind == "#":
        return Filters(target_id=value)
    if kind == "<":
        return Filters(until=EPOCH + timedelta(microseconds=int(value)))
    return Filters(action=value) if kind == "=" else Filters(action_prefix=value)


def _plain(f: Filters) -> bool:
    """No filter at all: every row matches."""
    return (
        f.since is None
        and f.until is None
        and f.action is None
        and f.action_prefix is None
        and f.actor_id is None
        and f.actor_type is None
        and f.target_id is None
        and f.target_type is None
        and f.outcome is None
        and f.source is None
        and not f.actor_ids
        and not f.target_ids
    )


def matches(row: dict[str, Any], f: Filters) -> bool:
    """Whether ``row`` passes ``f`` as :func:`query_api.queries.filter_sql` decides it."""
    occurred = row["occurred_us"]
    if f.since is not None and not occurred >= micros(f.since):
        return False
    if f.until is not None and not occurred < micros(f.until):
        return False
    if f.action is not None and row["action"] != f.action:
        return False
    if f.action_prefix is not None and not (row["action"] or "").startswith(f.action_prefix):
        return False
    for value, column in (
        (f.actor_type, "actor_type"),
        (f.outcome, "outcome_result"),
        (f.source, "source"),
    ):
        if value is not None and row[column] != value:
            return False
    actors = f.actor_ids or (() if f.actor_id is None else (f.actor_id,))
    if actors and row["actor_id"] not in actors:
        return False
    target_ids = f.target_ids or (() if f.target_id is None else (f.target_id,))
    if target_ids or f.target_type is not None:
        return any(
            (not target_ids or t["id"] in target_ids)
            and (f.target_type is None or t["type"] == f.target_type)
            for t in row["targets"] or ()
        )
    return True

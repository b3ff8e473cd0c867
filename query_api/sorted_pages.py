"""A page of one actor or one target id, read from the sorted copies.

The copies (:mod:`ledger.sorted_copies`) hold every row of ``audit_events`` up to
their mark, clustered by the key of ``(tenant_id, actor_id)`` or ``(tenant_id,
target_id)``, so DuckDB's zone maps bring a page down to one row group of each run. A page
is the newest rows of two parts, each asked for its own newest ``limit``: the copy
up to a mark, and ``audit_events`` past it (``seq`` rises with the physical order,
so only the rows committed since are scanned; none when no row was committed since:
this saves 1.5 ms at 10M events). Both parts take the list query's own
conditions (:func:`query_api.queries.filter_sql`, the cursor), so the page is the
one the list query over ``audit_events`` alone gives, whatever the mark; the tests
compare the two for every filter and cursor.
"""

from __future__ import annotations

from typing import Any

from ledger.sorted_copies import BY_ACTOR, BY_TARGET, ReadMark, key_text
from ledger.tables import STORED_COLUMNS
from query_api.filters import Filters

_STORED = ", ".join(STORED_COLUMNS)
ORDER = "ORDER BY occurred_at DESC, event_id DESC"


def copy_for(f: Filters) -> tuple[str, str, str] | None:
    """``(copy table, its id condition, the id)`` for a filter of one actor or one
    target id (the actor's when both); None for any other filter."""
    if f.actor_id is not None and not f.actor_ids:
        return BY_ACTOR, "actor_id = ?", f.actor_id
    if f.target_id is not None and not f.target_ids:
        return BY_TARGET, "target_id = ?", f.target_id
    return None


def page_sql(
    select: str,
    tenant_id: str,
    copy: tuple[str, str, str],
    conditions: str,
    params: list[Any],
    limit: int,
    copies: ReadMark,
) -> tuple[str, list[Any]]:
    """The page's SQL and parameters; ``conditions``/``params``: the list query's (tenant,
    filters, cursor). ``select`` is computed on the page's rows only."""
    table, same_id, value = copy
    sorted_part = (
        f"SELECT {_STORED} FROM {table} WHERE k = md5_number(?) AND {same_id} "  # noqa: S608
        f"AND seq <= ? AND {conditions} {ORDER} LIMIT ?"
    )
    key = key_text(tenant_id, value)
    mark = copies.mark
    values = [key, value, mark, *params, limit]
    rows = f"({sorted_part})"
    if copies.newer:
        newer_part = (
            f"SELECT {_STORED} FROM audit_events WHERE seq > ? AND {conditions} "  # noqa: S608
            f"{ORDER} LIMIT ?"
        )
        rows = f"{rows} UNION ALL ({newer_part})"
        values += [mark, *params, limit]
    sql = f"SELECT {select} FROM (SELECT * FROM ({rows}) {ORDER} LIMIT ?) {ORDER}"  # noqa: S608
    values.append(limit)
    return sql, values

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

A page's query has as few levels as it can: DuckDB binds and optimizes every level,
each with its 20 columns, and at 10M events that planning was a third of the page
(one target's page, DuckDB alone: binding 1.7 ms, optimizing 2.9 ms, the scan 4.5 ms).
Rows come from the copy alone in one ``SELECT``; with rows past the mark, the two
parts' union takes one more level to order and cut them.

A page of JSON (``rendered``) reads each row's stored ``body`` from the copy: DuckDB
then reads four columns of the page's rows rather than the twenty they are rendered
from (see :mod:`ledger.sorted_copies`). Rows past the mark are rendered as a copy
stores them, in a level of their own, once cut to the page.
"""

from __future__ import annotations

from typing import Any

from ledger import tail_keys
from ledger.event_json import EVENT_JSON_SQL
from ledger.sorted_copies import BODY, BY_ACTOR, BY_TARGET, ReadMark, key_text
from ledger.tables import STORED_COLUMNS
from query_api.filters import Filters

_BOOKKEEPING = {"ledger_key", "kafka_partition", "kafka_offset", "seq"}
_FIELDS = ", ".join(c for c in STORED_COLUMNS if c not in _BOOKKEEPING)
"""The stored columns a page's select list reads (not the key, offsets or seq: every
column read costs a vector of each run that holds a row of the page)."""
ORDER = "ORDER BY occurred_at DESC, event_id DESC"
SEQ_FIELDS = "seq, occurred_at, event_id"
"""What a page that only says which rows it holds reads (their bodies come from
:mod:`ledger.page_bodies`)."""
BODY_FIELDS = f"{BODY}, occurred_at, event_id"
"""What a part of a page of JSON reads from a copy."""
NEWER_BODY_FIELDS = f"{EVENT_JSON_SQL} AS {BODY}, occurred_at, event_id"
"""... and from ``audit_events`` past the mark (each row rendered as a copy stores it)."""
POSITION = "epoch_us(occurred_at) AS occurred_us, event_id::VARCHAR AS event_id"
"""A row's place in the order, for the next cursor: the last columns of every page
that is not rows (:data:`RENDERED`, ``query_api.queries``' JSON and ``seq`` pages)."""
RENDERED = f"{BODY}, {POSITION}"
"""A page of JSON: ``(public JSON, occurred_us, event_id)`` per row, as
:data:`query_api.queries.JSON_COLUMNS` renders it."""


def copy_for(f: Filters) -> tuple[str, tuple[str, ...]] | None:
    """``(copy table, ids)`` for a filter of actor ids (one, or a PHI mode's several) or
    of one target id (actors first when both); None for any other filter.

    Several target ids take none: an event naming two of them has a row for each in
    the target copy, and would come twice."""
    actors = f.actor_ids or (() if f.actor_id is None else (f.actor_id,))
    if actors:
        return BY_ACTOR, tuple(actors)
    targets = f.target_ids or (() if f.target_id is None else (f.target_id,))
    if len(targets) == 1:
        return BY_TARGET, tuple(targets)
    return None


def noted_keys(tenant_id: str, f: Filters) -> tuple[str, ...] | None:
    """The noted keys (:mod:`ledger.tail_keys`) of the ids a page of ``f`` reads from the
    copies, or None when it reads none."""
    copy = copy_for(f)
    if copy is None:
        return None
    table, ids = copy
    kind = tail_keys.ACTOR if table == BY_ACTOR else tail_keys.TARGET
    return tuple(tail_keys.key(kind, tenant_id, i) for i in ids)


def page_sql(
    select: str,
    tenant_id: str,
    copy: tuple[str, tuple[str, ...]],
    conditions: str,
    params: list[Any],
    limit: int,
    copies: ReadMark,
    rendered: bool = False,
    narrow: bool = False,
) -> tuple[str, list[Any]]:
    """The page's SQL and parameters; ``conditions``/``params``: the list query's (tenant,
    filters, cursor), which select the ids themselves. ``select`` is computed by the
    query itself, with as few levels as it takes (see the module's docstring). With
    ``rendered``, the page is :data:`RENDERED` instead (``select`` is not used): the
    copy's stored ``body``, and rows past the mark rendered once cut. With ``narrow``,
    ``select`` reads only :data:`SEQ_FIELDS`, and so do the parts of a union."""
    table, ids = copy
    keys = [key_text(tenant_id, i) for i in ids]
    if len(keys) == 1:
        key = "k = md5_number(?)"
    else:
        key = f"k IN ({', '.join(['md5_number(?)'] * len(keys))})"
    # The key alone: the id itself is in the list query's conditions (the actor, or the
    # event's targets list). A filter on an id column of the copy is evaluated over
    # every row of the pruned row groups (see ledger.sorted_copies).
    if rendered:
        select, part = RENDERED, BODY_FIELDS
    else:
        part = SEQ_FIELDS if narrow else _FIELDS  # what a part of a union reads
    fields = part if copies.newer else select
    sorted_part = (
        f"SELECT {fields} FROM {table} WHERE {key} AND seq <= ? AND {conditions} "  # noqa: S608
        f"{ORDER} LIMIT ?"
    )
    values: list[Any] = [*keys, copies.mark, *params, limit]
    if not copies.newer:
        return sorted_part, values
    newer_rows = f"FROM audit_events WHERE seq > ? AND {conditions} {ORDER} LIMIT ?"
    if rendered:  # rendered once cut: DuckDB would render every matching row first
        newer_part = f"SELECT {NEWER_BODY_FIELDS} FROM (SELECT {_FIELDS} {newer_rows})"  # noqa: S608
    else:
        newer_part = f"SELECT {part} {newer_rows}"
    rows = f"({sorted_part}) UNION ALL ({newer_part})"
    values += [copies.mark, *params, limit, limit]
    return f"SELECT {select} FROM ({rows}) {ORDER} LIMIT ?", values  # noqa: S608

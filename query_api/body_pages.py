"""A page's rows as their bodies: which rows from DuckDB, their JSON from the page bodies.

:func:`body_page` asks DuckDB only which rows a page holds (``seq`` and the cursor's
order columns, :func:`query_api.queries.list_event_seqs`) and takes their bodies from
:mod:`ledger.page_bodies`. Rows committed since the bodies' last step are rendered by
DuckDB by ``seq`` (they are the newest, in the last row groups, which zone maps keep
to); more of them than :data:`MAX_RENDERED`, or a row replaced between the two
reads, and the page is read from DuckDB whole instead, as without bodies.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb

from ledger.event_json import EVENT_JSON_SQL
from ledger.page_bodies import PageBodies
from query_api.queries import JsonRow, SeqRow

MAX_RENDERED = 16
"""Rows without a body that a page renders by ``seq`` before it reads DuckDB whole."""


def body_page(
    cur: duckdb.DuckDBPyConnection,
    bodies: PageBodies,
    found: list[SeqRow],
    whole: Callable[[duckdb.DuckDBPyConnection], list[JsonRow]],
) -> list[JsonRow]:
    """The page of ``found`` (``(seq, occurred_us, event_id)`` rows) as
    ``(body, occurred_us, event_id)``; ``whole`` reads the page from DuckDB alone."""
    seqs = [r[0] for r in found]
    texts = bodies.get(seqs)
    missing = [s for s in seqs if s not in texts]
    if len(missing) > MAX_RENDERED:
        return whole(cur)
    if missing:
        marks = ", ".join("?" * len(missing))
        sql = f"SELECT seq, {EVENT_JSON_SQL} FROM audit_events WHERE seq IN ({marks})"  # noqa: S608
        texts.update(cur.execute(sql, missing).fetchall())
        if any(s not in texts for s in missing):  # replaced meanwhile
            return whole(cur)
    return [(texts[seq], us, eid) for seq, us, eid in found]

"""Rollups: per-tenant event counts per minute, hour and day, kept in step with ``audit_events``.

Three tables, one per grain, with the same columns::

    tenant_id, bucket (TIMESTAMPTZ, UTC-aligned), action, outcome, source, actor_type, events

``bucket`` is ``occurred_at`` truncated to the minute (``audit_rollup_minute``), the
hour (``audit_rollup_hour``) or the day (``audit_rollup_day``), in UTC. The tables
hold *deltas*: every write appends the grouped counts of the rows it added (and
negative counts for rows it removed), so the number of rows of ``audit_events``
with given values is ``sum(events)`` over the matching rollup rows; a cell that
sums to 0 holds no rows (readers filter ``HAVING sum(events) <> 0``). Appending is
what makes them cheap to keep: an ``ON CONFLICT DO UPDATE`` upsert into a keyed
table cost about 4x as much per batch (measured: 0.28 s against 0.07 s for a
40,000-row batch, minute and hour grains).

The analytics endpoints (``query_api.analytics``) answer counts from them where the
request allows (see there), whole days from the day table: with 8 actions, 3
outcomes, 4 sources and 2 actor types, a busy tenant's 30 days are at most 5,760 day
rows, 138,240 hour rows, and nearly as many minute rows as events. The day grain
costs the writer a third grouped insert per batch (measured 432 -> 536 ms for the
rollups of a 40,000-row batch under load; deriving the coarser grains from a
temporary per-minute delta was slower, 781 ms).

**Exactly as fresh as the rows.** :class:`~ledger.store.LedgerStore` calls
:func:`add_sql` / :func:`subtract_sql` inside the very transaction that changes
``audit_events``, with the same rows: the fast path counts the whole batch, the
dedup path only the rows ``INSERT ... RETURNING`` reports as inserted, and a stored
row *replaced* by a batch copy (only across partitions) is subtracted before its
replacement is added. A rollback undoes both; a crash leaves both as they were.
So a count from the rollups always equals the same count over the rows, at every
commit (``tests/test_rollups.py`` checks this after random batches, duplicates,
replacements, a rebuild and a SIGKILL mid-load).

**Actors per day.** ``audit_actor_day`` (``tenant_id, bucket, actor_id, action,
events, failures``, the same deltas) counts events, and among them those whose
outcome is ``failure`` or ``denied``, per tenant, UTC day, actor id and action. It
serves what the grains above cannot: ``top`` by actor and the distinct actors of a
summary, and the totals, failures and daily buckets of a request filtered by
``actor_id``, over the whole days of a range (the edges from the rows), for requests
filtered by nothing but ``action``, an ``action`` prefix or ``actor_id``. A busy
tenant's 30 days with 2,000 actors and 8 actions are at most 480,000 rows, where the
rows hold millions (measured at 10M events, biggest tenant 5M, under load: top
actors 0.1-0.16 s against 0.5 s from the rows).

**Targets per day.** ``audit_actor_target_day`` (``tenant_id, bucket, actor_id,
action, target_id, events``, the same deltas) counts, per tenant, UTC day, actor id,
action and target id, the events that name the target (an event naming it twice
counts once). It serves the distinct targets
of a summary and ``top`` by target over the whole days of a range, for the same
filters as the actor table. It is about as long as the rows (one cell per event when
targets rarely repeat within a day), but its columns are flat: the rows keep
targets in a list of structs, whose values DuckDB decompresses for every row group
it reads even when a filter keeps a handful of rows (reading the targets of one
actor's 2,500 events out of 10M: 0.3 s). ``target_id`` is stored uncompressed so
that the few values a filter keeps are read without decompressing the rest (0.27 s
-> 0.08 s for that actor; the file grows by about 15 bytes per cell). Measured at
10M events, biggest tenant 5M: the distinct targets of one actor's 30 days 0.5 s
from the rows, 0.09 s from this table; of an ``action`` prefix 1.1 s -> 0.45 s;
without a filter 1.4 s -> 0.93 s (counting a million distinct ids is the cost there).

A rebuild replays the log into a new file, which maintains the rollups from its
first batch; :func:`rebuild_sql` recomputes them from the rows of an existing file
(used by benchmarks that generate rows in bulk, and to check a file).
"""

from __future__ import annotations

ROLLUP_TABLES: tuple[tuple[str, str], ...] = (
    ("audit_rollup_minute", "minute"),
    ("audit_rollup_hour", "hour"),
    ("audit_rollup_day", "day"),
)
"""``(table, date_trunc unit)`` of every rollup, finest first."""

DIMENSIONS: tuple[str, ...] = ("action", "outcome", "source", "actor_type")
"""The columns a rollup groups by besides tenant and bucket (all NOT NULL in the rows)."""

_KEY = ("tenant_id", "bucket", *DIMENSIONS)

FAILED_OUTCOMES: tuple[str, ...] = ("failure", "denied")
"""Outcomes counted as failures (the actor table's ``failures``, a summary's failure rate)."""

ACTOR_TABLE = "audit_actor_day"
"""Per tenant, UTC day, actor id and action: the events and failures (deltas, like the grains)."""
ACTOR_UNIT = "day"
_ACTOR_KEY = ("tenant_id", "bucket", "actor_id", "action")

ACTOR_DDL = (
    f"CREATE TABLE IF NOT EXISTS {ACTOR_TABLE} (\n"
    "    tenant_id   VARCHAR NOT NULL,\n"
    "    bucket      TIMESTAMPTZ NOT NULL,\n"
    "    actor_id    VARCHAR NOT NULL,\n"
    "    action      VARCHAR NOT NULL,\n"
    "    events      BIGINT NOT NULL,\n"
    "    failures    BIGINT NOT NULL\n"
    ")"
)

TARGET_TABLE = "audit_actor_target_day"
"""Per tenant, UTC day, actor id, action and target id: the events naming the target."""
TARGET_UNIT = "day"
_TARGET_KEY = ("tenant_id", "bucket", "actor_id", "action", "target_id")

TARGET_DDL = (
    f"CREATE TABLE IF NOT EXISTS {TARGET_TABLE} (\n"
    "    tenant_id   VARCHAR NOT NULL,\n"
    "    bucket      TIMESTAMPTZ NOT NULL,\n"
    "    actor_id    VARCHAR NOT NULL,\n"
    "    action      VARCHAR NOT NULL,\n"
    "    target_id   VARCHAR NOT NULL USING COMPRESSION uncompressed,\n"
    "    events      BIGINT NOT NULL\n"
    ")"
)


def _ddl(table: str) -> str:
    columns = ",\n    ".join(
        [
            "tenant_id   VARCHAR NOT NULL",
            "bucket      TIMESTAMPTZ NOT NULL",
            *(f"{d:<11} VARCHAR NOT NULL" for d in DIMENSIONS),
            "events      BIGINT NOT NULL",
        ]
    )
    return f"CREATE TABLE IF NOT EXISTS {table} (\n    {columns}\n)"


ROLLUP_DDL: tuple[str, ...] = (
    *(_ddl(table) for table, _ in ROLLUP_TABLES),
    ACTOR_DDL,
    TARGET_DDL,
)


def utc_trunc(unit: str, column: str) -> str:
    """SQL truncating the TIMESTAMPTZ ``column`` to ``unit`` in UTC, as a TIMESTAMPTZ.

    A plain ``date_trunc`` on a TIMESTAMPTZ follows the session's ``TimeZone``, which
    a DuckDB cursor does not inherit from its connection (it starts from the
    machine's zone): in Asia/Kolkata an hour would start at :30 UTC.
    """
    return f"(date_trunc('{unit}', {column} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC')"


def _append(table: str, unit: str, relation: str, sign: int, ordered: bool = False) -> str:
    """Append ``sign`` x the grouped counts of ``relation`` (rows shaped like audit_events)."""
    # Only this module's constants and the caller's constant relation are formatted in.
    return (
        f"INSERT INTO {table} ({', '.join(_KEY)}, events) "  # noqa: S608
        f"SELECT tenant_id, {utc_trunc(unit, 'occurred_at')}, action, outcome_result, "
        f"source, actor_type, {sign} * count(*) FROM ({relation}) GROUP BY ALL"
        + (" ORDER BY 2, 1" if ordered else "")
    )


FAILED_SQL = f"outcome_result IN ({', '.join(repr(o) for o in FAILED_OUTCOMES)})"
"""SQL: the row of ``audit_events`` (or of a batch shaped like it) is a failure."""

TARGET_IDS_SQL = "unnest(list_distinct(list_transform(targets, lambda t: t.id)))"
"""SQL: one row per distinct non-null target id of an event (``list_distinct`` drops NULLs)."""


def _append_actors(relation: str, sign: int, ordered: bool = False) -> str:
    """Append ``sign`` x the per-day actor counts (events, failures) of ``relation``."""
    return (
        f"INSERT INTO {ACTOR_TABLE} ({', '.join(_ACTOR_KEY)}, events, failures) "  # noqa: S608
        f"SELECT tenant_id, {utc_trunc(ACTOR_UNIT, 'occurred_at')}, actor_id, action, "
        f"{sign} * count(*), {sign} * count(*) FILTER (WHERE {FAILED_SQL}) "
        f"FROM ({relation}) GROUP BY ALL" + (" ORDER BY 2, 1" if ordered else "")
    )


def _append_targets(relation: str, sign: int, ordered: bool = False) -> str:
    """Append ``sign`` x the per-day actor-target counts of ``relation``."""
    return (
        f"INSERT INTO {TARGET_TABLE} ({', '.join(_TARGET_KEY)}, events) "  # noqa: S608
        f"SELECT tenant_id, {utc_trunc(TARGET_UNIT, 'occurred_at')}, actor_id, action, "
        f"target_id, {sign} * count(*) FROM (SELECT tenant_id, occurred_at, actor_id, action, "
        f"{TARGET_IDS_SQL} AS target_id FROM ({relation})) GROUP BY ALL"
        + (" ORDER BY 2, 1" if ordered else "")
    )


def _statements(relation: str, sign: int, ordered: bool = False) -> list[str]:
    return [
        *(_append(table, unit, relation, sign, ordered) for table, unit in ROLLUP_TABLES),
        _append_actors(relation, sign, ordered),
        _append_targets(relation, sign, ordered),
    ]


def add_sql(relation: str) -> str:
    """SQL (statements joined by ``;``) that counts the rows of ``relation`` in every rollup.

    ``relation`` is a constant SQL relation shaped like ``audit_events`` (a registered
    batch, or a ``SELECT`` of it), never request text.
    """
    return "; ".join(_statements(relation, 1))


def subtract_sql(relation: str) -> str:
    """SQL that takes the rows of ``relation`` out of every rollup (negative deltas)."""
    return "; ".join(_statements(relation, -1))


def rebuild_sql() -> str:
    """SQL that recomputes every rollup from ``audit_events`` (empties them first)."""
    parts = [f"DELETE FROM {table}" for table, _ in ALL_ROLLUPS]  # noqa: S608
    # in time order, as live batches append them (so the zone maps on bucket can skip)
    return "; ".join([*parts, *_statements("SELECT * FROM audit_events", 1, ordered=True)])


def mismatch_sql(table: str, unit: str) -> str:
    """SQL listing the cells where ``table`` disagrees with a recount of ``audit_events``.

    Each row is the cell's key (``tenant_id, bucket, action, outcome, source,
    actor_type``; for the actor table ``tenant_id, bucket, actor_id, action``; for the
    target table those and ``target_id``), then the table's counts and the rows' (for
    the actor table events, then failures, each as ``[table, rows]``); an empty answer
    means the table is exact.
    """
    rows = "audit_events"
    if (table, unit) == (ACTOR_TABLE, ACTOR_UNIT):
        key, values = _ACTOR_KEY, "actor_id, action"
        measures = (("events", "count(*)"), ("failures", f"count(*) FILTER (WHERE {FAILED_SQL})"))
    elif (table, unit) == (TARGET_TABLE, TARGET_UNIT):
        key, values = _TARGET_KEY, "actor_id, action, target_id"
        measures = (("events", "count(*)"),)
        rows = (
            "(SELECT tenant_id, occurred_at, actor_id, action, "  # noqa: S608
            f"{TARGET_IDS_SQL} AS target_id FROM audit_events)"
        )
    elif (table, unit) in ROLLUP_TABLES:
        key, values = _KEY, "action, outcome_result AS outcome, source, actor_type"
        measures = (("events", "count(*)"),)
    else:
        raise ValueError(f"unknown rollup {table!r}")
    keys = ", ".join(key)
    sums = ", ".join(f"sum({m}) AS {m}" for m, _ in measures)
    counted = ", ".join(f"{sql} AS {m}" for m, sql in measures)
    nonzero = " OR ".join(f"sum({m}) <> 0" for m, _ in measures)
    pairs = ", ".join(f"[r.{m}, e.{m}]" for m, _ in measures)
    differ = " OR ".join(f"r.{m} IS DISTINCT FROM e.{m}" for m, _ in measures)
    return (
        f"WITH r AS (SELECT {keys}, {sums} FROM {table} GROUP BY ALL "  # noqa: S608
        f"HAVING {nonzero}), "
        f"e AS (SELECT tenant_id, {utc_trunc(unit, 'occurred_at')} AS bucket, {values}, "
        f"{counted} FROM {rows} "
        f"GROUP BY ALL) SELECT {keys}, {pairs} FROM r FULL OUTER JOIN e USING ({keys}) "
        f"WHERE {differ}"
    )


EVENT_COUNTS: tuple[tuple[str, str], ...] = (*ROLLUP_TABLES, (ACTOR_TABLE, ACTOR_UNIT))
"""``(table, unit)`` of the tables whose ``events`` add up to the rows (the grains, actors)."""

ALL_ROLLUPS: tuple[tuple[str, str], ...] = (*EVENT_COUNTS, (TARGET_TABLE, TARGET_UNIT))
"""``(table, unit)`` of every table this module keeps (the grains, actors and targets)."""

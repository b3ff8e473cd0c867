"""Copies of one ``(tenant_id, event_id)``: which one wins, and which ones conflict.

``event_id`` is the idempotency key of a tenant's events, so the log may hold the
same key more than once: a client re-sent an event it was not sure was written, or
it reused an id. The ledger keeps exactly one row per key, and the rule that picks
it depends on the log alone, so every node and every rebuild keeps the same row:

- the copy with the lowest ``(kafka_partition, kafka_offset)`` wins. Within a
  partition that is the first copy in log order; a tenant's events share one
  partition, so two partitions only meet when partitions were added to the topic.

A losing copy whose *content* (:data:`ledger.tables.CONTENT_COLUMNS`) differs from
the winner is a **conflict**: first-write-wins is right for an idempotency key,
but a conflict should not be silent, so it is recorded in ``ledger_conflicts``
(ids, offsets and content hashes, no payload) in the same transaction.

This module only decides; :class:`ledger.store.LedgerStore` writes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ledger.tables import CONTENT_HASH

LOOKUP_CHUNK = 1000
"""Keys per ``ledger_key IN (?, ...)`` look-up (each one answered by the ART index)."""


def first_copies(table: pa.Table) -> tuple[pa.Table, pa.Table | None]:
    """``(winners, losers)`` of the copies of each ``ledger_key`` inside one batch.

    ``winners`` keeps the batch's order; ``losers`` is None when every key is unique
    (the common case, checked with one distinct count).
    """
    keys = table.column("ledger_key")
    if pc.count_distinct(keys).as_py() == table.num_rows:
        return table, None
    order = np.lexsort(
        (table.column("kafka_offset").to_numpy(), table.column("kafka_partition").to_numpy())
    )
    rank = np.empty(table.num_rows, dtype=np.int64)
    rank[order] = np.arange(table.num_rows)
    ranked = pa.table({"ledger_key": keys, "rank": rank})
    best = ranked.group_by("ledger_key", use_threads=False).aggregate([("rank", "min")])
    keep = np.zeros(table.num_rows, dtype=bool)
    keep[order[best.column("rank_min").to_numpy()]] = True
    return table.filter(pa.array(keep)), table.filter(pa.array(~keep))


@dataclass(frozen=True)
class Copy:
    """One copy of a key: where it is in the log, and its content hash."""

    key: str
    event_id: str
    partition: int
    offset: int
    content: str

    @property
    def position(self) -> tuple[int, int]:
        """The order in which copies win (lowest first)."""
        return (self.partition, self.offset)


@dataclass
class Resolution:
    """What to change after a batch collided with stored rows."""

    replace: set[str]
    """Keys whose stored row loses to a copy of this batch (only across partitions)."""
    conflicts: list[tuple[str, Copy, Copy]]
    """``(tenant_id, kept, dropped)`` for every losing copy whose content differs."""


def stored_copies(cur: duckdb.DuckDBPyConnection, keys: Iterable[str]) -> dict[str, Copy]:
    """The stored row of each key (point look-ups through the primary-key index)."""
    keys = list(keys)
    out: dict[str, Copy] = {}
    for at in range(0, len(keys), LOOKUP_CHUNK):
        chunk = keys[at : at + LOOKUP_CHUNK]
        marks = ", ".join("?" * len(chunk))
        rows = cur.execute(
            "SELECT ledger_key, event_id::VARCHAR, kafka_partition, kafka_offset, "  # noqa: S608
            f"{CONTENT_HASH} FROM audit_events WHERE ledger_key IN ({marks})",
            chunk,
        ).fetchall()
        out.update({r[0]: Copy(r[0], r[1], int(r[2]), int(r[3]), r[4]) for r in rows})
    return out


def batch_copies(cur: duckdb.DuckDBPyConnection, name: str) -> list[tuple[str, Copy]]:
    """``(tenant_id, copy)`` of every row of the registered batch ``name``."""
    rows = cur.execute(
        "SELECT tenant_id, ledger_key, event_id::VARCHAR, kafka_partition, kafka_offset, "  # noqa: S608
        f"{CONTENT_HASH} FROM {name}"
    ).fetchall()
    return [(r[0], Copy(r[1], r[2], int(r[3]), int(r[4]), r[5])) for r in rows]


def resolve(candidates: list[tuple[str, Copy]], stored: dict[str, Copy]) -> Resolution:
    """Decide the winner of each key among its stored row and this batch's copies."""
    by_key: dict[str, list[tuple[str, Copy]]] = {}
    for tenant, copy in candidates:
        by_key.setdefault(copy.key, []).append((tenant, copy))
    replace: set[str] = set()
    conflicts: list[tuple[str, Copy, Copy]] = []
    for key, copies in by_key.items():
        tenant = copies[0][0]
        everyone = {c.position: c for _, c in copies}
        old = stored.get(key)
        if old is not None:
            everyone.setdefault(old.position, old)
        winner = everyone[min(everyone)]
        if old is not None and winner.position != old.position:
            replace.add(key)
        conflicts.extend(
            (tenant, winner, loser)
            for position, loser in sorted(everyone.items())
            if position != winner.position and loser.content != winner.content
        )
    return Resolution(replace, conflicts)

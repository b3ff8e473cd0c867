"""Each tenant's newest events, held in memory by the query node: the *head*.

Most list requests ask for the first page, or a page a few cursors deep. The head
answers those without DuckDB: per tenant, the newest :attr:`TenantHeads.depth`
events by ``(occurred_at, event_id)``, as the rows the API reads
(:data:`ledger.tables.EVENT_COLUMN_NAMES`), oldest first, with a *floor*: the
position of the newest row that is **not** held (None when the head holds every
row of the tenant). The invariant is that a head holds exactly the tenant's
committed rows above its floor. So any page whose rows all lie above the floor
can be cut from the head, and answers the same as DuckDB (``query_api.head_pages``).

**Kept in the commit path.** The writer calls :meth:`TenantHeads.committed` with
the batch it just committed while it holds :attr:`TenantHeads.lock`, and every
commit counts, per tenant it touches, one more *change*. A head is loaded
(:meth:`TenantHeads.load`) by reading DuckDB without the lock, and installed under
it only when no commit touched the tenant since the load began (its change count,
read under the lock before the read, is unchanged); otherwise the load is thrown
away. So what a load read is the tenant's state as of its last commit, and every
later commit is applied to the installed head: a head never shows a row that is
not committed, and never misses one that is. A slow load (a rare action's head
probes far back) never holds the writer up. Readers take no lock: a head is
immutable and replaced whole.

- A batch written on the fast path (every row new) is merged into the heads of
  the loaded tenants it touches: its rows of those tenants, made from its Arrow
  columns as DuckDB returns them (:func:`python_rows`), or for a big batch each
  tenant's newest ``depth + 1`` rows of it read back through DuckDB (the one past
  the depth sets the floor).
- A batch written on the dedup path (a copy of a stored event, possibly replacing
  it) drops the heads of the tenants it touches; they load again on their next
  read.
- Anything unexpected while applying a commit drops every head.

Heads are loaded on a tenant's first read and kept for at most
:attr:`TenantHeads.capacity` tenants (the oldest loaded is dropped first). A node
restarted after a crash starts with no heads.

**Action heads.** A page filtered by action is often not among the tenant's newest
events (an action that is one event in ten needs 500 of them for a page of 50). So
a tenant also has heads *scoped* to one action or one action prefix (:data:`Scope`),
loaded on the first such page the tenant's own head cannot cut: the same
:class:`Head`, holding exactly the tenant's committed rows of that scope above its
floor, kept by the same commit path, for at most
:attr:`TenantHeads.scoped_capacity` scopes in all and :data:`SCOPES_PER_TENANT` per
tenant. A small batch gives every row of such a tenant to its heads; for a big one
the commit path reads back the batch's newest ``depth + 1`` rows *per action*: they
include the newest ``depth + 1`` rows of the tenant, of each action and of each
prefix, which is what each head needs.

**Id heads.** A page for one actor id, or one target id, is rarer still (one actor
of 2,000) and is a scan of the tenant's time window in DuckDB. Such a page has a
head of its own too, scoped to that id (``("@", actor_id)`` or ``("#", target_id)``),
with the same invariant, kept in a pool of its own (:attr:`TenantHeads.id_capacity`,
:data:`SCOPES_PER_TENANT` per tenant) so that many ids cannot push the action heads
out. There are many ids and most are asked for once, so an id head is loaded only
on the second ask for it within :data:`ADMIT_WINDOW_S` (a one-off page reads DuckDB
as before rather than a head's ``depth + 1`` rows), and the least recently used id
head makes room for it, never one used within :data:`ID_HOT_S` (then the new id's
pages read DuckDB, so cycling over more ids than fit never reloads a head on every
page). A small batch gives its rows to
these heads as to the others; a big batch (a catch-up's, read back through DuckDB)
drops the touched tenants' id heads instead, because the per-action read-back need
not hold an id's newest rows: they load again on the next asks.

**Until heads.** A page with an ``until`` bound and no id or action filter (a
client paging back from a fixed point in time, as an investigation or a backfill
does) lies below the tenant's newest events, often far below. It has a head of its
own too, ``("<", micros)``: exactly the tenant's committed rows that occurred before
the bound, above its floor. New events land above the bound and leave it as it is;
only a late one (occurred before the bound, committed now) reaches it, through the
commit path as for any head. There are as many bounds as clients choose, so these
are kept, loaded and dropped as id heads, in their pool.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from ledger.head_rows import Head, HeadRow, python_rows
from ledger.tables import EVENT_COLUMN_NAMES, EVENT_COLUMNS

log = logging.getLogger(__name__)

DEFAULT_DEPTH = 200
DEFAULT_TENANTS = 128
DEFAULT_SCOPES = 128
DEFAULT_IDS = 128
SCOPES_PER_TENANT = 16
"""Action heads, and id heads, one tenant may hold: past it, one of its own of that
kind makes room (its oldest action head; its least recently used id head, see
:data:`ID_HOT_S`), so one tenant cycling through filters cannot push every other
tenant's heads out."""
Scope = tuple[str, str]
"""What a scoped head holds: ``("=", action)``, one action, ``("^", prefix)``, the
actions starting with ``prefix`` (never empty: that is the tenant's own head),
``("@", actor_id)``, one actor's events, ``("#", target_id)``, the events with that
target among their targets, or ``("<", micros)``, the events that occurred before
``micros`` (microseconds since the epoch, in decimal: a page's ``until``)."""
ID_KINDS = ("@", "#", "<")
"""The kinds of :data:`Scope` held as id heads (their own pool, loaded on a second ask):
many values, most asked for once."""
ADMIT_WINDOW_S, ADMIT_KEYS = 600.0, 10_000
"""An id head is loaded when it is asked for again within 10 minutes of the last ask
(at most 10,000 asks remembered; past it they are forgotten together)."""
ID_HOT_S = 60.0
"""An id head used within the last minute is not dropped to make room for another:
when the room it would take (its tenant's 16, or the pool) is all that busy, the new
id's page reads DuckDB instead of loading. Otherwise the least recently used goes. So
a client cycling over more ids than fit does not pay a head's load on every page."""
BACKOFF_FACTOR, BACKOFF_MAX_S, BACKOFF_KEYS = 100.0, 60.0, 10_000
"""A load a commit overtook costs its read (the page is cut from it, so not a second
query), but a head whose load always takes longer than the gap between its tenant's
commits (a rare action's, while the tenant is written) would pay its read of
``depth + 1`` rows on every page. So its loads pause for 100 times the load's time
(at most 60 s; at most 10,000 heads remembered): at most 1% of the time in
overtaken loads, and the list query's own page in between."""
READ_BACK_PYTHON_ROWS = 2_000
"""A committed batch with at most this many rows of the tenants whose heads it touches
is turned into head rows from its Arrow columns (:func:`python_rows`: 4.7 ms for 500
rows, against 20.7 ms through DuckDB's window query, which also pays ~1.3 ms to scan
a registered batch at all); a bigger one, a catch-up's, through the window query,
which keeps only each head's newest rows."""
_NEWEST_OF_BATCH = (
    f"SELECT {EVENT_COLUMNS} FROM {{table}} "  # noqa: S608
    "WHERE tenant_id IN (SELECT unnest(?::VARCHAR[])) "
    "QUALIFY row_number() OVER (PARTITION BY tenant_id, "
    "CASE WHEN list_contains(?::VARCHAR[], tenant_id) THEN action END "
    "ORDER BY occurred_at DESC, event_id DESC) <= ?"
)
"""Per tenant, the batch's newest rows; per tenant and action for the tenants listed second."""


def in_scope(scope: Scope | None, row: dict[str, Any]) -> bool:
    """Whether the event ``row`` belongs to a head of ``scope`` (None: the tenant's)."""
    if scope is None:
        return True
    kind, value = scope
    if kind == "=":
        return bool(row["action"] == value)
    if kind == "^":
        return bool((row["action"] or "").startswith(value))
    if kind == "@":
        return bool(row["actor_id"] == value)
    if kind == "<":
        return bool(row["occurred_us"] < int(value))
    return any(t["id"] == value for t in row["targets"] or ())


class TenantHeads:
    """The heads of a node's tenants (see the module docstring)."""

    def __init__(
        self,
        depth: int = DEFAULT_DEPTH,
        capacity: int = DEFAULT_TENANTS,
        scoped_capacity: int = DEFAULT_SCOPES,
        id_capacity: int = DEFAULT_IDS,
    ) -> None:
        if depth < 1 or capacity < 1 or scoped_capacity < 0 or id_capacity < 0:
            raise ValueError("a head holds at least one row, for at least one tenant")
        self.depth = depth
        self.capacity = capacity
        self.scoped_capacity = scoped_capacity
        """Action heads held at once, over every tenant (0: none)."""
        self.id_capacity = id_capacity
        """Id heads (one actor or one target) held at once, over every tenant (0: none)."""
        self.lock = threading.Lock()
        """Held by the writer from its COMMIT until the heads are updated, and by a load
        to read the change counts and to install its head."""
        self._heads: dict[str, Head] = {}
        self._scoped: dict[tuple[str, Scope], Head] = {}
        self._ids: dict[tuple[str, Scope], Head] = {}
        self._asked: dict[tuple[str, Scope], float] = {}
        """When each id head was last asked for (it loads on a second ask)."""
        self._used: dict[tuple[str, Scope], float] = {}
        """When each held id head was last used (the least recently used is dropped)."""
        self._changes: dict[str, int] = {}
        """Commits that touched each tenant (a load is installed only if unchanged)."""
        self._cleared = 0
        """Times every head was dropped (every load in flight is thrown away)."""
        self._backoff: dict[tuple[str, Scope | None], float] = {}
        """Per head, when a load may be tried again after one a commit overtook."""

    def get(self, tenant_id: str, scope: Scope | None = None) -> Head | None:
        """The tenant's head (of ``scope``), or None when it is not loaded (no lock: heads
        are immutable)."""
        if scope is None:
            return self._heads.get(tenant_id)
        if scope[0] in ID_KINDS:
            head = self._ids.get((tenant_id, scope))
            if head is not None:
                self._used[(tenant_id, scope)] = time.monotonic()
            return head
        return self._scoped.get((tenant_id, scope))

    def _pool(self, scope: Scope) -> dict[tuple[str, Scope], Head]:
        return self._ids if scope[0] in ID_KINDS else self._scoped

    def _capacity(self, scope: Scope | None) -> int:
        if scope is None:
            return self.capacity
        return self.id_capacity if scope[0] in ID_KINDS else self.scoped_capacity

    def __len__(self) -> int:
        return len(self._heads)

    @property
    def scoped(self) -> int:
        """How many action heads are held."""
        return len(self._scoped)

    @property
    def ids(self) -> int:
        """How many id heads are held."""
        return len(self._ids)

    def status(self) -> dict[str, int]:
        """Heads held, per kind, and the events they hold (about 2.7 KB each), for
        ``/readyz``; no lock (each pool is copied whole, atomically, under the GIL)."""
        pools = [list(pool.values()) for pool in (self._heads, self._scoped, self._ids)]
        return {
            "tenants": len(pools[0]),
            "actions": len(pools[1]),
            "ids": len(pools[2]),
            "events": sum(len(head.rows) for pool in pools for head in pool),
        }

    # -- loading (readers) ------------------------------------------------------------
    def load(
        self,
        tenant_id: str,
        newest: Callable[[int], list[dict[str, Any]]],
        scope: Scope | None = None,
    ) -> Head | None:
        """Load the tenant's head (of ``scope``) from ``newest(n)``: the tenant's newest
        ``n`` rows (of that scope), newest first, read by the caller's DuckDB cursor
        without the lock.

        Returns the head read, installed or not: it is not when a commit touched the
        tenant while ``newest`` ran, or holds the lock as the load ends (a load never
        waits). Its pages are then still those of a DuckDB read made now (``newest``'s
        rows come from one query), so the caller may cut its page from it; the next
        read loads again. Returns None, reading nothing, when a commit holds the lock
        as the load begins, for a scope when no heads of its kind are kept, for an id
        head on its first ask (:data:`ADMIT_WINDOW_S`) or when the id heads it would
        replace are all in use (:data:`ID_HOT_S`), and while the head's last load,
        overtaken by a commit, backs off (:data:`BACKOFF_FACTOR`).
        """
        capacity = self._capacity(scope)
        if capacity == 0:
            return None
        held: dict[Any, Head] = self._heads if scope is None else self._pool(scope)
        key: Any = tenant_id if scope is None else (tenant_id, scope)
        if time.monotonic() < self._backoff.get((tenant_id, scope), 0.0):
            return None
        if not self.lock.acquire(blocking=False):
            return None
        try:
            head = held.get(key)
            if head is not None:
                return head
            if scope is not None and scope[0] in ID_KINDS:
                if not self._admit(key):
                    return None
                victim = self._id_victim(tenant_id)
                if victim is not None and time.monotonic() - self._used.get(victim, 0.0) < ID_HOT_S:
                    return None
            before = self._change(tenant_id)
        finally:
            self.lock.release()
        started = time.monotonic()
        rows = newest(self.depth + 1)  # no commit waits for this
        floor = None
        if len(rows) > self.depth:
            floor = HeadRow(rows[self.depth]).position
            rows = rows[: self.depth]
        head = Head.of([HeadRow(r) for r in reversed(rows)], floor)
        if not self.lock.acquire(blocking=False):
            return head  # not installed: a commit is being applied
        try:
            if self._change(tenant_id) != before:  # not installed: it may lack that commit's rows
                self._back_off((tenant_id, scope), time.monotonic() - started)
                return head
            if key in held:
                return held[key]  # another read loaded it first, from the same state
            if scope is not None and scope[0] in ID_KINDS:
                while (victim := self._id_victim(tenant_id)) is not None:
                    self._drop_id(victim)
                self._used[key] = time.monotonic()
            elif scope is not None:
                own = [k for k in held if k[0] == tenant_id]
                if len(own) >= SCOPES_PER_TENANT:
                    del held[own[0]]
            while len(held) >= capacity:
                del held[next(iter(held))]
            held[key] = head
            return head
        finally:
            self.lock.release()

    def _change(self, tenant_id: str) -> tuple[int, int]:
        return self._cleared, self._changes.get(tenant_id, 0)

    def _id_victim(self, tenant_id: str) -> tuple[str, Scope] | None:
        """The id head to drop before another of ``tenant_id`` is added: the least
        recently used of the tenant's own when it holds its 16, else of the pool when it
        is full; None when there is room (the caller holds :attr:`lock`)."""
        own = [k for k in self._ids if k[0] == tenant_id]
        if len(own) >= SCOPES_PER_TENANT:
            room = own
        elif len(self._ids) >= self.id_capacity:
            room = list(self._ids)
        else:
            return None
        return min(room, key=lambda k: self._used.get(k, 0.0))

    def _drop_id(self, key: tuple[str, Scope]) -> None:
        del self._ids[key]
        self._used.pop(key, None)
        if len(self._used) > 2 * len(self._ids) + SCOPES_PER_TENANT:
            # a read may mark a head used just as it is dropped: forget such marks
            self._used = {k: self._used.get(k, 0.0) for k in self._ids}

    def _admit(self, key: tuple[str, Scope]) -> bool:
        """Whether an id head is asked for the second time within :data:`ADMIT_WINDOW_S`
        (the caller holds :attr:`lock`)."""
        now = time.monotonic()
        last = self._asked.get(key)
        if len(self._asked) >= ADMIT_KEYS and last is None:
            self._asked.clear()
        self._asked[key] = now
        return last is not None and now - last <= ADMIT_WINDOW_S

    def _back_off(self, key: tuple[str, Scope | None], took: float) -> None:
        if len(self._backoff) >= BACKOFF_KEYS:
            self._backoff.clear()
        wait = min(BACKOFF_MAX_S, BACKOFF_FACTOR * took)
        self._backoff[key] = time.monotonic() + wait

    # -- the commit path (the writer, holding the lock) ----------------------------------
    def committed(self, cur: duckdb.DuckDBPyConnection, table_name: str, table: pa.Table) -> None:
        """Every row of ``table`` (registered on ``cur`` as ``table_name``) was just committed.

        The caller holds :attr:`lock`. Merges the rows into the loaded heads they touch.
        """
        try:
            touched = set(_tenants(table))
            self._changed(touched)
            scoped = [key for key in self._scoped if key[0] in touched]
            ids = [key for key in self._ids if key[0] in touched]
            by_action = sorted({tenant_id for tenant_id, _ in scoped})
            loaded = sorted(
                {t for t in touched if t in self._heads}.union(by_action, (t for t, _ in ids))
            )
            if not loaded:
                return
            ours = table.filter(pc.is_in(table.column("tenant_id"), pa.array(loaded, pa.string())))
            if ours.num_rows <= READ_BACK_PYTHON_ROWS:
                rows = python_rows(ours)  # all of them: merged() keeps each head's newest
            else:
                for key in ids:  # the read-back below need not hold an id's newest rows
                    self._drop_id(key)
                ids = []
                loaded = sorted({t for t in touched if t in self._heads}.union(by_action))
                if not loaded:
                    return
                # depth + 1: a batch deeper than the head leaves a row to set the floor by,
                # also for a head that held nothing before (a short head has no floor)
                found = cur.execute(
                    _NEWEST_OF_BATCH.format(table=table_name), [loaded, by_action, self.depth + 1]
                ).fetchall()
                rows = [dict(zip(EVENT_COLUMN_NAMES, values, strict=True)) for values in found]
            by_tenant: dict[str, list[HeadRow]] = {}
            for row in rows:
                by_tenant.setdefault(row["tenant_id"], []).append(HeadRow(row))
            for tenant_id, new in by_tenant.items():
                head = self._heads.get(tenant_id)
                if head is not None:
                    self._heads[tenant_id] = head.merged(new, self.depth)
            actions: dict[str, dict[str, list[HeadRow]]] = {}
            for tenant_id in by_action:
                of_tenant = actions[tenant_id] = {}
                for r in by_tenant.get(tenant_id, ()):
                    of_tenant.setdefault(r.action, []).append(r)
            for tenant_id, scope in scoped:
                of_scope = [
                    r
                    for action, of_action in actions[tenant_id].items()
                    if in_scope(scope, of_action[0].row)  # one action per group
                    for r in of_action
                ]
                key = (tenant_id, scope)
                self._scoped[key] = self._scoped[key].merged(of_scope, self.depth)
            for key in ids:
                tenant_id, scope = key
                of_scope = [r for r in by_tenant.get(tenant_id, ()) if in_scope(scope, r.row)]
                self._ids[key] = self._ids[key].merged(of_scope, self.depth)
        except Exception:
            log.exception("could not update the tenants' heads after a commit; dropping them all")
            self.clear()

    def forget(self, tables: Iterable[pa.Table | None]) -> None:
        """Drop the heads of the tenants with rows in ``tables`` (the caller holds :attr:`lock`)."""
        try:
            touched: set[str] = set()
            for table in tables:
                if table is not None:
                    touched.update(_tenants(table))
            self._changed(touched)
            for tenant_id in touched:
                self._heads.pop(tenant_id, None)
            for key in [key for key in self._scoped if key[0] in touched]:
                del self._scoped[key]
            for key in [key for key in self._ids if key[0] in touched]:
                self._drop_id(key)
        except Exception:
            log.exception("could not drop the touched tenants' heads; dropping them all")
            self.clear()

    def clear(self) -> None:
        """Drop every head, and every load in flight (the caller holds :attr:`lock`)."""
        self._cleared += 1
        self._heads.clear()
        self._scoped.clear()
        self._ids.clear()
        self._used.clear()

    def _changed(self, tenants: Iterable[str]) -> None:
        changes = self._changes
        for tenant_id in tenants:
            changes[tenant_id] = changes.get(tenant_id, 0) + 1


def _tenants(table: pa.Table) -> list[str]:
    return [t for t in pc.unique(table.column("tenant_id")).to_pylist() if t is not None]

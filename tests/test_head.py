"""The tenants' heads (ledger/head.py) agree with DuckDB after every kind of commit.

A real DuckDB ledger is written through ``LedgerStore.write_batch`` (the fast path,
late events below a head's floor, ties in ``occurred_at``, duplicates that take the
dedup path, a copy that replaces a stored row) while heads are loaded, merged,
dropped and evicted. After every batch, each loaded head must hold exactly the
tenant's newest rows, and every page the head can answer (first pages, cursor
pages, each filter of the list API) must equal the list query's page over
``audit_events``.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

import ledger.head
import ledger.head_rows
from ledger.decode import EventDecoder
from ledger.head import SCOPES_PER_TENANT, Scope, TenantHeads
from ledger.store import LedgerStore
from query_api import head_pages, queries
from query_api.cursor import Position
from query_api.filters import Filters
from schemas.times import micros
from tests.factory import sample_record
from tests.ledger_support import CODEC

TOPIC = "t.audit.v1"
TENANTS = ("tenant-a", "tenant-b", "tenant-c", "tenant-d")
BASE = datetime(2026, 11, 1, tzinfo=UTC)
DEPTH = 12
FILTERS_PER_CHECK = 4
"""Filters whose pages each check asks of each head (of 12; a new sample every time)."""


class Writer:
    """Encodes events like ingest and writes them through the store, one partition each."""

    def __init__(self, store: LedgerStore, seed: int) -> None:
        self.store = store
        self.rng = random.Random(seed)
        self.offsets = {0: 0, 1: 0}
        self.minute = 0

    def event(self, tenant: str, *, late: bool = False) -> dict[str, object]:
        if not late:
            self.minute += self.rng.choice((0, 0, 1))  # ties in occurred_at
        minute = self.rng.randrange(max(1, self.minute // 2)) if late else self.minute
        record = sample_record(self.rng, tenant, BASE + timedelta(minutes=minute))
        if self.rng.random() < 0.5:  # a few actors and one target frequent enough to fill id heads
            record["actor"]["id"] = self.rng.choice(HOT_ACTORS)
        if record["targets"] and self.rng.random() < 0.4:
            record["targets"][-1]["id"] = HOT_TARGET
        return record

    def write(self, records: list[dict[str, object]], partition: int = 1) -> None:
        values = [CODEC.encode("AuditEvent", r) for r in records]
        first = self.offsets[partition]
        decoded = EventDecoder(CODEC).decode(
            values,
            np.full(len(values), partition, dtype=np.int32),
            np.arange(first, first + len(values), dtype=np.int64),
        )
        self.offsets[partition] = first + len(values)
        self.store.write_batch(decoded.table, TOPIC, {partition: self.offsets[partition]})

    def batch(self, n: int, late: int = 0) -> list[dict[str, object]]:
        records = [self.event(self.rng.choice(TENANTS)) for _ in range(n)]
        records += [self.event(self.rng.choice(TENANTS), late=True) for _ in range(late)]
        self.rng.shuffle(records)
        return records


def _newest(store: LedgerStore, tenant: str):
    cur = store.cursor()
    return lambda n: queries.list_events(cur, tenant, Filters(), None, n)


def _filters(rng: random.Random, rows: list[dict]) -> list[Filters]:
    """Each filter of the list API, with values taken from stored rows."""
    row = rng.choice(rows)
    targets = row["targets"] or [{"id": "claim-none", "type": "claim"}]
    at = datetime.fromtimestamp(row["occurred_us"] / 1e6, UTC)
    return [
        Filters(),
        Filters(action=row["action"]),
        Filters(action_prefix="claim."),
        Filters(actor_id=row["actor_id"]),
        Filters(actor_ids=(row["actor_id"], "user-1", "user-2"), actor_id=row["actor_id"]),
        Filters(actor_type=row["actor_type"], outcome=row["outcome_result"]),
        Filters(source=row["source"]),
        Filters(target_id=targets[0]["id"]),
        Filters(target_type="claim"),
        Filters(since=at),
        Filters(since=at - timedelta(minutes=3), until=at + timedelta(minutes=1)),
        Filters(until=at),
    ]


HOT_ACTORS = ("user-1", "user-2", "user-3")
HOT_TARGET = "claim-hot"
SCOPES: tuple[Scope, ...] = (
    ("=", "claim.viewed"),
    ("^", "claim."),
    ("=", "user.login"),
    ("^", "p"),
    ("@", "user-1"),
    ("@", "user-2"),
    ("#", HOT_TARGET),
    ("<", str(micros(BASE + timedelta(minutes=20)))),
    ("<", str(micros(BASE + timedelta(minutes=45)))),
)
"""Until heads: bounds that late events (up to half the writer's minutes back) keep
reaching long after their heads load."""


def _newest_of(store: LedgerStore, tenant: str, scope: Scope | None):
    cur = store.cursor()
    return lambda n: queries.list_events(cur, tenant, head_pages.scope_filters(scope), None, n)


def _load(heads: TenantHeads, store: LedgerStore, tenant: str, scope: Scope | None):
    """Load a head as a node's reads do: an id head on its second ask (or its first,
    when it was asked for shortly before)."""
    head = heads.load(tenant, _newest_of(store, tenant, scope), scope)
    if head is None and scope is not None and scope[0] in ledger.head.ID_KINDS:
        head = heads.load(tenant, _newest_of(store, tenant, scope), scope)
    return head


def _scoped(f: Filters, scope: Scope | None) -> Filters:
    """``f`` with the head's own filter added (every page asked of a scoped head has it)."""
    if scope is None:
        return f
    kind, value = scope
    if kind == "@":
        return replace(f, actor_id=value, actor_ids=())
    if kind == "#":
        return replace(f, target_id=value, target_ids=())
    base = head_pages.scope_filters(scope)
    if kind == "<":
        return replace(f, until=base.until)
    return replace(f, action=base.action or f.action, action_prefix=base.action_prefix)


def check_agree(store: LedgerStore, heads: TenantHeads, rng: random.Random) -> Counter[str]:
    """Every loaded head equals DuckDB; returns how many pages the heads of each kind
    answered (``""``: the tenants' own)."""
    cur = store.cursor()
    answered: Counter[str] = Counter()
    with heads.lock:  # no commit between the two reads
        for tenant, scope in [(t, None) for t in TENANTS] + [
            (t, s) for t in TENANTS for s in SCOPES
        ]:
            head = heads.get(tenant, scope)
            if head is None:
                continue
            top = queries.list_events(cur, tenant, head_pages.scope_filters(scope), None, DEPTH + 1)
            held = [r.row for r in reversed(head.rows)]
            assert held == top[: len(held)], tenant
            assert len(held) == min(DEPTH, len(top))
            if len(top) > DEPTH:
                assert head.floor == (top[DEPTH]["occurred_us"], top[DEPTH]["event_id"])
            else:
                assert head.floor is None
            first = head_pages.page(head, head_pages.scope_filters(scope), None, 6)
            assert first is not None, "a loaded head answers its tenant's first page"
            assert [r.action for r in head.rows] == [r["action"] for r in reversed(held)]
            filters = rng.sample(_filters(rng, top or [_any_row(cur)]), FILTERS_PER_CHECK)
            for f in (_scoped(f, scope) for f in filters):
                cursors = [None, *(Position(r["occurred_us"], r["event_id"]) for r in top[:DEPTH])]
                for after in rng.sample(cursors, min(3, len(cursors))):
                    for limit in (4, DEPTH + 3):
                        got = head_pages.page(head, f, after, limit)
                        if got is None:
                            continue
                        want = queries.list_events(cur, tenant, f, after, limit)
                        assert [r.row for r in got] == want, (tenant, f, after, limit)
                        answered["" if scope is None else scope[0]] += 1
    return answered


def _any_row(cur) -> dict:
    return queries.list_events(cur, TENANTS[0], Filters(), None, 1)[0]


@pytest.fixture(params=["python", "duckdb"])
def read_back(request, monkeypatch) -> str:
    """Both ways a commit's rows reach the heads: from the batch's Arrow columns (small
    batches) and through DuckDB's window query (big ones)."""
    if request.param == "duckdb":
        monkeypatch.setattr(ledger.head, "READ_BACK_PYTHON_ROWS", 0)
    return request.param


@pytest.mark.parametrize(
    ("seed", "read_back"), [(1, "python"), (2, "duckdb")], indirect=["read_back"]
)
def test_heads_agree_with_duckdb_after_every_commit(tmp_path, seed, read_back, monkeypatch):
    monkeypatch.setattr(ledger.head, "ID_HOT_S", 0.0)  # id heads churn through a pool of 4
    store = LedgerStore(tmp_path / "l.duckdb")
    heads = store.heads = TenantHeads(DEPTH, capacity=3, scoped_capacity=5, id_capacity=4)
    rng = random.Random(seed)
    w = Writer(store, seed)
    w.write(w.batch(30))
    answered: Counter[str] = Counter()
    for step in range(30):
        for tenant in rng.sample(TENANTS, 2):
            if heads.get(tenant) is None:
                assert heads.load(tenant, _newest(store, tenant)) is not None
        for tenant, scope in rng.sample([(t, s) for t in TENANTS for s in SCOPES], 3):
            if heads.get(tenant, scope) is None:
                assert _load(heads, store, tenant, scope) is not None
        assert len(heads) <= 3  # the oldest loaded head is dropped past the capacity
        assert heads.scoped <= 5
        assert heads.ids <= 4
        kind = step % 5
        if kind == 3:  # a resend of stored events (the dedup path) with new ones
            stored = store.cursor().execute("SELECT event_id::VARCHAR, tenant_id FROM audit_events")
            again = rng.sample(stored.fetchall(), 3)
            records = w.batch(5)
            for event_id, tenant in again:
                copy = w.event(tenant)
                copy["event_id"] = event_id
                records.append(copy)
            w.write(records)
        elif kind == 4:  # a copy on a lower partition replaces a stored row (ledger/duplicates.py)
            row = (
                store.cursor()
                .execute(
                    "SELECT event_id::VARCHAR, tenant_id FROM audit_events "
                    "WHERE kafka_partition = 1 ORDER BY occurred_at DESC LIMIT 1"
                )
                .fetchone()
            )
            copy = w.event(row[1])
            copy["event_id"] = row[0]
            w.write([copy], partition=0)
            assert store.cursor().execute(
                "SELECT kafka_partition FROM audit_events WHERE event_id = ?", [row[0]]
            ).fetchone() == (0,)
        else:
            w.write(w.batch(rng.randrange(1, 25), late=rng.randrange(4)))
        answered.update(check_agree(store, heads, rng))
        held = [heads.get(t, s) for t in TENANTS for s in (None, *SCOPES)]
        assert heads.status() == {
            "tenants": len(heads),
            "actions": heads.scoped,
            "ids": heads.ids,
            "events": sum(len(h.rows) for h in held if h is not None),
        }
    assert answered.total() > 200  # the heads did answer pages, not only fall back
    # heads of every kind did; a big batch (the DuckDB read-back) drops the id heads it
    # touches, so there they answer by chance (their own tests check that path)
    kinds = {"", "=", "^", "@", "#", "<"} if read_back == "python" else {"", "=", "^"}
    assert kinds <= set(answered), answered
    store.close()


@pytest.mark.parametrize(
    "late", [0, 3, ledger.head_rows.INSERT_MAX, ledger.head_rows.INSERT_MAX + 1, 300]
)
def test_a_merge_equals_sorting_every_row_and_cutting(late):
    # merged() appends new rows, inserts a few late ones or sorts many: each way must
    # give the newest rows of everything held and added, and the floor just below them.
    rng = random.Random(late)
    positions = rng.sample(range(10_000), 400 + late)
    held, newer, older = sorted(positions[:200]), positions[200:400], positions[400:]
    newer = [p + 10_000 for p in newer]  # newer than every held row: appended
    older = [p for p in older if p not in held]  # late: among or below the held rows

    def rows(ps):
        return [
            ledger.head_rows.HeadRow({"occurred_us": p, "event_id": "e", "action": "a"}) for p in ps
        ]

    for floor in (None, (held[0] - 1, "e")):
        head = ledger.head_rows.Head.of(rows(held), floor)
        for depth in (150, 250, 700):
            new = rows(rng.sample(newer, 5) + older)
            got = head.merged(new, depth)
            everything = sorted(
                [r.position for r in head.rows]
                + [r.position for r in new if floor is None or r.position > floor]
            )
            assert list(got.positions) == everything[-depth:]
            assert [r.position for r in got.rows] == list(got.positions)
            want_floor = everything[-depth - 1] if len(everything) > depth else floor
            assert got.floor == want_floor


def test_a_commit_that_cannot_be_applied_drops_the_heads(tmp_path):
    store = LedgerStore(tmp_path / "l.duckdb")
    heads = store.heads = TenantHeads(DEPTH)
    w = Writer(store, 5)
    w.write(w.batch(20))
    for tenant in TENANTS:
        heads.load(tenant, _newest(store, tenant))
    assert len(heads) == len(TENANTS)
    touched = pa.table({"tenant_id": ["tenant-a"]})
    with heads.lock:
        heads.committed(store.cursor(), "_no_such_table", touched)
    assert len(heads) == 0  # nothing stale is served: every tenant loads again
    store.close()


def test_a_load_waits_for_no_commit(tmp_path):
    store = LedgerStore(tmp_path / "l.duckdb")
    heads = TenantHeads(DEPTH)
    with heads.lock:  # a commit in progress: the reader goes to DuckDB instead of waiting
        assert heads.load("tenant-a", _newest(store, "tenant-a")) is None
    assert heads.load("tenant-a", _newest(store, "tenant-a")) is not None
    store.close()


def test_a_batch_deeper_than_the_head_sets_its_floor(tmp_path, read_back):
    """A head loaded while its tenant had no rows, then a batch of more rows than it holds:
    the rows past its depth are below its floor, never silently missing above it."""
    store = LedgerStore(tmp_path / "l.duckdb")
    heads = store.heads = TenantHeads(DEPTH)
    w = Writer(store, 9)
    head = heads.load("tenant-a", _newest(store, "tenant-a"))
    assert head is not None and head.rows == () and head.floor is None
    w.write([w.event("tenant-a") for _ in range(DEPTH + 5)])
    head = heads.get("tenant-a")
    assert head is not None and len(head.rows) == DEPTH
    want = queries.list_events(store.cursor(), "tenant-a", Filters(), None, DEPTH + 10)
    assert head.floor == (want[DEPTH]["occurred_us"], want[DEPTH]["event_id"])
    assert head_pages.page(head, Filters(), None, DEPTH + 10) is None  # DuckDB answers it
    store.close()


def test_an_action_head_gets_its_rows_from_deep_in_a_batch(tmp_path, read_back):
    """A batch whose newest rows are all of other actions: the action head still gets its
    own rows from below them (the read-back is per action for such a tenant)."""
    store = LedgerStore(tmp_path / "l.duckdb")
    heads = store.heads = TenantHeads(DEPTH, scoped_capacity=2)
    w = Writer(store, 11)
    scope: Scope = ("=", "claim.viewed")
    assert heads.load("tenant-a", _newest_of(store, "tenant-a", scope), scope) is not None
    records = []
    for i in range(3 * DEPTH):
        record = w.event("tenant-a")
        w.minute += 1
        record["action"] = "claim.viewed" if i < 3 else "user.login"
        records.append(record)
    w.write(records)
    head = heads.get("tenant-a", scope)
    assert head is not None and len(head.rows) == 3 and head.floor is None
    want = queries.list_events(store.cursor(), "tenant-a", Filters(action="claim.viewed"), None, 9)
    got = head_pages.page(head, Filters(action="claim.viewed"), None, 9)
    assert got is not None and [r.row for r in got] == want
    assert heads.get("tenant-a") is None  # no tenant head was loaded: none is made
    store.close()


def test_an_id_head_never_misses_rows_from_deep_in_a_batch(tmp_path, read_back):
    """A batch whose newest rows, of one action, are all another actor's: a small batch
    gives the id head its actor's rows from below them; a big one (read back through
    DuckDB, per action) drops the id head, which then loads again on its next ask."""
    store = LedgerStore(tmp_path / "l.duckdb")
    heads = store.heads = TenantHeads(DEPTH, id_capacity=2)
    w = Writer(store, 12)
    scope: Scope = ("@", "user-9")
    assert _load(heads, store, "tenant-a", scope) is not None
    records = []
    for i in range(3 * DEPTH):
        record = w.event("tenant-a")
        w.minute += 1
        record["action"] = "user.login"
        record["actor"]["id"] = "user-9" if i < 3 else "user-8"
        records.append(record)
    w.write(records)
    want = queries.list_events(store.cursor(), "tenant-a", Filters(actor_id="user-9"), None, 9)
    assert len(want) == 3
    head = heads.get("tenant-a", scope)
    if read_back == "duckdb":
        assert head is None and heads.ids == 0
        head = heads.load("tenant-a", _newest_of(store, "tenant-a", scope), scope)
        assert head is not None  # asked for shortly before: loads at once
    assert head is not None and len(head.rows) == 3 and head.floor is None
    got = head_pages.page(head, Filters(actor_id="user-9"), None, 9)
    assert got is not None and [r.row for r in got] == want
    store.close()


def test_an_until_head_takes_the_late_rows_below_its_bound_only(tmp_path, read_back):
    """Rows committed after an until head loads: one a microsecond below the bound
    belongs to it, one at the bound (``until`` is exclusive) and the new ones above it
    do not. A small batch merges them; a big one drops the head, as any id head's."""
    store = LedgerStore(tmp_path / "l.duckdb")
    heads = store.heads = TenantHeads(DEPTH, id_capacity=2)
    w = Writer(store, 15)
    w.write(w.batch(60))
    bound = BASE + timedelta(minutes=5)
    scope: Scope = ("<", str(micros(bound)))
    assert _load(heads, store, "tenant-a", scope) is not None
    rng = random.Random(15)
    late = [bound - timedelta(microseconds=1), bound - timedelta(seconds=30)]
    w.write([
        sample_record(rng, "tenant-a", at)
        for at in (bound, *late, bound + timedelta(seconds=1))
        for _ in range(2)
    ])  # fmt: skip
    cur = store.cursor()
    top = queries.list_events(cur, "tenant-a", Filters(until=bound), None, DEPTH + 1)
    assert top[0]["occurred_us"] == micros(bound) - 1
    head = heads.get("tenant-a", scope)
    if read_back == "duckdb":
        assert head is None
        head = _load(heads, store, "tenant-a", scope)
    assert head is not None
    assert [r.row for r in reversed(head.rows)] == top[:DEPTH]
    page = head_pages.page(head, Filters(until=bound, outcome="success"), None, 5)
    want = queries.list_events(cur, "tenant-a", Filters(until=bound, outcome="success"), None, 5)
    assert want and page is not None and [r.row for r in page] == want
    store.close()


def test_an_id_head_loads_on_its_second_ask(tmp_path, monkeypatch):
    """Most ids are asked for once: that ask reads DuckDB's page, not a head's rows; a
    second ask within the window loads the head; an ask after the window is a first again."""
    store = LedgerStore(tmp_path / "l.duckdb")
    heads = store.heads = TenantHeads(DEPTH, id_capacity=4)
    w = Writer(store, 13)
    w.write(w.batch(20))
    reads: list[int] = []

    def newest(n: int) -> list[dict]:
        reads.append(n)
        return _newest_of(store, "tenant-a", ("#", HOT_TARGET))(n)

    now = [1000.0]
    monkeypatch.setattr(ledger.head.time, "monotonic", lambda: now[0])
    actor: Scope = ("@", "user-1")
    target: Scope = ("#", HOT_TARGET)
    assert heads.load("tenant-a", newest, actor) is None
    assert heads.load("tenant-a", newest, target) is None
    assert reads == [] and heads.ids == 0
    now[0] += ledger.head.ADMIT_WINDOW_S + 1
    assert heads.load("tenant-a", newest, actor) is None  # the first ask was too long ago
    now[0] += 1
    assert heads.load("tenant-a", newest, actor) is not None
    assert heads.load("tenant-a", newest, actor) is heads.get("tenant-a", actor)
    assert reads == [DEPTH + 1] and heads.ids == 1
    assert heads.scoped == 0  # id heads have their own pool
    assert TenantHeads(DEPTH, id_capacity=0).load("tenant-a", newest, actor) is None
    store.close()


def test_id_heads_in_use_are_not_dropped_for_another(tmp_path, monkeypatch):
    """A client cycling over more ids than fit would pay a head's load on every page:
    while every id head that a new one would replace was used within ID_HOT_S, the new
    id reads nothing (its page comes from DuckDB); after that the least recently used
    head makes room."""
    store = LedgerStore(tmp_path / "l.duckdb")
    heads = store.heads = TenantHeads(DEPTH, id_capacity=2)
    w = Writer(store, 14)
    w.write(w.batch(30))
    now = [1000.0]
    monkeypatch.setattr(ledger.head.time, "monotonic", lambda: now[0])
    a, b, c = ("@", "user-1"), ("@", "user-2"), ("#", HOT_TARGET)
    for scope in (a, b):
        assert _load(heads, store, "tenant-a", scope) is not None
    assert heads.load("tenant-a", _unread, c) is None  # its first ask
    now[0] += 1
    assert heads.load("tenant-a", _unread, c) is None  # asked again, but a and b are in use
    assert heads.ids == 2
    now[0] += ledger.head.ID_HOT_S / 2
    assert heads.get("tenant-a", a) is not None  # a is used again; b is not
    now[0] += ledger.head.ID_HOT_S / 2 + 1
    assert heads.load("tenant-a", _newest_of(store, "tenant-a", c), c) is not None
    assert heads.get("tenant-a", b) is None  # the least recently used made room
    assert heads.get("tenant-a", a) is not None and heads.get("tenant-a", c) is not None
    store.close()


def _unread(n: int) -> list[dict]:
    raise AssertionError("this ask must read nothing")


@pytest.mark.parametrize(
    ("filters", "scope"),
    [
        (Filters(actor_id="u1", action="a.b"), ("@", "u1")),
        (Filters(actor_ids=("t1",), actor_id="raw"), ("@", "t1")),
        (Filters(actor_ids=("t1", "t2"), target_id="c1"), ("#", "c1")),
        (Filters(target_id="c1", action_prefix="a."), ("#", "c1")),
        (Filters(target_ids=("c1", "c2"), action="a.b"), ("=", "a.b")),
        (Filters(action_prefix="a."), ("^", "a.")),
        (Filters(action="a.b", until=BASE), ("=", "a.b")),
        (
            Filters(until=BASE + timedelta(microseconds=7), outcome="failure"),
            ("<", str(micros(BASE) + 7)),
        ),
        (Filters(actor_ids=("t1", "t2"), since=BASE, until=BASE), ("<", str(micros(BASE)))),
        (Filters(outcome="failure", since=BASE), None),
    ],
)
def test_the_scope_of_a_page_is_its_narrowest_filter(filters, scope):
    """One actor, else one target, else the action, else the prefix, else the until bound;
    each head's own filter is what its load reads."""
    assert head_pages.scope(filters) == scope
    if scope is not None:
        assert head_pages.scope(head_pages.scope_filters(scope)) == scope


def test_no_action_heads_when_none_are_kept(tmp_path):
    store = LedgerStore(tmp_path / "l.duckdb")
    heads = store.heads = TenantHeads(DEPTH, scoped_capacity=0)
    scope: Scope = ("^", "claim.")
    assert heads.load("tenant-a", _newest_of(store, "tenant-a", scope), scope) is None
    assert heads.scoped == 0
    store.close()


def test_a_load_is_thrown_away_when_a_commit_touches_its_tenant_meanwhile(tmp_path, monkeypatch):
    """Loads read DuckDB without the lock; a commit of the tenant while one reads makes
    what it read stale, so it is not installed (its pages are those of the DuckDB read
    it made, as of before the commit). A commit of another tenant does not."""
    monkeypatch.setattr(ledger.head, "BACKOFF_FACTOR", 0.0)  # the back-off: its own test
    store = LedgerStore(tmp_path / "l.duckdb")
    heads = store.heads = TenantHeads(DEPTH)
    w = Writer(store, 13)
    w.write(w.batch(20))

    def newest_then_commit(tenant: str, committed_tenant: str):
        read = _newest(store, tenant)

        def newest(n: int):
            rows = read(n)
            assert not heads.lock.locked()  # the writer is not held up by a load
            w.write([w.event(committed_tenant)])  # lands after the read, before the install
            return rows

        return newest

    before = queries.list_events(store.cursor(), "tenant-a", Filters(), None, DEPTH)
    read = heads.load("tenant-a", newest_then_commit("tenant-a", "tenant-a"))
    assert read is not None and [r.row for r in reversed(read.rows)] == before
    assert heads.get("tenant-a") is None
    head = heads.load("tenant-a", newest_then_commit("tenant-a", "tenant-b"))
    assert head is not None and heads.get("tenant-a") is head
    assert check_agree(store, heads, random.Random(1))[""] > 0
    scope: Scope = ("^", "claim.")
    read = _newest_of(store, "tenant-c", scope)

    def newest_then_resend(n: int):  # a dedup-path batch drops the tenant's heads
        rows = read(n)
        stored = store.cursor().execute(
            "SELECT event_id::VARCHAR FROM audit_events WHERE tenant_id = 'tenant-c' LIMIT 1"
        )
        copy = w.event("tenant-c")
        copy["event_id"] = stored.fetchone()[0]
        w.write([copy])
        return rows

    assert heads.load("tenant-c", newest_then_resend, scope) is not None
    assert heads.get("tenant-c", scope) is None
    store.close()


def test_one_tenant_cannot_push_out_the_others_action_heads(tmp_path):
    store = LedgerStore(tmp_path / "l.duckdb")
    heads = store.heads = TenantHeads(DEPTH, scoped_capacity=SCOPES_PER_TENANT + 4)
    w = Writer(store, 17)
    w.write(w.batch(20))
    theirs: Scope = ("=", "claim.viewed")
    assert heads.load("tenant-b", _newest_of(store, "tenant-b", theirs), theirs) is not None
    mine = [("^", f"x{i}.") for i in range(3 * SCOPES_PER_TENANT)]
    for scope in mine:  # filters that match nothing, each its own head
        assert heads.load("tenant-a", _newest_of(store, "tenant-a", scope), scope) is not None
    assert heads.get("tenant-b", theirs) is not None
    held = [s for s in mine if heads.get("tenant-a", s) is not None]
    assert held == mine[-SCOPES_PER_TENANT:]  # its own oldest went first
    assert heads.scoped == SCOPES_PER_TENANT + 1
    store.close()


def test_a_head_whose_load_was_overtaken_backs_off(tmp_path, monkeypatch):
    """A head whose loads a commit keeps overtaking would pay a load's read on every
    page: after one, its loads pause for 100x the load's time, then try again."""
    clock = [1000.0]
    monkeypatch.setattr(ledger.head, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    store = LedgerStore(tmp_path / "l.duckdb")
    heads = store.heads = TenantHeads(DEPTH)
    w = Writer(store, 19)
    w.write(w.batch(20))
    reads = []
    read = _newest(store, "tenant-a")

    def newest(n: int):
        reads.append(n)
        rows = read(n)
        clock[0] += 0.01  # the load takes 10 ms on the head's clock: a back-off of 1 s
        if len(reads) == 1:
            w.write([w.event("tenant-a")])  # overtakes the first load
        return rows

    assert heads.load("tenant-a", newest) is not None and heads.get("tenant-a") is None
    clock[0] += 0.99
    assert heads.load("tenant-a", newest) is None and len(reads) == 1  # backing off: no read
    other = heads.load("tenant-b", _newest(store, "tenant-b"))  # other heads load as before
    assert other is not None and heads.get("tenant-b") is other
    clock[0] += 0.05  # past the back-off
    head = heads.load("tenant-a", newest)
    assert head is not None and heads.get("tenant-a") is head and len(reads) == 2
    store.close()

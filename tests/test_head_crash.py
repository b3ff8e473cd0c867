"""The heads under ingest, reads and SIGKILL: first pages never miss, add or reorder a row.

A real ``velora node`` process materializes events while they are produced (ties
in ``occurred_at``, and late events older than a head's floor) and is SIGKILLed
and restarted several times. Meanwhile a reader pages through three tenants'
first two pages over HTTP, unfiltered, filtered by one action, by one actor and
by one ``until`` bound that late events keep reaching (served from the tenants'
heads, their action heads, their actor heads and their until heads once loaded;
the heads are kept short, so second pages and some filtered pages read DuckDB).
Each page is checked against
what was acknowledged, bracketed by the node's stored offsets read just before it:

- **no extra row**: every event shown was produced, for that tenant, with that
  ``occurred_at`` (and that action, that actor, or before that bound);
- **no reordering**: newest first by ``(occurred_at, event_id)``, no repeats;
- **no missing row**: every acknowledged event at an offset the node had stored
  before the request, and newer than the page's last row (any, when the page is
  not full), is on the page.

At the end the node's pages equal DuckDB's own list query over the file.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from cli.keys import create_key
from ledger.store import LedgerStore
from query_api import queries
from query_api.filters import Filters
from schemas.times import micros
from tests.factory import fast_producer, sample_record
from tests.helpers import wait_for
from tests.ledger_support import CODEC
from tests.test_crash import _stored as stored_records
from tests.test_node import NodeProcess
from velora.topics import ensure_topics

TENANTS = ("tenant-h1", "tenant-h2", "tenant-h3")
EVENTS = "/api/v2/public/audit/events"
LIMIT = 20
ROUNDS = 60
PER_ROUND = 150
KILLS = 3
PAGES_PER_LIFE = 30
"""Pages the reader checks against each node process before it is killed (whatever the load)."""
ACTION = "claim.viewed"
ACTOR = "user-7"
START = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
"""When the produced events begin: ahead of the node's own audit_log.viewed records
of the reads (stamped now), so that the first pages hold these events."""
UNTIL = START + timedelta(seconds=600)
"""A bound that new events soon pass (about a third of a second per event) and late
ones (up to 400 s behind the newest) reach all along."""
FILTERS: tuple[tuple[str, str] | None, ...] = (
    None,
    ("action", ACTION),
    ("actor_id", ACTOR),
    ("until", UNTIL.isoformat()),
)
"""What the reader pages through per tenant: ``(query parameter, value)`` or none. The
action and the actor are each about one event in five."""


def _passes(action: str, actor: str, occurred_us: int, f: tuple[str, str] | None) -> bool:
    """Whether an event passes the page filter ``f``."""
    if f is None:
        return True
    name, value = f
    if name == "until":
        return occurred_us < micros(datetime.fromisoformat(value))
    return value == (action if name == "action" else actor)


def _list_filters(f: tuple[str, str] | None) -> Filters:
    """The list query's filters for the page filter ``f``."""
    if f is None:
        return Filters()
    if f[0] == "until":
        return Filters(until=datetime.fromisoformat(f[1]))
    return Filters(**dict([f]))


HEAD_EVENTS = 30
"""Short heads: a tenant's head cuts its first page only, an action head its first page."""


@dataclass(frozen=True)
class Sent:
    tenant: str
    position: tuple[int, str]
    action: str
    actor: str

    def passes(self, f: tuple[str, str] | None) -> bool:
        """Whether this event passes the page filter ``f``."""
        return _passes(self.action, self.actor, self.position[0], f)


class Producer(threading.Thread):
    """Produces events in rounds; records what was sent and where each ack put it."""

    def __init__(self, settings) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.sent: dict[str, Sent] = {}
        self.at: dict[tuple[int, int], str] = {}  # (partition, offset) -> event id, once acked
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            rng = random.Random(11)
            producer = fast_producer(self.settings)
            start = START
            second = 0
            for _ in range(ROUNDS):
                futures = []
                for _ in range(PER_ROUND):
                    tenant = rng.choice(TENANTS)
                    if rng.random() < 0.1:  # a late event, older than the newest hundreds
                        at = start + timedelta(seconds=rng.randrange(max(1, second - 400)))
                    else:
                        second += rng.choice((0, 0, 1))  # ties in occurred_at
                        at = start + timedelta(seconds=second)
                    record = sample_record(rng, tenant, at)
                    if rng.random() < 0.2:
                        record["actor"]["id"] = ACTOR
                    value = CODEC.encode("AuditEvent", record)
                    event_id = str(record["event_id"])
                    with self.lock:
                        position = (int(record["occurred_at"]), event_id)
                        self.sent[event_id] = Sent(
                            tenant, position, str(record["action"]), str(record["actor"]["id"])
                        )
                    future = producer.send(
                        self.settings.audit_topic, key=tenant.encode(), value=value
                    )
                    futures.append((event_id, future))
                producer.flush()
                with self.lock:
                    for event_id, future in futures:
                        meta = future.get(timeout=30)
                        self.at[(meta.partition, meta.offset)] = event_id
                time.sleep(0.3)  # spread over the node's kills and restarts
            producer.close()
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.done.set()

    def visible(
        self, tenant: str, stored: dict[int, int], f: tuple[str, str] | None
    ) -> list[tuple[int, str]]:
        """Positions of ``tenant``'s acknowledged events (passing ``f``) below the stored
        offsets."""
        with self.lock:
            return [
                self.sent[e].position
                for (p, o), e in self.at.items()
                if o < stored.get(p, 0) and self.sent[e].tenant == tenant and self.sent[e].passes(f)
            ]


class Reader(threading.Thread):
    """Reads two pages per tenant in a loop and checks each against the acknowledged events."""

    def __init__(self, producer: Producer, tokens: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.producer = producer
        self.tokens = tokens
        self.port = 0  # set before the reader starts
        self.pages = 0
        self.refused = ""
        self.failures: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for tenant, f in [(t, f) for t in TENANTS for f in FILTERS]:
                try:
                    self._check(tenant, f)
                except httpx.HTTPError:
                    time.sleep(0.05)  # the node is down or restarting
                except BaseException as exc:  # reported by the test
                    self.failures.append(f"reader: {exc!r}")
                    return

    def _stored(self) -> dict[int, int]:
        body = httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=5).json()
        return {int(p): v["stored"] for p, v in (body.get("partitions") or {}).items()}

    def _check(self, tenant: str, f: tuple[str, str] | None) -> None:
        before = self._stored()
        cursor = None
        seen: list[tuple[int, str]] = []
        for _ in range(2):
            params = {"limit": str(LIMIT), **({"cursor": cursor} if cursor else {})}
            if f is not None:
                params[f[0]] = f[1]
            r = httpx.get(
                f"http://127.0.0.1:{self.port}{EVENTS}",
                params=params,
                headers={"Authorization": f"Bearer {self.tokens[tenant]}"},
                timeout=10,
            )
            if r.status_code != 200:  # e.g. 503 while the restarted node catches up
                self.refused = f"{r.status_code} {r.text[:300]}"
                return
            body = r.json()
            page = [self._known(tenant, e, f) for e in body["events"]]
            if any(p is None for p in page):
                return
            positions = [p for p in page if p is not None]
            if positions != sorted(set(positions), reverse=True):
                self.failures.append(f"{tenant}: a page out of order or with a repeat")
            upper = seen[-1] if seen else None
            self._complete(tenant, before, positions, upper, f)
            seen += positions
            self.pages += 1
            cursor = body["page"]["next_cursor"]
            if cursor is None:
                return

    def _known(self, tenant: str, event: dict, f: tuple[str, str] | None) -> tuple[int, str] | None:
        occurred = micros(datetime.fromisoformat(event["occurred_at"]))
        if not _passes(event["action"], event["actor"]["id"], occurred, f):
            self.failures.append(f"{tenant}: an event that fails {f}: {event['event_id']}")
            return None
        if event["action"] == "audit_log.viewed" and event["source"] == "velora.query_api":
            return (occurred, event["event_id"])  # the node's record of a read
        with self.producer.lock:
            sent = self.producer.sent.get(event["event_id"])
        if (
            sent is None
            or sent.tenant != tenant
            or sent.position[0] != occurred
            or sent.action != event["action"]
            or sent.actor != event["actor"]["id"]
        ):
            self.failures.append(
                f"{tenant}: an event that was not produced: {event['event_id']} "
                f"{event['occurred_at']} ({sent})"
            )
            return None
        return sent.position

    def _complete(self, tenant, before, positions, upper, f) -> None:
        """Every stored acknowledged event between the cursor and the page's end is shown."""
        lowest = positions[-1] if len(positions) == LIMIT else None
        shown = set(positions)
        for position in self.producer.visible(tenant, before, f):
            if upper is not None and position >= upper:
                continue
            if lowest is not None and position < lowest:
                continue
            if position not in shown:
                self.failures.append(f"{tenant}: a stored event missing from a page: {position}")
                return


@pytest.mark.slow
def test_first_pages_stay_exact_through_ingest_reads_and_sigkill(settings, tmp_path):
    settings = replace(settings, head_events=HEAD_EVENTS)
    ensure_topics(settings)
    tokens = {t: create_key(settings, t, ("audit:read",), name="head").token for t in TENANTS}
    producer = Producer(settings)
    reader = Reader(producer, tokens)
    rng = random.Random(3)
    node = NodeProcess(settings, tmp_path / "node.log")
    reader.port = node.port
    producer.start()
    reader.start()
    try:
        for k in range(KILLS):  # at random points of the node's progress, while ingest runs
            goal = (k + 1) * ROUNDS * PER_ROUND // (KILLS + 1) + rng.randrange(PER_ROUND)
            checked = reader.pages
            wait_for(
                lambda n=node, g=goal: stored_records(n) >= g, timeout=120, what=f"{goal} stored"
            )
            wait_for(  # reads interleave with every life of the node, however slow the machine
                lambda c=checked: reader.pages >= c + PAGES_PER_LIFE,
                timeout=120,
                what=f"{PAGES_PER_LIFE} pages read from node life {k}",
            )
            node.kill()
            node = NodeProcess(settings, tmp_path / "node.log")
            reader.port = node.port
        assert producer.done.wait(300), "the producer did not finish"
        assert producer.error is None, producer.error
        wait_for(lambda: node.readiness().get("lag") == 0, timeout=120, what="catch-up")
        pages = reader.pages
        what = f"reads ({reader.refused} {reader.failures[:3]})"
        wait_for(lambda: reader.pages > pages + 6, timeout=60, what=what)
        reader.stop.set()
        reader.join(30)
        assert not reader.failures, reader.failures[:5]
        served = {}
        for tenant, f in [(t, f) for t in TENANTS for f in FILTERS]:
            r = httpx.get(
                f"http://127.0.0.1:{node.port}{EVENTS}",
                params={"limit": "100", **(dict([f]) if f else {})},
                headers={"Authorization": f"Bearer {tokens[tenant]}"},
                timeout=10,
            )
            assert r.status_code == 200, r.text
            served[tenant, f] = [e["event_id"] for e in r.json()["events"]]
    finally:
        reader.stop.set()
        code = node.terminate()
    assert code == 0, node.tail()
    store = LedgerStore(settings.duckdb_path)
    try:
        for tenant, f in served:
            rows = queries.list_events(store.cursor(), tenant, _list_filters(f), None, 100)
            assert served[tenant, f] == [r["event_id"] for r in rows], (tenant, f)
        produced = store.cursor().execute(
            "SELECT count(*) FROM audit_events WHERE source <> 'velora.query_api'"
        )
        assert produced.fetchone() == (len(producer.sent),)  # each once, none lost
    finally:
        store.close()

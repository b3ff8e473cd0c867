"""Crash test: 100k events loaded while the node is SIGKILLed at random moments; exactly once.

The node runs as a real ``velora node`` subprocess. It is killed at least three
times while events are being produced and materialized (at random points of its
progress, read from ``/readyz``), and restarted each time. Afterwards the DuckDB
table holds exactly the acknowledged event ids, each once, and the stored offsets
equal the topic's end offsets.
"""

from __future__ import annotations

import random
import threading

import pytest

from ledger.store import LedgerStore
from tests.factory import EventFactory, fast_producer
from tests.helpers import wait_for
from tests.test_node import NodeProcess
from tests.test_rollups import assert_rollups_exact
from velora.topics import end_offsets

TOTAL = 100_000
RESENT = 2_000
KILLS = 3


def _stored(node: NodeProcess) -> int:
    parts = node.readiness().get("partitions") or {}
    return sum(p["stored"] for p in parts.values())


class Loader(threading.Thread):
    """Produces TOTAL events in chunks, recording acked ids, then re-sends some of them."""

    def __init__(self, settings, factory: EventFactory) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.factory = factory
        self.acked: set[str] = set()
        self.failed = 0
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            producer = fast_producer(self.settings)
            acked_values = []
            for _ in range(TOTAL // 5_000):
                chunk = [self.factory.make() for _ in range(5_000)]
                futures = [
                    (e, producer.send(self.settings.audit_topic, key=e.key, value=e.value))
                    for e in chunk
                ]
                producer.flush()
                for e, f in futures:
                    if f.succeeded():
                        self.acked.add(e.event_id)
                        acked_values.append(e)
                    else:
                        self.failed += 1
                self.sent += len(chunk)
            for e in random.Random(1).sample(acked_values, RESENT):  # duplicates of acked ids
                producer.send(self.settings.audit_topic, key=e.key, value=e.value)
            producer.flush()
            producer.close()
        except BaseException as exc:  # reported by the test
            self.error = exc


@pytest.mark.slow
def test_sigkill_during_load_loses_and_duplicates_nothing(settings, tmp_path):
    rng = random.Random()
    log_path = tmp_path / "node.log"
    loader = Loader(settings, EventFactory(templates=2000))
    node = NodeProcess(settings, log_path)
    loader.start()
    kills = during_load = 0
    while kills < KILLS or loader.is_alive():
        # kill at a random point of the node's progress since it (re)started
        base = _stored(node) if kills else 0
        step = rng.randrange(2_000, 15_000)
        wait_for(
            lambda n=node, b=base, s=step: _stored(n) >= b + s or not loader.is_alive(),
            timeout=120,
            interval=0.01,
            what="materializer progress",
        )
        during_load += loader.is_alive()
        node.kill()
        kills += 1
        node = NodeProcess(settings, log_path)
    loader.join()
    assert loader.error is None, loader.error
    assert loader.failed == 0
    assert kills >= KILLS
    print(f"{kills} kills, {during_load} while loading")

    # the node restarted after the last kill saw the final end offsets at start
    wait_for(lambda: node.get("/readyz").status_code == 200, timeout=180, what="catch-up")
    ready = node.readiness()
    assert ready["lag"] == 0
    assert node.terminate() == 0, node.tail()

    store = LedgerStore(settings.duckdb_path)
    try:
        cur = store.cursor()
        rows, distinct = cur.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM audit_events"
        ).fetchone()
        assert rows == distinct == len(loader.acked) == TOTAL
        stored_ids = {
            r[0] for r in cur.execute("SELECT event_id::VARCHAR FROM audit_events").fetchall()
        }
        assert stored_ids == loader.acked
        end = end_offsets(settings, settings.audit_topic)
        assert sum(end.values()) == TOTAL + RESENT
        assert store.stored_offsets(settings.audit_topic) == end
        # the rollups were written in the same transactions: exact after every kill
        assert assert_rollups_exact(cur) == TOTAL
    finally:
        store.close()

"""A group join whose assignment kafka-python drops is repaired (velora.group_join).

The dropped join is made on the real broker the way it happened to the webhook
dispatcher: a member whose metadata snapshot no longer matches the one it assigned
with rejoins, its poll gives up before the join completes, and the leader's new
assignment makes ``need_rejoin()`` false. The only fault injected is the stale
snapshot (``_assignment_snapshot``), which stands in for a metadata refresh that
changed the subscribed topics' partitions.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from kafka import ConsumerRebalanceListener, KafkaConsumer

import webhooks.consumer
from tests.helpers import wait_for
from tests.webhook_support import running_dispatcher
from velora.group_join import GUARD, dropped_join, repair_dropped_join
from velora.settings import Settings
from webhooks.service import DispatcherService, probe_app


class Recorder(ConsumerRebalanceListener):
    def __init__(self) -> None:
        self.assigned: set[Any] = set()

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.assigned -= set(revoked)

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.assigned |= set(assigned)


@pytest.fixture
def member(settings: Settings) -> Iterator[tuple[KafkaConsumer, Recorder]]:
    GUARD.reset()
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"{settings.topic_prefix}.join-test",
        enable_auto_commit=False,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=1_000,
    )
    recorder = Recorder()
    # With the topic's metadata at hand, the first assignment holds its partitions
    # (a leader without it assigns nothing, then rejoins: the case under test).
    assert consumer.partitions_for_topic(settings.audit_topic)
    consumer.subscribe([settings.audit_topic], listener=recorder)

    def assigned() -> set[Any]:
        consumer.poll(timeout_ms=50)
        if not recorder.assigned and dropped_join(consumer):
            # On a slow machine the first join can be dropped on its own (the metadata
            # refreshed while it ran, and a 50 ms poll gave up): repair it, as the
            # dispatcher does; the tests make their own dropped join from a member
            # that holds its partitions.
            repair_dropped_join(consumer)
        return recorder.assigned

    try:
        wait_for(assigned, timeout=30, what="first assignment")
        yield consumer, recorder
    finally:
        consumer.close()


def drop_a_join(consumer: KafkaConsumer) -> None:
    """Start a metadata-driven rejoin in a poll that gives up, and let the join finish.

    A poll with no time to wait may return before it starts the join (the coordinator
    not ready within it): poll again until the join task exists, then stop polling and
    wait for the task, so no poll is there to take its result.
    """
    coordinator = consumer._coordinator
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if coordinator._join_task is None and not coordinator.need_rejoin():
            coordinator._assignment_snapshot = {}  # the fault: metadata changed since then
        consumer.poll(timeout_ms=0)
        task = coordinator._join_task
        if task is None:
            continue
        wait_for(lambda task=task: task.is_done, timeout=30, what="the join task")
        if dropped_join(consumer):
            return
    raise AssertionError("no dropped join could be made in 30 s")


def test_kafka_python_drops_the_assignment_of_such_a_join(member) -> None:
    # What the repair is for: without it the member never gets partitions back.
    consumer, recorder = member
    drop_a_join(consumer)
    assert dropped_join(consumer)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        consumer.poll(timeout_ms=50)
    assert recorder.assigned == set()
    assert dropped_join(consumer)


def test_the_repair_gets_the_partitions_back(member) -> None:
    consumer, recorder = member
    drop_a_join(consumer)
    assert repair_dropped_join(consumer)
    wait_for(
        lambda: consumer.poll(timeout_ms=50) is not None and recorder.assigned,
        timeout=30,
        what="the partitions back",
    )
    assert not dropped_join(consumer)
    assert not repair_dropped_join(consumer)


def test_nothing_is_requested_for_a_stable_member(member) -> None:
    consumer, recorder = member
    for _ in range(20):
        consumer.poll(timeout_ms=20)
        assert not repair_dropped_join(consumer)
    assert recorder.assigned


async def _probe(service: DispatcherService, path: str) -> httpx.Response:
    """GET one of the dispatcher's probe routes (its ASGI app, in process)."""
    transport = httpx.ASGITransport(app=probe_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://dispatcher") as client:
        return await client.get(path)


def test_the_dispatcher_repairs_a_dropped_join_at_once_and_counts_it(settings, monkeypatch) -> None:
    # A poll that never waits makes every join outlast the poll that started it, so the
    # stale snapshot below always ends in a dropped join. Without the repair the
    # consumer stays without partitions until its 30 s idle rule (REJOIN_MIN_S).
    monkeypatch.setattr(webhooks.consumer, "POLL_MS", 0)
    GUARD.reset()
    with running_dispatcher(settings) as d:
        group = d.service.consumer
        partitions, seen = set(group.assigned), group._rebalances
        group._consumer._coordinator._assignment_snapshot = {}  # the fault, as above
        wait_for(
            lambda: group._rebalances >= seen + 2 and group.assigned == partitions,
            timeout=10,
            what="the partitions revoked and assigned again",
        )
        ready = asyncio.run(_probe(d.service, "/readyz")).json()
        assert ready["group_rejoins"]["dropped_join"] >= 1
        assert ready["group_rejoins"]["idle"] == 0
        metrics = asyncio.run(_probe(d.service, "/metrics")).text
        counts = dict(
            re.findall(r'velora_webhook_group_rejoins_total\{cause="(\w+)"\} (\d+)', metrics)
        )
        assert int(counts["dropped_join"]) >= 1 and counts["idle"] == "0"

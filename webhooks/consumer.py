"""The dispatcher's consumer group: what it reads, and which offsets it may commit.

One ``KafkaConsumer`` in group ``<prefix>.webhooks`` subscribes to the audit topic,
the request topic and every retry topic, so several dispatchers share their
partitions and take over a dead one's after the group session
(``VELORA_WEBHOOKS_SESSION_TIMEOUT_MS``). It runs in its own thread (kafka-python is
not thread-safe) and hands each record to the dispatcher's event loop.

**Commits.** :class:`OffsetTracker` holds, per partition, the records handed over
and not yet *settled*: delivered, durably scheduled (their retry job acknowledged
by Kafka), or found to need no delivery. The committed offset of a partition is
its oldest unsettled record (or the one after the last record handed over), so an
offset is committed only once everything before it is delivered or scheduled.
The handover of a partition starts at its committed offset (or, for a partition
that stays with this member across a rebalance, at its oldest record not settled
yet) and never skips a record (a batch that does not continue it, such as one
fetched before a rebalance and read after it, is dropped and the partition read
again from where the handover is), so nothing is committed past a record that was
not handed over.
Offsets are committed about every :data:`COMMIT_INTERVAL_S` and when partitions
are revoked; records in flight in a revoked partition are delivered again by the
next owner (at-least-once).

**Retry topics.** A retry tier's records come due in about the order they were
written. For the head record of a partition the consumer waits until
``min(due_at, written + tier delay)``: it seeks back to the record and pauses the
partition until then (nothing after it is handed over or committed). A job whose
``due_at`` is still ahead at that point (a long ``Retry-After``) goes back to the
tier that fits its remaining wait.

**No silent freeze.** After each poll, a group join whose assignment kafka-python
dropped is joined again at once (:func:`velora.group_join.repair_dropped_join`).
A member that holds no partitions for :data:`REJOIN_MIN_S`
(or three session timeouts, if longer) closes its consumer and joins the group
again: a rebalance that never completes for it must not leave it idle while
records wait. (More dispatchers than partitions would make the extra ones rejoin
every half minute; run at most as many dispatchers as the audit topic has
partitions.)

**Back-pressure.** With more than :data:`MAX_IN_FLIGHT` records unsettled, every
partition is paused (polling goes on, so the group keeps its member) until the
count falls below half of it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaConsumer
from kafka.structs import OffsetAndMetadata, TopicPartition

from velora.errors import Unavailable
from velora.group_join import repair_dropped_join
from velora.kafka_clients import KAFKA_ERRORS, close_quietly, map_kafka_errors, new_consumer
from velora.settings import Settings

log = logging.getLogger(__name__)

COMMIT_INTERVAL_S = 0.5
MAX_IN_FLIGHT = 20_000
POLL_MS = 50
REJOIN_MIN_S = 30.0
"""A member with no partitions for this long (or 3 sessions) leaves and rejoins."""


@dataclass
class Ref:
    """A record handed to the dispatcher; settled when ``pending`` parts are done."""

    tp: TopicPartition
    offset: int
    epoch: int
    pending: int = 1


class OffsetTracker:
    """Unsettled records per partition, and the offsets that may be committed (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._epoch: dict[TopicPartition, int] = {}
        self._order: dict[TopicPartition, deque[int]] = {}
        self._open: dict[TopicPartition, set[int]] = {}
        self._next: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self.in_flight = 0

    def assign(self, tps: list[TopicPartition]) -> None:
        """Start tracking ``tps`` (a new epoch: settlements of older refs are ignored)."""
        with self._lock:
            for tp in tps:
                self._epoch[tp] = self._epoch.get(tp, 0) + 1
                self._order[tp] = deque()
                self._open[tp] = set()
                self._next.pop(tp, None)
                self._committed.pop(tp, None)

    def revoke(self, tps: list[TopicPartition]) -> None:
        """Stop tracking ``tps``; their refs still in flight no longer count."""
        with self._lock:
            for tp in tps:
                self.in_flight -= len(self._open.pop(tp, ()))
                self._order.pop(tp, None)
                self._next.pop(tp, None)
                self._committed.pop(tp, None)
                self._epoch[tp] = self._epoch.get(tp, 0) + 1

    def add(self, tp: TopicPartition, offset: int) -> Ref | None:
        """Track a record handed over (offsets of a partition rise); None if not assigned."""
        with self._lock:
            if tp not in self._open:
                return None
            self._order[tp].append(offset)
            self._open[tp].add(offset)
            self._next[tp] = offset + 1
            self.in_flight += 1
            return Ref(tp, offset, self._epoch[tp])

    def settle(self, ref: Ref) -> None:
        """One part of ``ref`` is done; the record is settled when no part is left."""
        ref.pending -= 1
        if ref.pending > 0:
            return
        with self._lock:
            if self._epoch.get(ref.tp) != ref.epoch:
                return
            open_ = self._open.get(ref.tp)
            if open_ is not None and ref.offset in open_:
                open_.discard(ref.offset)
                self.in_flight -= 1

    def expected(self, tp: TopicPartition) -> int | None:
        """The next offset to hand over in ``tp``, or None before the first of this epoch."""
        with self._lock:
            return self._next.get(tp)

    def resume_points(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Per partition: its oldest unsettled record, or the one after the last handed over."""
        out: dict[TopicPartition, int] = {}
        with self._lock:
            for tp in tps:
                point = self._point(tp) if tp in self._order else None
                if point is not None:
                    out[tp] = point
        return out

    def _point(self, tp: TopicPartition) -> int | None:
        """Oldest unsettled record of ``tp``, or the one after the last handed over (locked)."""
        order, open_ = self._order[tp], self._open[tp]
        while order and order[0] not in open_:
            order.popleft()
        return order[0] if order else self._next.get(tp)

    def committable(self, only: list[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        """Offsets to commit now: per partition its oldest unsettled record, if it moved."""
        out: dict[TopicPartition, int] = {}
        with self._lock:
            for tp in self._order:
                if only is not None and tp not in only:
                    continue
                point = self._point(tp)
                if point is not None and point != self._committed.get(tp):
                    out[tp] = point
        return out

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        """Record that ``offsets`` were committed."""
        with self._lock:
            for tp, offset in offsets.items():
                if tp in self._order:
                    self._committed[tp] = offset


Handler = Callable[[TopicPartition, Any, Ref], None]
"""``handler(tp, record, ref)``: called in the consumer thread for each record handed over."""
Waiter = Callable[[TopicPartition, Any], float]
"""``waiter(tp, record)``: seconds to wait before a retry record may be handed over (0: now)."""


class GroupConsumer:
    """The consumer thread (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        tracker: OffsetTracker,
        handle: Handler,
        wait: Waiter,
        *,
        client_id: str = "velora-webhooks",
    ) -> None:
        self.settings = settings
        self.tracker = tracker
        self._handle = handle
        self._wait = wait
        self._client_id = client_id
        self._retry_topics = frozenset(settings.webhook_retry_topics)
        self.topics = [
            settings.audit_topic,
            settings.webhook_requests_topic,
            *settings.webhook_retry_topics,
        ]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: KafkaConsumer | None = None
        self._waiting: dict[TopicPartition, float] = {}
        self._gaps: dict[TopicPartition, tuple[int, int]] = {}
        self._rebalance_lock = threading.Lock()
        self._rebalances = 0
        self._revoked_last: set[TopicPartition] = set()
        self._kept: set[TopicPartition] = set()
        """Partitions of the current assignment that were ours in the previous one."""
        self._resume: dict[TopicPartition, int] = {}
        """Per partition revoked last: its oldest unsettled record then (or the next)."""
        self._flow_paused = False
        self.assigned: set[TopicPartition] = set()
        self.error: str | None = None
        self.retries_waiting = 0
        self.rejoins = 0
        self.join_repairs = 0
        session_s = self.settings.webhooks_session_timeout_ms / 1000
        self._rejoin_after_s = max(REJOIN_MIN_S, 3 * session_s)

    def start(self) -> None:
        """Join the group and start consuming in a background thread."""
        self._consumer = self._connect()
        self._thread = threading.Thread(target=self._run, name="webhooks-consumer", daemon=True)
        self._thread.start()

    def _connect(self) -> KafkaConsumer:
        """A consumer in the group, subscribed to every topic the dispatcher reads."""
        session = self.settings.webhooks_session_timeout_ms
        consumer = new_consumer(
            self.settings,
            self._client_id,
            group_id=self.settings.webhook_group,
            auto_offset_reset="earliest",
            session_timeout_ms=session,
            heartbeat_interval_ms=max(500, session // 5),
            max_poll_records=500,
            fetch_max_wait_ms=50,
            metadata_max_age_ms=10_000,
        )
        # The group's leader assigns only partitions it has metadata for: fetch it for
        # every topic first, or a first assignment can leave partitions unassigned
        # until the next metadata refresh.
        try:
            with map_kafka_errors("webhook topics metadata"):
                for topic in self.topics:
                    if not consumer.partitions_for_topic(topic):
                        raise Unavailable(f"topic {topic} has no partitions yet", retry_after=1)
            consumer.subscribe(self.topics, listener=_Listener(self))
        except BaseException:
            close_quietly(consumer)
            raise
        return consumer

    def stop(self) -> None:
        """Commit what is settled, leave the group, close."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    # -- the loop -----------------------------------------------------------------
    def _run(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        last_commit = time.monotonic()
        unassigned_since: float | None = time.monotonic()
        try:
            while not self._stop.is_set():
                try:
                    self._resume_due(consumer)
                    self._flow(consumer)
                    seen = self._rebalances
                    polled = consumer.poll(timeout_ms=POLL_MS)
                    if repair_dropped_join(consumer):
                        self.join_repairs += 1
                        log.info("webhook consumer: a finished group join was dropped; rejoining")
                    self._take_all(consumer, polled, seen)
                    if time.monotonic() - last_commit >= COMMIT_INTERVAL_S:
                        last_commit = time.monotonic()
                        self._commit(consumer)
                        self._measure(consumer)
                    if self.assigned:
                        unassigned_since = None
                    elif unassigned_since is None:
                        unassigned_since = time.monotonic()
                    elif time.monotonic() - unassigned_since > self._rejoin_after_s:
                        consumer = self._rejoin(consumer)
                        unassigned_since = time.monotonic()
                    self.error = None
                except Exception as exc:
                    # Never die silently: a record handed over stays unsettled, so nothing
                    # is committed past it; the loop goes on and /readyz shows the error.
                    self.error = type(exc).__name__
                    log.warning("webhook consumer: %s; going on", type(exc).__name__, exc_info=True)
                    self._stop.wait(1.0)
            self._commit(consumer)
        finally:
            close_quietly(consumer)

    def _rejoin(self, consumer: KafkaConsumer) -> KafkaConsumer:
        """Leave the group and join it again with a new consumer.

        A member whose rebalance never completes would otherwise hold no partitions
        and deliver nothing, silently. Nothing is lost: what it had not settled was
        not committed, and is read again by whoever is assigned the partition.
        """
        log.warning(
            "webhook consumer: no partitions for %.0f s; leaving and rejoining the group",
            self._rejoin_after_s,
        )
        self.rejoins += 1
        close_quietly(consumer)
        while not self._stop.is_set():
            try:
                fresh = self._connect()
            except Exception as exc:  # the broker may be away: keep trying, visibly
                self.error = type(exc).__name__
                log.warning("webhook consumer: rejoin failed (%s); retrying", type(exc).__name__)
                self._stop.wait(1.0)
                continue
            self._consumer = fresh
            return fresh
        return consumer

    def _take_all(
        self, consumer: KafkaConsumer, polled: dict[TopicPartition, list[Any]], seen: int
    ) -> None:
        """Hand over a poll's records, unless a rebalance came between the poll and now.

        kafka-python runs the rebalance listener on its I/O thread, so a poll's
        records can reach this thread after their partitions were revoked and
        assigned again, or were fetched from the new position before this thread
        knew of the new assignment. Such a poll is dropped whole and each of its
        partitions read again from a point that skips nothing (:meth:`_restart`).
        The lock keeps a rebalance from starting midway through a handover.
        """
        with self._rebalance_lock:
            if self._rebalances != seen:
                for tp, records in polled.items():
                    self._restart(consumer, tp, records[0].offset, stale=tp in self._kept)
                return
            for tp, records in polled.items():
                self._take(consumer, tp, records)

    def _take(self, consumer: KafkaConsumer, tp: TopicPartition, records: list[Any]) -> None:
        if tp not in self.assigned or tp in self._waiting:
            # Fetched before the listener saw the assignment, or while the partition
            # waits: not handed over, so read them again rather than step past them.
            if tp in self._waiting:
                _rewind(consumer, tp, records[0].offset)
            else:
                self._restart(consumer, tp, records[0].offset, stale=tp in self._revoked_last)
            return
        if not self._contiguous(consumer, tp, records[0].offset):
            return
        retry = tp.topic in self._retry_topics
        for record in records:
            if retry:
                wait = self._wait(tp, record)
                if wait > 0:
                    consumer.seek(tp, record.offset)
                    consumer.pause(tp)
                    self._waiting[tp] = time.monotonic() + wait
                    return
            ref = self.tracker.add(tp, record.offset)
            if ref is None:
                _rewind(consumer, tp, record.offset)
                return
            self._handle(tp, record, ref)

    def _restart(
        self, consumer: KafkaConsumer, tp: TopicPartition, first: int, *, stale: bool
    ) -> None:
        """Read ``tp`` again from a point that skips nothing, after records not handed over.

        The records start at ``first``. Unless ``tp`` was also ours in the previous
        assignment (``stale``), they were fetched from the new position, the
        committed offset: read again from ``first``. If it was, they may be left
        over from then and lie ahead of the committed offset: read again from its
        oldest record not settled then (from the log start if none was ever handed
        over). No lookup on the network, which kafka-python cannot serve while a
        rebalance is in progress.
        """
        if tp not in consumer.assignment():
            return  # no longer ours: its next owner starts at the committed offset
        resume = self._resume.get(tp)
        target = first if not stale else (None if resume is None else min(first, resume))
        try:
            if target is None:
                consumer.seek_to_beginning(tp)
            else:
                consumer.seek(tp, target)
        except (*KAFKA_ERRORS, AssertionError) as exc:
            log.info("webhook consumer: no restart of %s (%s)", tp, type(exc).__name__)

    def _contiguous(self, consumer: KafkaConsumer, tp: TopicPartition, first: int) -> bool:
        """Whether a batch starting at ``first`` continues the handover of ``tp``.

        Within an assignment the handover goes on without a gap: a committed offset
        is the oldest unsettled record, or the one after the last handed over, so a
        record skipped here would be committed past and never delivered. A batch
        that does not continue it is dropped and the partition read again from where
        the handover is. (The first batch of an assignment starts at the committed
        offset, or at the oldest unsettled record of a partition kept across the
        rebalance; a poll that straddled a rebalance is dropped whole, see
        :meth:`_take_all`.) A gap that stays (records expired by retention) is
        accepted the second time, with a warning.
        """
        expected = self.tracker.expected(tp)
        if expected is None or first == expected:
            self._gaps.pop(tp, None)
            return True
        if first > expected and self._gaps.get(tp) == (expected, first):
            log.warning(
                "webhook consumer: %s offsets %d-%d are gone from the log; going on at %d",
                tp,
                expected,
                first - 1,
                first,
            )
            self._gaps.pop(tp, None)
            return True
        if first > expected:
            self._gaps[tp] = (expected, first)
        consumer.seek(tp, expected)
        return False

    def _resume_due(self, consumer: KafkaConsumer) -> None:
        now = time.monotonic()
        for tp, when in list(self._waiting.items()):
            if when <= now:
                del self._waiting[tp]
                if tp in self.assigned and not self._flow_paused:
                    consumer.resume(tp)

    def _flow(self, consumer: KafkaConsumer) -> None:
        busy = self.tracker.in_flight
        if not self._flow_paused and busy > MAX_IN_FLIGHT:
            self._flow_paused = True
            consumer.pause(*self.assigned)
            log.info("webhook consumer paused: %d records in flight", busy)
        elif self._flow_paused and busy < MAX_IN_FLIGHT // 2:
            self._flow_paused = False
            consumer.resume(*[tp for tp in self.assigned if tp not in self._waiting])

    def _commit(self, consumer: KafkaConsumer, only: list[TopicPartition] | None = None) -> None:
        offsets = self.tracker.committable(only)
        if not offsets:
            return
        try:
            consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})
        except KAFKA_ERRORS as exc:
            log.warning("webhook offsets not committed (%s)", type(exc).__name__)
            return
        self.tracker.committed(offsets)

    def _measure(self, consumer: KafkaConsumer) -> None:
        waiting = 0
        for tp in self.assigned & consumer.assignment():
            if tp.topic in self._retry_topics:
                high = consumer.highwater(tp)
                position = self.tracker.committable([tp]).get(tp)
                if high is not None and position is not None:
                    waiting += max(0, high - position)
        self.retries_waiting = waiting

    # -- rebalances ---------------------------------------------------------------
    # kafka-python 3 runs rebalance listeners on its IO thread, where a blocking call
    # (commit, position) raises: the listener commits with commit_async and returns.
    def revoked(self, tps: list[TopicPartition], *, commit: bool = True) -> None:
        """Commit what is settled in ``tps`` (without waiting) and forget them."""
        with self._rebalance_lock:
            self._rebalances += 1
            self._revoked(tps, commit)

    def _revoked(self, tps: list[TopicPartition], commit: bool) -> None:
        self._revoked_last = set(tps)
        self._resume = self.tracker.resume_points(tps)
        offsets = self.tracker.committable(tps) if commit else {}
        if offsets and self._consumer is not None:
            try:
                self._consumer.commit_async(
                    {tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()}
                )
            except KAFKA_ERRORS as exc:  # the next owner delivers them again
                log.warning("webhook offsets not committed on revoke (%s)", type(exc).__name__)
        self.tracker.revoke(tps)
        for tp in tps:
            self.assigned.discard(tp)
            self._waiting.pop(tp, None)
        log.info("webhook consumer: %d partitions revoked", len(tps))

    def assigned_to(self, tps: list[TopicPartition]) -> None:
        """Start tracking ``tps``."""
        with self._rebalance_lock:
            self._rebalances += 1
            self._assigned_to(tps)

    def _assigned_to(self, tps: list[TopicPartition]) -> None:
        self._kept = set(tps) & self._revoked_last
        self.tracker.assign(tps)
        if self._consumer is not None:
            # A partition ours before and again: kafka-python may keep its fetch
            # position, past records handed over and not settled yet (their
            # settlements no longer count). Read it again from the oldest of them.
            for tp in self._kept & set(self._resume):
                try:
                    self._consumer.seek(tp, self._resume[tp])
                except (*KAFKA_ERRORS, AssertionError) as exc:  # never break the rebalance
                    log.warning("webhook consumer: %s not read again (%s)", tp, exc)
        self.assigned.update(tps)
        if self._consumer is not None and tps:
            if self._flow_paused:
                self._consumer.pause(*tps)
            else:
                # A retry partition paused by the previous generation (and forgotten at
                # the revocation) would otherwise stay paused for good.
                self._consumer.resume(*tps)
        log.info("webhook consumer: %d partitions assigned", len(tps))


def _rewind(consumer: KafkaConsumer, tp: TopicPartition, offset: int) -> None:
    """Fetch ``tp`` again from ``offset`` if it is still ours (else its next owner will)."""
    try:
        if tp in consumer.assignment():
            consumer.seek(tp, offset)
    except (*KAFKA_ERRORS, AssertionError) as exc:
        log.info("webhook consumer: no rewind of %s (%s)", tp, type(exc).__name__)


class _Listener(ConsumerRebalanceListener):
    def __init__(self, owner: GroupConsumer) -> None:
        self._owner = owner

    def on_partitions_revoked(self, revoked: Any) -> None:
        self._owner.revoked(list(revoked))

    def on_partitions_assigned(self, assigned: Any) -> None:
        self._owner.assigned_to(list(assigned))

    def on_partitions_lost(self, lost: Any) -> None:
        self._owner.revoked(list(lost), commit=False)

"""Hand encoded records to kafka-python with as little per-record work as possible.

Partitioning is the Java client's (and kafka-python's ``DefaultPartitioner``):
``murmur2(key) & 0x7fffffff % partition_count`` over the sorted partition ids, so
every client of the audit topic agrees where a tenant lives. Keys are tenant ids,
a small set, so the pure-Python murmur2 runs once per tenant, not per record.

The fast path, :meth:`Appender.append_runs`, uses kafka-python 3.x internals,
guarded (:mod:`velora.kafka_internals`): its private modules
(``kafka.producer.producer_batch``, ``kafka.producer.record_accumulator``,
``kafka.record.memory_records``) are imported only by :func:`_probe`, which runs
once per process on the exact version the project pins, checks the classes and
methods used here, and appends to, acknowledges and fails a batch it builds to
check the offsets and errors a :class:`Run` reads. Each producer's accumulator
and sender are checked too (:func:`fast_path_supported`). If anything differs,
every record goes through the public ``KafkaProducer.send`` and one warning is
logged per process. Both paths write the same records to the same partitions
(``tests/test_producer.py`` runs each).

What it does: the records are grouped by partition and each group is appended
to the partition's open ``ProducerBatch`` (or new ones) under the accumulator's
partition lock, as ``RecordAccumulator.append`` would, but without the checks
``send`` makes that hold for every ingest record by construction (bytes key and
value, no headers, no serializer, a size far under ``max_request_size``) and
without a ``FutureRecordMetadata`` per record. The caller waits on each batch's
own future instead (:class:`Run`): a record's offset is the batch's base offset
plus its index in the batch. That halves kafka-python's per-record cost, on the
caller's thread (creating the future) and on the I/O thread (completing it).

One kafka-python behaviour it does not follow: a batch the broker refuses as
``MESSAGE_TOO_LARGE`` is split and re-sent by kafka-python with its record
futures re-bound, and the original batch's future never completes. A run has no
record futures to re-bind, so its wait times out and the send counts as not
acknowledged (the records may still be written; a resend dedups on
``event_id``). With the project's sizes this cannot happen: batches stop at
``batch_size`` (512 KiB) plus one event (at most 32 KiB), under the broker's
1 MiB default ``message.max.bytes``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kafka import KafkaProducer
from kafka.errors import IllegalStateError, KafkaError, KafkaTimeoutError
from kafka.partitioner import DefaultPartitioner, Partitioner, murmur2
from kafka.structs import TopicPartition

from velora.kafka_internals import InternalsChanged, InternalsGuard, require

_MAX_CACHED_KEYS = 100_000
_NO_HEADERS: list[tuple[str, bytes]] = []


class TenantPartitioner(Partitioner):
    """murmur2 partitioning like ``DefaultPartitioner``, cached per key and partition set."""

    def __init__(self) -> None:
        self._cache: dict[bytes, tuple[int, int]] = {}
        self._fallback = DefaultPartitioner()

    def for_key(self, key: bytes, partitions: Sequence[int] | set[int]) -> int:
        """The partition of ``key`` among ``partitions`` (the topic's partition ids)."""
        hit = self._cache.get(key)
        if hit is not None and hit[0] == len(partitions):
            return hit[1]
        ordered = sorted(partitions)
        chosen = ordered[(murmur2(key) & 0x7FFFFFFF) % len(ordered)]
        if len(self._cache) >= _MAX_CACHED_KEYS:
            self._cache.clear()
        self._cache[key] = (len(ordered), chosen)
        return chosen

    def partition(
        self,
        topic: str,
        key: Any,
        serialized_key: bytes | None,
        value: Any,
        serialized_value: bytes | None,
        cluster: Any,
    ) -> int:
        """kafka-python's partitioner hook (used by the public ``send`` path)."""
        partitions = cluster.partitions_for_topic(topic)
        if serialized_key is None or not partitions:
            return int(self._fallback.partition(topic, key, None, value, None, cluster))
        return self.for_key(serialized_key, partitions)


def fast_path_supported(producer: KafkaProducer) -> bool:
    """Whether :class:`Appender` may append to ``producer``'s batches directly.

    False, with one warning per process, on another kafka-python version, when a
    private module, class or method it uses is not there or not as expected, or
    when this producer's accumulator and sender are not shaped as expected.
    """
    if GUARD.internals() is None:
        return False
    reason = _producer_mismatch(producer)
    if reason is not None:
        GUARD.decline(reason)
        return False
    return True


def _producer_mismatch(producer: KafkaProducer) -> str | None:
    """What of ``producer``'s internals differs from what :func:`_fill` uses, if anything."""
    acc = getattr(producer, "_accumulator", None)
    config = getattr(acc, "config", None)
    appends = getattr(acc, "_appends_in_progress", None)
    checks = {
        "RecordAccumulator._tp_lock": callable(getattr(acc, "_tp_lock", None)),
        "RecordAccumulator._closed": isinstance(getattr(acc, "_closed", None), bool),
        "RecordAccumulator._batches": isinstance(getattr(acc, "_batches", None), defaultdict),
        "RecordAccumulator._incomplete": callable(
            getattr(getattr(acc, "_incomplete", None), "add", None)
        ),
        "RecordAccumulator._appends_in_progress": callable(getattr(appends, "increment", None))
        and callable(getattr(appends, "decrement", None)),
        "RecordAccumulator.config": isinstance(config, dict)
        and {"message_version", "compression_attrs", "batch_size"} <= config.keys(),
        "KafkaProducer._sender.wakeup": callable(
            getattr(getattr(producer, "_sender", None), "wakeup", None)
        ),
    }
    for name, ok in checks.items():
        if not ok:
            return f"{name} is missing or not as expected"
    if config["message_version"] != 2:
        return f"the producer writes message format v{config['message_version']}"
    return None


class Run:
    """Records of one ``append_runs`` call that share one acknowledgement.

    On the fast path, a run is the records that went into one kafka-python
    ``ProducerBatch``, at consecutive indexes from ``first``; on the public path,
    one record and its own future.
    """

    __slots__ = ("_batch", "_future", "first", "indexes", "partition")

    def __init__(
        self, future: Any, partition: int, first: int, indexes: list[int], *, batch: bool
    ) -> None:
        self._future = future
        self._batch = batch
        self.partition = partition
        self.first = first
        self.indexes = indexes
        """Positions, in the records given to ``append_runs``, of this run's records."""

    @property
    def done(self) -> bool:
        """Whether Kafka answered (acknowledged or failed) this run."""
        return bool(self._future.is_done)

    def wait(self, timeout: float) -> int:
        """The offset of the run's first record once acknowledged.

        Raises ``KafkaTimeoutError`` after ``timeout`` seconds, or the error the
        batch failed with (for example when its delivery timed out or the
        producer was closed).
        """
        fut = self._future
        if not self._batch:
            md = fut.get(timeout)
            self.partition = md.partition
            return int(md.offset)
        if not fut.is_done and not fut.wait(timeout):
            raise KafkaTimeoutError(f"batch not acknowledged within {timeout:.1f}s")
        if fut.exception is not None:
            raise fut.exception
        return self._first_offset(fut.value)

    def on_result(
        self, acked: Callable[[int, int], None], failed: Callable[[BaseException], None]
    ) -> None:
        """Call ``acked(partition, first_offset)`` or ``failed(error)`` once Kafka answered.

        The call happens on kafka-python's I/O thread, or at once if the run is
        already done.
        """
        fut = self._future
        if not self._batch:
            fut.add_callback(lambda md: acked(md.partition, md.offset))
            fut.add_errback(failed)
            return

        def done(value: Any) -> None:
            try:
                offset = self._first_offset(value)
            except KafkaError as exc:
                failed(exc)
                return
            acked(self.partition, offset)

        fut.add_callback(done)
        fut.add_errback(failed)

    def _first_offset(self, value: Any) -> int:
        """The first record's offset from a batch future's value; raises a failed batch's error.

        kafka-python completes a failed or aborted batch's future successfully,
        with a function giving each record's error.
        """
        base_offset, _, record_errors = value
        if record_errors is not None:
            error = record_errors(self.first)
            raise error if isinstance(error, KafkaError) else KafkaError(str(error))
        return int(base_offset) + self.first


class Appender:
    """Append ``(key, value)`` records of one topic to a kafka-python producer."""

    def __init__(
        self, producer: KafkaProducer, topic: str, partitioner: TenantPartitioner, *, fast: bool
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._partitioner = partitioner
        self._internals = GUARD.internals() if fast and fast_path_supported(producer) else None
        self.fast = self._internals is not None
        """Whether :meth:`append_runs` appends to kafka-python's batches directly."""
        self._tps: dict[bytes, TopicPartition] = {}
        self._partitions: set[int] = set()
        self._partition_count = 0

    def append_runs(self, records: Sequence[tuple[bytes, bytes]], out: list[Run]) -> None:
        """Append every record, adding a :class:`Run` to ``out`` per group queued.

        Every record is in exactly one run of ``out`` once this returns. Raises
        kafka-python's errors (``KafkaTimeoutError`` when the topic's metadata
        cannot be had within ``max_block_ms``); the runs queued before an error
        stay in ``out``.
        """
        producer, topic, internals = self._producer, self._topic, self._internals
        if internals is None:
            send = producer.send
            for i, (key, value) in enumerate(records):
                out.append(Run(send(topic, value, key), -1, 0, [i], batch=False))
            return
        tps = self._placements()
        groups: dict[TopicPartition, list[int]] = {}
        for i, (key, _) in enumerate(records):
            tp = tps.get(key) or self._place(key)
            group = groups.get(tp)
            if group is None:
                groups[tp] = [i]
            else:
                group.append(i)
        acc = producer._accumulator
        timestamp_ms = int(time.time() * 1000)
        wake = False
        # Counted like RecordAccumulator.append, so abort_incomplete_batches waits for us.
        acc._appends_in_progress.increment()
        try:
            for tp, indexes in groups.items():
                wake = _fill(internals, acc, tp, records, indexes, timestamp_ms, out) or wake
        finally:
            acc._appends_in_progress.decrement()
            if wake:
                producer._sender.wakeup()

    def _placements(self) -> dict[bytes, TopicPartition]:
        partitions = self._producer.partitions_for(self._topic)  # public; waits for metadata
        if len(partitions) != self._partition_count:  # partitions were added: re-place keys
            self._tps.clear()
            self._partition_count = len(partitions)
            self._partitions = partitions
        return self._tps

    def _place(self, key: bytes) -> TopicPartition:
        if len(self._tps) >= _MAX_CACHED_KEYS:
            self._tps.clear()
        partition = self._partitioner.for_key(key, self._partitions)
        tp = self._tps[key] = TopicPartition(self._topic, partition)
        return tp


def _fill(
    internals: _Internals,
    acc: Any,
    tp: TopicPartition,
    records: Sequence[tuple[bytes, bytes]],
    indexes: list[int],
    timestamp_ms: int,
    out: list[Run],
) -> bool:
    """Append the records at ``indexes`` to ``tp``'s batches; True if the sender should wake.

    Mirrors ``RecordAccumulator.append`` (same lock, same batch creation) for a
    group of records at once.
    """
    config = acc.config
    now = time.monotonic()
    wake = False
    with acc._tp_lock(tp):
        if acc._closed:
            raise IllegalStateError("RecordAccumulator is closed")
        dq = acc._batches[tp]
        batch = dq[-1] if dq else None
        pos, total = 0, len(indexes)
        while pos < total:
            fresh = batch is None
            if batch is None:
                builder = internals.records_builder(
                    config["message_version"], config["compression_attrs"], config["batch_size"]
                )
                batch = internals.producer_batch(tp, builder, now=now)
                dq.append(batch)
                acc._incomplete.add(batch)
                wake = True
            records_builder = batch.records
            append = records_builder.append
            first = records_builder.next_offset()
            taken: list[int] = []
            for i in indexes[pos:]:
                key, value = records[i]
                if append(timestamp_ms, key, value, _NO_HEADERS) is None:
                    break
                taken.append(i)
            if taken:
                batch.last_append = now
                out.append(Run(batch.produce_future, tp.partition, first, taken, batch=True))
                pos += len(taken)
            elif fresh:  # an empty batch always takes its first record: never loop forever
                raise IllegalStateError("a new record batch refused its first record")
            batch = None  # the rest (if any) goes into a new batch
        return wake or len(dq) > 1 or dq[-1].records.is_full()


@dataclass(frozen=True)
class _Internals:
    """The private classes :func:`_fill` builds batches with."""

    producer_batch: type
    records_builder: type


def _probe() -> _Internals:
    """Import and check every kafka-python internal the fast path uses; raise if one differs."""
    from kafka.producer.producer_batch import ProducerBatch
    from kafka.producer.record_accumulator import RecordAccumulator
    from kafka.record.memory_records import MemoryRecordsBuilder

    require(RecordAccumulator, "_tp_lock", "append")
    require(MemoryRecordsBuilder, "append", "next_offset", "is_full")
    require(ProducerBatch, "complete", "abort")
    _self_test(ProducerBatch, MemoryRecordsBuilder)
    return _Internals(ProducerBatch, MemoryRecordsBuilder)


def _self_test(batch_class: type, builder_class: type) -> None:
    """Append to batches built here, complete one and fail one; raise unless runs read right.

    This checks what ``hasattr`` on classes cannot: the attributes kafka-python sets
    on a batch (``records``, ``produce_future``, ``last_append``) and the value a
    batch's future completes with, from which :class:`Run` reads offsets and errors.
    """
    tp = TopicPartition("probe", 0)
    batches = []
    for _ in range(2):
        builder = builder_class(2, 0, 1024)
        batch = batch_class(tp, builder, now=0.0)
        require(batch, "records", "produce_future", "last_append")
        for value in (b"a", b"b"):
            if builder.append(0, b"key", value, _NO_HEADERS) is None or builder.is_full():
                raise InternalsChanged("a new record batch refused a small record")
        if batch.records is not builder or builder.next_offset() != 2:
            raise InternalsChanged("ProducerBatch.records is not the batch's builder")
        batches.append(batch)
    acked = Run(batches[0].produce_future, 0, 1, [0], batch=True)
    batches[0].complete(41, -1)
    if not acked.done or acked.wait(0) != 42:
        raise InternalsChanged("an acknowledged batch's future gave another offset")
    failed = Run(batches[1].produce_future, 0, 1, [0], batch=True)
    batches[1].abort(KafkaTimeoutError("probe"))
    try:
        failed.wait(0)
    except KafkaTimeoutError:
        return
    raise InternalsChanged("a failed batch's future did not give the record's error")


GUARD: InternalsGuard[_Internals] = InternalsGuard("the ingest batch append", _probe)
"""Probes the fast path's kafka-python internals once per process."""

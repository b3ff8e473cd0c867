"""Hand encoded records to kafka-python with as little per-record work as possible.

Partitioning is the Java client's (and kafka-python's ``DefaultPartitioner``):
``murmur2(key) & 0x7fffffff % partition_count`` over the sorted partition ids, so
every client of the audit topic agrees where a tenant lives. Keys are tenant ids,
a small set, so the pure-Python murmur2 runs once per tenant, not per record.

The fast path, :meth:`Appender.append_runs`, uses kafka-python 3.x internals.
It is taken only on the exact version the project pins and only when those
internals have the expected shape (:func:`fast_path_supported`); otherwise every
record goes through the public ``KafkaProducer.send``. Both paths write the same
records to the same partitions (``tests/test_producer.py`` runs each).

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
from collections.abc import Callable, Sequence
from typing import Any

import kafka
from kafka import KafkaProducer
from kafka.errors import IllegalStateError, KafkaError, KafkaTimeoutError
from kafka.partitioner.abc import Partitioner
from kafka.partitioner.default import DefaultPartitioner, murmur2
from kafka.producer.producer_batch import ProducerBatch
from kafka.record.memory_records import MemoryRecordsBuilder
from kafka.structs import TopicPartition

PINNED_KAFKA_PYTHON = "3.0.12"
"""The kafka-python version whose internals the fast paths were written against."""
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
    """Whether ``producer`` has the kafka-python internals :class:`Appender` uses."""
    acc = getattr(producer, "_accumulator", None)
    sender = getattr(producer, "_sender", None)
    config = getattr(acc, "config", None)
    return (
        kafka.__version__ == PINNED_KAFKA_PYTHON
        and callable(getattr(acc, "_tp_lock", None))
        and isinstance(getattr(acc, "_batches", None), dict)
        and callable(getattr(getattr(acc, "_incomplete", None), "add", None))
        and callable(getattr(getattr(acc, "_appends_in_progress", None), "increment", None))
        and isinstance(config, dict)
        and config.get("message_version") == 2
        and callable(getattr(sender, "wakeup", None))
    )


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
        self.fast = fast and fast_path_supported(producer)
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
        producer, topic = self._producer, self._topic
        if not self.fast:
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
                wake = _fill(acc, tp, records, indexes, timestamp_ms, out) or wake
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
                builder = MemoryRecordsBuilder(
                    config["message_version"], config["compression_attrs"], config["batch_size"]
                )
                batch = ProducerBatch(tp, builder, now=now)
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

"""Hand encoded records to kafka-python with as little per-record work as possible.

Partitioning is the Java client's (and kafka-python's ``DefaultPartitioner``):
``murmur2(key) & 0x7fffffff % partition_count`` over the sorted partition ids, so
every client of the audit topic agrees where a tenant lives. Keys are tenant ids,
a small set, so the pure-Python murmur2 runs once per tenant, not per record.

The fast path: ``KafkaProducer.send`` spends ~5-10 us per record on checks that
hold for every ingest record by construction (bytes key and value, no headers,
no serializer, a size far under ``max_request_size``, metadata already known),
plus a partitioner call and an eagerly formatted debug log line. That is about a
third of the whole per-event budget, so :class:`Appender` does what ``send``
does after those checks: ``RecordAccumulator.append`` then ``Sender.wakeup`` when
a batch fills or starts. These are kafka-python internals, so the fast path is
taken only on the 3.x line the project pins (``kafka-python>=3.0.12,<4``) and
only when they have the expected shape; otherwise every record goes through
the public ``send``. Both paths produce the same records in the same
partitions (``tests/test_producer.py`` runs both).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import kafka
from kafka import KafkaProducer
from kafka.partitioner.abc import Partitioner
from kafka.partitioner.default import DefaultPartitioner, murmur2
from kafka.structs import TopicPartition

_MAX_CACHED_KEYS = 100_000


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
    """Whether ``producer`` has the kafka-python 3.x internals :class:`Appender` uses."""
    acc = getattr(producer, "_accumulator", None)
    sender = getattr(producer, "_sender", None)
    return (
        kafka.__version__.startswith("3.")
        and callable(getattr(acc, "append", None))
        and callable(getattr(sender, "wakeup", None))
    )


class Appender:
    """Append ``(key, value)`` records of one topic; returns kafka-python's futures."""

    def __init__(
        self, producer: KafkaProducer, topic: str, partitioner: TenantPartitioner, *, fast: bool
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._partitioner = partitioner
        self.fast = fast and fast_path_supported(producer)
        self._tps: dict[bytes, TopicPartition] = {}
        self._partition_count = 0

    def _place(self, key: bytes, partitions: set[int]) -> TopicPartition:
        if len(self._tps) >= _MAX_CACHED_KEYS:
            self._tps.clear()
        tp = TopicPartition(self._topic, self._partitioner.for_key(key, partitions))
        self._tps[key] = tp
        return tp

    def append_all(self, records: Sequence[tuple[bytes, bytes]], out: list[Any]) -> None:
        """Append every record, adding its future to ``out`` as soon as it is queued.

        Raises kafka-python's errors (``KafkaTimeoutError`` when the topic's
        metadata cannot be had within ``max_block_ms``); records appended before
        the error stay in ``out``.
        """
        producer, topic = self._producer, self._topic
        if not self.fast:
            send = producer.send
            for key, value in records:
                out.append(send(topic, value, key))
            return
        partitions = producer.partitions_for(topic)  # public; waits for metadata if needed
        if len(partitions) != self._partition_count:  # partitions were added: re-place keys
            self._tps.clear()
            self._partition_count = len(partitions)
        tps = self._tps
        append = producer._accumulator.append
        wakeup = producer._sender.wakeup
        headers: list[tuple[str, bytes]] = []
        for key, value in records:
            tp = tps.get(key)
            if tp is None:
                tp = self._place(key, partitions)
            future, batch_full, new_batch, _ = append(tp, None, key, value, headers)
            if batch_full or new_batch:
                wakeup()
            out.append(future)

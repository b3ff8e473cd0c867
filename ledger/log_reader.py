"""The materializer's view of the audit topic: every partition, from the stored offsets.

:class:`LogReader` owns one ``KafkaConsumer`` (no group, no auto-commit,
``read_committed``, ``auto_offset_reset="none"``) for one run of the materializer.

- :meth:`LogReader.open` assigns every partition and seeks each to the offset
  stored in DuckDB, after checking that those offsets belong to this log: a stored
  offset past a partition's end or before its start, a partition that no longer
  exists, or a topic id that differs from the one the ledger was built from (a
  recreated topic, a DuckDB file from another cluster) raises
  :class:`~velora.errors.LedgerMismatch`. The ledger never rewinds silently.
- :meth:`LogReader.poll` returns one decoded poll (:class:`Poll`): its rows, its
  quarantined records, and per partition the offset of the *next* record to read.
- A record of an unknown writer schema **holds** its partition at that offset: the
  partition is paused there (nothing at or after it is returned) while the others go
  on. Every :data:`HOLD_RECHECK_S` the schema registry is re-read; once the schema is
  deployed the partition resumes at the held record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from kafka import KafkaConsumer
from kafka.errors import OffsetOutOfRangeError
from kafka.structs import TopicPartition

from ledger.decode import Decoded, EventDecoder
from ledger.record_runs import install as install_record_runs
from velora.errors import LedgerMismatch, Unavailable
from velora.kafka_clients import close_quietly, map_kafka_errors, new_consumer
from velora.settings import Settings

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 50
HOLD_RECHECK_S = 5.0
REBUILD_HINT = "the ledger does not belong to this log; run `velora ledger rebuild`"


@dataclass
class Poll:
    """One decoded poll: its rows, its quarantined records, and the partitions it advanced."""

    table: pa.Table
    read: int
    next_offsets: dict[int, int]
    quarantined: list[tuple[int, int, str]] = field(default_factory=list)


class LogReader:
    """One run's consumer of the audit topic (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        decoder: EventDecoder,
        *,
        record_runs: bool = True,
        topic_id: Callable[[], str | None] | None = None,
    ) -> None:
        """``topic_id()`` names the audit topic's current id (None if the broker has none)."""
        self.settings = settings
        self.topic = settings.audit_topic
        self.decoder = decoder
        self._record_runs = record_runs
        self._topic_id = topic_id
        self._consumer: KafkaConsumer | None = None
        self._tps: list[TopicPartition] = []
        self._runs = False
        self._per_run = 100.0  # records per record batch, averaged: sizes polls in records
        self._sent: dict[int, int] = {}
        self.held: dict[int, tuple[int, str]] = {}
        """partition -> ``(offset, fingerprint)`` of a record whose schema is not deployed."""
        self._rechecked = 0.0

    # -- open -------------------------------------------------------------------
    def open(self, stored: dict[int, int], recorded_topic_id: str | None) -> dict[int, int]:
        """Assign and seek every partition; return the end offsets (last stable offsets)."""
        self._consumer = consumer = new_consumer(
            self.settings,
            "velora-materializer",
            max_poll_records=self.settings.materializer_max_batch,
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=16 * 1024 * 1024,
            fetch_max_wait_ms=100,
            receive_buffer_bytes=4 * 1024 * 1024,
        )
        with map_kafka_errors("audit topic assignment"):
            partitions = consumer.partitions_for_topic(self.topic)
            if not partitions:
                raise Unavailable(f"topic {self.topic} has no partitions yet", retry_after=1)
            self._check_identity(recorded_topic_id)
            self._tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(self._tps)
            start = {tp.partition: o for tp, o in consumer.beginning_offsets(self._tps).items()}
            end = {tp.partition: o for tp, o in consumer.end_offsets(self._tps).items()}
            check_offsets(self.topic, stored, start, end)
            for tp in self._tps:
                consumer.seek(tp, stored.get(tp.partition, start[tp.partition]))
            self._sent = {tp.partition: consumer.position(tp) for tp in self._tps}
        self._runs = install_record_runs(consumer) if self._record_runs else False
        return end

    def _check_identity(self, recorded: str | None) -> None:
        current = self._topic_id() if self._topic_id is not None else None
        if recorded is not None and current is not None and recorded != current:
            raise LedgerMismatch(
                f"topic {self.topic} has id {current}, but the ledger was built from "
                f"topic id {recorded} (the topic was recreated, or the file comes from "
                f"another cluster): {REBUILD_HINT}"
            )

    def current_topic_id(self) -> str | None:
        """The audit topic's id as the broker reports it (recorded by the first run)."""
        return self._topic_id() if self._topic_id is not None else None

    # -- poll -------------------------------------------------------------------
    def poll(self) -> Poll | None:
        """One poll, decoded; None when no partition advanced."""
        consumer = self._consumer
        if consumer is None:
            raise Unavailable("the log reader is not open", retry_after=1)
        limit = self.settings.materializer_max_batch
        if self._runs:  # then poll() counts record batches, not records
            limit = max(1, min(limit, int(limit / self._per_run)))
        try:
            with map_kafka_errors("audit topic poll"):
                polled = consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=limit)
                advanced = {}
                for tp in self._tps:
                    pos = consumer.position(tp)
                    if pos is not None and pos != self._sent[tp.partition]:
                        advanced[tp.partition] = self._sent[tp.partition] = pos
        except Unavailable as exc:
            if isinstance(exc.__cause__, OffsetOutOfRangeError):
                raise LedgerMismatch(
                    f"a stored offset of {self.topic} is out of range ({exc.__cause__}): "
                    f"{REBUILD_HINT}"
                ) from exc.__cause__
            raise
        if not advanced:
            return None
        decoded, read = self._decode(polled)
        if self._runs and polled:
            batches = sum(len(rs) for rs in polled.values())
            self._per_run = 0.8 * self._per_run + 0.2 * (read / max(1, batches))
        for partition, (offset, fingerprint) in decoded.held.items():
            self._hold(consumer, partition, offset, fingerprint)
            advanced[partition] = offset
        return Poll(decoded.table, read, advanced, decoded.quarantined)

    def _decode(self, polled: dict[TopicPartition, list[Any]]) -> tuple[Decoded, int]:
        """One poll -> rows; the poll holds RecordRuns, or ConsumerRecords."""
        if self._runs:
            items = [(tp.partition, run) for tp, rs in polled.items() for run in rs]
            return self.decoder.decode_runs(items), sum(len(run) for _, run in items)
        values: list[bytes | None] = []
        partitions: list[int] = []
        offsets: list[int] = []
        for tp, records in polled.items():
            values.extend([r.value for r in records])
            offsets.extend([r.offset for r in records])
            partitions.extend([tp.partition] * len(records))
        decoded = self.decoder.decode(
            values, np.asarray(partitions, np.int32), np.asarray(offsets, np.int64)
        )
        return decoded, len(values)

    # -- holds ------------------------------------------------------------------
    def _hold(self, consumer: KafkaConsumer, partition: int, offset: int, fingerprint: str) -> None:
        """Stop ``partition`` at ``offset`` until its writer schema is deployed."""
        tp = TopicPartition(self.topic, partition)
        with map_kafka_errors("audit topic hold"):
            consumer.seek(tp, offset)
            consumer.pause(tp)
        self._sent[partition] = offset
        if self.held.get(partition) != (offset, fingerprint):
            log.error(
                "partition %d of %s held at offset %d: deploy schema %s (unknown writer schema)",
                partition,
                self.topic,
                offset,
                fingerprint,
            )
        self.held[partition] = (offset, fingerprint)

    def recheck_holds(self) -> None:
        """Every few seconds while a partition is held: resume it once its schema is known."""
        if not self.held or time.monotonic() - self._rechecked < HOLD_RECHECK_S:
            return
        self._rechecked = time.monotonic()
        registry = self.decoder.codec.registry
        if registry.refresh():
            log.info("schema registry reloaded: checking held partitions")
        known = {sv.fingerprint.hex() for sv in registry}
        consumer = self._consumer
        for partition, (offset, fingerprint) in list(self.held.items()):
            if fingerprint in known and consumer is not None:
                tp = TopicPartition(self.topic, partition)
                with map_kafka_errors("audit topic resume"):
                    consumer.seek(tp, offset)
                    consumer.resume(tp)
                del self.held[partition]
                log.info("partition %d resumes at offset %d: schema deployed", partition, offset)

    # -- end offsets ------------------------------------------------------------
    def end_offsets(self) -> dict[int, int]:
        """The current end offsets (for the lag); :class:`Unavailable` if partitions changed."""
        consumer = self._consumer
        if consumer is None:
            raise Unavailable("the log reader is not open", retry_after=1)
        with map_kafka_errors("audit topic end offsets"):
            partitions = consumer.partitions_for_topic(self.topic) or set()
            if len(partitions) != len(self._tps):
                raise Unavailable(f"{self.topic} now has {len(partitions)} partitions; reassigning")
            return {tp.partition: off for tp, off in consumer.end_offsets(self._tps).items()}

    def close(self) -> None:
        """Close the consumer."""
        if self._consumer is not None:
            close_quietly(self._consumer)
            self._consumer = None


def check_offsets(
    topic: str, stored: dict[int, int], start: dict[int, int], end: dict[int, int]
) -> None:
    """Every stored offset must lie within its partition's log (never rewind, never skip)."""
    for partition, offset in sorted(stored.items()):
        if partition not in end:
            raise LedgerMismatch(
                f"the ledger has an offset for partition {partition} of {topic}, which no "
                f"longer exists: {REBUILD_HINT}"
            )
        low, high = start[partition], end[partition]
        if not low <= offset <= high:
            raise LedgerMismatch(
                f"stored offset {offset} of {topic} partition {partition} is outside the "
                f"log ({low}..{high}): {REBUILD_HINT}"
            )

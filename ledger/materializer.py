"""The Kafka -> DuckDB loop that materializes the audit topic exactly once.

Two threads, one bounded queue between them:

- the **reader** owns the :class:`~kafka.KafkaConsumer` (``read_committed``, no
  auto-commit, no group): it assigns every partition of the audit topic, seeks
  each one to the offset stored in DuckDB (or to the beginning), and polls. Each
  poll becomes one :class:`_Batch`: its records decoded
  (:class:`~ledger.decode.EventDecoder`) into an Arrow table shaped like
  ``audit_events``, and per partition the consumer's position after the poll,
  i.e. the offset of the NEXT record to read.
- the **writer** merges whatever polls are queued (up to ``MERGE_POLLS`` polls of
  ``materializer_max_batch`` rows) and hands them to
  :meth:`~ledger.store.LedgerStore.write_batch`, which commits the rows and the
  offsets in one transaction.

Kafka parsing and Avro decoding hold the GIL while DuckDB's insert releases it, so
the two threads overlap on two cores. If a write fails, or the consumer fails,
both threads stop and the whole loop starts again from the offsets stored in
DuckDB after a short back-off, so nothing is lost or applied twice.

Readiness: at start the reader asks for the end offsets (the last stable offsets,
as ``read_committed`` sees them). The materializer is *caught up* once every
partition's stored offset has reached them; the lag is measured against end
offsets refreshed about once a second.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from ledger.decode import Decoded, EventDecoder, dedup
from ledger.record_runs import install as install_record_runs
from ledger.store import LedgerStore
from velora.errors import Unavailable, VeloraError
from velora.kafka_clients import KAFKA_ERRORS, close_quietly, new_consumer
from velora.settings import Settings

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 50
REFRESH_SECONDS = 1.0
RETRY_SECONDS = 1.0
QUEUE_DEPTH = 8
# A DuckDB transaction costs a lot on its own (the primary-key index, the WAL
# fsync): 5,000-row transactions commit ~70k rows/s here, 20,000-row ones ~120k/s.
# So when polls queue up (catch-up), the writer merges up to this many polls'
# worth of rows into one transaction; at a steady trickle each poll commits alone.
MERGE_POLLS = 8
# The reader thread holds the GIL for long stretches (kafka-python parses records in
# Python); every DuckDB call of the writer needs it back briefly. With the default
# 5 ms switch interval each hand-back costs up to 5 ms and the writer runs at a
# third of its speed; 0.5 ms keeps it fed.
SWITCH_INTERVAL = 0.0005

#: ``on_batch(rows_in_batch, stored_offsets)`` after every commit (progress bars, metrics).
BatchCallback = Callable[[int, dict[int, int]], None]


@dataclass
class _Batch:
    """One decoded poll: its rows, and the next offset of every partition it advanced."""

    table: pa.Table
    read: int
    skipped: int
    next_offsets: dict[int, int]


@dataclass
class Status:
    """A snapshot of the materializer's progress."""

    running: bool
    caught_up: bool
    stored: dict[int, int] = field(default_factory=dict)
    target: dict[int, int] | None = None
    end: dict[int, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def lag(self) -> int:
        """Records in the log (at the last refresh) that are not materialized yet."""
        return sum(max(0, e - self.stored.get(p, 0)) for p, e in self.end.items())


class Materializer:
    """Follows the audit topic into a :class:`LedgerStore`; start it, stop it, watch it."""

    def __init__(
        self,
        settings: Settings,
        store: LedgerStore,
        *,
        decoder: EventDecoder | None = None,
        on_batch: BatchCallback | None = None,
        record_runs: bool = True,
    ) -> None:
        """``record_runs=False`` keeps kafka-python's per-record path (tests compare both)."""
        self.settings = settings
        self.record_runs = record_runs
        self.store = store
        self.topic = settings.audit_topic
        self.decoder = decoder or EventDecoder()
        self.on_batch = on_batch
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._stored: dict[int, int] = {}
        self._target: dict[int, int] | None = None
        self._end: dict[int, int] = {}
        self._error: str | None = None
        self._thread: threading.Thread | None = None
        self.skipped = 0

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> None:
        """Start following the topic in background threads."""
        if self._thread is not None:
            return
        if sys.getswitchinterval() > SWITCH_INTERVAL:
            sys.setswitchinterval(SWITCH_INTERVAL)
        self._stored = self.store.stored_offsets(self.topic)
        self._thread = threading.Thread(target=self._supervise, name="materializer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the batch in flight is committed (or abandoned, if it fails)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # -- observation ------------------------------------------------------------
    def status(self) -> Status:
        """Progress as of now."""
        with self._cond:
            stored = dict(self._stored)
            target = None if self._target is None else dict(self._target)
            end = dict(self._end)
        caught_up = target is not None and all(stored.get(p, 0) >= o for p, o in target.items())
        running = self._thread is not None and self._thread.is_alive()
        return Status(running, caught_up, stored, target, end, self._error)

    def wait_for_offset(self, partition: int, offset: int, timeout: float) -> bool:
        """Wait until the record at ``offset`` of ``partition`` is materialized (or skipped)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._stored.get(partition, 0) <= offset:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return False
                self._cond.wait(left)
        return True

    def wait_caught_up(self, timeout: float | None = None) -> bool:
        """Wait until caught up to the end offsets seen at start."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._caught_up_locked():
                left = None if deadline is None else deadline - time.monotonic()
                if (left is not None and left <= 0) or self._stop.is_set():
                    return False
                self._cond.wait(left if left is not None else 1.0)
        return True

    def _caught_up_locked(self) -> bool:
        target = self._target
        return target is not None and all(self._stored.get(p, 0) >= o for p, o in target.items())

    # -- the loop ---------------------------------------------------------------
    def _supervise(self) -> None:
        while not self._stop.is_set():
            try:
                self._run_once()
            except (VeloraError, *KAFKA_ERRORS) as exc:
                self._error = f"{type(exc).__name__}: {exc}"
                log.error("materializer stopped (%s); resuming from stored offsets", self._error)
                self._stop.wait(RETRY_SECONDS)
            else:
                self._error = None

    def _run_once(self) -> None:
        stored = self.store.stored_offsets(self.topic)
        with self._cond:
            self._stored = dict(stored)
        consumer = self._consumer()
        work: queue.Queue[_Batch | None] = queue.Queue(QUEUE_DEPTH)
        failure: list[BaseException] = []
        writer = threading.Thread(
            target=self._write_loop, args=(work, failure), name="materializer-writer", daemon=True
        )
        try:
            tps = self._assign(consumer, stored)
            writer.start()
            self._read_loop(consumer, tps, work, lambda: bool(failure) or not writer.is_alive())
        finally:
            if writer.is_alive():
                _put(work, None, lambda: not writer.is_alive())
                writer.join()
            close_quietly(consumer)
        if failure:
            raise failure[0]

    def _consumer(self) -> KafkaConsumer:
        return new_consumer(
            self.settings,
            "velora-materializer",
            auto_offset_reset="earliest",
            max_poll_records=self.settings.materializer_max_batch,
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=16 * 1024 * 1024,
            fetch_max_wait_ms=100,
            receive_buffer_bytes=4 * 1024 * 1024,
        )

    def _assign(self, consumer: KafkaConsumer, stored: dict[int, int]) -> list[TopicPartition]:
        """Assign every partition; seek to the stored next offsets; learn the start targets."""
        partitions = consumer.partitions_for_topic(self.topic)
        if not partitions:
            raise Unavailable(f"topic {self.topic} has no partitions yet", retry_after=1)
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        for tp in tps:
            if tp.partition in stored:
                consumer.seek(tp, stored[tp.partition])
            else:
                consumer.seek_to_beginning(tp)
        end = {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
        with self._cond:
            if self._target is None:  # readiness compares with the FIRST start's end offsets
                self._target = dict(end)
            self._end = dict(end)
            self._cond.notify_all()
        return tps

    def _read_loop(
        self,
        consumer: KafkaConsumer,
        tps: list[TopicPartition],
        work: queue.Queue[_Batch | None],
        writer_gone: Callable[[], bool],
    ) -> None:
        runs = install_record_runs(consumer) if self.record_runs else False
        per_run = 100.0  # records per record batch, averaged: sizes polls in records
        sent = {tp.partition: consumer.position(tp) for tp in tps}
        refreshed = time.monotonic()
        give_up = lambda: writer_gone() or self._stop.is_set()  # noqa: E731
        while not give_up():
            limit = self.settings.materializer_max_batch
            if runs:  # then poll() counts record batches, not records
                limit = max(1, min(limit, int(limit / per_run)))
            polled = consumer.poll(timeout_ms=POLL_TIMEOUT_MS, max_records=limit)
            advanced = {}
            for tp in tps:
                pos = consumer.position(tp)
                if pos is not None and pos != sent[tp.partition]:
                    advanced[tp.partition] = sent[tp.partition] = pos
            if advanced:
                decoded, read = self._decode(polled, runs)
                if runs and polled:
                    batches = sum(len(rs) for rs in polled.values())
                    per_run = 0.8 * per_run + 0.2 * (read / max(1, batches))
                _put(work, _Batch(decoded.table, read, len(decoded.skipped), advanced), give_up)
            if time.monotonic() - refreshed >= REFRESH_SECONDS:
                refreshed = time.monotonic()
                self._refresh(consumer, tps)

    def _decode(self, polled: dict[TopicPartition, list[Any]], runs: bool) -> tuple[Decoded, int]:
        """One poll -> rows; ``runs``: the poll holds RecordRuns, else ConsumerRecords."""
        if runs:
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

    def _refresh(self, consumer: KafkaConsumer, tps: list[TopicPartition]) -> None:
        """Refresh end offsets (for the lag); restart if partitions were added."""
        partitions = consumer.partitions_for_topic(self.topic) or set()
        if len(partitions) != len(tps):
            raise Unavailable(f"{self.topic} now has {len(partitions)} partitions; reassigning")
        end = {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
        with self._cond:
            self._end = end

    def _write_loop(self, work: queue.Queue[_Batch | None], failure: list[BaseException]) -> None:
        limit = self.settings.materializer_max_batch * MERGE_POLLS
        try:
            while True:
                first = work.get()
                if first is None:
                    return
                batches, rows, done = [first], first.table.num_rows, False
                while rows < limit:
                    try:
                        more = work.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        done = True
                        break
                    batches.append(more)
                    rows += more.table.num_rows
                self._write(batches)
                if done:
                    return
        except BaseException as exc:  # handed to the reader, which restarts the loop
            failure.append(exc)

    def _write(self, batches: list[_Batch]) -> None:
        table = batches[0].table
        if len(batches) > 1:  # polls are deduplicated; across polls it is done here
            table = dedup(pa.concat_tables([b.table for b in batches]))
        next_offsets: dict[int, int] = {}
        for b in batches:
            next_offsets.update(b.next_offsets)
        self.store.write_batch(table, self.topic, next_offsets)
        with self._cond:
            self._stored.update(next_offsets)
            self.skipped += sum(b.skipped for b in batches)
            stored = dict(self._stored)
            self._cond.notify_all()
        if self.on_batch is not None:
            self.on_batch(sum(b.read for b in batches), stored)


def _put(
    work: queue.Queue[_Batch | None], item: _Batch | None, give_up: Callable[[], bool]
) -> None:
    """Put into the bounded queue, unless ``give_up()`` turns true while it is full."""
    while True:
        try:
            work.put(item, timeout=0.1)
            return
        except queue.Full:
            if give_up():
                return

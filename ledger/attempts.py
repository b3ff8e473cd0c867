"""The webhook attempt log -> ``webhook_attempts`` in the node's DuckDB, exactly once.

The dispatchers publish every delivery attempt to ``<prefix>.webhooks.attempts.v1``.
:class:`AttemptLog` is the query node's small second consumer loop for that topic,
with the same rules as the audit materializer, in one thread:

- no consumer group: every partition is assigned and sought to the offset stored in
  ``ledger_offsets`` (checked against the log with
  :func:`ledger.log_reader.check_offsets`: never a rewind);
- each poll is decoded (``WebhookAttempt``, fastavro) into one Arrow table, and its
  rows and the partitions' next offsets are written in **one** DuckDB transaction
  (through a cursor of its own), so a crash leaves offsets that describe exactly
  the rows stored; a record that does not decode is skipped with a log line in the
  same transaction as the offset that passes it;
- any error restarts the loop from the stored offsets after a growing back-off and
  shows in :meth:`AttemptLog.status`; a mismatch with the log stops this loop (not
  the node: the audit API does not depend on it) and is reported as fatal.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from ledger.duck import duckdb_errors
from ledger.log_reader import check_offsets
from ledger.store import LedgerStore
from ledger.tables import ATTEMPT_COLUMNS
from ledger.transaction import transaction
from schemas.codec import AvroCodec
from velora.errors import DecodeError, LedgerMismatch, Unavailable, VeloraError
from velora.kafka_clients import close_quietly, map_kafka_errors, new_consumer
from velora.settings import Settings

log = logging.getLogger(__name__)

POLL_MS = 200
RETRY_S = 0.5
MAX_RETRY_S = 30.0
TS = pa.timestamp("us", tz="UTC")
SCHEMA = pa.schema(
    [
        ("attempt_id", pa.string()),
        ("delivery_id", pa.string()),
        ("endpoint_id", pa.string()),
        ("tenant_id", pa.string()),
        ("event_ids", pa.list_(pa.string())),
        ("event_type", pa.string()),
        ("attempt", pa.int32()),
        ("trigger", pa.string()),
        ("attempted_at", TS),
        ("status_code", pa.int32()),
        ("latency_ms", pa.float64()),
        ("outcome", pa.string()),
        ("error_class", pa.string()),
        ("next_attempt_at", TS),
        ("kafka_partition", pa.int32()),
        ("kafka_offset", pa.int64()),
    ]
)
_COLUMNS = ", ".join(ATTEMPT_COLUMNS)
_WRITE = (
    f"INSERT INTO webhook_attempts ({_COLUMNS}) SELECT {_COLUMNS} FROM _attempts "  # noqa: S608
    "ON CONFLICT DO NOTHING"
)
_OFFSETS = (
    "INSERT INTO ledger_offsets (topic, partition, next_offset, updated_at) "
    "SELECT topic, partition, next_offset, updated_at FROM _attempt_offsets "
    "ON CONFLICT (topic, partition) DO UPDATE SET "
    "next_offset = excluded.next_offset, updated_at = excluded.updated_at"
)


class AttemptLog:
    """Follows the attempt log into ``webhook_attempts`` (see the module docstring)."""

    def __init__(self, settings: Settings, store: LedgerStore) -> None:
        self.settings = settings
        self.topic = settings.webhook_attempts_topic
        self.store = store
        self._codec = AvroCodec()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._stored: dict[int, int] = {}
        self._end: dict[int, int] = {}
        self.error: str | None = None
        self.fatal: str | None = None
        self.restarts = 0

    def start(self) -> None:
        """Start following the attempt log in a background thread."""
        self._thread = threading.Thread(target=self._supervise, name="attempt-log", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the transaction in flight."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    def status(self) -> dict[str, Any]:
        """``{"lag", "error", "fatal", "restarts"}`` for the readiness probe."""
        with self._lock:
            lag = sum(max(0, e - self._stored.get(p, 0)) for p, e in self._end.items())
        return {"lag": lag, "error": self.error, "fatal": self.fatal, "restarts": self.restarts}

    def wait_for(self, partition: int, offset: int, timeout: float) -> bool:
        """Wait until the record at ``offset`` of ``partition`` is stored."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._stored.get(partition, 0) > offset:
                    return True
            time.sleep(0.02)
        return False

    # -- the loop -----------------------------------------------------------------
    def _supervise(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                self._run()
                return
            except LedgerMismatch as exc:
                self.fatal = exc.message
                log.critical("attempt log stopped: %s", exc.message)
                return
            except Exception as exc:
                failures += 1
                self.restarts += 1
                self.error = (
                    f"{type(exc).__name__}: {exc.message}"
                    if isinstance(exc, VeloraError)
                    else type(exc).__name__
                )
                delay = min(MAX_RETRY_S, RETRY_S * 2 ** min(failures - 1, 10))
                log.warning("attempt log failed (%s); restarting in %.1fs", self.error, delay)
                self._stop.wait(delay * random.uniform(0.8, 1.2))

    def _run(self) -> None:
        cursor = self.store.db.new_cursor()
        consumer: KafkaConsumer | None = None
        try:
            consumer = new_consumer(self.settings, "velora-attempts", fetch_max_wait_ms=100)
            tps = self._open(consumer)
            refreshed = 0.0
            while not self._stop.is_set():
                with map_kafka_errors("attempt log poll"):
                    polled = consumer.poll(timeout_ms=POLL_MS, max_records=5000)
                    positions = {tp.partition: consumer.position(tp) for tp in tps}
                    if time.monotonic() - refreshed > 1.0:
                        refreshed = time.monotonic()
                        end = consumer.end_offsets(tps)
                        with self._lock:
                            self._end = {tp.partition: o for tp, o in end.items()}
                moved = {p: o for p, o in positions.items() if o != self._stored.get(p)}
                if moved:
                    self._write(cursor, polled, moved)
                    self.error = None
        finally:
            if consumer is not None:
                close_quietly(consumer)
            cursor.close()

    def _open(self, consumer: KafkaConsumer) -> list[TopicPartition]:
        with map_kafka_errors("attempt log assignment"):
            partitions = consumer.partitions_for_topic(self.topic)
            if not partitions:
                raise Unavailable(f"topic {self.topic} has no partitions yet", retry_after=1)
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            consumer.assign(tps)
            start = {tp.partition: o for tp, o in consumer.beginning_offsets(tps).items()}
            end = {tp.partition: o for tp, o in consumer.end_offsets(tps).items()}
            stored = self.store.stored_offsets(self.topic)
            check_offsets(self.topic, stored, start, end)
            for tp in tps:
                consumer.seek(tp, stored.get(tp.partition, start[tp.partition]))
        with self._lock:
            self._stored = {
                tp.partition: stored.get(tp.partition, start[tp.partition]) for tp in tps
            }
            self._end = end
        return tps

    def _write(
        self, cursor: Any, polled: dict[TopicPartition, list[Any]], moved: dict[int, int]
    ) -> None:
        rows = []
        for tp, records in polled.items():
            for rec in records:
                try:
                    _, value = (
                        self._codec.decode(rec.value) if rec.value is not None else (None, None)
                    )
                except DecodeError as exc:
                    value = None
                    log.error(
                        "attempt log: skipping partition %d offset %d: %s",
                        tp.partition,
                        rec.offset,
                        exc,
                    )
                if value is None:
                    continue
                value["kafka_partition"] = tp.partition
                value["kafka_offset"] = rec.offset
                rows.append(value)
        table = pa.Table.from_pylist(rows, schema=SCHEMA)
        now = datetime.now(UTC)
        offsets = pa.Table.from_pylist(
            [
                {"topic": self.topic, "partition": p, "next_offset": o, "updated_at": now}
                for p, o in sorted(moved.items())
            ],
            schema=pa.schema(
                [
                    ("topic", pa.string()),
                    ("partition", pa.int32()),
                    ("next_offset", pa.int64()),
                    ("updated_at", TS),
                ]
            ),
        )
        with duckdb_errors("write attempts"):
            cursor.register("_attempts", table)
            cursor.register("_attempt_offsets", offsets)
            try:
                with transaction(cursor):
                    cursor.execute(_WRITE)
                    cursor.execute(_OFFSETS)
            finally:
                cursor.unregister("_attempts")
                cursor.unregister("_attempt_offsets")
        with self._lock:
            self._stored.update(moved)

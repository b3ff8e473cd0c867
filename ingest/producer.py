"""``AuditProducer``: validate, encode and write audit events to Kafka, and wait for acks.

Lifecycle and guarantees:

- The Kafka connection is made lazily, on the first send, so a service (or the
  HTTP ingest app) starts while Kafka is down and answers 503 until it is back.
- Every record is keyed by ``tenant_id`` (murmur2, the Java client's partitioner,
  cached per tenant: :mod:`ingest.appender`) and written to
  ``settings.audit_topic`` with ``acks=all`` and idempotence. The producer never
  creates topics.
- :meth:`AuditProducer.send_many` returns only when Kafka has acknowledged every
  accepted event of the batch. If any of them is not acknowledged within the
  timeout, it raises :class:`~velora.errors.Unavailable` and the whole batch
  counts as not acknowledged: resend it. A resent event with the same
  ``event_id`` never makes a second ledger row, so callers that need
  exactly-once should set ``event_id`` themselves (an id that ingest assigned is
  lost with the failed answer).
- Records not yet acknowledged are bounded by ``max_pending``: a caller blocks
  (back-pressure) until earlier records complete, and gets ``Unavailable`` if
  that takes longer than the timeout. ``delivery_timeout_ms`` is the timeout
  plus ``linger_ms``, so a record that was not acknowledged in time is dropped
  from the client's buffer instead of being written long after its caller was
  told it failed.
- The batch append uses kafka-python internals behind a guard
  (:mod:`velora.kafka_internals`) that falls back to the public path with one
  warning per process (:mod:`ingest.appender`). A producer whose connection fails
  is closed by :func:`velora.kafka_clients.build_client`, as every client is.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from ingest.appender import Appender, Run, TenantPartitioner
from ingest.pipeline import Pipeline
from ingest.results import Accepted, Ack, Rejected, SendResult
from ingest.transform import TenantTransform
from schemas import AuditEvent, AvroCodec
from velora.errors import Unavailable, ValidationError
from velora.kafka_clients import close_producer, kafka_unavailable, new_producer
from velora.settings import Settings

log = logging.getLogger(__name__)
RETRY_AFTER_S = 5.0
"""``retry_after`` of :class:`Unavailable` when Kafka is down or slow."""

Event = Mapping[str, Any] | AuditEvent


class _Budget:
    """Counts records handed to Kafka and not yet completed; blocks past ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._cond = threading.Condition()

    def acquire(self, n: int, deadline: float) -> bool:
        with self._cond:
            while self._used + n > self.limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            self._used += n
            return True

    def release(self, n: int) -> None:
        if n:
            with self._cond:
                self._used -= n
                self._cond.notify_all()

    def release_one(self) -> None:
        self.release(1)

    @property
    def used(self) -> int:
        return self._used


class AuditProducer:
    """Write audit events to the audit topic; thread-safe, one per process is enough.

    ``timeout`` bounds connecting, waiting for buffer space and waiting for acks,
    each. ``linger_ms``/``batch_size``/``compression_type`` tune kafka-python's
    batching (see ``docs/ingest.md`` for the measured choice); ``fast_append=False``
    always uses kafka-python's public ``send`` (see :mod:`ingest.appender`).
    ``system=True`` lets this producer write the reserved ``audit_log.`` actions
    and ``velora.`` sources; only Velora's own in-process auditing sets it.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        transform: TenantTransform | None = None,
        codec: AvroCodec | None = None,
        timeout: float = 30.0,
        max_pending: int = 50_000,
        linger_ms: int = 5,
        batch_size: int = 512 * 1024,
        compression_type: str | None = None,
        client_id: str = "velora-ingest",
        fast_append: bool = True,
        system: bool = False,
    ) -> None:
        self.settings = settings
        self.topic = settings.audit_topic
        self.timeout = timeout
        self.pipeline = Pipeline(codec, transform, system=system)
        self._budget = _Budget(max_pending)
        self._partitioner = TenantPartitioner()
        self._fast_append = fast_append
        timeout_ms = max(1000, int(timeout * 1000))
        self._client_id = client_id
        self._config: dict[str, Any] = {
            "enable_idempotence": True,
            "max_in_flight_requests_per_connection": 5,
            "linger_ms": linger_ms,
            "batch_size": batch_size,
            "max_request_size": max(batch_size, 1024 * 1024),
            "compression_type": compression_type,
            "partitioner": self._partitioner,
            "allow_auto_create_topics": False,
            "bootstrap_timeout_ms": timeout_ms,
            "max_block_ms": timeout_ms,
            "request_timeout_ms": timeout_ms,
            "delivery_timeout_ms": timeout_ms + linger_ms,  # kafka-python: >= request + linger
            "reconnect_backoff_max_ms": 1000,
        }
        self._kafka: KafkaProducer | None = None
        self._appender: Appender | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._failed_until = 0.0

    # -- public API -------------------------------------------------------------------

    def send(self, event: Event, *, now: datetime | None = None) -> Future[Ack]:
        """Validate and send one event; the future resolves once Kafka acknowledged it.

        Raises :class:`ValidationError` at once for an invalid event. Kafka
        problems resolve the future with :class:`Unavailable`. Callbacks added to
        the future run on Kafka's I/O thread: keep them short.
        """
        event_id, tenant_id, value = self.pipeline.prepare(event, now or datetime.now(UTC))
        out: Future[Ack] = Future()
        deadline = time.monotonic() + self.timeout
        runs: list[Run] = []
        try:
            appender = self._connect(deadline)
            if not self._budget.acquire(1, deadline):
                raise _buffer_full(self._budget.limit)
            try:
                appender.append_runs([(tenant_id.encode(), value)], runs)
            except KafkaError as exc:
                self._budget.release(1)
                self._discard(appender)
                raise _unavailable(exc) from exc
        except Unavailable as exc:
            out.set_exception(exc)
            return out
        release = self._budget.release_one

        def acked(partition: int, offset: int) -> None:
            release()
            out.set_result(Ack(event_id, partition, offset))

        def failed(exc: BaseException) -> None:
            release()
            self._discard(appender)
            out.set_exception(_unavailable(exc))

        runs[0].on_result(acked, failed)
        return out

    def send_many(
        self,
        events: Sequence[Event],
        *,
        timeout: float | None = None,
        sources: frozenset[str] | None = None,
    ) -> list[SendResult]:
        """Validate and send a batch; return one result per item, in order.

        Invalid items are :class:`Rejected` (with ``index`` and the errors) and
        never reach Kafka; the others are :class:`Accepted` with their
        :class:`Ack`. ``sources``, when given, are the only ``source`` values
        accepted (a restricted service token). Returns once Kafka acknowledged
        every accepted item; raises :class:`Unavailable` (nothing counts as
        acknowledged) otherwise.
        """
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        now = datetime.now(UTC)
        results: list[Any] = [None] * len(events)
        ids: list[tuple[int, str]] = []
        records: list[tuple[bytes, bytes]] = []
        prepare = self.pipeline.prepare
        for i, item in enumerate(events):
            try:
                event_id, tenant_id, value = prepare(item, now, sources)
            except ValidationError as exc:
                results[i] = Rejected(i, tuple(exc.details))
                continue
            ids.append((i, event_id))
            records.append((tenant_id.encode(), value))
        if records:
            appender = self._connect(deadline)
            step = max(1, self._budget.limit)
            for at in range(0, len(records), step):
                self._produce(
                    appender, ids[at : at + step], records[at : at + step], results, deadline
                )
        return results

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every record sent so far is acknowledged or failed."""
        kafka = self._kafka
        if kafka is None:
            return
        try:
            kafka.flush(self.timeout if timeout is None else timeout)
        except KafkaError as exc:
            raise _unavailable(exc) from exc

    def close(self, timeout: float | None = None) -> None:
        """Flush (up to ``timeout``) and close the connection; idempotent."""
        with self._lock:
            self._closed = True
            kafka, self._kafka, self._appender = self._kafka, None, None
        if kafka is not None:
            close_producer(kafka, self.timeout if timeout is None else timeout)

    @property
    def pending(self) -> int:
        """Records handed to Kafka and not yet acknowledged or failed."""
        return self._budget.used

    def __enter__(self) -> AuditProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals --------------------------------------------------------------------

    def _connect(self, deadline: float) -> Appender:
        appender = self._appender
        if appender is not None:
            return appender
        if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise Unavailable("Kafka connection attempt in progress", retry_after=RETRY_AFTER_S)
        try:
            if self._closed:
                raise Unavailable("the audit producer is closed", retry_after=RETRY_AFTER_S)
            if self._appender is None:
                if time.monotonic() < self._failed_until:
                    raise Unavailable("Kafka is unreachable", retry_after=RETRY_AFTER_S)
                self._kafka = self._new_kafka()
                self._appender = Appender(
                    self._kafka, self.topic, self._partitioner, fast=self._fast_append
                )
            return self._appender
        finally:
            self._lock.release()

    def _discard(self, appender: Appender) -> None:
        """Drop a producer whose delivery failed; the next send connects afresh.

        An idempotent producer whose batches expired (for example while the broker
        was down) cannot safely continue its sequence numbers, and kafka-python
        3.0.x does not recover it by itself. A new producer gets a new producer id.
        The old one is closed in the background without waiting: its unfinished
        records fail, which releases their budget.
        """
        with self._lock:
            if self._appender is not appender:
                return
            kafka, self._kafka, self._appender = self._kafka, None, None
        if kafka is not None:
            threading.Thread(
                target=close_producer,
                args=(kafka, 0.0),
                name="velora-producer-close",
                daemon=True,
            ).start()

    def _new_kafka(self) -> KafkaProducer:
        """A connected KafkaProducer; on failure its half-made client is closed (no leaks:
        :func:`velora.kafka_clients.build_client`)."""
        servers = self.settings.kafka_bootstrap.split(",")
        if not _any_listening(servers, timeout=min(self.timeout, 2.0)):
            self._failed_until = time.monotonic() + 1.0
            raise Unavailable("Kafka is unreachable", retry_after=RETRY_AFTER_S)
        try:
            return new_producer(self.settings, self._client_id, **self._config)
        except Unavailable:
            self._failed_until = time.monotonic() + 1.0
            raise

    def _produce(
        self,
        appender: Appender,
        ids: list[tuple[int, str]],
        records: list[tuple[bytes, bytes]],
        results: list[Any],
        deadline: float,
    ) -> None:
        """Append one chunk (at most ``max_pending`` records) and wait for its acks.

        The chunk's budget is released when this returns: either every record
        was acknowledged, or the producer was discarded (its unfinished records
        fail when it closes) and the whole chunk counts as not acknowledged.
        """
        budget = self._budget
        if not budget.acquire(len(records), deadline):
            raise _buffer_full(budget.limit)
        runs: list[Run] = []
        try:
            appender.append_runs(records, runs)
            now = time.monotonic
            for run in runs:
                offset = run.wait(max(0.0, deadline - now()))
                partition = run.partition
                for k, i in enumerate(run.indexes):
                    at, event_id = ids[i]
                    results[at] = Accepted(at, Ack(event_id, partition, offset + k))
        except KafkaError as exc:
            self._discard(appender)
            raise _unavailable(exc) from exc
        finally:
            budget.release(len(records))


def _any_listening(servers: Sequence[str], timeout: float) -> bool:
    """Whether a TCP connection to any bootstrap server succeeds.

    A cheap pre-flight: it fails fast with no Kafka client at all, where
    kafka-python would retry until its bootstrap timeout (and, in 3.0.x, leave
    each refused socket for the garbage collector to close).
    """
    for server in servers:
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
                return True
        except (OSError, ValueError):
            continue
    return False


def _unavailable(exc: BaseException) -> Unavailable:
    """Translate a kafka-python error of a write (never echoing record data)."""
    return kafka_unavailable("write", exc, RETRY_AFTER_S)


def _buffer_full(limit: int) -> Unavailable:
    return Unavailable(
        f"ingest buffer full ({limit} records awaiting Kafka acknowledgement)", retry_after=1.0
    )

"""``LoopAuditProducer``: write audit events from an asyncio event loop, acknowledged in it.

:class:`ingest.producer.AuditProducer` runs kafka-python, whose network I/O has a
thread of its own. A caller on an event loop that waits for each acknowledgement
(the query node's read audit in ``required`` mode: no answer before its record is
in Kafka) pays for two hand-offs per record, to that thread and back, and each is a
wait for the GIL while the loop serves other requests. This producer runs
aiokafka's instead, in the caller's loop: encoding, sending and reading the
acknowledgement are steps of that loop, and a record waits only for the broker.

Measured with one record per simulated request (1.8 ms of the loop's CPU each, at
220 a second, against a local broker; ``docs/ledger.md``): the acknowledgement came
after 3.2 ms at p50 and 6-7 ms at p99, against 4.3-4.5 and 9-16 ms for kafka-python
called on the loop, and 6.4-6.8 and 20-25 ms for kafka-python called from a worker
thread (the read audit's way before).

The records are those :class:`~ingest.producer.AuditProducer` writes: the same
:class:`~ingest.pipeline.Pipeline` (validation, system mode), key ``tenant_id``, the
same partition (:class:`~ingest.appender.TenantPartitioner`), ``acks=all`` and
idempotence, no linger, and it never creates the topic. It connects on the first
send; a failed connection answers :class:`~velora.errors.Unavailable`, and so does
every send for a second after it, without a new attempt. Once connected, aiokafka
reconnects by itself. aiokafka's errors become ``Unavailable`` (no addresses, no
record).

:meth:`LoopAuditProducer.deliver` is for coroutines on the loop;
:meth:`LoopAuditProducer.send` for other threads (it returns a
``concurrent.futures.Future``), once :meth:`LoopAuditProducer.bind` or a first
``deliver`` named the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ingest.appender import TenantPartitioner
from ingest.pipeline import Pipeline
from ingest.producer import RETRY_AFTER_S, Event
from ingest.results import Ack
from ingest.transform import TenantTransform
from schemas import AvroCodec
from velora.errors import Unavailable
from velora.kafka_clients import kafka_unavailable, loop_kafka_errors, new_loop_producer
from velora.settings import Settings

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

log = logging.getLogger(__name__)

RECONNECT_AFTER_S = 1.0
"""After a failed connection, sends fail at once for this long before the next try."""


class LoopAuditProducer:
    """Write audit events to the audit topic from one event loop (see the module docstring).

    ``timeout`` bounds connecting and each record's acknowledgement. ``system=True``
    lets it write the reserved ``audit_log.`` actions and ``velora.`` sources, as
    :class:`~ingest.producer.AuditProducer`'s does.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        transform: TenantTransform | None = None,
        codec: AvroCodec | None = None,
        timeout: float = 30.0,
        client_id: str = "velora-ingest",
        system: bool = False,
    ) -> None:
        self.settings = settings
        self.topic = settings.audit_topic
        self.timeout = timeout
        self.pipeline = Pipeline(codec, transform, system=system)
        self._partitioner = TenantPartitioner()
        self._client_id = client_id
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kafka: AIOKafkaProducer | None = None
        self._connecting: asyncio.Lock | None = None
        self._failed_until = 0.0
        self._closed = False
        self._errors = loop_kafka_errors()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Name the loop this producer runs in (for :meth:`send` from other threads)."""
        if self._loop is not None and self._loop is not loop:
            raise RuntimeError("this producer already runs in another event loop")
        self._loop = loop

    async def deliver(self, event: Event, *, now: datetime | None = None) -> Ack:
        """Validate, send and wait until Kafka acknowledged ``event``.

        Raises :class:`~velora.errors.ValidationError` for an invalid event (nothing
        is sent) and :class:`~velora.errors.Unavailable` when Kafka is unreachable or
        does not acknowledge within the timeout.
        """
        event_id, tenant_id, value = self.pipeline.prepare(event, now or datetime.now(UTC))
        return await self._write(event_id, tenant_id, value)

    def send(self, event: Event, *, now: datetime | None = None) -> Future[Ack]:
        """From any thread: validate ``event`` now (raises ``ValidationError``), and
        send it in the producer's loop; the future resolves once Kafka acknowledged it
        (or with ``Unavailable``)."""
        event_id, tenant_id, value = self.pipeline.prepare(event, now or datetime.now(UTC))
        loop = self._loop
        if loop is None or loop.is_closed():
            out: Future[Ack] = Future()
            out.set_exception(Unavailable("the audit producer's event loop is not running"))
            return out
        return asyncio.run_coroutine_threadsafe(self._write(event_id, tenant_id, value), loop)

    async def _write(self, event_id: str, tenant_id: str, value: bytes) -> Ack:
        kafka = await self._connected()
        try:
            sent = await kafka.send(self.topic, value=value, key=tenant_id.encode())
            async with asyncio.timeout(self.timeout):  # cancels ``sent`` when it fires
                meta = await sent
        except (*self._errors, TimeoutError) as exc:
            raise kafka_unavailable("write", exc, RETRY_AFTER_S) from exc
        return Ack(event_id, meta.partition, meta.offset)

    async def _connected(self) -> AIOKafkaProducer:
        kafka = self._kafka
        if kafka is not None:
            return kafka
        self.bind(asyncio.get_running_loop())
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._kafka is not None:
                return self._kafka
            if self._closed:
                raise Unavailable("the audit producer is closed", retry_after=RETRY_AFTER_S)
            if time.monotonic() < self._failed_until:
                raise Unavailable("Kafka is unreachable", retry_after=RETRY_AFTER_S)
            kafka = self._new_kafka()
            try:
                await asyncio.wait_for(self._start(kafka), self.timeout)
            except BaseException as exc:  # failed, timed out or cancelled: close what it made
                self._failed_until = time.monotonic() + RECONNECT_AFTER_S
                await _stop_quietly(kafka)
                if isinstance(exc, (*self._errors, TimeoutError)):
                    raise kafka_unavailable("connect", exc, RETRY_AFTER_S) from exc
                raise
            self._kafka = kafka
            return kafka

    async def _start(self, kafka: AIOKafkaProducer) -> None:
        """Connect, and check that the audit topic exists. aiokafka's metadata requests
        for a topic allow the broker to create it, so one that is missing is never
        asked for: a broker with ``auto.create.topics.enable`` would make it with its
        own defaults. The request for every topic creates none."""
        await kafka.start()
        cluster = await kafka.client.fetch_all_metadata()
        if self.topic not in cluster.topics():
            raise Unavailable("the audit topic does not exist", retry_after=RETRY_AFTER_S)

    def _new_kafka(self) -> AIOKafkaProducer:
        timeout_ms = max(1000, int(self.timeout * 1000))
        return new_loop_producer(
            self.settings,
            self._client_id,
            enable_idempotence=True,
            linger_ms=0,
            partitioner=self._partition,
            request_timeout_ms=timeout_ms,
        )

    def _partition(self, key: bytes, partitions: Sequence[int], available: Sequence[int]) -> int:
        """aiokafka's partitioner hook: the tenant's partition, as ingest's producer picks it."""
        return self._partitioner.for_key(key, partitions)

    async def aclose(self) -> None:
        """Send what is pending (at most ``timeout`` s), then close the connection."""
        self._closed = True
        kafka, self._kafka = self._kafka, None
        if kafka is not None:
            await _stop_quietly(kafka, self.timeout)

    def close(self, timeout: float | None = None) -> None:
        """:meth:`aclose` from another thread (a server's shutdown runs it in a worker
        thread); it waits at most ``timeout`` seconds (default: the producer's)."""
        self._closed = True
        loop = self._loop
        if self._kafka is None or loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError("close() would block the producer's own loop: await aclose()")
        done = asyncio.run_coroutine_threadsafe(self.aclose(), loop)
        try:
            done.result((timeout or self.timeout) + 1.0)
        except FutureTimeout:
            log.error("audit producer: records still unacknowledged at close were dropped")


async def _stop_quietly(kafka: AIOKafkaProducer, timeout: float = 5.0) -> None:
    """Stop an aiokafka producer (flushing what it holds); failures are logged, not raised."""
    try:
        await asyncio.wait_for(kafka.stop(), timeout)
    except Exception as exc:  # closing is best effort: the caller has its own error
        log.warning("stopping a Kafka producer failed: %s", type(exc).__name__)

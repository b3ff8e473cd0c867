"""Durable writes of the dispatcher: attempt records, retry and request jobs, endpoint health.

:meth:`Publisher.publish` returns once Kafka acknowledged the record (``acks=all``);
a delivery's offsets are settled only after its attempt record (and its retry job,
if any) were acknowledged, so a committed offset always has its attempt records
and scheduled retries in the log. A failed write is retried with back-off until it
succeeds or the dispatcher stops: nothing is settled past a record Kafka did not
take, and consumption pauses by back-pressure meanwhile.

Attempt records, one per POST, are the dispatcher's most frequent write. Those
published in one turn of the event loop are appended together
(:class:`ingest.appender.Appender`, the ingest path's way into kafka-python's
batches: one acknowledgement per partition batch instead of a future and two
callbacks per record); each caller still waits for its own record's batch, and a
failed batch is retried by its callers alone.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from kafka import KafkaProducer

from ingest.appender import Appender, Run, TenantPartitioner
from ingest.avro_writer import compile_writer
from ingest.control import ControlWriter
from schemas.codec import MAGIC, AvroCodec
from schemas.events import WebhookAttempt, WebhookHealth, WebhookJob
from velora.kafka_clients import KAFKA_ERRORS, close_producer, new_producer
from velora.settings import Settings
from webhooks.inbox import Inbox

log = logging.getLogger(__name__)

RETRY_S = 0.5
MAX_RETRY_S = 10.0
LINGER_MS = 25
"""How long the producer gathers records into one request. Nothing waits on a
write but the settling of offsets (a receiver's slot is freed at its answer), so
batching the attempt records costs no delivery latency (and fewer requests cost
the dispatcher and the broker less: ~5% of the dispatcher's CPU per event)."""


class Publisher:
    """Produces the dispatcher's records; every ``publish_*`` waits for the acknowledgement."""

    def __init__(
        self, settings: Settings, codec: AvroCodec | None = None, *, inbox: Inbox | None = None
    ) -> None:
        """``inbox`` carries the acknowledgements to the loop (by default, one per call)."""
        self.settings = settings
        self._inbox = inbox
        self._codec = codec or AvroCodec()
        self.encode_attempt = AttemptEncoder(self._codec)
        self._producer: KafkaProducer = new_producer(
            settings, "velora-webhooks", linger_ms=LINGER_MS, retries=5, batch_size=256 * 1024
        )
        self._attempts = Appender(
            self._producer, settings.webhook_attempts_topic, TenantPartitioner(), fast=True
        )
        self._waiting: list[tuple[bytes, bytes]] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._control: ControlWriter | None = None
        self.closed = False

    async def publish_attempt(self, attempt: WebhookAttempt) -> None:
        """Write one attempt record to the attempt log (appended with the others of
        this turn of the loop)."""
        record = (attempt.endpoint_id.encode(), self.encode_attempt(attempt))
        await self._retrying(lambda: self._append_attempt(record))

    def _append_attempt(self, record: tuple[bytes, bytes]) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        if not self._waiting:
            loop.call_soon(self._flush_attempts)
        done: asyncio.Future[None] = loop.create_future()
        self._waiting.append(record)
        self._waiters.append(done)
        return done

    def _flush_attempts(self) -> None:
        """Append the attempt records gathered this turn; settle each caller's future
        when its batch is acknowledged or failed."""
        records, waiters = self._waiting, self._waiters
        self._waiting, self._waiters = [], []
        if not records:
            return
        runs: list[Run] = []
        try:
            self._attempts.append_runs(records, runs)
        except Exception as exc:  # the records in no run were not queued: their callers retry
            queued = {i for run in runs for i in run.indexes}
            for i, done in enumerate(waiters):
                if i not in queued:
                    _resolve(done, None, exc)
        loop = asyncio.get_running_loop()
        hand = loop.call_soon_threadsafe if self._inbox is None else self._inbox.put
        for run in runs:
            mine = [waiters[i] for i in run.indexes]
            run.on_result(
                lambda _p, _o, mine=mine: hand(_resolve_all, mine, None),
                lambda exc, mine=mine: hand(_resolve_all, mine, exc),
            )

    async def publish_job(self, topic: str, job: WebhookJob) -> None:
        """Write one job to a retry or request topic (key: the endpoint)."""
        value = self._codec.encode("WebhookJob", job.to_avro())
        await self._publish(topic, job.endpoint_id, value)

    async def put_health(self, health: WebhookHealth) -> None:
        """Write an endpoint's delivery health to the control topic."""
        if self._control is None:
            self._control = await asyncio.to_thread(ControlWriter, self.settings)
        writer = self._control
        await self._retrying(lambda: asyncio.to_thread(writer.put_webhook_health, health))

    async def _publish(self, topic: str, key: str, value: bytes) -> None:
        async def once() -> Any:
            loop = asyncio.get_running_loop()
            done: asyncio.Future[Any] = loop.create_future()

            hand = loop.call_soon_threadsafe if self._inbox is None else self._inbox.put

            def ok(meta: Any) -> None:
                hand(_resolve, done, meta, None)

            def failed(exc: BaseException) -> None:
                hand(_resolve, done, None, exc)

            future = self._producer.send(topic, key=key.encode(), value=value)
            future.add_callback(ok)
            future.add_errback(failed)
            return await done

        await self._retrying(once)

    async def _retrying(self, attempt: Any) -> Any:
        delay = RETRY_S
        while True:
            try:
                return await attempt()
            except Exception as exc:
                if self.closed:
                    raise
                if not isinstance(exc, KAFKA_ERRORS) and not hasattr(exc, "retry_after"):
                    raise
                log.warning("webhook record write failed (%s); retrying", type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(MAX_RETRY_S, delay * 2)

    def close(self) -> None:
        """Flush (up to 10 s) and close."""
        self.closed = True
        close_producer(self._producer, 10.0)
        if self._control is not None:
            self._control.close()


class AttemptEncoder:
    """Single-object Avro of a :class:`WebhookAttempt`, by a writer generated for its
    schema (:mod:`ingest.avro_writer`: the same bytes as the codec's, at less than half
    the CPU; one is encoded per POST). A record the generated writer cannot write
    goes through the codec, which names what is wrong with it."""

    _ERRORS = (TypeError, KeyError, ValueError, AttributeError, OverflowError)

    def __init__(self, codec: AvroCodec) -> None:
        self._codec = codec
        latest = codec.registry.latest("WebhookAttempt")
        self._header = MAGIC + latest.fingerprint
        self._write = compile_writer(latest.parsed)

    def __call__(self, attempt: WebhookAttempt) -> bytes:
        record = attempt.to_avro()
        if self._write is not None:
            try:
                return self._header + self._write(record)
            except self._ERRORS:
                pass
        return self._codec.encode("WebhookAttempt", record)


def _resolve_all(waiters: list[asyncio.Future[Any]], exc: BaseException | None) -> None:
    for done in waiters:
        _resolve(done, None, exc)


def _resolve(done: asyncio.Future[Any], meta: Any, exc: BaseException | None) -> None:
    if done.done():
        return
    if exc is not None:
        done.set_exception(exc)
    else:
        done.set_result(meta)

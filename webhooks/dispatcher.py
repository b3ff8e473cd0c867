"""The dispatcher's core: fan-out, one attempt, its outcome, and what is written about it.

Runs on one asyncio event loop; the consumer thread (:mod:`webhooks.consumer`) hands
records over with ``loop.call_soon_threadsafe``.

- **Fan-out** (:meth:`Dispatcher.offer_event`): an audit event goes to every endpoint
  of its tenant that is active (enabled, not disabled by a dispatcher), whose
  ``event_types`` match its action, and that existed when the event was written to
  the log (the record's Kafka timestamp). The decision waits until the control
  state is known to hold every endpoint acknowledged before the event was written,
  so an event sent right after an endpoint's creation is not missed.
  Each goes to the endpoint's :class:`~webhooks.lanes.Lane`.
- **Jobs** (:meth:`Dispatcher.offer_job`): retries and API requests arrive as
  :class:`~schemas.events.WebhookJob` records with their delivery id and attempt.
- **An attempt** (:meth:`Dispatcher.attempt`): the body in the endpoint's format,
  signed with every valid secret, POSTed within ``VELORA_WEBHOOKS_TIMEOUT_S``. A 2xx
  answer is delivered. A ``410 Gone`` disables the endpoint. Anything else (another
  status, a timeout, a refused or failed connection, an address refused at connect
  time) schedules the next attempt on a retry topic, or, when the schedule is
  exhausted, marks the delivery failed (it stays replayable from the log). An
  endpoint whose attempts have all failed for ``VELORA_WEBHOOKS_DISABLE_AFTER_S`` is
  disabled.
- **Settling**: a delivery's records are settled only after its attempt record
  (and its retry job, if any) were acknowledged by Kafka; the endpoint's request
  slot is freed as soon as the answer is in, so the wait for Kafka never slows a
  receiver down.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import uuid_utils

from ledger.control import ControlState
from schemas.codec import AvroCodec
from schemas.events import (
    AUDIT_EVENT,
    AuditEvent,
    WebhookAttempt,
    WebhookEndpoint,
    WebhookHealth,
    WebhookJob,
)
from velora.errors import DecodeError, Unavailable, UnknownSchema
from velora.settings import Settings
from webhooks import envelope
from webhooks.consumer import OffsetTracker, Ref
from webhooks.endpoints import active, matches
from webhooks.lanes import Delivery, Item, Lane
from webhooks.publisher import Publisher
from webhooks.reveal import ERROR_CLASS as PHI_UNAVAILABLE
from webhooks.reveal import DeliveryPhi
from webhooks.schedule import next_delay, retry_after, tier_for
from webhooks.secrets import SecretBox
from webhooks.signing import signature_headers
from webhooks.transport import WebhookClient

log = logging.getLogger(__name__)

Write = Callable[[], Awaitable[None]]
"""One durable write of an attempt (its record, a retry job, the endpoint's health),
made when called."""

HOLD_S = 0.05
"""How long an event newer than the control state waits before it is offered again."""
CONTROL_REFRESH_S = 0.1
"""How often the dispatcher's control follower confirms it is current (see
:meth:`ledger.control.ControlState.folded_as_of`)."""


class Dispatcher:
    """Fan-out, lanes and attempts (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        control: ControlState,
        client: WebhookClient,
        publisher: Publisher,
        tracker: OffsetTracker,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.control = control
        self.client = client
        self.publisher = publisher
        self.tracker = tracker
        self.codec = AvroCodec()
        self._reader = self.codec.registry.latest(AUDIT_EVENT)
        self._box = SecretBox(settings.secrets_key)
        self._phi = DeliveryPhi(settings, control)
        self._rng = rng or random.Random()
        self._tiers = settings.webhook_retry_tiers
        self._lanes: dict[str, Lane] = {}
        self._secrets: dict[
            tuple[str, datetime], tuple[list[str], str | None, datetime | None]
        ] = {}
        self._health: dict[str, WebhookHealth] = {}
        self._index_at = -1
        self._index: dict[str, list[WebhookEndpoint]] = {}
        self.counters: dict[str, Counter[str]] = defaultdict(Counter)
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closing = False

    # -- decoding (consumer thread) --------------------------------------------------
    def decode_event(self, value: bytes | None) -> AuditEvent | None:
        """An audit record's event; None for a record that can never be one.

        Raises :class:`UnknownSchema` for a writer schema this process lacks: the
        record stays unsettled, so its offset is not committed past until the
        schema is deployed and the dispatcher restarted.
        """
        if value is None:
            return None
        try:
            _, record = self.codec.decode(value, reader=self._reader)
        except UnknownSchema:
            raise
        except DecodeError as exc:
            log.error("webhooks: skipping an audit record that does not decode: %s", exc)
            return None
        return AuditEvent.from_avro(record)

    def decode_job(self, value: bytes | None) -> WebhookJob | None:
        """A job record, or None (logged) when it does not decode."""
        if value is None:
            return None
        try:
            _, record = self.codec.decode(value)
            return WebhookJob.from_avro(record)
        except (DecodeError, KeyError, TypeError) as exc:
            log.error("webhooks: skipping a job record that does not decode: %s", exc)
            return None

    def wait_s(self, tier: int, job: WebhookJob | None, written_ms: int) -> float:
        """Seconds the head record of retry tier ``tier`` still waits (0: hand it over)."""
        if job is None:
            return 0.0
        due = min(job.due_at.timestamp(), written_ms / 1000.0 + self._tiers[tier])
        return max(0.0, due - time.time())

    # -- fan-out ---------------------------------------------------------------------
    def _endpoints(self, tenant_id: str) -> list[WebhookEndpoint]:
        position = self.control.position
        if position != self._index_at:
            index: dict[str, list[WebhookEndpoint]] = defaultdict(list)
            for e in self.control.webhook_endpoints():
                index[e.tenant_id].append(e)
            self._index, self._index_at = dict(index), position
        return self._index.get(tenant_id, [])

    def offer_event(self, ref: Ref, event: AuditEvent | None, raw: bytes, logged_ms: int) -> None:
        """Fan one audit event out to its tenant's matching endpoints.

        ``logged_ms`` is the record's Kafka timestamp: an endpoint receives the events
        written to the log from its creation on.
        """
        if event is None:
            self.tracker.settle(ref)
            return
        if self.closing:
            return  # stopping: the record stays unsettled and is delivered again
        as_of = self.control.folded_as_of()
        if as_of is None or logged_ms / 1000.0 > as_of:
            # An endpoint created just before this event may not be folded here yet:
            # decide once the control state is known to be at least as new as the event.
            loop = asyncio.get_running_loop()
            loop.call_later(HOLD_S, self.offer_event, ref, event, raw, logged_ms)
            return
        logged = datetime.fromtimestamp(logged_ms / 1000.0, UTC)
        targets = []
        for e in self._endpoints(event.tenant_id):
            if not matches(e.event_types, event.action) or e.created_at > logged:
                continue
            if active(e, self.health_of(e.endpoint_id)):
                targets.append(e)
            else:  # counted: what a replay after re-enabling would send
                self.counters[e.endpoint_id]["skipped"] += 1
        if not targets:
            self.tracker.settle(ref)
            return
        ref.pending = len(targets)
        for e in targets:
            lane = self._lane(e)
            item = Item(event, raw, ref)
            if self._overflowing(lane, e.endpoint_id):
                self._defer(self._single(e.endpoint_id, item, batch=lane_is_batch(e)))
            else:
                lane.add_event(item, lambda it, e=e: self._single(e.endpoint_id, it, False))

    def offer_job(self, ref: Ref, job: WebhookJob | None) -> None:
        """A retry or an API request, due now (or put back to wait longer)."""
        if job is None:
            self.tracker.settle(ref)
            return
        if job.due_at.timestamp() - time.time() > 0.5:
            self._spawn(self._requeue(ref, job))
            return
        endpoint = self.control.webhook_endpoint(job.endpoint_id)
        if endpoint is None:
            self.tracker.settle(ref)  # the endpoint was deleted
            return
        events, raw = [], []
        for value in job.events:
            event = self.decode_event(value)
            if event is not None:
                events.append(event)
                raw.append(value)
        delivery = Delivery(
            endpoint.endpoint_id,
            endpoint.tenant_id,
            job.delivery_id,
            events,
            raw,
            [ref],
            attempt=job.attempt,
            trigger=job.trigger,
            deferrals=job.deferrals,
            created_at=job.created_at.timestamp(),
            ping=not job.events,
        )
        lane = self._lane(endpoint)
        if job.trigger in ("event", "retry") and self._overflowing(lane, endpoint.endpoint_id):
            self._defer(delivery)
        else:
            lane.add_delivery(delivery)

    def _single(self, endpoint_id: str, item: Item, batch: bool) -> Delivery:
        e = item.event
        delivery_id = envelope.batch_id(endpoint_id, [e.event_id]) if batch else e.event_id
        return Delivery(endpoint_id, e.tenant_id, delivery_id, [e], [item.raw], [item.ref])

    def _batch(self, endpoint_id: str, items: list[Item]) -> Delivery:
        first = items[0].event
        ids = [i.event.event_id for i in items]
        return Delivery(
            endpoint_id,
            first.tenant_id,
            envelope.batch_id(endpoint_id, ids),
            [i.event for i in items],
            [i.raw for i in items],
            [i.ref for i in items],
        )

    def _lane(self, endpoint: WebhookEndpoint) -> Lane:
        lane = self._lanes.get(endpoint.endpoint_id)
        batch = lane_is_batch(endpoint)
        if lane is None or (lane._batch is not None) != batch:
            s = self.settings
            lane = self._lanes[endpoint.endpoint_id] = Lane(
                endpoint.endpoint_id,
                self.attempt,
                self._spawn,
                self._batch if batch else None,
                concurrency=s.webhooks_concurrency,
                rate=s.webhooks_rate_per_second,
                batch_max=s.webhooks_batch_max_events,
                batch_wait_s=s.webhooks_batch_max_wait_ms / 1000.0,
            )
        return lane

    # -- waiting on retry topics -------------------------------------------------------
    def _defer(self, d: Delivery) -> None:
        """Park a delivery of a failing endpoint whose lane is full: no attempt made.

        It waits the shortest retry delay on the first retry topic (its due time is
        that topic's, so the topic's order holds and nothing is re-parked early).
        """
        self.counters[d.endpoint_id]["deferred"] += 1
        now = datetime.now(UTC)
        job = WebhookJob(
            d.delivery_id,
            d.endpoint_id,
            d.tenant_id,
            d.attempt,
            now + timedelta(seconds=self._tiers[0]),
            datetime.fromtimestamp(d.created_at, UTC),
            trigger=d.trigger,
            deferrals=d.deferrals + 1,
            events=tuple(d.raw),
        )
        self._spawn(self._park(job, 0, d.refs))

    def _overflowing(self, lane: Lane, endpoint_id: str) -> bool:
        """Defer instead of queueing: the lane is full and the endpoint is failing.

        A slow endpoint that answers keeps its queue (the consumer's back-pressure
        bounds every lane together); a failing or hanging one has its overflow parked
        on a retry topic, so it never holds memory or the consumer back.
        """
        if not lane.full:
            return False
        health = self.health_of(endpoint_id)
        return (health is not None and health.failing_since is not None) or lane.last_failed

    async def _requeue(self, ref: Ref, job: WebhookJob) -> None:
        left = job.due_at.timestamp() - time.time()
        await self._park(job, tier_for(self._tiers, left), [ref])

    async def _park(self, job: WebhookJob, tier: int, refs: list[Ref]) -> None:
        await self.publisher.publish_job(self.settings.webhook_retry_topics[tier], job)
        for ref in refs:
            self.tracker.settle(ref)

    # -- one attempt -----------------------------------------------------------------
    async def attempt(self, d: Delivery) -> None:
        """Make one attempt of ``d`` and write what came of it (see the module docstring)."""
        endpoint = self.control.webhook_endpoint(d.endpoint_id)
        if endpoint is None:
            self._settle(d)
            return
        counters = self.counters[d.endpoint_id]
        now = datetime.now(UTC)
        if not active(endpoint, self.health_of(endpoint.endpoint_id)):
            counters["dropped"] += 1
            await self.publisher.publish_attempt(
                self._attempt_record(d, now, None, None, "dropped", "endpoint_disabled", None)
            )
            self._settle(d)
            return
        secrets, token = self._secrets_of(endpoint, now)
        started = time.perf_counter()
        try:
            body, headers = self._request(endpoint, d, secrets, token, now)
        except Unavailable:  # a PHI keyset cannot be read: send nothing, retry (webhooks.reveal)
            status, error, wait = None, PHI_UNAVAILABLE, None
        else:
            started = time.perf_counter()
            status, error, wait = await self._post(endpoint.url, body, headers)
        latency_ms = (time.perf_counter() - started) * 1000.0
        writes: list[Write] = []
        lane = self._lanes.get(d.endpoint_id)
        if lane is not None:
            lane.last_failed = status is None or not 200 <= status < 300
        if status is not None and 200 <= status < 300:
            counters["delivered"] += 1
            outcome, next_at = "delivered", None
            health = self._recovering(endpoint)
            if health is not None:  # a success ends the failing streak
                recovered = replace(health, failing_since=None, updated_at=datetime.now(UTC))
                writes.append(partial(self._write_health, recovered))
        else:
            counters["failed"] += 1
            disabled = error != PHI_UNAVAILABLE and await self._failed(endpoint, status, now)
            delay = (
                None
                if disabled
                else next_delay(self.settings.webhooks_retry_schedule, d.attempt, self._rng)
            )
            if delay is not None and wait is not None:
                delay = max(delay, wait)
            if delay is None:
                outcome, next_at = "failed", None
            else:
                counters["retries_scheduled"] += 1
                outcome, next_at = "retry_scheduled", now + timedelta(seconds=delay)
                job = WebhookJob(
                    d.delivery_id,
                    d.endpoint_id,
                    d.tenant_id,
                    d.attempt + 1,
                    next_at,
                    datetime.fromtimestamp(d.created_at, UTC),
                    trigger="retry" if d.trigger == "event" else d.trigger,
                    events=tuple(d.raw),
                )
                topic = self.settings.webhook_retry_topics[tier_for(self._tiers, delay)]
                writes.append(partial(self.publisher.publish_job, topic, job))
        record = self._attempt_record(d, now, status, latency_ms, outcome, error, next_at)
        writes.append(partial(self.publisher.publish_attempt, record))
        # The receiver's slot is free now; the records settle once Kafka has the writes.
        self._spawn(self._written(d, writes))

    async def _written(self, d: Delivery, writes: list[Write]) -> None:
        """Make ``d``'s writes, then settle its records. The writes are started here,
        not by the caller: a task cancelled before its first step (the dispatcher
        stopping) leaves no write coroutine behind unawaited, and its records stay
        unsettled (delivered again after the restart)."""
        if len(writes) == 1:  # the usual case: the attempt record alone (no task for it)
            await writes[0]()
        else:
            await asyncio.gather(*(write() for write in writes))
        self._settle(d)

    def _request(
        self,
        endpoint: WebhookEndpoint,
        d: Delivery,
        secrets: list[str],
        token: str | None,
        now: datetime,
    ) -> tuple[bytes, dict[str, str]]:
        if d.ping:
            envelopes = [envelope.ping_envelope(d.delivery_id, d.tenant_id, d.endpoint_id, now)]
            times = [now]
        else:
            envelopes = self._phi.envelopes(d.events)
            times = [e.occurred_at for e in d.events]
        fmt = endpoint.format
        if fmt == "json" and len(envelopes) > 1:  # a batch replayed after a format change
            fmt = "ndjson"
        body = envelope.body(fmt, envelopes, times)
        headers = signature_headers(secrets, d.delivery_id, body, int(now.timestamp()))
        headers["Content-Type"] = envelope.CONTENT_TYPES[fmt]
        headers["Velora-Event-Id"] = d.delivery_id
        headers["Velora-Event-Type"] = event_type(d)
        if len(envelopes) > 1 or fmt != "json":
            headers["Velora-Event-Count"] = str(len(envelopes))
        if fmt == "splunk_hec" and token is not None:
            headers["Authorization"] = f"Splunk {token}"
        return body, headers

    async def _post(
        self, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int | None, str | None, float | None]:
        """``(status, error class, Retry-After seconds)`` of one POST (the client
        bounds it by ``webhooks_timeout_s``: a POST past it answers ``timeout``)."""
        answer = await self.client.post(url, body, headers)
        wait = None
        if answer.status in (429, 503):
            wait = retry_after(answer.retry_after)
        return answer.status, answer.error, wait

    def _attempt_record(
        self,
        d: Delivery,
        now: datetime,
        status: int | None,
        latency_ms: float | None,
        outcome: str,
        error: str | None,
        next_at: datetime | None,
    ) -> WebhookAttempt:
        return WebhookAttempt(
            attempt_id=str(uuid_utils.uuid7()),
            delivery_id=d.delivery_id,
            endpoint_id=d.endpoint_id,
            tenant_id=d.tenant_id,
            event_ids=tuple(e.event_id for e in d.events) or (d.delivery_id,),
            event_type=event_type(d),
            attempt=d.attempt,
            attempted_at=now,
            trigger=d.trigger,
            status_code=status,
            latency_ms=None if latency_ms is None else round(latency_ms, 3),
            outcome=outcome,
            error_class=error,
            next_attempt_at=next_at,
        )

    def _settle(self, d: Delivery) -> None:
        for ref in d.refs:
            self.tracker.settle(ref)

    def _spawn(self, coro: Any) -> None:
        if self.closing:
            coro.close()  # stopping: the records stay unsettled and are delivered again
            return
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- secrets and health ----------------------------------------------------------
    def _secrets_of(self, endpoint: WebhookEndpoint, now: datetime) -> tuple[list[str], str | None]:
        key = (endpoint.endpoint_id, endpoint.updated_at)
        cached = self._secrets.get(key)
        if cached is None:
            eid = endpoint.endpoint_id
            current = [self._box.decrypt(endpoint.secret_enc, eid, "secret")]
            previous = None
            if endpoint.previous_secret_enc is not None:
                previous = self._box.decrypt(endpoint.previous_secret_enc, eid, "secret")
            token = None
            if endpoint.splunk_token_enc is not None:
                token = self._box.decrypt(endpoint.splunk_token_enc, eid, "splunk_token")
            cached = (current + ([previous] if previous else []), token, None)
            self._secrets = {k: v for k, v in self._secrets.items() if k[0] != eid}
            self._secrets[key] = cached
        secrets, token, _ = cached
        expires = endpoint.previous_secret_expires_at
        if len(secrets) > 1 and (expires is None or expires <= now):
            secrets = secrets[:1]
        return secrets, token

    def health_of(self, endpoint_id: str) -> WebhookHealth | None:
        """The newest health known: folded from the control topic, or written here."""
        folded = self.control.webhook_health(endpoint_id)
        mine = self._health.get(endpoint_id)
        if mine is None or (folded is not None and folded.updated_at >= mine.updated_at):
            return folded
        return mine

    async def _write_health(self, health: WebhookHealth) -> None:
        self._health[health.endpoint_id] = health
        await self.publisher.put_health(health)

    def _recovering(self, endpoint: WebhookEndpoint) -> WebhookHealth | None:
        """The endpoint's health when it is in a failing streak (not disabled), else None."""
        health = self.health_of(endpoint.endpoint_id)
        if health is not None and health.failing_since is not None and health.disabled_at is None:
            return health
        return None

    async def _failed(self, endpoint: WebhookEndpoint, status: int | None, now: datetime) -> bool:
        """Record the failure; True when it disables the endpoint."""
        health = self.health_of(endpoint.endpoint_id) or WebhookHealth(
            endpoint.endpoint_id, endpoint.tenant_id, now
        )
        if status == 410:
            log.warning("webhook endpoint %s answered 410 Gone: disabled", endpoint.endpoint_id)
            await self._write_health(
                replace(health, disabled_at=now, disabled_reason="gone", updated_at=now)
            )
            return True
        if health.failing_since is None:
            await self._write_health(replace(health, failing_since=now, updated_at=now))
            return False
        limit = timedelta(seconds=self.settings.webhooks_disable_after_s)
        if now - health.failing_since >= limit:
            log.warning(
                "webhook endpoint %s failed continuously since %s: disabled",
                endpoint.endpoint_id,
                health.failing_since.isoformat(),
            )
            await self._write_health(
                replace(health, disabled_at=now, disabled_reason="failing", updated_at=now)
            )
            return True
        return False

    async def close(self) -> None:
        """Cancel the attempts and writes in flight (their records stay unsettled)."""
        self.closing = True
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- observation -----------------------------------------------------------------
    def lanes(self) -> dict[str, dict[str, int]]:
        """Per endpoint: requests running and events queued in this dispatcher."""
        return {
            eid: {"in_flight": lane.running, "queued": lane.queued_events}
            for eid, lane in self._lanes.items()
        }


def lane_is_batch(endpoint: WebhookEndpoint) -> bool:
    """Whether the endpoint takes batches (``ndjson``, ``splunk_hec``)."""
    return endpoint.format != "json"


def event_type(d: Delivery) -> str:
    """``Velora-Event-Type`` of a delivery: the action, ``velora.ping`` or ``velora.batch``."""
    if d.ping:
        return envelope.PING
    if len(d.events) == 1:
        return d.events[0].action
    return envelope.BATCH

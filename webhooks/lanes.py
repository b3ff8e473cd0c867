"""One lane per endpoint: its queue, its batches, its concurrency and its rate limit.

Every endpoint gets its own :class:`Lane`, so a slow or dead endpoint only fills
its own queue: the consumer keeps handing over records, and every other endpoint's
deliveries go on. A lane runs at most ``VELORA_WEBHOOKS_CONCURRENCY`` requests at
once and starts at most ``VELORA_WEBHOOKS_RATE_PER_SECOND`` per second (token
bucket; 0 = no limit). For ``ndjson`` and ``splunk_hec`` it gathers events into
batches of up to ``VELORA_WEBHOOKS_BATCH_MAX_EVENTS`` or
``VELORA_WEBHOOKS_BATCH_MAX_WAIT_MS``, whichever comes first.

A lane that already holds :data:`MAX_QUEUED` events is *full*. If its endpoint is
failing, what else arrives for it is deferred to a retry topic by the dispatcher (no
attempt made), so memory stays bounded however long an endpoint hangs; a slow
endpoint that answers keeps queueing, bounded by the consumer's back-pressure.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from schemas.events import AuditEvent
from webhooks.consumer import Ref

MAX_QUEUED = 10_000


@dataclass
class Item:
    """One event for one endpoint, and the record it settles."""

    event: AuditEvent
    raw: bytes
    ref: Ref


@dataclass
class Delivery:
    """One POST to one endpoint: its id (``webhook-id``), events and attempt number."""

    endpoint_id: str
    tenant_id: str
    delivery_id: str
    events: list[AuditEvent]
    raw: list[bytes]
    refs: list[Ref]
    attempt: int = 1
    trigger: str = "event"
    deferrals: int = 0
    created_at: float = field(default_factory=time.time)
    ping: bool = False


class Lane:
    """The queue of one endpoint (all methods run on the event loop)."""

    def __init__(
        self,
        endpoint_id: str,
        run: Callable[[Delivery], Awaitable[None]],
        spawn: Callable[[Awaitable[None]], None],
        batch: Callable[[str, list[Item]], Delivery] | None,
        *,
        concurrency: int,
        rate: float,
        batch_max: int,
        batch_wait_s: float,
    ) -> None:
        self.endpoint_id = endpoint_id
        self._run = run
        self._spawn = spawn
        self._batch = batch
        self._concurrency = concurrency
        self._rate = rate
        self._tokens = float(max(1, concurrency))
        self._stamp = time.monotonic()
        self._batch_max = batch_max
        self._batch_wait_s = batch_wait_s
        self._queue: deque[Delivery] = deque()
        self._buffer: list[Item] = []
        self._timer: asyncio.TimerHandle | None = None
        self._wakeup: asyncio.TimerHandle | None = None
        self.running = 0
        self.queued_events = 0
        self.last_failed = False
        """Whether the lane's latest attempt failed (its overflow is then deferred)."""

    @property
    def full(self) -> bool:
        """Whether new work should be deferred instead of queued."""
        return self.queued_events >= MAX_QUEUED

    def add_event(self, item: Item, single: Callable[[Item], Delivery]) -> None:
        """Queue one event (batched for the batch formats)."""
        self.queued_events += 1
        if self._batch is None:
            self._queue.append(single(item))
            self.pump()
            return
        self._buffer.append(item)
        if len(self._buffer) >= self._batch_max:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._batch_wait_s, self.flush)

    def add_delivery(self, delivery: Delivery) -> None:
        """Queue a delivery that is already formed (a retry, a test, a replayed batch)."""
        self.queued_events += max(1, len(delivery.events))
        self._queue.append(delivery)
        self.pump()

    def flush(self) -> None:
        """Turn the buffered events into one batch delivery."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._buffer and self._batch is not None:
            items, self._buffer = self._buffer, []
            self._queue.append(self._batch(self.endpoint_id, items))
            self.pump()

    def pump(self) -> None:
        """Start queued deliveries while concurrency and the rate limit allow."""
        while self._queue and self.running < self._concurrency:
            if self._rate > 0 and not self._take_token():
                if self._wakeup is None:
                    wait = (1.0 - self._tokens) / self._rate
                    self._wakeup = asyncio.get_running_loop().call_later(wait, self._woken)
                return
            delivery = self._queue.popleft()
            self.running += 1
            self._spawn(self._go(delivery))

    def _woken(self) -> None:
        self._wakeup = None
        self.pump()

    def _take_token(self) -> bool:
        now = time.monotonic()
        self._tokens = min(
            float(max(1, self._concurrency)), self._tokens + (now - self._stamp) * self._rate
        )
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    async def _go(self, delivery: Delivery) -> None:
        try:
            await self._run(delivery)
        finally:
            self.running -= 1
            self.queued_events -= max(1, len(delivery.events))
            self.pump()

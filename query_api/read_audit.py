"""Reads are audited: every authenticated public call becomes an event in the caller's trail.

The middleware hands each call's event to :class:`ReadAuditor`: ``audit_log.viewed``
for a read, or the :class:`AuditAction` a writing route set (``webhook_endpoint.created``
and the like, whatever the call's outcome),
which sends it through an ``ingest.AuditProducer``-like sink (in system mode:
only Velora writes ``audit_log.`` actions and ``velora.`` sources) whose ``send``
returns a future that resolves once Kafka acknowledged. Two modes
(``VELORA_READ_AUDIT``):

- ``required`` (the default): :meth:`ReadAuditor.confirm` sends the event and
  waits, at most ``timeout`` seconds, for Kafka's acknowledgement; the middleware
  answers the read only then, else 503 with ``Retry-After``. HIPAA's audit-controls
  standard (45 CFR 164.312(b)) asks that access to ePHI be recorded, so a read
  that cannot be recorded is not served. A route may send its record ahead, while
  its query runs (:func:`go_ahead`).
- ``best_effort``: :meth:`ReadAuditor.record` queues the event (no added latency)
  and a worker thread sends it; the read is answered either way.

Failed authentications of a known key (``audit_log.auth_failed``,
:func:`auth_failed_event`) are always queued: the answer is a refusal anyway.
Nothing is lost silently: a failed send, a full queue or events still pending at
shutdown are logged (with the event id, never a key) and counted in
:attr:`ReadAuditor.stats`.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import uuid_utils

from ingest.fields import normal_ip
from query_api.auth import Principal
from schemas.events import Actor, AuditEvent, Outcome, Target
from schemas.limits import FIELD_LIMITS
from schemas.rules import clip, scrub
from velora.errors import Unavailable

log = logging.getLogger(__name__)

AHEAD_KEY = "audit_ahead"
"""Where the middleware puts the call's :func:`go_ahead` hook in ``scope["state"]``."""
MAX_PENDING = 10_000
SOURCE = "velora.query_api"
CONFIRM_TIMEOUT_S = 5.0
"""How long a read waits for its audit record's acknowledgement in ``required`` mode."""
RETRY_AFTER_S = 5.0
_STOP = object()


def _ident(value: str, limit: int = 256) -> str:
    """An identifier that ingest accepts: printable, clipped (odd input is escaped)."""
    return clip(value, limit) or "-"


def _ip(value: str | None) -> str | None:
    return None if value is None else normal_ip(value)


def go_ahead(scope: Mapping[str, Any], status: int = 200) -> None:
    """Send the call's record now, as answering ``status``, alongside the route's slow
    part (``required`` mode; otherwise nothing to do). For a route that can no longer
    answer anything else but by failing: its metadata is set, its input checked. Should
    it answer another status after all, the middleware records that one too before the
    answer leaves, so the trail never lacks the status a caller saw."""
    hook = scope.get("state", {}).get(AHEAD_KEY)
    if hook is not None:
        hook(status)


class AuditSink(Protocol):
    """The part of ``ingest.AuditProducer`` the auditor uses.

    A sink that runs in the server's event loop (the node's,
    ``ingest.loop_producer.LoopAuditProducer``) also has ``bind(loop)``, which
    :meth:`ReadAuditor.start` calls with the loop it starts in, and ``async
    deliver(event)``, which sends and waits in that loop: :meth:`ReadAuditor.confirm`
    then uses it instead of handing ``send`` to a worker thread.
    """

    def send(self, event: AuditEvent) -> Any:
        """Send one event (from any thread); returns a future resolved once Kafka
        acknowledged it."""
        ...

    def close(self) -> None:
        """Flush and close."""
        ...


@dataclass
class AuditStats:
    """Counters of the read-audit pipeline."""

    queued: int = 0
    acked: int = 0
    failed: int = 0
    dropped: int = 0
    refused_reads: int = 0


@dataclass(frozen=True)
class AuditAction:
    """What a call did, as its audit record names it (a route sets it for writes)."""

    action: str
    crud: str
    category: str


VIEWED = AuditAction("audit_log.viewed", "read", "audit")
"""Every call that changes nothing: reads of the trail, of exports, of webhook settings."""


def read_event(
    principal: Principal,
    *,
    status: int,
    target: Target,
    client_ip: str | None,
    user_agent: str | None,
    request_id: str | None,
    metadata: Mapping[str, str],
    action: AuditAction | None = None,
) -> AuditEvent:
    """The event of one call: ``audit_log.viewed`` for a read, else the route's ``action``."""
    action = action or VIEWED
    now = datetime.now(UTC)
    result = "success" if status < 400 else "denied" if status in (401, 403) else "failure"
    return AuditEvent(
        event_id=str(uuid_utils.uuid7()),
        tenant_id=principal.tenant_id,
        occurred_at=now,
        received_at=now,
        action=action.action,
        crud=action.crud,
        category=action.category,
        actor=Actor(
            type="api_key",
            id=principal.key_id,
            name=scrub(principal.name, FIELD_LIMITS["actor.name"]) if principal.name else None,
            ip=_ip(client_ip),
            user_agent=scrub(user_agent, 1024) if user_agent else None,
        ),
        targets=(Target(_ident(target.type, 64), _ident(target.id), target.name),),
        outcome=Outcome(result=result, reason=None if status < 400 else f"HTTP {status}"),
        request_id=request_id,
        source=SOURCE,
        metadata={**{k: scrub(v, 500) for k, v in metadata.items()}, "status": str(status)},
    )


def auth_failed_event(
    *,
    key_id: str,
    tenant_id: str,
    reason: str,
    client_ip: str | None,
    user_agent: str | None,
    method: str,
    path: str,
) -> AuditEvent:
    """The ``audit_log.auth_failed`` event of a refused key (the reason class, never a secret)."""
    now = datetime.now(UTC)
    return AuditEvent(
        event_id=str(uuid_utils.uuid7()),
        tenant_id=tenant_id,
        occurred_at=now,
        received_at=now,
        action="audit_log.auth_failed",
        crud="read",
        category="audit",
        actor=Actor(
            type="api_key",
            id=key_id,
            ip=_ip(client_ip),
            user_agent=scrub(user_agent, 1024) if user_agent else None,
        ),
        targets=(Target("audit_log", tenant_id),),
        outcome=Outcome(result="denied", reason=reason),
        source=SOURCE,
        metadata={"reason": reason, "method": scrub(method, 16), "path": scrub(path, 500)},
    )


class ReadAuditor:
    """Send audit events: confirmed one by one (``required``) or queued (``best_effort``)."""

    def __init__(
        self,
        sink: AuditSink,
        max_pending: int = MAX_PENDING,
        *,
        mode: str = "required",
        timeout: float = CONFIRM_TIMEOUT_S,
    ) -> None:
        if mode not in ("required", "best_effort"):
            raise ValueError(f"unknown read-audit mode {mode!r}")
        self.mode = mode
        self.timeout = timeout
        self._sink = sink
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name="velora-read-audit", daemon=True)
        self._lock = threading.Lock()
        self.stats = AuditStats()

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start the sending thread; a sink that runs in an event loop gets ``loop``."""
        bind = getattr(self._sink, "bind", None)
        if loop is not None and bind is not None:
            bind(loop)
        self._thread.start()

    def record(self, event: AuditEvent) -> None:
        """Queue one event; never blocks the request."""
        try:
            self._queue.put_nowait(event)
            with self._lock:
                self.stats.queued += 1
        except queue.Full:
            with self._lock:
                self.stats.dropped += 1
            log.error(
                "read audit queue full: event %s of tenant %s not recorded",
                event.event_id,
                event.tenant_id,
            )

    async def confirm(self, event: AuditEvent) -> None:
        """Send ``event`` and wait until Kafka acknowledged it; else raise Unavailable (503)."""
        try:
            async with asyncio.timeout(self.timeout):  # no task of its own, as wait_for's
                await self._send_and_wait(event)
        except Exception as exc:  # the sink is another package: any failure refuses the read
            with self._lock:
                self.stats.failed += 1
                self.stats.refused_reads += 1
            log.error(
                "read audit event %s of tenant %s not acknowledged (%s): read refused",
                event.event_id,
                event.tenant_id,
                type(exc).__name__,
            )
            raise Unavailable(
                "the read could not be recorded in the audit trail; retry later",
                retry_after=RETRY_AFTER_S,
            ) from None
        with self._lock:
            self.stats.queued += 1
            self.stats.acked += 1

    async def _send_and_wait(self, event: AuditEvent) -> None:
        deliver = getattr(self._sink, "deliver", None)
        if deliver is not None:  # the sink runs in this loop: no hand-off to a thread
            await deliver(event)
            return
        future = await asyncio.to_thread(self._sink.send, event)
        await _acknowledged(future)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if not isinstance(item, AuditEvent):  # pragma: no cover - only events are queued
                continue
            try:
                future = self._sink.send(item)
            except Exception as exc:  # the sink is another package: log any failure
                self._failed(item, exc)
                continue
            self._watch(item, future)

    def _watch(self, event: AuditEvent, future: Any) -> None:
        if hasattr(future, "add_done_callback"):

            def done(fut: Any) -> None:
                exc = fut.exception()
                self._failed(event, exc) if exc is not None else self._acked()

            future.add_done_callback(done)
        elif hasattr(future, "add_callback") and hasattr(future, "add_errback"):
            future.add_callback(lambda _meta: self._acked())
            future.add_errback(lambda exc: self._failed(event, exc))
        else:
            self._acked()

    def _acked(self) -> None:
        with self._lock:
            self.stats.acked += 1

    def _failed(self, event: AuditEvent, exc: BaseException) -> None:
        with self._lock:
            self.stats.failed += 1
        log.error(
            "read audit event %s of tenant %s not recorded: %s",
            event.event_id,
            event.tenant_id,
            type(exc).__name__,
        )

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued, then flush and close the sink."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)
        pending = self._queue.qsize()
        if pending:
            log.error("read audit: %d events still queued at shutdown were not sent", pending)
        try:
            self._sink.close()
        except Exception as exc:  # the sink is another package: log any failure
            log.error("read audit sink close failed: %s", type(exc).__name__)


async def _acknowledged(future: Any) -> None:
    """Wait for a sink's future: a ``concurrent.futures.Future`` or kafka-python's."""
    if isinstance(future, Future):
        await asyncio.wrap_future(future)
        return
    if not (hasattr(future, "add_callback") and hasattr(future, "add_errback")):
        return  # a sink without futures has nothing more to wait for
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def ok(_meta: Any) -> None:
        loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

    def failed(exc: BaseException) -> None:
        loop.call_soon_threadsafe(lambda: done.done() or done.set_exception(exc))

    future.add_callback(ok)
    future.add_errback(failed)
    await done

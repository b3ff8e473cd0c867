"""Reads are audited: every authenticated public call becomes an event in the caller's trail.

The middleware hands each ``audit_log.viewed`` event to :class:`ReadAuditor`,
which queues it (no added latency) and sends it from a worker thread through an
``ingest.AuditProducer``-like sink whose ``send`` returns a future that resolves
once Kafka acknowledged. Nothing is lost silently: a failed send, a full queue or
events still pending at shutdown are logged (with the event id, never a key) and
counted in :attr:`ReadAuditor.stats`.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import uuid_utils

from query_api.auth import Principal
from schemas.events import Actor, AuditEvent, Outcome, Target
from schemas.rules import clip, scrub

log = logging.getLogger(__name__)

MAX_PENDING = 10_000
SOURCE = "velora.query_api"
_STOP = object()


def _ident(value: str, limit: int = 256) -> str:
    """An identifier that ingest accepts: printable, clipped (odd input is escaped)."""
    return clip(value, limit) or "-"


def _ip(value: str | None) -> str | None:
    try:
        return None if value is None else str(ipaddress.ip_address(value))
    except ValueError:
        return None


class AuditSink(Protocol):
    """The part of ``ingest.AuditProducer`` the auditor uses."""

    def send(self, event: AuditEvent) -> Any:
        """Send one event; returns a future resolved once Kafka acknowledged it."""
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


def read_event(
    principal: Principal,
    *,
    status: int,
    target: Target,
    client_ip: str | None,
    user_agent: str | None,
    request_id: str | None,
    metadata: Mapping[str, str],
) -> AuditEvent:
    """The ``audit_log.viewed`` event of one call."""
    now = datetime.now(UTC)
    result = "success" if status < 400 else "denied" if status in (401, 403) else "failure"
    return AuditEvent(
        event_id=str(uuid_utils.uuid7()),
        tenant_id=principal.tenant_id,
        occurred_at=now,
        received_at=now,
        action="audit_log.viewed",
        crud="read",
        category="audit",
        actor=Actor(
            type="api_key",
            id=principal.key_id,
            name=principal.name,
            ip=_ip(client_ip),
            user_agent=scrub(user_agent, 1024) if user_agent else None,
        ),
        targets=(Target(_ident(target.type, 64), _ident(target.id), target.name),),
        outcome=Outcome(result=result, reason=None if status < 400 else f"HTTP {status}"),
        request_id=request_id,
        source=SOURCE,
        metadata={**{k: scrub(v, 500) for k, v in metadata.items()}, "status": str(status)},
    )


class ReadAuditor:
    """Queue read events and send them from one worker thread."""

    def __init__(self, sink: AuditSink, max_pending: int = MAX_PENDING) -> None:
        self._sink = sink
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name="velora-read-audit", daemon=True)
        self._lock = threading.Lock()
        self.stats = AuditStats()

    def start(self) -> None:
        """Start the sending thread."""
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

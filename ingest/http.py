"""The internal HTTP ingest service: ``POST /internal/v1/events`` (and ``GET /healthz``).

Request handling, in order (the first failure answers):

1. ``Authorization: Bearer <service token>`` matching one of
   ``settings.ingest_tokens`` (constant-time compare) - else 401; a token
   restricted to some sources (``token=src1|src2``) has every item with another
   ``source`` rejected (per item, naming ``source``);
2. ``Content-Type`` ``application/json`` (an array of events) or
   ``application/x-ndjson`` (one event per line) - else 415;
3. body at most 5 MiB (``Content-Length`` first, then while streaming) and at
   most 1,000 events - else 413; room for it in the memory budget shared by all
   requests (``VELORA_INGEST_MEMORY_BUDGET_MB``, :mod:`ingest.budget`), claimed
   before the body is read - else 503; well-formed and non-empty - else 422;
4. each item through the pipeline (:meth:`ingest.AuditProducer.send_many`) in a
   worker thread, so parsing, validation and the wait for Kafka's acks never
   block the event loop. The pipeline refuses the reserved names (actions under
   ``audit_log.``, sources under ``velora.``): only Velora writes them.

When ``settings.trusted_proxies`` is set, the app is wrapped in uvicorn's
``ProxyHeadersMiddleware`` for exactly those networks (client addresses from
``X-Forwarded-For`` only when the peer is one of them); otherwise forwarded
headers are ignored.

Answers: 200 ``{"accepted", "rejected", "items": [...]}`` once Kafka acknowledged
every accepted item, with per-item ``status`` (``accepted`` + ``event_id``, or
``rejected`` + ``errors``); 422 in the common error shape (every detail with its
``index``) when *every* item was rejected, since nothing was written; 503 with
``Retry-After`` when Kafka did not acknowledge in time (nothing acknowledged).
All errors use :func:`velora.errors.error_body`.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ingest.body import media_type, parse_events, read_limited
from ingest.budget import MIB, BodyBudget, BudgetFull, trim_after_bursts
from ingest.producer import AuditProducer
from ingest.results import Accepted, SendResult
from velora.errors import (
    AuthenticationError,
    ErrorDetail,
    ValidationError,
)
from velora.http_errors import EXCEPTION_HANDLERS, error_response
from velora.proxies import trusted_proxy_middleware
from velora.settings import Settings

log = logging.getLogger(__name__)

REQUEST_DEADLINE_S = 5.0
"""How long a request may wait for Kafka (connect, buffer space, acks) before a 503."""

EVENTS_PATH = "/internal/v1/events"

INGEST_WORKERS = 2
"""Requests whose events are processed at once; more only trade CPU for GIL hand-offs."""


def create_ingest_app(settings: Settings, producer: AuditProducer | None = None) -> Starlette:
    """The ingest ASGI app. Without ``producer`` it makes one and closes it at shutdown."""
    owned = producer is None
    sink = producer if producer is not None else AuditProducer(settings, timeout=REQUEST_DEADLINE_S)
    tokens = tuple(
        (t.reveal().encode(), getattr(t, "sources", None)) for t in settings.ingest_tokens
    )
    workers = anyio.CapacityLimiter(INGEST_WORKERS)
    budget = BodyBudget(settings.ingest_memory_budget_mb * MIB)

    async def post_events(request: Request) -> Response:
        sources = _authenticate(request.headers.get("authorization"), tokens)
        kind = media_type(request.headers.get("content-type"))
        with budget.claim() as claim:  # held until the events are sent: they are in memory
            try:
                body = await read_limited(
                    request.stream(), request.headers.get("content-length"), claim=claim
                )
            except ClientDisconnect:
                raise ValidationError("client disconnected before the body was read") from None
            except BudgetFull as exc:  # back-pressure: answered here, without an ERROR line
                return error_response(exc)
            try:
                results = await anyio.to_thread.run_sync(
                    _ingest, sink, body, kind, sources, limiter=workers
                )
            finally:
                body.clear()  # freed now, even if a traceback keeps this frame alive
        return _answer(results)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        trimmer = asyncio.create_task(trim_after_bursts(budget))
        try:
            yield
        finally:
            trimmer.cancel()
            if owned:
                await run_in_threadpool(sink.close)

    app = Starlette(
        routes=[Route(EVENTS_PATH, post_events, methods=["POST"]), Route("/healthz", healthz)],
        middleware=trusted_proxy_middleware(settings),
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.body_budget = budget
    return app


Sources = frozenset[str] | None


def _authenticate(header: str | None, tokens: Sequence[tuple[bytes, Sources]]) -> Sources:
    """Accept ``Bearer <token>`` for any configured token, comparing in constant time.

    Returns the sources the token may write (None: any non-reserved source).
    """
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise AuthenticationError("missing bearer token: send Authorization: Bearer <token>")
    candidate = given.strip().encode("utf-8", "replace")
    matched = False
    allowed: Sources = None
    for token, sources in tokens:  # no early exit: the time does not depend on which matched
        hit = hmac.compare_digest(candidate, token)
        if hit and not matched:
            allowed = sources
        matched |= hit
    if not matched:
        raise AuthenticationError("invalid service token")
    return allowed


def _ingest(
    producer: AuditProducer, body: bytes | bytearray, kind: str, sources: Sources
) -> list[SendResult]:
    """Parse and send one request's events (runs in a worker thread)."""
    return producer.send_many(parse_events(body, kind), sources=sources)


def _answer(results: list[SendResult]) -> Response:
    accepted = sum(1 for r in results if isinstance(r, Accepted))
    if accepted == 0:
        details = [
            ErrorDetail(e.field, e.reason, r.index)
            for r in results
            if not isinstance(r, Accepted)
            for e in r.errors
        ]
        raise ValidationError(f"all {len(results)} events were rejected", details=details)
    return JSONResponse(
        {
            "accepted": accepted,
            "rejected": len(results) - accepted,
            "items": [r.to_json() for r in results],
        }
    )

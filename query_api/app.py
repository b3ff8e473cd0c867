"""The query node's ASGI application: health probes and the public API under /api/v2/public/.

``create_app(settings, node)`` is what ``velora node`` serves. ``node`` is the
query node (``ledger.node.QueryNode``, or any :class:`~query_api.db.LedgerReader`
such as :class:`~ledger.duck.LedgerFile`); without it the app is a bare health
server. The lifespan starts and stops the control-state follower (API keys,
webhook endpoints), the read-audit producer and the webhook routes' writers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware

from ledger.control import ControlState
from query_api.auth import Authenticator
from query_api.db import LedgerReader
from query_api.docs import docs_routes
from query_api.health import ReadinessSource, health_routes
from query_api.middleware import FAILURE_WINDOW_S, PublicApiMiddleware
from query_api.openapi import PREFIX
from query_api.ratelimit import BucketMap
from query_api.read_audit import AuditSink, ReadAuditor
from query_api.routes import event_routes
from query_api.webhook_store import RequestWriter
from query_api.webhooks import webhook_routes
from velora.http_errors import EXCEPTION_HANDLERS
from velora.settings import Settings

log = logging.getLogger(__name__)


class _Readiness:
    """Ready when the ledger has caught up and the control state has been read."""

    def __init__(self, node: ReadinessSource, control: ControlState) -> None:
        self._node = node
        self._control = control

    def readiness(self) -> dict[str, object]:
        state = dict(self._node.readiness())
        control = self._control.readiness()
        state["control"] = control
        state["ready"] = bool(state.get("ready")) and bool(control["caught_up"])
        return state


def _default_sink(settings: Settings) -> AuditSink:
    from ingest import producer  # the ingest library; imported late to keep startup light

    return producer.AuditProducer(settings)


def create_app(
    settings: Settings,
    node: LedgerReader | ReadinessSource | None = None,
    *,
    control: ControlState | None = None,
    audit_sink: AuditSink | None = None,
) -> Starlette:
    """Build the app for one query node (``node`` is None for a bare health server).

    ``control`` and ``audit_sink`` default to ones the app makes and owns
    (``ControlState(settings)``, ``ingest.producer.AuditProducer(settings)``).
    """
    if node is None:
        return Starlette(routes=health_routes(None), exception_handlers=EXCEPTION_HANDLERS)
    owns_control = control is None
    control_state = control if control is not None else ControlState(settings)
    state: dict[str, Any] = {"auditor": None}
    webhook_writer = RequestWriter(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if owns_control:
            await asyncio.to_thread(control_state.start)
        sink = audit_sink if audit_sink is not None else _default_sink(settings)
        auditor = ReadAuditor(sink)
        auditor.start()
        state["auditor"] = app.state.auditor = auditor
        try:
            yield
        finally:
            state["auditor"] = None
            await asyncio.to_thread(auditor.close)
            await asyncio.to_thread(webhook_writer.close)
            if owns_control:
                await asyncio.to_thread(control_state.stop)

    middleware = [
        Middleware(
            PublicApiMiddleware,
            authenticator=Authenticator(settings, control_state),
            key_buckets=BucketMap(settings.rate_limit_burst, settings.rate_limit_per_second),
            failure_buckets=BucketMap(
                settings.auth_failure_limit, settings.auth_failure_limit / FAILURE_WINDOW_S
            ),
            auditor=lambda: state["auditor"],
            prefix=PREFIX + "/",
            open_paths=(f"{PREFIX}/openapi.json", f"{PREFIX}/docs"),
        )
    ]
    routes = [
        *health_routes(_Readiness(node, control_state)),
        *docs_routes(PREFIX),
        *event_routes(PREFIX),
        *webhook_routes(PREFIX),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.ledger = node
    app.state.control = control_state
    app.state.webhook_writer = webhook_writer
    return app

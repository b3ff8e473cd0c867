"""The query node's ASGI application: health probes and the public API under /api/v2/public/.

``create_app(settings, node)`` is what ``velora node`` serves. ``node`` is the
query node (``ledger.node.QueryNode``, or any :class:`~query_api.db.LedgerReader`
such as :class:`~ledger.duck.LedgerFile`); without it the app is a bare health
server. The lifespan starts and stops the control-state follower (API keys,
webhook endpoints), the webhook routes' writers and the read-audit producer (an
``ingest.loop_producer.LoopAuditProducer`` in system mode, which sends in the server's event loop
with no linger, since in ``required`` mode every read waits for its
acknowledgement).

The app is wrapped in the trusted-proxy middleware of :mod:`velora.proxies`, so
client addresses come from ``X-Forwarded-For`` only when the peer is listed in
``VELORA_TRUSTED_PROXIES``, whichever server serves it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware

from ledger.control import ControlState
from phi.policy import PhiDirectory
from phi.wrap import KeysetWrapper
from query_api.analytics_routes import analytics_routes
from query_api.auth import Authenticator
from query_api.db import LedgerReader
from query_api.docs import docs_routes
from query_api.export_routes import export_routes, make_export_jobs
from query_api.health import ReadinessSource, health_routes
from query_api.middleware import FailureGate, PublicApiMiddleware
from query_api.openapi import PREFIX
from query_api.portal_routes import portal_routes
from query_api.queries import WindowHints
from query_api.ratelimit import BucketMap
from query_api.read_audit import CONFIRM_TIMEOUT_S, AuditSink, ReadAuditor
from query_api.routes import event_routes
from query_api.webhook_store import RequestWriter
from query_api.webhooks import webhook_routes
from velora.http_errors import EXCEPTION_HANDLERS
from velora.proxies import trusted_proxy_middleware
from velora.settings import Settings

log = logging.getLogger(__name__)


class _Readiness:
    """Ready when the ledger has caught up and the control state is caught up and fresh."""

    def __init__(self, node: ReadinessSource, control: ControlState) -> None:
        self._node = node
        self._control = control

    def readiness(self) -> dict[str, object]:
        state = dict(self._node.readiness())
        control = self._control.readiness()
        state["control"] = control
        state["ready"] = bool(state.get("ready")) and bool(control["ready"])
        if not control["ready"] and "reason" not in state:
            state["reason"] = control.get("reason")
        return state


def _default_sink(settings: Settings) -> AuditSink:
    from ingest import loop_producer  # the ingest library; imported late to keep startup light

    return loop_producer.LoopAuditProducer(
        settings, system=True, timeout=CONFIRM_TIMEOUT_S, client_id="velora-read-audit"
    )


def create_app(
    settings: Settings,
    node: LedgerReader | ReadinessSource | None = None,
    *,
    control: ControlState | None = None,
    audit_sink: AuditSink | None = None,
) -> Starlette:
    """Build the app for one query node (``node`` is None for a bare health server).

    ``control`` and ``audit_sink`` default to ones the app makes and owns
    (``ControlState(settings)``, ``ingest.loop_producer.LoopAuditProducer(settings)``).
    """
    if node is None:
        return Starlette(
            routes=health_routes(None),
            middleware=trusted_proxy_middleware(settings),
            exception_handlers=EXCEPTION_HANDLERS,
        )
    owns_control = control is None
    control_state = control if control is not None else ControlState(settings)
    state: dict[str, Any] = {"auditor": None}
    webhook_writer = RequestWriter(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if owns_control:  # serves 503 on authenticated routes until caught up
            await asyncio.to_thread(control_state.start, 0.0)
        sink = audit_sink if audit_sink is not None else _default_sink(settings)
        auditor = ReadAuditor(sink, mode=settings.read_audit)
        auditor.start(asyncio.get_running_loop())
        state["auditor"] = app.state.auditor = auditor
        try:
            yield
        finally:
            await asyncio.to_thread(app.state.export_jobs.close)  # before the auditor: it records
            state["auditor"] = None
            await asyncio.to_thread(auditor.close)
            await asyncio.to_thread(webhook_writer.close)
            if owns_control:
                await asyncio.to_thread(control_state.stop)

    middleware = [
        *trusted_proxy_middleware(settings),
        Middleware(
            PublicApiMiddleware,
            authenticator=Authenticator(settings, control_state),
            control=control_state,
            key_buckets=BucketMap(settings.rate_limit_burst, settings.rate_limit_per_second),
            failures=FailureGate(settings.auth_failure_limit),
            auditor=lambda: state["auditor"],
            prefix=PREFIX + "/",
            # a signed export download carries its own credential (query_api/export_jobs.py)
            open_paths=(f"{PREFIX}/openapi.json", f"{PREFIX}/docs", f"{PREFIX}/audit/export-files"),
        ),
    ]
    routes = [  # the list route first: Starlette tries each route's pattern in turn
        *event_routes(PREFIX),
        *health_routes(_Readiness(node, control_state)),
        *docs_routes(PREFIX),
        *analytics_routes(PREFIX),
        *export_routes(PREFIX),
        *portal_routes(settings),
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
    app.state.window_hints = WindowHints()  # where the list query's window probes start
    app.state.control = control_state
    app.state.phi = PhiDirectory(
        control_state.tenant_settings,
        control_state.phi_keyset,
        KeysetWrapper(settings.secrets_key),
        control_state.caught_up,
    )
    app.state.api_prefix = PREFIX
    app.state.export_streams = threading.BoundedSemaphore(settings.export_max_streams)
    app.state.export_jobs = make_export_jobs(settings, app.state)
    app.state.webhook_writer = webhook_writer
    return app

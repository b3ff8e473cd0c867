"""The query node's ASGI application: health probes and the public API under /api/v2/public/."""

from __future__ import annotations

from starlette.applications import Starlette

from query_api.health import ReadinessSource, health_routes
from velora.settings import Settings


def create_app(settings: Settings, node: ReadinessSource | None = None) -> Starlette:
    """Build the app for one query node (``node`` is None for a bare health server)."""
    return Starlette(routes=health_routes(node))

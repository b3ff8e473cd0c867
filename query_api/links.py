"""Absolute URLs the public API hands out (``Link: <...>; rel="next"``), never raw input.

The base of every such URL is, in order:

1. ``VELORA_PUBLIC_BASE_URL`` (``https://api.example.com``), validated at start: set
   it in production, where a front proxy terminates TLS and the node cannot know
   the public scheme, host or port;
2. else ``scheme://host[:port]`` from the request's ``Host`` header when
   :func:`velora.urls.clean_authority` accepts it (normalised, never the raw
   header). The scheme is the connection's, or ``X-Forwarded-Proto`` only from a
   proxy in ``VELORA_TRUSTED_PROXIES`` (applied inside the app);
3. else the address the server is bound to;
4. else (no address at all, say a Unix socket) no base: the link is relative.

The path is the route's own path, percent-encoded; the query is built by the
caller from validated values.
"""

from __future__ import annotations

from urllib.parse import quote

from starlette.requests import Request

from velora.settings import Settings
from velora.urls import clean_authority


def base_url(request: Request, settings: Settings) -> str:
    """``scheme://authority`` for URLs handed to this request's client ('' if none)."""
    if settings.public_base_url:
        return settings.public_base_url
    scheme = "https" if request.scope.get("scheme") == "https" else "http"
    authority = clean_authority(request.headers.get("host"))
    if authority is None:
        server = request.scope.get("server")
        if server and server[1] is not None:
            host, port = server[0], server[1]
            authority = clean_authority(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return f"{scheme}://{authority}" if authority else ""


def page_url(request: Request, settings: Settings, query: str) -> str:
    """The absolute URL of this route with ``query`` (already encoded)."""
    return f"{base_url(request, settings)}{quote(request.url.path)}?{query}"

"""Client addresses behind a reverse proxy: ``X-Forwarded-For`` only from trusted peers.

Both HTTP services (query node and ingest) put :func:`trusted_proxy_middleware`
first in their Starlette middleware, so it holds for every server that serves
them. With ``settings.trusted_proxies`` (``VELORA_TRUSTED_PROXIES``, CIDRs) set,
uvicorn's ``ProxyHeadersMiddleware`` rewrites the ASGI ``client`` (and scheme)
from ``X-Forwarded-For``/``X-Forwarded-Proto``, but only when the socket peer is
inside one of those networks; it takes the right-most address that is not itself
a trusted proxy. With the list empty (the default) no middleware is added and
forwarded headers are ignored entirely, from any peer, 127.0.0.1 included.

uvicorn's own ``proxy_headers`` option, which trusts loopback by default, must be
off in every server config (``proxy_headers=False``), or it would rewrite the
client before the app sees the socket peer.
"""

from __future__ import annotations

from starlette.middleware import Middleware
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from velora.settings import Settings


def trusted_proxy_middleware(settings: Settings) -> list[Middleware]:
    """The proxy-headers middleware for the configured trusted proxies (none: empty list)."""
    if not settings.trusted_proxies:
        return []
    return [Middleware(ProxyHeadersMiddleware, trusted_hosts=list(settings.trusted_proxies))]

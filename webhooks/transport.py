"""The dispatcher's HTTP client: httpx, no redirects, and the SSRF check at connect time.

:func:`make_client` builds an ``httpx.AsyncClient`` whose connection pool opens
every TCP connection through :class:`GuardedBackend`. The backend resolves the
host again (never trusting the check made when the endpoint was created), refuses
with :class:`DestinationRefused` when any address is not public (the rules of
:mod:`webhooks.urls`), and connects to the address it checked; TLS still verifies
the certificate against the URL's host name. Redirects are never followed and
proxies from the environment are ignored.

httpx's transport does not take a network backend, so the pool is replaced by an
``httpcore.AsyncConnectionPool`` made here with the same options; a test sends a
delivery to a name that resolves to a loopback address and checks that no
request arrives, so a change in httpx that bypassed this would fail it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import typing

import httpcore
import httpx

from velora.errors import ValidationError
from webhooks.urls import LOOPBACK_LITERAL, Destination, Resolver, allowed_addresses

USER_AGENT = "Velora-Webhooks/1"


class DestinationRefused(httpcore.ConnectError):
    """The host resolved to an address a webhook must not reach."""


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves, checks and connects to a checked address (see the module docstring)."""

    def __init__(self, resolve: Resolver, allow_insecure_loopback: bool) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._resolve = resolve
        self._loopback = allow_insecure_loopback

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        insecure = self._loopback and host == LOOPBACK_LITERAL
        dest = Destination("", "http" if insecure else "https", host.lower(), port)
        try:
            literal = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            loop = asyncio.get_running_loop()
            addresses = await loop.run_in_executor(None, self._resolve, host, port)
        else:
            addresses = [str(literal)]
        try:
            allowed = allowed_addresses(dest, addresses)
        except ValidationError as exc:
            raise DestinationRefused(exc.message) from None
        return await self._inner.connect_tcp(
            allowed[0],
            port,
            timeout=timeout,
            local_address=local_address,
            socket_options=socket_options,
        )

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def make_client(
    resolve: Resolver, *, allow_insecure_loopback: bool, timeout_s: float, max_connections: int
) -> httpx.AsyncClient:
    """The client every delivery goes through."""
    transport = httpx.AsyncHTTPTransport(trust_env=False, retries=0)
    pool = getattr(transport, "_pool", None)
    if not isinstance(pool, httpcore.AsyncConnectionPool):  # pragma: no cover - httpx changed
        raise TypeError("httpx.AsyncHTTPTransport no longer holds an httpcore pool")
    transport._pool = httpcore.AsyncConnectionPool(  # type: ignore[attr-defined]
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=max_connections,
        max_keepalive_connections=max_connections,
        keepalive_expiry=30.0,
        network_backend=GuardedBackend(resolve, allow_insecure_loopback),
    )
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(timeout_s),
        follow_redirects=False,
        trust_env=False,
        headers={"User-Agent": USER_AGENT},
    )

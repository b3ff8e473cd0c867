"""The dispatcher's HTTP client: no redirects, and the SSRF check at connect time.

:class:`WebhookClient` POSTs one delivery and reports what came of it as an
:class:`Answer` (a status, or the class of error). Every new TCP connection goes
to an address checked by the rules of :mod:`webhooks.urls`:

- a host *name* is resolved again for every new connection (never trusting the
  check made when the endpoint was created); when any address is not public the
  connection is refused with :class:`DestinationRefused`, otherwise the connection
  goes to an address that passed (TLS still verifies the certificate against the
  URL's host name);
- an IP *literal* is checked before the request (once per URL: the answer depends
  on nothing else).

The wire is :mod:`webhooks.http1` (httptools parses the answers): aiohttp did the
same job at about five times the CPU per POST, the largest single cost of a json
delivery, and httpx's pool at about eight times aiohttp's (``docs/webhooks.md``).
Redirects are never followed, proxies from the environment are ignored, answers are
not decompressed and at most :data:`MAX_RESPONSE_BYTES` of an answer's body are
read. Tests send a delivery to a name that resolves to a loopback address and check
that no request arrives, and answer with a redirect, an oversized body, a hang and
a closed connection.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import ssl
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import urlsplit

from velora.errors import ValidationError
from webhooks.http1 import Disconnected, Exchange, Pool, ProtocolFault, request_bytes
from webhooks.urls import LOOPBACK_LITERAL, Destination, Resolver, allowed_addresses

USER_AGENT = "Velora-Webhooks/1"
MAX_RESPONSE_BYTES = 64 * 1024


class DestinationRefused(OSError):
    """The host resolved to an address a webhook must not reach."""


class ConnectFailed(OSError):
    """No address of the host took the connection (or its TLS handshake failed)."""


class Answer(NamedTuple):
    """What one POST came to: a status (and its ``Retry-After``), or an error class."""

    status: int | None
    error: str | None
    retry_after: str | None = None


@dataclass(frozen=True)
class Target:
    """Where a URL sends a request (computed once per endpoint URL)."""

    tls: bool
    host: str  # lower-case, IPv6 without brackets
    port: int
    literal: bool  # the host is an IP address, checked without a resolver
    host_header: str
    path: str


@functools.lru_cache(maxsize=4096)
def target(url: str) -> Target:
    """The parts of ``url`` a request needs; ValueError for a URL that does not parse."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError("not an http(s) URL with a host")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)  # ValueError for a port out of range
    try:
        ipaddress.ip_address(host)
        literal = True
    except ValueError:
        literal = False
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(tls, host, port, literal, parts.netloc.rpartition("@")[2], path)


def _checked(dest: Destination, addresses: list[str]) -> list[str]:
    try:
        return allowed_addresses(dest, addresses)
    except ValidationError as exc:
        raise DestinationRefused(exc.message) from None


@functools.lru_cache(maxsize=4096)
def _literal_refusal(url: str, allow_insecure_loopback: bool) -> str | None:
    """Why a URL whose host is an IP literal must not be reached (None: it may, or
    the host is a name, checked at resolution). Depends on nothing but its arguments,
    so it is computed once per endpoint URL rather than on every POST."""
    t = target(url)
    if not t.literal:
        return None
    insecure = allow_insecure_loopback and not t.tls and t.host == LOOPBACK_LITERAL
    try:
        _checked(Destination("", "http" if insecure else "https", t.host, t.port), [t.host])
    except DestinationRefused as exc:
        return str(exc)
    return None


class WebhookClient:
    """POSTs deliveries over pooled kept-alive connections (create and use it on one loop)."""

    def __init__(
        self,
        resolve: Resolver,
        *,
        allow_insecure_loopback: bool,
        timeout_s: float,
        max_connections: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._resolve = resolve
        self._loopback = allow_insecure_loopback
        self._timeout_s = timeout_s
        self._pool = Pool(max_connections)
        self._ssl = ssl_context or ssl.create_default_context()
        self._headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> Answer:
        """One POST; never raises for what the receiver or the network did."""
        try:
            t = target(url)
            refusal = _literal_refusal(url, self._loopback)
        except ValueError:  # a URL that no longer parses (a port out of range)
            return Answer(None, "invalid_url")
        if refusal is not None:
            return Answer(None, "ssrf_refused")
        try:
            request = request_bytes(
                "POST", t.path, t.host_header, {**self._headers, **headers}, body
            )
        except ValueError:  # a CR or LF in a header (never sent: it would split the request)
            return Answer(None, "invalid_header")
        try:
            async with asyncio.timeout(self._timeout_s):
                head = await self._pool.exchange(
                    ("https" if t.tls else "http", t.host, t.port),
                    functools.partial(self._connect, t),
                    request,
                )
        except DestinationRefused:
            return Answer(None, "ssrf_refused")
        except ConnectFailed:
            return Answer(None, "connect_error")
        except TimeoutError:
            return Answer(None, "timeout")
        except Disconnected:
            return Answer(None, "server_disconnected")
        except ProtocolFault:
            return Answer(None, "protocol_error")
        except OSError:
            return Answer(None, "connection_error")
        error = None if 200 <= head.status < 300 else f"http_{head.status}"
        return Answer(head.status, error, head.retry_after)

    async def _connect(self, t: Target) -> Exchange:
        """A new connection to an address of ``t`` that passed the SSRF rules."""
        loop = asyncio.get_running_loop()
        if t.literal:
            addresses = [t.host]  # checked by _literal_refusal
        else:
            found = await loop.run_in_executor(None, self._resolve, t.host, t.port)
            # a name is never the insecure-loopback exception: that is the literal 127.0.0.1
            addresses = _checked(Destination("", "https", t.host, t.port), found)
        failure: OSError | None = None
        for address in addresses:
            try:
                _, conn = await loop.create_connection(
                    lambda: Exchange(MAX_RESPONSE_BYTES),
                    address,
                    t.port,
                    ssl=self._ssl if t.tls else None,
                    server_hostname=t.host if t.tls else None,
                )
                return conn
            except OSError as exc:  # refused, unreachable, TLS handshake or certificate
                failure = exc
        raise ConnectFailed(f"no address of {t.host} took the connection") from failure

    async def aclose(self) -> None:
        """Close the pool's connections."""
        self._pool.close()

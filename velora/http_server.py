"""Every HTTP service runs the same way: uvicorn on httptools, bounded by the limits in Settings.

``velora node`` and ``velora ingest serve`` (and any later service: the webhook
dispatcher's management paths, the PHI sidecar) get their listening socket from
:func:`listen` and their server from :func:`make_server`; nothing else configures
uvicorn. What one client can hold, and what it is told past each limit (every
answer in the one JSON error shape of :func:`velora.errors.error_body`):

==========================================  ================================== =====================
limit (setting)                             enforced by                        past it
==========================================  ================================== =====================
request line + headers                      the protocol (``http_protocol``):  431, or 414 when the
(``VELORA_HTTP_MAX_HEADER_BYTES``)          each read of a head still          URL is over its limit
                                            incomplete, then the whole head
URL: path and query                         the same, as the URL is read       414
(``VELORA_HTTP_MAX_URL_BYTES``)
malformed framing, not HTTP/1.0 or 1.1,     httptools (llhttp), then the       400
HTTP/1.1 without ``Host``                   protocol
headers complete, from their first byte     the protocol                       408, then closed
(``VELORA_HTTP_HEADER_TIMEOUT_S``)
body complete, from the end of the headers  the protocol                       408 (or closed if an
(``VELORA_HTTP_BODY_TIMEOUT_S``)                                               answer was sent)
idle connection, new or between requests    the protocol                       closed
(``VELORA_HTTP_KEEPALIVE_TIMEOUT_S``)
open connections / requests in flight       the protocol                       503 + ``Retry-After``
(``VELORA_HTTP_LIMIT_CONCURRENCY``)
connections waiting to be accepted          ``listen(backlog)``                the kernel drops SYNs
(``VELORA_HTTP_BACKLOG``)
answer started, from the end of the body    :class:`RequestLimits`             503 + ``Retry-After``
(``VELORA_HTTP_REQUEST_DEADLINE_S``)
==========================================  ================================== =====================

- An answer given before the request body was read (401, 413, 415, a 503 from the
  ingest memory budget, any refusal above) carries ``Connection: close``; the rest
  of the body is never parsed. The connection is not closed at once: the write
  side is shut down and what the client still sends is read and dropped (for at
  most :data:`~velora.http_protocol.LINGER_MAX_S`, or until the client is silent
  for :data:`~velora.http_protocol.LINGER_IDLE_S`), so a client still sending its
  body sees the answer instead of a connection reset.
- Requests pipelined on one connection are answered in order; at most
  :data:`~velora.http_protocol.MAX_PIPELINED` wait behind the one being answered,
  and the next is refused (503, after the answers before it).
- ``X-Forwarded-For`` and ``X-Forwarded-Proto`` are never trusted here
  (``proxy_headers=False``): the client is the socket's peer. Trusted proxies are
  the apps' own concern. No ``Server`` header is sent.
- uvicorn's own ``limit_concurrency`` check is replaced, not added to: it answers
  in plain text.

``docs/operations.md`` says which of these belong at a front proxy in production.
"""

from __future__ import annotations

import logging
import math
import socket
from dataclasses import dataclass

import anyio
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from velora.errors import Unavailable
from velora.http_errors import error_response
from velora.http_protocol import RETRY_AFTER_S, LimitedHttpProtocol
from velora.logs import Throttled
from velora.settings import Settings

log = logging.getLogger(__name__)

_late = Throttled(log, logging.WARNING)


@dataclass(frozen=True)
class HttpLimits:
    """The HTTP limits of one server (from the ``VELORA_HTTP_*`` settings)."""

    max_header_bytes: int
    max_url_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    keepalive_timeout_s: float
    request_deadline_s: float
    limit_concurrency: int
    backlog: int

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        """The limits configured in ``settings``."""
        return cls(
            max_header_bytes=settings.http_max_header_bytes,
            max_url_bytes=settings.http_max_url_bytes,
            header_timeout_s=settings.http_header_timeout_s,
            body_timeout_s=settings.http_body_timeout_s,
            keepalive_timeout_s=settings.http_keepalive_timeout_s,
            request_deadline_s=settings.http_request_deadline_s,
            limit_concurrency=settings.http_limit_concurrency,
            backlog=settings.http_backlog,
        )


def listen(host: str, port: int, backlog: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0: a free port) and listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)  # connections wait here until uvicorn accepts them
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket (IPv6 hosts in brackets)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def make_server(app: ASGIApp, settings: Settings, *, access_log: bool = False) -> uvicorn.Server:
    """A uvicorn server for ``app`` with every limit of ``settings``; run it on :func:`listen`."""
    limits = HttpLimits.from_settings(settings)
    protocol = type("VeloraHttpProtocol", (LimitedHttpProtocol,), {"limits": limits})
    config = uvicorn.Config(
        RequestLimits(app, limits.request_deadline_s),
        http=protocol,
        ws="none",
        lifespan="on",
        log_level=settings.log_level.lower(),
        access_log=access_log,
        proxy_headers=False,
        server_header=False,
        timeout_keep_alive=limits.keepalive_timeout_s,  # type: ignore[arg-type]
        backlog=limits.backlog,
    )
    return uvicorn.Server(config)


class RequestLimits:
    """ASGI middleware: the per-request deadline, and no reading of a body already answered.

    The deadline runs from the end of the request body (from the call, for a request
    without one) to the start of the answer: past it the app is cancelled and the
    client gets 503 with ``Retry-After``, which for ingest means, as always, that
    nothing counts as acknowledged. Work in a thread that cannot be cancelled (the
    ingest pipeline, bounded by its own 5 s Kafka deadline) finishes first. Slow
    bodies are the protocol's body timeout, not this deadline. An answer that starts
    before the body was read carries ``Connection: close``.
    """

    def __init__(self, app: ASGIApp, deadline_s: float) -> None:
        self.app = app
        self.deadline_s = deadline_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_pending = _declares_body(scope)
        started = False
        limit = self.deadline_s
        with anyio.CancelScope(
            deadline=math.inf if body_pending else anyio.current_time() + limit
        ) as deadline:

            async def receive_body() -> Message:
                nonlocal body_pending
                message = await receive()
                if body_pending and not (
                    message["type"] == "http.request" and message.get("more_body", False)
                ):
                    body_pending = False
                    deadline.deadline = anyio.current_time() + limit
                return message

            async def send_answer(message: Message) -> None:
                nonlocal started
                if message["type"] == "http.response.start":
                    started = True
                    deadline.deadline = math.inf  # a started answer is never cut short
                    if body_pending:
                        headers = [*message.get("headers", []), (b"connection", b"close")]
                        message = {**message, "headers": headers}
                await send(message)

            await self.app(scope, receive_body, send_answer)
        if deadline.cancelled_caught and not started:
            _late(
                "%s %s: no answer within the %g s request deadline; 503",
                scope.get("method"),
                str(scope.get("path", ""))[:200],
                limit,
            )
            error = Unavailable(
                f"the server did not answer within {limit:g} s; retry later",
                retry_after=RETRY_AFTER_S,
            )
            headers = {"Connection": "close"} if body_pending else {}
            await error_response(error, headers)(scope, receive, send)


def _declares_body(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
        if name == b"transfer-encoding":
            return True
    return False

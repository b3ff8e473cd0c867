"""Every HTTP service runs the same way: uvicorn on h11, bounded by the limits in Settings.

``velora node`` and ``velora ingest serve`` (and any later service: the webhook
dispatcher's management paths, the PHI sidecar) get their listening socket from
:func:`listen` and their server from :func:`make_server`; nothing else configures
uvicorn. What one client can hold, and what it is told past each limit (every
answer in the one JSON error shape of :func:`velora.errors.error_body`):

==========================================  ===============================  =====================
limit (setting)                             enforced by                      past it
==========================================  ===============================  =====================
request line + headers                      h11 ``max_incomplete_event_size`` 431, or 414 when the
(``VELORA_HTTP_MAX_HEADER_BYTES``)          (bytes buffered for one head)     request line alone
                                                                              is over the limit
URL: path and query                         :class:`LimitedH11Protocol`      414
(``VELORA_HTTP_MAX_URL_BYTES``)
malformed framing                           h11                              400
headers complete, from their first byte     :class:`LimitedH11Protocol`      408, then closed
(``VELORA_HTTP_HEADER_TIMEOUT_S``)
body complete, from the end of the headers  :class:`LimitedH11Protocol`      408 (or closed if an
(``VELORA_HTTP_BODY_TIMEOUT_S``)                                             answer was sent)
idle connection, new or between requests    :class:`LimitedH11Protocol`      closed
(``VELORA_HTTP_KEEPALIVE_TIMEOUT_S``)
open connections / requests in flight       :class:`LimitedH11Protocol`      503 + ``Retry-After``
(``VELORA_HTTP_LIMIT_CONCURRENCY``)
connections waiting to be accepted          ``listen(backlog)``              the kernel drops SYNs
(``VELORA_HTTP_BACKLOG``)
answer started, from the end of the body    :class:`RequestLimits`           503 + ``Retry-After``
(``VELORA_HTTP_REQUEST_DEADLINE_S``)
==========================================  ===============================  =====================

- An answer given before the request body was read (401, 413, 415, a 503 from the
  ingest memory budget, any refusal above) carries ``Connection: close``; the rest
  of the body is never parsed. The connection is not closed at once: the write
  side is shut down and what the client still sends is read and dropped (for at
  most :data:`LINGER_MAX_S`, or until the client is silent for
  :data:`LINGER_IDLE_S`), so a client still sending its body sees the answer
  instead of a connection reset.
- ``X-Forwarded-For`` and ``X-Forwarded-Proto`` are never trusted here
  (``proxy_headers=False``): the client is the socket's peer. Trusted proxies are
  the apps' own concern. No ``Server`` header is sent.
- uvicorn's own ``limit_concurrency`` check is replaced, not added to: it answers
  in plain text.

``docs/operations.md`` says which of these belong at a front proxy in production.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

import anyio
import h11
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from velora.errors import (
    BadRequest,
    ErrorDetail,
    HeadersTooLarge,
    RequestTimeout,
    Unavailable,
    UriTooLong,
    VeloraError,
    error_body,
    status_for,
)
from velora.http_errors import error_response
from velora.logs import Throttled
from velora.settings import Settings

log = logging.getLogger(__name__)

LINGER_MAX_S = 30.0
"""How long, at most, a refused connection's incoming bytes are drained before it closes."""
LINGER_IDLE_S = 5.0
"""A draining connection closes sooner once the client has sent nothing for this long.

Both as nginx's ``lingering_time`` and ``lingering_timeout``: a client that is
still sending when the connection closes gets a reset, which on Linux discards
the answer it had not read yet."""

RETRY_AFTER_S = 1
"""``Retry-After`` of the 503s a saturated server gives."""


_slow_client = Throttled(log, logging.INFO)
_saturated = Throttled(log, logging.WARNING)
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
    protocol = type("VeloraHttpProtocol", (LimitedH11Protocol,), {"limits": limits})
    config = uvicorn.Config(
        RequestLimits(app, limits.request_deadline_s),
        http=protocol,
        ws="none",
        lifespan="on",
        log_level=settings.log_level.lower(),
        access_log=access_log,
        proxy_headers=False,
        server_header=False,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        timeout_keep_alive=limits.keepalive_timeout_s,  # type: ignore[arg-type]
        backlog=limits.backlog,
    )
    return uvicorn.Server(config)


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with read timeouts, JSON refusals and a JSON concurrency gate.

    Each server uses a subclass whose :attr:`limits` are its own (:func:`make_server`).
    The read timer follows what the client owes: a request head (from its first
    byte), then the body (from the end of the head). The idle timer (uvicorn's
    keep-alive timer) also runs on a fresh connection, before its first request.
    """

    limits: ClassVar[HttpLimits]

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limit_concurrency = None  # uvicorn's check answers in plain text; _admit answers
        self._inner = self.app
        self.app = self._admit
        self._phase: str | None = None
        self._read_timer: asyncio.TimerHandle | None = None
        self._linger: asyncio.TimerHandle | None = None
        self._linger_until = 0.0
        self._draining = False

    # -- connection events ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_phase(None)
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        super().connection_lost(exc)
        self._unset_keepalive_if_required()

    def data_received(self, data: bytes) -> None:
        if self._draining:
            self._linger_on()  # answered and half-closed: what still comes is dropped
            return
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._draining:
            self._unset_keepalive_if_required()
        else:
            self._watch()

    def send_400_response(self, msg: str) -> None:
        """h11 refused the request (uvicorn would answer a plain-text 400): answer in JSON."""
        self._refuse(self._framing_error())

    # -- timers -----------------------------------------------------------------------------

    def _arm_idle_timer(self) -> None:
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def _watch(self) -> None:
        """Arm the read timer for what the client owes now: a request head or a body."""
        if self._draining or self.transport.is_closing():
            self._set_phase(None)
            return
        state = self.conn.their_state
        phase = None
        if state is h11.SEND_BODY:
            phase = "body"
        elif state is h11.IDLE:
            if self.conn.trailing_data[0]:
                phase = "head"
            elif self.cycle is None or self.cycle.response_complete:
                self._arm_idle_timer()
        if phase != self._phase:
            self._set_phase(phase)

    def _set_phase(self, phase: str | None) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        self._phase = phase
        if phase is not None:
            limits = self.limits
            timeout = limits.header_timeout_s if phase == "head" else limits.body_timeout_s
            self._read_timer = self.loop.call_later(timeout, self._read_timed_out, phase, timeout)

    def _read_timed_out(self, phase: str, timeout: float) -> None:
        self._read_timer = None
        self._phase = None
        if self.transport.is_closing():
            return
        what = "request headers" if phase == "head" else "request body"
        _slow_client("closing a connection: the %s did not arrive within %g s", what, timeout)
        if phase == "body" and self.cycle is not None and self.cycle.response_started:
            self.transport.close()  # already answered (say 401 before the body): just close
            return
        self._refuse(
            RequestTimeout(
                f"the {what} did not arrive within {timeout:g} s",
                details=(ErrorDetail("request", f"{what} too slow"),),
            )
        )

    # -- refusals ---------------------------------------------------------------------------

    def _framing_error(self) -> VeloraError:
        """431 or 414 when h11 gave up because the head outgrew its limit, else 400."""
        pending = self.conn.trailing_data[0]
        limits = self.limits
        if len(pending) <= limits.max_header_bytes:
            return BadRequest(
                "malformed HTTP request",
                details=(ErrorDetail("request", "not a valid HTTP/1.1 request"),),
            )
        head = pending.lstrip(b"\r\n")
        end = head.find(b"\n")
        parts = head[: max(end, 0)].split(b" ")
        if end == -1 or (len(parts) >= 2 and len(parts[1]) > limits.max_url_bytes):
            return _uri_too_long(limits.max_url_bytes)
        return _headers_too_large(limits.max_header_bytes)

    def _refuse(self, error: VeloraError) -> None:
        """Answer ``error`` below the app, then drain and close."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # an app waiting for the body sees a disconnect
            cycle.message_event.set()
        self.transport.write(self._raw_answer(error))
        self._drain_then_close()

    def _close(self) -> None:
        """How a request's cycle closes the connection: drain first if its body is unread."""
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            self._drain_then_close()
        else:
            self.transport.close()

    def _drain_then_close(self) -> None:
        """Shut the write side (the answer is out), drop what still comes in, close soon.

        Closing a socket with unread data makes the kernel reset the connection, and a
        client still sending its body would see the reset instead of the answer.
        """
        if self._draining:
            return
        self._draining = True
        self._set_phase(None)
        self._unset_keepalive_if_required()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()
        self._linger_until = self.loop.time() + LINGER_MAX_S
        self._linger_on()

    def _linger_on(self) -> None:
        """Close once the client has been silent for LINGER_IDLE_S, or at the deadline."""
        if self._linger is not None:
            self._linger.cancel()
        wait = min(LINGER_IDLE_S, self._linger_until - self.loop.time())
        self._linger = self.loop.call_later(max(wait, 0.0), self.transport.close)

    def _raw_answer(self, error: VeloraError) -> bytes:
        status = status_for(error)
        body = json.dumps(error_body(error), separators=(",", ":")).encode()
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode()]
        lines += [name + b": " + value for name, value in self.server_state.default_headers]
        lines += [
            b"content-type: application/json",
            b"content-length: %d" % len(body),
            b"connection: close",
        ]
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    # -- the gate in front of the app -------------------------------------------------------

    async def _admit(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse an over-long URL (414) or a request past the concurrency limit (503)."""
        if scope["type"] == "http":
            cycle = self.cycle
            if cycle is not None and cycle.scope is scope:
                cycle.transport = _DrainOnClose(self)  # type: ignore[assignment]
            error = self._refusal(scope)
            if error is not None:
                await error_response(error, {"Connection": "close"})(scope, receive, send)
                return
        await self._inner(scope, receive, send)

    def _refusal(self, scope: Scope) -> VeloraError | None:
        limits = self.limits
        query = scope.get("query_string") or b""
        url = len(scope.get("raw_path") or b"") + (len(query) + 1 if query else 0)
        if url > limits.max_url_bytes:
            return _uri_too_long(limits.max_url_bytes)
        # h11 bounds only a head that is still incomplete; one that arrived in a single
        # read (up to the transport's read size) is measured here: "NAME: value\r\n".
        head = url + len(scope["method"]) + 12
        for name, value in scope["headers"]:
            head += len(name) + len(value) + 4
        if head > limits.max_header_bytes:
            return _headers_too_large(limits.max_header_bytes)
        limit = limits.limit_concurrency
        # this request's own task and connection are already counted
        if len(self.connections) > limit or len(self.tasks) > limit:
            _saturated("at the concurrency limit (%d connections or requests): 503", limit)
            return Unavailable(
                "the server is at its concurrency limit; retry later", retry_after=RETRY_AFTER_S
            )
        return None


class _DrainOnClose:
    """The transport as one request's cycle sees it: closing drains an unread body first."""

    __slots__ = ("_protocol", "_transport")

    def __init__(self, protocol: LimitedH11Protocol) -> None:
        self._protocol = protocol
        self._transport = protocol.transport

    def close(self) -> None:
        self._protocol._close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _uri_too_long(limit: int) -> UriTooLong:
    return UriTooLong(
        f"the request URL exceeds {limit} bytes",
        details=(ErrorDetail("url", f"at most {limit} bytes of path and query"),),
    )


def _headers_too_large(limit: int) -> HeadersTooLarge:
    return HeadersTooLarge(
        f"the request line and headers exceed {limit} bytes",
        details=(ErrorDetail("headers", f"at most {limit} bytes in all"),),
    )


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

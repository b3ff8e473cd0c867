"""The HTTP/1.1 protocol every service is served with: uvicorn's httptools protocol, bounded.

:func:`velora.http_server.make_server` gives each server a subclass of
:class:`LimitedHttpProtocol` holding its limits; the table of what each limit does
is in :mod:`velora.http_server`. Refusals made here, below the app, are written
in the one JSON error shape of :func:`velora.errors.error_body`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, ClassVar

import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

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

if TYPE_CHECKING:
    from velora.http_server import HttpLimits

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

MAX_PIPELINED = 16
"""Requests one connection may have read and waiting behind the one being answered.

The parser reads a whole socket read (up to about 256 KiB) at once, however many
requests it holds; past this many waiting, the rest of the read is not served
(503, after the answers before it), so a connection holds a bounded number."""


_slow_client = Throttled(log, logging.INFO)
_saturated = Throttled(log, logging.WARNING)


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounded heads, read timeouts and JSON refusals.

    Each server uses a subclass whose :attr:`limits` are its own (:func:`make_server`).
    httptools (llhttp, a C parser) parses strictly, but it keeps a header that has not
    ended in memory whatever its size, and it reads pipelined requests ahead of their
    turn. So:

    - every read of a head still incomplete counts toward the header limit, and past
      it (or past the URL limit) the connection is refused at once (431, 414); a
      complete head is measured exactly before its request is started;
    - a refusal of a request read ahead waits until the answers owed to the requests
      before it are out, so that answers never interleave; at most
      :data:`MAX_PIPELINED` requests wait behind the one being answered.

    The read timer follows what the client owes: a request head (from its first byte),
    then the body (from the end of the head). The idle timer (uvicorn's keep-alive
    timer) also runs on a fresh connection, before its first request.
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
        self._deferred: VeloraError | None = None
        # the request being read: where it stands, and what of it the parser holds
        self._in_head = False
        self._in_body = False
        self._url_bytes = 0
        self._head_seen = 0
        self._head_bytes = 0
        self._begun_at: int | None = None
        self._read_used = 0
        self._reading: RequestResponseCycle | None = None  # its cycle, once its head is read
        self._started: RequestResponseCycle | None = None  # the last cycle started

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
        if self._refused:
            return  # a refusal waits for the answers before it; the rest is not read
        self._read_used = 0
        self._begun_at = None
        super().data_received(data)
        if self._in_head and not self._refused:
            self._bound_head(len(data))
        self._watch()

    def on_response_complete(self) -> None:
        if self._draining:
            self.server_state.total_requests += 1
            self._unset_keepalive_if_required()
            return
        if self._deferred is not None and not self.pipeline:
            self.server_state.total_requests += 1
            error, self._deferred = self._deferred, None
            self._answer(error)  # every answer owed before it is out
            return
        super().on_response_complete()
        self._watch()

    def send_400_response(self, msg: str) -> None:
        """httptools refused the request (uvicorn would answer a plain-text 400): answer in JSON."""
        self._refuse(_malformed())

    def _unsupported_upgrade_warning(self) -> None:
        """An ``Upgrade`` request is served as a plain one; the parser stops after its
        head, so the connection closes after the answer."""
        if self.cycle is not None:
            self.cycle.keep_alive = False

    @property
    def _refused(self) -> bool:
        return self._draining or self._deferred is not None

    # -- parser callbacks: where the request being read stands -------------------------------

    def on_message_begin(self) -> None:
        if self._refused:
            return
        super().on_message_begin()
        self._reading = None
        self._in_head, self._in_body = True, False
        self._url_bytes = self._head_seen = 0
        self._begun_at = self._read_used

    def on_url(self, url: bytes) -> None:
        if self._refused:
            return
        super().on_url(url)
        self._url_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            return
        super().on_header(name, value)
        self._head_seen += len(name) + len(value) + 4  # "NAME: value\r\n"

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._in_head, self._in_body = False, True
        # the request line ("GET " url " HTTP/1.1\r\n") and the headers
        head = len(self.parser.get_method()) + self._url_bytes + 12 + self._head_seen
        # what this read held of it (with the blank line; of a head begun in an
        # earlier read, what that read did not hold)
        read = head + 2 if self._begun_at is not None else max(head + 2 - self._head_bytes, 0)
        self._read_used += read
        error = self._head_refusal(head)
        if error is None and len(self.pipeline) >= MAX_PIPELINED:
            error = Unavailable(
                f"more than {MAX_PIPELINED} requests pipelined on one connection; "
                "send the rest again",
                retry_after=RETRY_AFTER_S,
            )
        if error is not None:
            self._refuse(error)
            return
        super().on_headers_complete()
        self._reading = self.cycle
        self.cycle.transport = _DrainOnClose(self)  # type: ignore[assignment]

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        self._started = cycle
        super()._start_asgi_task(cycle, app)

    def on_body(self, body: bytes) -> None:
        self._read_used += len(body)
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        self._in_body = False
        super().on_message_complete()

    def _head_refusal(self, head: int) -> VeloraError | None:
        """A complete head past a limit (431, 414), or not HTTP/1.x (400)."""
        error = self._size_refusal(head)
        if error is not None:
            return error
        version = self.parser.get_http_version()
        # llhttp reads HTTP/0.9 and 2.0 request lines, and requires no Host
        if version == "1.1":
            if not any(name == b"host" for name, _ in self.headers):
                return _malformed()
        elif version != "1.0":
            return _malformed()
        return None

    def _bound_head(self, read: int) -> None:
        """Refuse a head that is still incomplete once it holds more than the limits.

        The bytes of a head are those of every read since it began; in the read where
        it began, those after what the requests before it took of that read (their
        heads as parsed, their bodies). Bodies' chunk framing is not counted, so within
        that one read the count errs high by a few bytes per chunk.
        """
        if self._begun_at is None:
            self._head_bytes += read
        else:
            self._head_bytes = max(read - self._begun_at, 0)
        error = self._size_refusal(self._head_bytes - 2)  # less the blank line's CRLF
        if error is not None:
            self._refuse(error)

    def _size_refusal(self, head: int) -> VeloraError | None:
        """414 past the URL limit (the URL as read so far), else 431 past the header
        limit (``head``: bytes of request line and headers)."""
        limits = self.limits
        if self._url_bytes > limits.max_url_bytes:
            return _uri_too_long(limits.max_url_bytes)
        if head > limits.max_header_bytes:
            return _headers_too_large(limits.max_header_bytes)
        return None

    # -- timers -----------------------------------------------------------------------------

    def _arm_idle_timer(self) -> None:
        if self.timeout_keep_alive_task is None:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def _watch(self) -> None:
        """Arm the read timer for what the client owes now: a request head or a body."""
        if self._refused or self.transport.is_closing():
            self._set_phase(None)
            return
        phase = None
        if self._in_body:
            phase = "body"
        elif self._in_head:
            phase = "head"
        elif not self.pipeline and (self.cycle is None or self.cycle.response_complete):
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
        cycle = self._reading
        if phase == "body" and cycle is not None and cycle.response_started:
            self.transport.close()  # already answered (say 401 before the body): just close
            return
        self._refuse(
            RequestTimeout(
                f"the {what} did not arrive within {timeout:g} s",
                details=(ErrorDetail("request", f"{what} too slow"),),
            )
        )

    # -- refusals ---------------------------------------------------------------------------

    def _refuse(self, error: VeloraError) -> None:
        """Answer ``error`` below the app about the request being read, then drain and close.

        A request read ahead (pipelined) is refused once the answers owed to the
        requests before it are out (:meth:`on_response_complete`); nothing more is read
        meanwhile. A request already started is told it was disconnected, and gets the
        refusal unless its own answer has begun.
        """
        if self._refused:
            return
        cycle = self._reading
        if cycle is not None and self.pipeline and self.pipeline[0][0] is cycle:
            self.pipeline.popleft()  # read ahead and queued: it will not be started
            cycle = None
        if cycle is not None:
            if not cycle.response_complete:
                cycle.disconnected = True  # an app waiting for the body sees a disconnect
                cycle.message_event.set()
            if cycle.response_started:
                self._drain_then_close()
            else:
                self._answer(error)
            return
        started = self._started
        if self.pipeline or (started is not None and not started.response_complete):
            self._deferred = error
            self._set_phase(None)
            self.flow.pause_reading()
            return
        self._answer(error)

    def _answer(self, error: VeloraError) -> None:
        self.transport.write(self._raw_answer(error))
        self._drain_then_close()

    def _close(self) -> None:
        """How a request's cycle closes the connection: drain first if a body is unread."""
        if self._in_body and not self.transport.is_closing():
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
        """Refuse a request past the concurrency limit (503 + ``Retry-After``)."""
        if scope["type"] == "http":
            limit = self.limits.limit_concurrency
            # this request's own task and connection are already counted
            if len(self.connections) > limit or len(self.tasks) > limit:
                _saturated("at the concurrency limit (%d connections or requests): 503", limit)
                error = Unavailable(
                    "the server is at its concurrency limit; retry later",
                    retry_after=RETRY_AFTER_S,
                )
                await error_response(error, {"Connection": "close"})(scope, receive, send)
                return
        await self._inner(scope, receive, send)


class _DrainOnClose:
    """The transport as one request's cycle sees it: closing drains an unread body first."""

    __slots__ = ("_protocol", "_transport")

    def __init__(self, protocol: LimitedHttpProtocol) -> None:
        self._protocol = protocol
        self._transport = protocol.transport

    def close(self) -> None:
        self._protocol._close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _malformed() -> BadRequest:
    return BadRequest(
        "malformed HTTP request",
        details=(ErrorDetail("request", "not a valid HTTP/1.1 request"),),
    )


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

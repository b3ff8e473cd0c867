"""HTTP/1.1 for deliveries: one POST at a time per kept-alive connection, parsed by httptools.

The dispatcher sends many small POSTs over a few kept-alive connections and needs
only the answer's status, its ``Retry-After`` and a bound on the body it reads. A
general client pays for much more on every request (a request and a response object,
cookie jars, header multidicts, tracing hooks, stream readers): aiohttp measured
about 240 us of CPU per POST on the development machine, this module about 45 us
(``docs/webhooks.md``, "Throughput"). The parsing is httptools' (the llhttp parser
uvicorn uses), the I/O asyncio's transports; what is written here is the request's
bytes, a pool of idle connections and the state of one exchange.

- :class:`Exchange` is one connection (an ``asyncio.Protocol``): it writes a request
  and resolves a future with the answer's :class:`Head` once the whole answer is read
  (a body longer than its limit ends the exchange early and the connection is
  closed rather than read on). ``1xx`` answers are skipped.
- :class:`Pool` keeps idle connections per ``(scheme, host, port)`` for
  :data:`KEEPALIVE_S` and bounds how many are open at once.

No redirect is followed (a ``3xx`` is an answer like any other), no proxy is used,
nothing is decompressed (``Accept-Encoding: identity``). Header names and values
with a CR or LF are refused before anything is written. An answer's head may take
:data:`MAX_HEAD_BYTES`, its body is read up to the caller's limit.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import NamedTuple, cast

import httptools

KEEPALIVE_S = 30.0
"""An idle connection older than this is closed rather than used again."""
MAX_HEAD_BYTES = 64 * 1024
"""Bytes read before an answer's head is complete, at most (a receiver is not trusted:
httptools would hold one endless header in memory until it ended)."""


class ProtocolFault(OSError):
    """The answer was not HTTP/1.1 the parser accepts (its class is the error's name)."""


class Disconnected(OSError):
    """The server closed the connection before its answer's head was complete."""


class Head(NamedTuple):
    """What the dispatcher needs of an answer (a tuple: one is made per POST)."""

    status: int
    retry_after: str | None
    keep_alive: bool


def request_bytes(
    method: str, target: str, host: str, headers: dict[str, str], body: bytes
) -> bytes:
    """The request's bytes; raises ValueError for a header with a CR or LF in it."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    for name, value in headers.items():
        if "\r" in name or "\n" in name or "\r" in value or "\n" in value or ":" in name:
            raise ValueError("a header name or value holds a forbidden character")
        lines.append(f"{name}: {value}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1") + body


class Exchange(asyncio.Protocol):
    """One connection, one request at a time (see the module docstring)."""

    def __init__(self, max_body: int) -> None:
        self._max_body = max_body
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[Head] | None = None
        self._status = 0
        self._retry_after: str | None = None
        self._body = 0
        self._head = 0
        self.closed = False
        self.idle_since = time.monotonic()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; they have its methods
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # bytes nobody asked for: the connection is not reusable
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ProtocolFault(type(exc).__name__))
            return
        if not self._status:
            # the head is not complete yet, and httptools holds a header until it ends:
            # bound what the head may take
            self._head += len(data)
            if self._head > MAX_HEAD_BYTES:
                self._fail(ProtocolFault("answer head too large"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            if self._status >= 200:
                # an answer without a length ends where the connection does
                self._waiter.set_result(Head(self._status, self._retry_after, False))
            else:
                self._waiter.set_exception(Disconnected("server closed the connection"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self._waiter is None or self._waiter.done():
            # an answer to no request (a server that answered twice): never read it as
            # the answer to the next request
            self.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"retry-after":
            self._retry_after = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._body += len(body)
        if self._body > self._max_body and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(Head(self._status, self._retry_after, False))
            self.close()  # drop the connection rather than read on

    def on_message_complete(self) -> None:
        if self._status < 200:  # 100 Continue and the like: the answer follows
            self._status, self._retry_after, self._body = 0, None, 0
            return
        if self._waiter is not None and not self._waiter.done():
            keep = self._parser.should_keep_alive()
            self._waiter.set_result(Head(self._status, self._retry_after, keep))

    # use
    async def send(self, request: bytes) -> Head:
        """Write one request and wait for its answer's head (the body read or cut)."""
        if self.closed or self._transport is None:
            raise Disconnected("connection already closed")
        self._status, self._retry_after, self._body, self._head = 0, None, 0, 0
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        return await self._waiter

    @property
    def answered(self) -> bool:
        """Whether any byte of an answer to the last request arrived."""
        return self._status != 0 or self._body != 0 or self._head != 0

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        """Close the connection at once (an exchange cut short leaves it unusable)."""
        self.closed = True
        if self._transport is not None:
            self._transport.abort()


Key = tuple[str, str, int]
Connect = Callable[[], Awaitable[Exchange]]


class Pool:
    """Idle connections per ``(scheme, host, port)``, at most ``limit`` exchanges at once.

    Idle connections older than :data:`KEEPALIVE_S` (or closed by their server) are
    closed and dropped when their key is next used, and every :data:`KEEPALIVE_S`
    for all keys, so an endpoint no longer sent to keeps no socket open."""

    def __init__(self, limit: int) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._idle: dict[Key, deque[Exchange]] = {}
        self._busy: set[Exchange] = set()
        self._swept = time.monotonic()

    async def exchange(self, key: Key, connect: Connect, request: bytes) -> Head:
        """Send ``request`` over an idle connection to ``key``, or a new one.

        A kept-alive connection the server closed while it sat idle fails before any
        answer arrives; the request then goes once more over a new connection
        (deliveries are at-least-once: a receiver dedupes a repeat)."""
        async with self._slots:
            if time.monotonic() - self._swept > KEEPALIVE_S:
                self.sweep()
            conn = self._take(key)
            reused = conn is not None
            if conn is None:
                conn = await connect()
            self._busy.add(conn)
            try:
                try:
                    head = await conn.send(request)
                except Disconnected:
                    if not reused or conn.answered:
                        raise
                    self._busy.discard(conn)
                    conn = await connect()
                    self._busy.add(conn)
                    head = await conn.send(request)
            except BaseException:
                conn.close()  # cancelled or failed mid-exchange: never reuse it
                raise
            finally:
                self._busy.discard(conn)
            if head.keep_alive and not conn.closed:
                conn.idle_since = time.monotonic()
                self._idle.setdefault(key, deque()).append(conn)
            else:
                conn.close()
            return head

    def _take(self, key: Key) -> Exchange | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to be closed
            if not conn.closed and now - conn.idle_since < KEEPALIVE_S:
                return conn
            conn.close()
        return None

    def sweep(self) -> None:
        """Close and drop every idle connection that is too old or already closed."""
        now = self._swept = time.monotonic()
        for key, idle in list(self._idle.items()):
            kept = deque(c for c in idle if not c.closed and now - c.idle_since < KEEPALIVE_S)
            for conn in idle:
                if conn not in kept:
                    conn.close()
            if kept:
                self._idle[key] = kept
            else:
                del self._idle[key]

    @property
    def idle(self) -> int:
        """Idle connections held."""
        return sum(len(idle) for idle in self._idle.values())

    def close(self) -> None:
        """Close every connection, idle or in use."""
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        for conn in list(self._busy):
            conn.close()
        self._busy.clear()

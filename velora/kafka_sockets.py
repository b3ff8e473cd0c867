"""Close the socket of a Kafka connection attempt that fails, times out or is cancelled.

kafka-python 3.0.12 makes each broker connection's socket in
``KafkaNetSocket.connect`` and awaits the TCP connect on its I/O loop. When that
await ends in anything but success (the broker refused, the attempt timed out, or
the client was closed while the connect was still under way, which cancels the
task), the socket is dropped without ``close()``: its file descriptor stays open
until the garbage collector finds it, possibly much later when it sits in a
reference cycle, and Python reports it then as an unclosed socket (a
``ResourceWarning``) wherever the collection happens to run. A dispatcher or node
that keeps reconnecting through a broker outage accumulates such descriptors.

:func:`install` wraps that one method so the socket is closed on every way out but
success, and returned unchanged on success. It also closes, when a client's I/O
loop (``NetworkSelector``) is closed, every socket that loop's connection attempts
made: a closed loop drives none of them any more, yet an attempt still suspended
in its connect (a task that close did not reach), or a connection handed its
transport just after the client began closing, would otherwise keep a *connected*
socket until a garbage collection of its reference cycle, whose finalizers run in
no set order (so the socket can warn before the attempt's own ``close`` runs). And
a connection closed while its read task waited no longer logs a traceback when
that task wakes (:func:`_nothing_once_closed`). It goes through
:class:`velora.kafka_internals.InternalsGuard`: on another kafka-python it changes
nothing. It is installed once per process by the client factory
(:mod:`velora.kafka_clients`), before the first client is made.
"""

from __future__ import annotations

import functools
import threading
import weakref
from typing import Any

from velora.kafka_internals import InternalsGuard, require


def _probe() -> tuple[type, type, tuple[type, ...]]:
    from kafka.net.inet import KafkaNetSocket
    from kafka.net.selector import NetworkSelector
    from kafka.net.transport import KafkaSSLTransport, KafkaTCPTransport

    require(KafkaNetSocket, "connect", "socket", "sock_connect")
    require(NetworkSelector, "close")
    transports = (KafkaTCPTransport, KafkaSSLTransport)
    for transport in transports:
        require(transport, "_sock_recv", "_read_from_sock", "abort")
    return KafkaNetSocket, NetworkSelector, transports


GUARD: InternalsGuard[tuple[type, type, tuple[type, ...]]] = InternalsGuard(
    "closing failed connection sockets", _probe
)

_MADE = "_velora_sockets"
"""Attribute of a ``NetworkSelector``: the sockets its connection attempts made (weak)."""

_lock = threading.Lock()
_installed = False


async def _connect(
    self: Any, net: Any, addrinfo: Any, socket_options: Any = (), timeout_at: Any = None
) -> Any:
    """``KafkaNetSocket.connect`` of kafka-python 3.0.12, closing the socket unless it
    connected (the same steps, in the same order)."""
    family, sock_type, proto, _canonname, sockaddr = addrinfo
    sock = self.socket(family, sock_type, proto)
    made = getattr(net, _MADE, None)
    if made is None:
        made = weakref.WeakSet()
        setattr(net, _MADE, made)
    made.add(sock)
    try:
        sock.setblocking(False)
        for option in socket_options:
            sock.setsockopt(*option)
        return await self.sock_connect(net, sock, sockaddr, timeout_at=timeout_at)
    except BaseException:  # refused, timed out, or the task closed (GeneratorExit)
        sock.close()
        raise


def install() -> bool:
    """Close failed connection sockets from now on in this process; whether it is in
    place (False on a kafka-python other than the pinned one). Idempotent."""
    global _installed
    with _lock:
        if _installed:
            return True
        classes = GUARD.internals()
        if classes is None:
            return False
        socket_class, selector_class, transports = classes
        original = socket_class.connect
        socket_class.connect = functools.wraps(original)(_connect)
        selector_class.close = _closing_sockets(selector_class.close)
        for transport in transports:
            transport._sock_recv = _nothing_once_closed(transport._sock_recv)
        _installed = True
        return True


def _closing_sockets(close: Any) -> Any:
    """``NetworkSelector.close``, then close the sockets its attempts made (a no-op for
    those already closed): the loop has stopped, nothing uses them any more."""

    @functools.wraps(close)
    def closing(self: Any) -> None:
        try:
            close(self)
        finally:
            for sock in list(getattr(self, _MADE, ())):
                sock.close()

    return closing


def _nothing_once_closed(sock_recv: Any) -> Any:
    """A transport's ``_sock_recv``, which reads nothing once the transport closed.

    A connection's read task waits for its socket to be readable; when the connection
    is closed meanwhile (a client shutting down), the wait ends, the socket is gone,
    and kafka-python 3.0.12 logs ``AttributeError: 'NoneType' object has no attribute
    'recv'`` with a traceback at ERROR before it drops the connection it already
    dropped. This answers "closed" instead, with nothing logged: the read task then
    aborts the transport, which does nothing a second time."""
    from kafka.errors import KafkaConnectionError

    @functools.wraps(sock_recv)
    def recv(self: Any) -> tuple[bytes, BaseException | None]:
        if self._sock is None:
            return b"", KafkaConnectionError("the connection is closed")
        result: tuple[bytes, BaseException | None] = sock_recv(self)
        return result

    return recv

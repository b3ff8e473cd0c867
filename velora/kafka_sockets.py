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
success, and returned unchanged on success. It goes through
:class:`velora.kafka_internals.InternalsGuard`: on another kafka-python it changes
nothing. It is installed once per process by the client factory
(:mod:`velora.kafka_clients`), before the first client is made.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from velora.kafka_internals import InternalsGuard, require


def _probe() -> type:
    from kafka.net.inet import KafkaNetSocket

    require(KafkaNetSocket, "connect", "socket", "sock_connect")
    return KafkaNetSocket


GUARD: InternalsGuard[type] = InternalsGuard("closing failed connection sockets", _probe)

_lock = threading.Lock()
_installed = False


async def _connect(
    self: Any, net: Any, addrinfo: Any, socket_options: Any = (), timeout_at: Any = None
) -> Any:
    """``KafkaNetSocket.connect`` of kafka-python 3.0.12, closing the socket unless it
    connected (the same steps, in the same order)."""
    family, sock_type, proto, _canonname, sockaddr = addrinfo
    sock = self.socket(family, sock_type, proto)
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
        socket_class = GUARD.internals()
        if socket_class is None:
            return False
        original = socket_class.connect
        socket_class.connect = functools.wraps(original)(_connect)
        _installed = True
        return True

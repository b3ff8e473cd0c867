"""Work handed to the dispatcher's event loop from other threads, one wake-up per burst.

The consumer thread hands over every record, and the producer's I/O thread every
acknowledgement. ``loop.call_soon_threadsafe`` per item writes to the loop's
self-pipe each time: a system call per record and per acknowledgement, which on a
busy dispatcher cost more than the deliveries' own bookkeeping. An :class:`Inbox`
queues the items and wakes the loop only when the queue was empty, so a burst of
records costs one wake-up; the loop then runs them in the order they were put.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class Inbox:
    """A FIFO of calls for ``loop``, put from any thread (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._lock = threading.Lock()
        self._scheduled = False

    def put(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop, after everything put before it."""
        with self._lock:
            self._items.append((fn, args))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: the process is stopping
            with self._lock:
                self._scheduled = False

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._items:
                    self._scheduled = False
                    return
                batch = list(self._items)
                self._items.clear()
            for fn, args in batch:
                try:
                    fn(*args)
                except Exception:  # one bad item must not stop the others (nor the inbox)
                    log.exception("webhooks: a handed-over call failed")

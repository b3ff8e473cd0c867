"""The ingest service's memory budget: how much request body it holds at once, in all.

Every upload claims its share of one :class:`BodyBudget` before its body is read:
the declared ``Content-Length`` at once, or, for a chunked body, each chunk as it
arrives. When what it needs is more than what is left, the upload is refused with
:class:`BudgetFull` (an :class:`~velora.errors.Unavailable`: 503, ``Retry-After``;
logged at most once per 10 s, not once per upload) and its body is not read
(the answer carries ``Connection: close``; see :mod:`velora.http_server`). The claim
is given back when the request is answered, so the budget comes back after a burst.

The budget counts body bytes held by the app. Beyond it, each connection may have up
to uvicorn's 64 KiB read-ahead plus one socket read buffered before its request
reaches the app, and the events parsed from a body (at most ``INGEST_WORKERS``
bodies at once, see :mod:`ingest.http`) take a few times the body's size while
they are validated and sent.

After a burst the process collects its cyclic garbage and hands the freed heap
back to the OS (:func:`trim_after_bursts`, :func:`velora.memory.release_free_memory`):
otherwise what aborted uploads left in reference cycles (tracebacks hold the frames
that held the bodies), and the heap pages of hundreds of interleaved 64 KiB reads,
keep the process at its peak size long after the burst.

All claims are made and released on the server's event loop, so no lock is needed.
"""

from __future__ import annotations

import logging
from types import TracebackType

import anyio
import anyio.to_thread

from velora.errors import ErrorDetail, Unavailable
from velora.logs import Throttled
from velora.memory import release_free_memory

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1
MIB = 1024 * 1024
TRIM_CHECK_S = 2.0
"""How often :func:`trim_after_bursts` looks at the budget."""
TRIM_AFTER_PEAK = 32 * MIB
"""A burst worth trimming after: this many body bytes held at once."""


class BudgetFull(Unavailable):
    """The budget lacks room for this body: back-pressure, not a fault (503)."""


class BodyBudget:
    """``capacity`` bytes of request body, shared by every connection of one server."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self.refused = 0
        self.peak = 0
        self._warn = Throttled(log, logging.WARNING)

    def claim(self) -> Claim:
        """An empty claim for one request; use it as a context manager."""
        return Claim(self)

    def _take(self, n: int) -> None:
        if self.in_use + n > self.capacity:
            self.refused += 1
            mib = self.capacity / MIB
            self._warn("request-body budget of %g MiB in use: uploads get 503", mib)
            raise BudgetFull(
                f"ingest is holding its {mib:g} MiB of request bodies in flight; retry later",
                details=(ErrorDetail("body", "server memory budget for request bodies is full"),),
                retry_after=RETRY_AFTER_S,
            )
        self.in_use += n
        self.peak = max(self.peak, self.in_use)

    def burst_over(self, min_peak: int) -> bool:
        """Whether a burst of at least ``min_peak`` bytes has since drained (to a quarter).

        True once per burst: the peak is reset to what is in use now.
        """
        if self.peak < min_peak or self.in_use > self.peak // 4:
            return False
        self.peak = self.in_use
        return True


class Claim:
    """The bytes of the budget one request holds; all given back on exit."""

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self.held = 0

    def cover(self, size: int) -> None:
        """Hold at least ``size`` bytes in all; :class:`BudgetFull` if the budget lacks them."""
        if size > self.held:
            self._budget._take(size - self.held)
            self.held = size

    def release(self) -> None:
        """Give back everything held."""
        self._budget.in_use -= self.held
        self.held = 0

    def __enter__(self) -> Claim:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


async def trim_after_bursts(budget: BodyBudget, every_s: float = TRIM_CHECK_S) -> None:
    """Run for ever: after each burst has drained, return the freed heap to the OS."""
    while True:
        await anyio.sleep(every_s)
        if budget.burst_over(TRIM_AFTER_PEAK):
            await anyio.to_thread.run_sync(release_free_memory)

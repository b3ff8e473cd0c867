"""Token buckets: per API key (request rate) and per client IP (authentication failures).

A bucket holds up to ``capacity`` tokens and refills at ``rate`` tokens per second.
Each request takes one token; an empty bucket means 429 with ``Retry-After`` (the
seconds until one token is back). Every public answer carries the IETF draft
headers computed from the bucket that governed it:

- ``RateLimit-Limit``: the bucket's capacity (the burst);
- ``RateLimit-Remaining``: whole tokens left after this request;
- ``RateLimit-Reset``: seconds until the bucket is full again (rounded up).

Buckets live in memory on each node, in a bounded LRU map, so a flood of distinct
keys or addresses cannot grow memory without limit.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

MAX_BUCKETS = 100_000


@dataclass(frozen=True)
class Decision:
    """The outcome of taking (or peeking at) one token."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: int
    retry_after_s: int

    def headers(self) -> dict[str, str]:
        """The ``RateLimit-*`` headers (plus ``Retry-After`` when refused)."""
        out = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }
        if not self.allowed:
            out["Retry-After"] = str(self.retry_after_s)
        return out


class BucketMap:
    """Token buckets by key, with one capacity and refill rate for all of them."""

    def __init__(
        self,
        capacity: int,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int = MAX_BUCKETS,
    ) -> None:
        self.capacity = capacity
        self.rate = rate
        self._clock = clock
        self._max = max_buckets
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def _level(self, key: str, now: float) -> float:
        tokens, stamp = self._buckets.get(key, (float(self.capacity), now))
        return min(float(self.capacity), tokens + (now - stamp) * self.rate)

    def _decision(self, allowed: bool, tokens: float) -> Decision:
        missing = self.capacity - tokens
        reset = math.ceil(missing / self.rate) if missing > 0 else 0
        retry = max(1, math.ceil((1.0 - tokens) / self.rate)) if tokens < 1.0 else 0
        return Decision(allowed, self.capacity, max(0, math.floor(tokens)), reset, retry)

    def take(self, key: str) -> Decision:
        """Take one token for ``key`` if there is one."""
        with self._lock:
            now = self._clock()
            tokens = self._level(key, now)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._store(key, tokens, now)
            return self._decision(allowed, tokens)

    def peek(self, key: str) -> Decision:
        """The state of ``key``'s bucket without taking a token (allowed = a token is left)."""
        with self._lock:
            tokens = self._level(key, self._clock())
            return self._decision(tokens >= 1.0, tokens)

    def _store(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)

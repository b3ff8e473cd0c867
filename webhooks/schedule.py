"""When a failed delivery is tried again, and which retry topic holds it meanwhile.

The schedule (``VELORA_WEBHOOKS_RETRY_SCHEDULE``, Svix's by default: 5 s, 5 min,
30 min, 2 h, 5 h, 10 h, 10 h) gives the wait after each failed attempt: after
attempt *n* fails, attempt *n+1* is due ``schedule[n-1]`` seconds later, +-20 %
jitter; after attempt ``len(schedule) + 1`` fails the delivery is exhausted
(marked failed, replayable). A ``Retry-After`` on a 429 or 503 answer is honoured:
the wait is at least what it asks, up to :data:`MAX_RETRY_AFTER_S`.

Each distinct delay of the schedule has a retry topic (a *tier*). A job waits in
the tier of the longest delay not longer than its own wait, so the records of a
tier come due in about the order they were written, and a consumer waits only
for the head of each partition (see :mod:`webhooks.consumer`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

JITTER = 0.2
MAX_RETRY_AFTER_S = 86_400.0


def next_delay(
    schedule: Sequence[float], failed_attempt: int, rng: random.Random | None = None
) -> float | None:
    """Seconds until the attempt after ``failed_attempt`` (1-based); None when exhausted."""
    if failed_attempt > len(schedule):
        return None
    base = schedule[failed_attempt - 1]
    return base * (rng or random).uniform(1 - JITTER, 1 + JITTER)


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds asked by a ``Retry-After`` header (delta-seconds or an HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


def tier_for(tiers: Sequence[float], delay: float) -> int:
    """The retry tier for a wait of ``delay`` seconds: the longest tier delay <= it."""
    chosen = 0
    for i, tier in enumerate(tiers):
        if tier <= delay:
            chosen = i
    return chosen

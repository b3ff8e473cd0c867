"""Query parameters of the analytics and export routes: the list filters over a bounded range.

Every analytics and export request takes the audit-events list filters
(:mod:`query_api.filters`, one definition of each: ``action`` exact or ``prefix.*``,
``actor_id``, ``actor_type``, ``target_id``, ``target_type``, ``outcome``, ``source``)
plus its own parameters, with these rules (every violation is a 422 naming the field):

- ``since`` and ``until`` are required, ``since < until``, and the range is at most
  :data:`MAX_RANGE` (400 days);
- each parameter at most once; unknown ones (``cursor`` and ``limit`` of the list
  included, unless the route takes its own ``limit``) are refused;
- ``interval`` is ``minute``, ``hour``, ``day`` or ``auto``: ``auto`` picks the
  finest interval with at most :data:`AUTO_MAX_BUCKETS` buckets, and an explicit
  interval may give at most :data:`MAX_BUCKETS`.

Buckets are UTC and aligned to their interval (a day starts at 00:00 UTC), so the
first bucket may start before ``since`` and the last end after ``until``; each only
counts events inside ``[since, until)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from query_api.filters import PARAMETERS, Filters, parse_list_query
from schemas.rules import clip
from schemas.times import from_micros, micros
from velora.errors import ErrorDetail, ValidationError

MAX_RANGE = timedelta(days=400)
INTERVALS: dict[str, int] = {"minute": 60_000_000, "hour": 3_600_000_000, "day": 86_400_000_000}
"""Interval name -> length in microseconds (UTC has no leap seconds in epoch time)."""
AUTO_MAX_BUCKETS = 500
MAX_BUCKETS = 5000
FILTER_PARAMETERS: tuple[str, ...] = tuple(p for p in PARAMETERS if p not in ("limit", "cursor"))


def bad(name: str, reason: str) -> ValidationError:
    """The 422 for one parameter."""
    return ValidationError(
        f"invalid query parameter {name!r}: {reason}", (ErrorDetail(name, reason),)
    )


@dataclass(frozen=True)
class RangedRequest:
    """Validated filters (``since`` and ``until`` always set) and the route's own values."""

    filters: Filters
    own: dict[str, str]

    @property
    def since(self) -> datetime:
        """Start of the range (inclusive), aware UTC."""
        assert self.filters.since is not None
        return self.filters.since

    @property
    def until(self) -> datetime:
        """End of the range (exclusive), aware UTC."""
        assert self.filters.until is not None
        return self.filters.until


def parse_ranged(items: Sequence[tuple[str, str]], own: Sequence[str]) -> RangedRequest:
    """Split and validate the raw query items: the list filters, then ``own`` parameters."""
    allowed = (*FILTER_PARAMETERS, *own)
    values: dict[str, str] = {}
    filter_items: list[tuple[str, str]] = []
    for name, value in items:
        if name not in allowed:
            raise bad(clip(name), f"unknown parameter; allowed: {', '.join(allowed)}")
        if name in own:
            if name in values:
                raise bad(name, "given more than once")
            values[name] = value
        else:
            filter_items.append((name, value))
    filters = parse_list_query(filter_items).filters
    for name in ("since", "until"):
        if getattr(filters, name) is None:
            raise bad(name, "is required (an ISO-8601 date-time with an offset)")
    assert filters.since is not None and filters.until is not None
    if filters.since >= filters.until:
        raise bad("until", "must be later than since")
    if filters.until - filters.since > MAX_RANGE:
        raise bad("until", f"the range may span at most {MAX_RANGE.days} days")
    return RangedRequest(filters, values)


def floor_us(micros: int, step: int) -> int:
    """``micros`` rounded down to a multiple of ``step`` (UTC-aligned)."""
    return micros - micros % step


def bucket_starts(since: datetime, until: datetime, step: int) -> list[int]:
    """Epoch-microsecond starts of the ``step`` buckets that overlap ``[since, until)``."""
    first = floor_us(micros(since), step)
    last = floor_us(micros(until) - 1, step)
    return list(range(first, last + 1, step))


def bucket_count(since: datetime, until: datetime, step: int) -> int:
    """How many ``step`` buckets overlap ``[since, until)``."""
    first = floor_us(micros(since), step)
    last = floor_us(micros(until) - 1, step)
    return (last - first) // step + 1


def resolve_interval(raw: str | None, since: datetime, until: datetime) -> str:
    """The interval name to use: ``auto`` (the default) or an explicit one that fits."""
    name = raw if raw is not None else "auto"
    if name == "auto":
        for candidate, step in INTERVALS.items():
            if bucket_count(since, until, step) <= AUTO_MAX_BUCKETS:
                return candidate
        return "day"
    if name not in INTERVALS:
        raise bad("interval", "must be minute, hour, day or auto")
    if bucket_count(since, until, INTERVALS[name]) > MAX_BUCKETS:
        raise bad("interval", f"gives more than {MAX_BUCKETS} buckets; use a coarser interval")
    return name


def iso(micros: int) -> str:
    """Epoch microseconds as ISO-8601 UTC with ``+00:00``."""
    return from_micros(micros).isoformat()

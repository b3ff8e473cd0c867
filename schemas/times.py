"""Time on the wire and in storage: timezone-aware UTC, as epoch microseconds in Avro.

The one home of the epoch-microsecond conversion. :func:`micros` is the bare
arithmetic for values already known to be aware (the ingest hot path checks that
itself); :func:`to_micros` refuses a naive value, naming the field.

Timestamps are read with :func:`parse_rfc3339`, strictly: an RFC 3339 ``date-time``
(section 5.6), that is ``YYYY-MM-DD``, ``T`` (or ``t``), ``hh:mm:ss``, an optional
fraction of any number of digits (truncated to microseconds) and ``Z`` (or ``z``) or
``+hh:mm`` / ``-hh:mm``. ISO 8601 forms outside RFC 3339 (week or ordinal dates,
the basic format without separators, a space instead of ``T``, a date alone, a
time without seconds, ``+hh`` or ``+hhmm`` offsets, a comma before the fraction)
are refused, as is a leap second (``:60``, which Python cannot represent).
Ingest and the API filters share it, so both accept exactly the same strings.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from velora.errors import EncodeError, ErrorDetail

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
RFC3339_EXAMPLE = "2025-01-31T12:00:00Z"
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})",
    re.ASCII,
)


def parse_rfc3339(text: str) -> datetime:
    """An RFC 3339 date-time as an aware :class:`datetime` (its own offset kept).

    Raises :class:`ValueError` with a reason that never echoes ``text``.
    """
    if _RFC3339.fullmatch(text) is None:
        raise ValueError(
            f"must be an RFC 3339 date-time with an offset, such as {RFC3339_EXAMPLE} "
            "or 2025-01-31T13:00:00.5+01:00"
        )
    if text[-1] == "z":
        text = text[:-1] + "Z"
    try:
        return datetime.fromisoformat(text)  # the syntax is checked; this gives the value
    except ValueError:
        raise ValueError("is not a valid date-time (a day, hour or offset out of range)") from None


def micros(value: datetime) -> int:
    """An aware datetime as microseconds since the Unix epoch (exact, no float)."""
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def to_micros(value: datetime, name: str) -> int:
    """Like :func:`micros`, but a naive ``value`` raises :class:`EncodeError` naming ``name``."""
    if value.utcoffset() is None:
        raise EncodeError(
            f"{name} is a naive datetime; timestamps must carry a UTC offset",
            details=(ErrorDetail(name, "naive datetime"),),
        )
    return micros(value)


def from_micros(value: int | datetime) -> datetime:
    """Microseconds since the epoch (or an aware datetime) -> aware UTC datetime."""
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return EPOCH + timedelta(microseconds=value)

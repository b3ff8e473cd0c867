"""Time on the wire and in storage: timezone-aware UTC, as epoch microseconds in Avro.

The one home of the epoch-microsecond conversion. :func:`micros` is the bare
arithmetic for values already known to be aware (the ingest hot path checks that
itself); :func:`to_micros` refuses a naive value, naming the field.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from velora.errors import EncodeError, ErrorDetail

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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

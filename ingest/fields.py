"""Checkers for one field each, shared by the rules in :mod:`ingest.validation`.

Each checker appends an :class:`~velora.errors.ErrorDetail` to ``errors`` and
returns ``None`` when the value breaks its rule, or returns the cleaned value.
Reasons never echo the value.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from schemas.rules import TEXT_FORBIDDEN, clip
from schemas.times import RFC3339_EXAMPLE, micros, parse_rfc3339
from velora.errors import ErrorDetail, ValidationError

Errors = list[ErrorDetail]

MAX_FUTURE = timedelta(hours=24)
MAX_TIMESTAMP_LEN = 64
EMPTY: Mapping[str, Any] = {}
_MAX_REMEMBERED = 10_000


def remember(seen: set[str], value: str) -> None:
    """Add ``value`` to a bounded set of known-good values (cleared when full)."""
    if len(seen) >= _MAX_REMEMBERED:
        seen.clear()
    seen.add(value)


def fail(errors: Errors) -> None:
    """Raise :class:`ValidationError` with every error; the message names the first."""
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    raise ValidationError(f"invalid event: {first.field} {first.reason}{more}", details=errors)


def ident(
    errors: Errors, value: Any, name: str, max_len: int, *, required: bool = False
) -> str | None:
    """An identifier: a printable string without control, format or separator characters."""
    if value is None:
        if required:
            errors.append(ErrorDetail(name, "is required"))
        return None
    if type(value) is not str:
        errors.append(ErrorDetail(name, "must be a string"))
    elif not value:
        errors.append(ErrorDetail(name, "must not be empty"))
    elif len(value) > max_len:
        errors.append(ErrorDetail(name, f"must be at most {max_len} characters"))
    elif not value.isprintable():
        errors.append(ErrorDetail(name, "must not contain control, format or separator characters"))
    else:
        return value
    return None


def text(errors: Errors, value: Any, name: str, max_len: int) -> str | None:
    """Free text: any Unicode except C0/C1 control characters and lone surrogates."""
    if value is None:
        return None
    if type(value) is not str:
        errors.append(ErrorDetail(name, "must be a string"))
    elif len(value) > max_len:
        errors.append(ErrorDetail(name, f"must be at most {max_len} characters"))
    elif not value.isprintable() and TEXT_FORBIDDEN.search(value):
        errors.append(ErrorDetail(name, "must not contain control characters or lone surrogates"))
    else:
        return value
    return None


def timestamp(
    errors: Errors, value: Any, name: str, now: datetime, *, required: bool
) -> int | None:
    """An aware timestamp as epoch microseconds; not over 24 h ahead, not before 1970.

    A string must be an RFC 3339 date-time (:func:`schemas.times.parse_rfc3339`).
    """
    if value is None:
        if required:
            errors.append(ErrorDetail(name, "is required"))
        return None
    if type(value) is str:
        if len(value) > MAX_TIMESTAMP_LEN:
            errors.append(ErrorDetail(name, f"must be an RFC 3339 timestamp ({RFC3339_EXAMPLE})"))
            return None
        try:
            value = parse_rfc3339(value)
        except ValueError as exc:
            errors.append(ErrorDetail(name, str(exc)))
            return None
    elif not isinstance(value, datetime):
        errors.append(ErrorDetail(name, f"must be an RFC 3339 timestamp ({RFC3339_EXAMPLE})"))
        return None
    if value.utcoffset() is None:
        errors.append(
            ErrorDetail(name, "must carry a UTC offset, e.g. 2025-01-31T12:00:00Z or +01:00")
        )
        return None
    try:
        ahead = value - now
        us = micros(value)
    except OverflowError:
        errors.append(ErrorDetail(name, "is out of range"))
        return None
    if ahead > MAX_FUTURE:
        errors.append(ErrorDetail(name, "must be at most 24 hours in the future"))
        return None
    if us < 0:
        errors.append(ErrorDetail(name, "must not be before 1970-01-01T00:00:00Z"))
        return None
    return us


@functools.lru_cache(maxsize=4)
def now_micros(now: datetime) -> int:
    """``micros(now)``, computed once per batch (every event of a batch shares ``now``)."""
    return micros(now)


def obj(errors: Errors, value: Any, name: str, known: frozenset[str]) -> Mapping[str, Any]:
    """A JSON object whose keys are all in ``known`` (unknown keys are named), else EMPTY."""
    if not isinstance(value, dict | Mapping):
        errors.append(ErrorDetail(name, "must be an object"))
        return EMPTY
    if not known.issuperset(value):
        for key in sorted(str(k) for k in value if k not in known)[:5]:
            errors.append(ErrorDetail(f"{name}.{clip(key)}", "unknown field"))
    return value


@functools.lru_cache(maxsize=8192)
def normal_ip(text: str) -> str | None:
    """The canonical form of an IP address, or None (cached: addresses repeat)."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None

"""Query parameters of ``GET /api/v2/public/audit/events``, validated into :class:`Filters`.

Rules (every violation is a 422 naming the parameter):

- only the documented parameters, each at most once; unknown ones are refused;
- ``limit`` is an integer 1..1000 (default 50);
- ``since`` (inclusive) and ``until`` (exclusive) are RFC 3339 date-times, so
  *with* an offset (:func:`schemas.times.parse_rfc3339`, the rule ingest uses too);
  anything else (a naive value, a date alone, ISO week dates, the basic format, a
  space instead of ``T``) is refused; both are normalised to UTC;
- ``action`` is exact (``claim.viewed``) or a prefix ending in ``.*`` (``claim.*``);
- ``outcome`` is one of ``success``, ``failure``, ``denied``, ``unknown``;
- text values are 1..256 characters with no C0/C1 control characters (so no NUL bytes);
  ``actor_id`` and ``target_id`` may instead list up to 16 comma-separated PHI tokens
  (``tok_v1_...``, each up to 256 characters), which match as alternatives in
  client- and sidecar-mode (``docs/phi.md``).

Values never reach SQL as text: :mod:`query_api.queries` binds them as parameters.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime

from phi.tokens import is_token
from schemas.events import OUTCOME_RESULTS
from schemas.limits import MAX_FILTER_TEXT
from schemas.rules import clip, has_forbidden
from schemas.times import parse_rfc3339
from velora.errors import ErrorDetail, ValidationError

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
TEXT_FILTERS = ("actor_id", "actor_type", "target_id", "target_type", "source")
PARAMETERS = ("limit", "cursor", "since", "until", "action", "outcome", *TEXT_FILTERS)
_ACTION = re.compile(r"[^*]+(\.\*)?")


@dataclass(frozen=True)
class Filters:
    """The filters of one list query (everything but ``limit`` and ``cursor``)."""

    since: datetime | None = None
    until: datetime | None = None
    action: str | None = None
    action_prefix: str | None = None
    actor_id: str | None = None
    actor_type: str | None = None
    target_id: str | None = None
    target_type: str | None = None
    outcome: str | None = None
    source: str | None = None
    actor_ids: tuple[str, ...] = ()
    """What ``actor_id`` matches, when the PHI mode widens it (:func:`with_phi`); else empty."""
    target_ids: tuple[str, ...] = ()
    """What ``target_id`` matches, when the PHI mode widens it; else empty."""

    def fingerprint(self) -> str:
        """A stable digest of the filters as asked (not as widened); cursors are bound to it."""
        data = {}
        for name in _FINGERPRINTED:  # not asdict(): it deep-copies, at 4x the cost
            value = getattr(self, name)
            data[name] = value.isoformat() if isinstance(value, datetime) else value
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


_FINGERPRINTED = tuple(f.name for f in fields(Filters) if f.name not in ("actor_ids", "target_ids"))
"""The filters as asked: a cursor stays bound to them whatever the PHI mode widens."""


@dataclass(frozen=True)
class ListQuery:
    """A validated list request."""

    filters: Filters
    limit: int
    cursor: str | None


def _bad(name: str, reason: str) -> ValidationError:
    return ValidationError(
        f"invalid query parameter {name!r}: {reason}", (ErrorDetail(name, reason),)
    )


def _text(name: str, raw: str) -> str:
    if not raw:
        raise _bad(name, "must not be empty")
    if len(raw) > MAX_FILTER_TEXT:
        raise _bad(name, f"must be at most {MAX_FILTER_TEXT} characters")
    if has_forbidden(raw):
        raise _bad(name, "must not contain control characters")
    return raw


def parse_time(name: str, raw: str) -> datetime:
    """An RFC 3339 date-time (so with an explicit offset), as aware UTC."""
    _text(name, raw)
    try:
        value = parse_rfc3339(raw)
    except ValueError as exc:
        raise _bad(name, str(exc)) from None
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise _bad(name, "is out of range") from None


def _limit(raw: str) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > 5:
        raise _bad("limit", f"must be an integer from 1 to {MAX_LIMIT}")
    value = int(raw)
    if not 1 <= value <= MAX_LIMIT:
        raise _bad("limit", f"must be an integer from 1 to {MAX_LIMIT}")
    return value


ID_FILTERS = ("actor_id", "target_id")
MAX_FILTER_TOKENS = 16
"""Comma-separated PHI tokens an ``actor_id``/``target_id`` filter may list (one per key
and domain: ``velora-tokenizer search-tokens``, the sidecar); each token is a text value."""


def _token_list(raw: str) -> bool:
    parts = raw.split(",")
    return 1 < len(parts) <= MAX_FILTER_TOKENS and all(
        len(p) <= MAX_FILTER_TEXT and is_token(p) for p in parts
    )


def parse_list_query(items: Sequence[tuple[str, str]]) -> ListQuery:
    """Validate the raw query items (repeated keys included) of a list request."""
    seen: dict[str, str] = {}
    for name, value in items:
        if name not in PARAMETERS:
            raise _bad(clip(name), f"unknown parameter; allowed: {', '.join(PARAMETERS)}")
        if name in seen:
            raise _bad(name, "given more than once")
        seen[name] = value
    fields: dict[str, object] = {}
    for name in ("since", "until"):
        if name in seen:
            fields[name] = parse_time(name, seen[name])
    if "action" in seen:
        action = _text("action", seen["action"])
        if not _ACTION.fullmatch(action):
            raise _bad("action", "must be an exact action or a prefix ending in '.*'")
        if action.endswith(".*"):
            fields["action_prefix"] = action[:-1]
        else:
            fields["action"] = action
    if "outcome" in seen:
        if seen["outcome"] not in OUTCOME_RESULTS:
            raise _bad("outcome", f"must be one of {', '.join(OUTCOME_RESULTS)}")
        fields["outcome"] = seen["outcome"]
    for name in TEXT_FILTERS:
        if name in seen:
            raw = seen[name]
            fields[name] = raw if name in ID_FILTERS and _token_list(raw) else _text(name, raw)
    cursor = _text("cursor", seen["cursor"]) if "cursor" in seen else None
    limit = _limit(seen["limit"]) if "limit" in seen else DEFAULT_LIMIT
    return ListQuery(Filters(**fields), limit, cursor)  # type: ignore[arg-type]


def with_phi(filters: Filters, values: Callable[[str, str], tuple[str, ...]]) -> Filters:
    """``filters`` with ``actor_id``/``target_id`` widened to ``values(field, value)``.

    ``values`` is the tenant's :meth:`phi.policy.TenantPhi.id_filter_values`: in
    server-mode, the plain value and its token under every key and id domain, so a
    plain-value filter finds events written under any key, before or after a rotation.
    """
    return replace(
        filters,
        actor_ids=() if filters.actor_id is None else values("actor_id", filters.actor_id),
        target_ids=() if filters.target_id is None else values("target_id", filters.target_id),
    )


def query_items(filters: Filters, limit: int, cursor: str | None) -> list[tuple[str, str]]:
    """The query items that reproduce a request (for the ``Link: rel="next"`` URL)."""
    items: list[tuple[str, str]] = [("limit", str(limit))]
    for name in ("since", "until"):
        value = getattr(filters, name)
        if value is not None:
            items.append((name, value.isoformat()))
    if filters.action is not None:
        items.append(("action", filters.action))
    if filters.action_prefix is not None:
        items.append(("action", filters.action_prefix + "*"))
    if filters.outcome is not None:
        items.append(("outcome", filters.outcome))
    items.extend((n, getattr(filters, n)) for n in TEXT_FILTERS if getattr(filters, n) is not None)
    if cursor is not None:
        items.append(("cursor", cursor))
    return items


def as_mapping(filters: Filters) -> Mapping[str, str]:
    """The filters as strings, for the read-audit event's metadata."""
    return {k: v for k, v in query_items(filters, 0, None) if k != "limit"}

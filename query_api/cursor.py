"""Opaque, integrity-protected keyset cursors.

A cursor names the last event of a page by its sort key ``(occurred_at, event_id)``;
the next page holds the events strictly *older* than it (newest first). Because the
position is a key, not an offset, events that arrive while a client pages are
neither skipped nor repeated.

Wire form: ``base64url(payload) "." base64url(tag)`` where ``payload`` is compact
JSON ``{"v": 1, "o": <occurred_at micros>, "e": <event_id>}`` and ``tag`` is the
first 16 bytes of ``HMAC-SHA256(settings.cursor_secret, tenant | filters | payload)``.
The tag binds the cursor to the tenant of the key and to the query's filters: a
tampered cursor, one from another tenant, or one reused with other filters fails
verification and answers 422. A verified payload is still checked field by field
(``v`` the integer 1, ``o`` an integer from 0 to the year 9999, ``e`` a string of
1-128 characters), so a cursor forged with a leaked secret gives 422 as well,
never a 500. Clients must treat cursors as opaque.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from schemas.limits import MAX_EVENT_ID
from schemas.times import micros
from velora.errors import ErrorDetail, ValidationError
from velora.settings import Secret

VERSION = 1
TAG_BYTES = 16
MAX_OCCURRED_US = micros(datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))
"""The largest ``occurred_at`` a cursor may hold (a datetime's range, in epoch micros)."""


@dataclass(frozen=True)
class Position:
    """The sort key of the last event on a page."""

    occurred_us: int
    event_id: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _tag(secret: Secret, tenant_id: str, filters_fp: str, payload: bytes) -> bytes:
    mac = hmac.new(secret.reveal().encode(), digestmod=hashlib.sha256)
    for part in (tenant_id.encode(), filters_fp.encode(), payload):
        mac.update(len(part).to_bytes(4, "big"))
        mac.update(part)
    return mac.digest()[:TAG_BYTES]


def encode(secret: Secret, tenant_id: str, filters_fp: str, position: Position) -> str:
    """The cursor for the page that follows ``position``."""
    payload = json.dumps(
        {"v": VERSION, "o": position.occurred_us, "e": position.event_id},
        separators=(",", ":"),
    ).encode()
    return f"{_b64(payload)}.{_b64(_tag(secret, tenant_id, filters_fp, payload))}"


def _invalid() -> ValidationError:
    return ValidationError(
        "invalid cursor: pass next_cursor from the previous page verbatim, with the same filters",
        (ErrorDetail("cursor", "invalid, tampered, or issued for other filters"),),
    )


def decode(secret: Secret, tenant_id: str, filters_fp: str, cursor: str) -> Position:
    """Verify and open a cursor; raise :class:`ValidationError` (422) if it is not ours."""
    body, dot, tag_text = cursor.partition(".")
    if not dot or not body or not tag_text or not cursor.isascii():
        raise _invalid()
    try:
        payload, tag = _unb64(body), _unb64(tag_text)
    except (binascii.Error, ValueError):
        raise _invalid() from None
    if _b64(payload) != body or _b64(tag) != tag_text:
        raise _invalid()  # non-canonical base64 (e.g. altered padding bits): not as issued
    if not hmac.compare_digest(tag, _tag(secret, tenant_id, filters_fp, payload)):
        raise _invalid()
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        raise _invalid() from None
    if not isinstance(data, dict):
        raise _invalid()
    version, occurred, event_id = data.get("v"), data.get("o"), data.get("e")
    if (
        type(version) is not int  # never a bool, a float or a huge number
        or version != VERSION
        or type(occurred) is not int
        or not 0 <= occurred <= MAX_OCCURRED_US
        or type(event_id) is not str
        or not 0 < len(event_id) <= MAX_EVENT_ID
    ):
        raise _invalid()
    return Position(occurred, event_id)

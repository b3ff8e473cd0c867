"""The identifier and text rules every entry point shares.

- **Tenant ids** are 1-64 characters of ``[A-Za-z0-9_.:-]``, starting with a letter
  or digit. Ingest, the key commands, the API and every CLI use :func:`valid_tenant`
  / :func:`check_tenant`, so an id one of them accepts, all of them accept.
- **API-key names** are 1-128 printable characters (no control, format or
  separator characters but the space), not blank: :func:`check_key_name`.
- **Event ids** are UUIDs in canonical lowercase text form (:data:`EVENT_ID_PATTERN`):
  ingest refuses any other, and the ledger quarantines any other it finds in the log.
- **Free text** may hold any Unicode except C0/C1 control characters and lone
  surrogates (:data:`TEXT_FORBIDDEN`).
- **Identifiers** must be :meth:`str.isprintable` (no control, format, separator
  or surrogate characters).
- :func:`clip` makes any caller-supplied name safe to echo in an error or a log:
  non-printable characters escaped, long names shortened.
"""

from __future__ import annotations

import re

from schemas.limits import MAX_KEY_NAME, MAX_TENANT_ID
from velora.errors import ErrorDetail, ValidationError

CONTROL_CLASS = r"\x00-\x1f\x7f-\x9f"
"""C0 and C1 control characters, as the body of a regex character class (also OpenAPI's)."""
TEXT_FORBIDDEN = re.compile(rf"[{CONTROL_CLASS}\ud800-\udfff]")
"""Control characters and lone surrogates: never allowed in any text."""
EVENT_ID_PATTERN = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
"""A UUID in canonical lowercase text form (to match whole, not searched for)."""
TENANT_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.:-]{{0,{MAX_TENANT_ID - 1}}}")
TENANT_RULE = f"1-{MAX_TENANT_ID} characters of [A-Za-z0-9_.:-], starting with a letter or digit"


def valid_tenant(value: object) -> bool:
    """Whether ``value`` is a well-formed tenant id."""
    return type(value) is str and TENANT_RE.fullmatch(value) is not None


def check_tenant(value: str, field: str = "tenant") -> str:
    """``value`` if it is a well-formed tenant id, else a 422 naming ``field``."""
    if not valid_tenant(value):
        reason = f"must be {TENANT_RULE}"
        raise ValidationError(f"{field} {reason}", details=(ErrorDetail(field, reason),))
    return value


KEY_NAME_RULE = (
    f"1-{MAX_KEY_NAME} printable characters (no control, format or line-break characters)"
)


def check_key_name(value: str, field: str = "name") -> str:
    """``value`` if it is an acceptable API-key name, else a 422 naming ``field``."""
    if (
        type(value) is not str
        or not value.strip()
        or len(value) > MAX_KEY_NAME
        or not value.isprintable()
    ):
        reason = f"must be {KEY_NAME_RULE}"
        raise ValidationError(f"key {field} {reason}", details=(ErrorDetail(field, reason),))
    return value


def has_forbidden(text: str) -> bool:
    """Whether ``text`` holds a control character or a lone surrogate."""
    return TEXT_FORBIDDEN.search(text) is not None


def scrub(text: str, limit: int) -> str:
    """Free text made acceptable: forbidden characters replaced by U+FFFD, clipped."""
    return TEXT_FORBIDDEN.sub("\ufffd", text)[:limit]


def clip(name: str, limit: int = 40) -> str:
    """A caller-supplied name safe to echo: printable (escaped if not) and at most ``limit``."""
    if not name.isprintable():
        name = name.encode("unicode_escape").decode("ascii")
    return name if len(name) <= limit else name[: limit - 3] + "..."

"""API-key tokens: the format, the secret's hash and a key's status, checked on every request.

Token format (50 characters: 9 + 8 + 1 + 32; the public index says 49, its own example has 50)::

    vlk_live_ | 8 hex lookup (the key_id) | _ | 32 hex secret (128 bits)

Only ``HMAC-SHA256(settings.key_pepper, secret)`` is stored, as an ``ApiKey``
record on the control topic; the operator commands that mint, rotate and revoke
keys live with the CLI (``cli.keys``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import datetime
from typing import TYPE_CHECKING

from velora.settings import Secret

if TYPE_CHECKING:
    from schemas.events import ApiKey

PREFIX = "vlk_live_"
KEY_LENGTH = 50  # the seed says "49 characters", but its parts and its example add up to 50
SCOPES: tuple[str, ...] = ("audit:read", "audit:export", "webhooks:write")
TOKEN_RE = re.compile(r"vlk_live_([0-9a-f]{8})_([0-9a-f]{32})")
KEY_ID_RE = re.compile(r"[0-9a-f]{8}")


def parse_token(token: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else None."""
    m = TOKEN_RE.fullmatch(token)
    return (m[1], m[2]) if m else None


def hash_secret(pepper: Secret, secret: str) -> str:
    """Hex HMAC-SHA256 of the secret under the server pepper."""
    return hmac.new(pepper.reveal().encode(), secret.encode(), hashlib.sha256).hexdigest()


def key_status(key: ApiKey, now: datetime) -> str:
    """``active``, ``revoked`` or ``expired`` at ``now``."""
    if key.revoked_at is not None and key.revoked_at <= now:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"

"""API-key tokens: the format, the secret's hash and a key's status, checked on every request.

Token format (50 characters: 9 + 8 + 1 + 32; the public index says 49, its own example has 50)::

    vlk_live_ | 8 hex lookup (the key_id) | _ | 32 hex secret (128 bits)    (live keys)
    vlk_test_ | 8 hex lookup (the key_id) | _ | 32 hex secret (128 bits)    (staging keys)

The prefix names the key's environment; a node serves one environment
(``settings.environment``) and refuses keys of the other.

Only ``HMAC-SHA256(pepper, secret)`` is stored, as an ``ApiKey`` record on the
control topic, with the id of the pepper that made it (:class:`Peppers`): new
keys use the newest ``VELORA_KEY_PEPPERS`` entry (or, with none configured, the
legacy unversioned ``VELORA_KEY_PEPPER``, recorded as no id); a key verifies
while its pepper is still configured. The operator commands that mint, rotate
and revoke keys live with the CLI (``cli.keys``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from velora.settings import Secret, Settings

if TYPE_CHECKING:
    from schemas.events import ApiKey

PREFIXES: dict[str, str] = {"live": "vlk_live_", "staging": "vlk_test_"}
"""Token prefix of each key environment."""
PREFIX = PREFIXES["live"]
KEY_LENGTH = 50  # the seed says "49 characters", but its parts and its example add up to 50
SCOPES: tuple[str, ...] = ("audit:read", "audit:export", "webhooks:write")
TOKEN_RE = re.compile(r"vlk_(live|test)_([0-9a-f]{8})_([0-9a-f]{32})")
KEY_ID_RE = re.compile(r"[0-9a-f]{8}")
_ENVIRONMENT_OF = {"live": "live", "test": "staging"}


@dataclass(frozen=True)
class ParsedToken:
    """The parts of a well-formed token."""

    environment: str
    key_id: str
    secret: str


def parse_token(token: str) -> ParsedToken | None:
    """The parts of a well-formed key, else None."""
    m = TOKEN_RE.fullmatch(token)
    return ParsedToken(_ENVIRONMENT_OF[m[1]], m[2], m[3]) if m else None


def format_token(environment: str, key_id: str, secret: str) -> str:
    """The token a client sends for a key of ``environment``."""
    return f"{PREFIXES[environment]}{key_id}_{secret}"


def hash_secret(pepper: Secret, secret: str) -> str:
    """Hex HMAC-SHA256 of the secret under the server pepper."""
    return hmac.new(pepper.reveal().encode(), secret.encode(), hashlib.sha256).hexdigest()


class Peppers:
    """The pepper that hashes new keys, and every pepper that still verifies old ones."""

    def __init__(self, settings: Settings) -> None:
        self._legacy = settings.key_pepper
        self._versioned = dict(settings.key_peppers)
        newest = settings.key_peppers[0] if settings.key_peppers else None
        self._current: tuple[str | None, Secret] = newest or (None, self._legacy)

    def current(self) -> tuple[str | None, Secret]:
        """``(pepper_id, pepper)`` for new keys (``None``: the legacy pepper)."""
        return self._current

    def get(self, pepper_id: str | None) -> Secret | None:
        """The pepper a stored key names, or None when it is no longer configured."""
        return self._legacy if pepper_id is None else self._versioned.get(pepper_id)


def key_status(key: ApiKey, now: datetime) -> str:
    """``active``, ``revoked`` or ``expired`` at ``now``."""
    if key.revoked_at is not None and key.revoked_at <= now:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"

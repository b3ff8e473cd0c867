"""API keys: the token format, the secret hash, and the operator actions on keys.

Token format (50 characters: 9 + 8 + 1 + 32; the public index says 49, its own example has 50)::

    vlk_live_ | 8 hex lookup (the key_id) | _ | 32 hex secret (128 bits)

Only ``HMAC-SHA256(settings.key_pepper, secret)`` is stored, as an ``ApiKey``
record on the control topic (:mod:`ingest.control`). The full key is returned once,
by :func:`create_key` / :func:`rotate_key`, and never logged.

Rotation mints a new key with the same tenant, scopes and name, and gives the old
key ``expires_at = now + settings.key_rotation_grace_seconds`` (default 24 h) and
``rotated_to = <new key_id>``; revocation sets ``revoked_at = now`` at once.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from ingest.control import ControlWriter
from ledger.control import ControlFold, read_control
from schemas.events import ApiKey
from velora.errors import ErrorDetail, NotFound, ValidationError
from velora.settings import Secret, Settings

PREFIX = "vlk_live_"
KEY_LENGTH = 50  # the seed says "49 characters", but its parts and its example add up to 50
SCOPES: tuple[str, ...] = ("audit:read", "audit:export", "webhooks:write")
TOKEN_RE = re.compile(r"vlk_live_([0-9a-f]{8})_([0-9a-f]{32})")
TENANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
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


@dataclass(frozen=True)
class IssuedKey:
    """A freshly minted key: the full token (shown once) and its stored record."""

    token: str
    record: ApiKey
    offset: int

    def to_json(self) -> dict[str, object]:
        """The CLI's ``--json`` view (the only place the token appears)."""
        return {**public_view(self.record, self.record.created_at), "key": self.token}


def public_view(key: ApiKey, now: datetime) -> dict[str, object]:
    """Everything about a key except its secret hash."""

    def iso(value: datetime | None) -> str | None:
        return None if value is None else value.astimezone(UTC).isoformat()

    return {
        "key_id": key.key_id,
        "tenant_id": key.tenant_id,
        "name": key.name,
        "scopes": list(key.scopes),
        "status": key_status(key, now),
        "created_at": iso(key.created_at),
        "expires_at": iso(key.expires_at),
        "revoked_at": iso(key.revoked_at),
        "rotated_to": key.rotated_to,
    }


def parse_scopes(raw: str) -> tuple[str, ...]:
    """Validate a comma-separated scope list (at least one, each known)."""
    scopes = tuple(dict.fromkeys(s.strip() for s in raw.split(",") if s.strip()))
    bad = [s for s in scopes if s not in SCOPES]
    if not scopes or bad:
        reason = f"unknown scope {bad[0]!r}" if bad else "no scope given"
        raise ValidationError(
            f"{reason}; scopes must be a comma-separated subset of {', '.join(SCOPES)}",
            details=(ErrorDetail("scopes", reason),),
        )
    return scopes


def validate_tenant(tenant_id: str) -> str:
    """Tenant ids are 1-64 characters of [A-Za-z0-9._-], starting alphanumeric."""
    if not TENANT_RE.fullmatch(tenant_id):
        raise ValidationError(
            "tenant id must be 1-64 characters of [A-Za-z0-9._-]",
            details=(ErrorDetail("tenant", "invalid tenant id"),),
        )
    return tenant_id


def mint(
    settings: Settings,
    tenant_id: str,
    scopes: tuple[str, ...],
    name: str | None,
    now: datetime,
    taken: frozenset[str] = frozenset(),
) -> tuple[str, ApiKey]:
    """A new token and its record (not yet written); ``taken`` key ids are avoided."""
    key_id = secrets.token_hex(4)
    while key_id in taken:
        key_id = secrets.token_hex(4)
    secret = secrets.token_hex(16)
    record = ApiKey(
        key_id=key_id,
        tenant_id=tenant_id,
        name=name,
        scopes=scopes,
        secret_hash=hash_secret(settings.key_pepper, secret),
        created_at=now,
        updated_at=now,
    )
    return f"{PREFIX}{key_id}_{secret}", record


def create_key(
    settings: Settings, tenant_id: str, scopes: tuple[str, ...], name: str | None = None
) -> IssuedKey:
    """Mint a key, write it to the control topic, return it (the token is shown once)."""
    validate_tenant(tenant_id)
    fold = read_control(settings)
    now = datetime.now(UTC)
    token, record = mint(settings, tenant_id, scopes, name, now, frozenset(fold.api_keys))
    with ControlWriter(settings) as writer:
        offset = writer.put_api_key(record)
    return IssuedKey(token, record, offset)


def _existing(fold: ControlFold, key_id: str) -> ApiKey:
    key = fold.api_keys.get(key_id) if KEY_ID_RE.fullmatch(key_id) else None
    if key is None:
        raise NotFound(f"no API key {key_id!r}")
    return key


def revoke_key(settings: Settings, key_id: str) -> tuple[ApiKey, int]:
    """Revoke a key now; returns its new state and the control offset."""
    key = _existing(read_control(settings), key_id)
    now = datetime.now(UTC)
    if key.revoked_at is not None:
        return key, -1
    revoked = replace(key, revoked_at=now, updated_at=now)
    with ControlWriter(settings) as writer:
        return revoked, writer.put_api_key(revoked)


def rotate_key(settings: Settings, key_id: str) -> tuple[IssuedKey, ApiKey]:
    """Mint a replacement with the same scopes; the old key expires after the grace period."""
    fold = read_control(settings)
    old = _existing(fold, key_id)
    now = datetime.now(UTC)
    if key_status(old, now) != "active":
        raise ValidationError(
            f"API key {key_id} is {key_status(old, now)}; only an active key can be rotated",
            details=(ErrorDetail("key_id", "not active"),),
        )
    token, new = mint(settings, old.tenant_id, old.scopes, old.name, now, frozenset(fold.api_keys))
    grace_end = now + timedelta(seconds=settings.key_rotation_grace_seconds)
    expires = grace_end if old.expires_at is None else min(old.expires_at, grace_end)
    retired = replace(old, expires_at=expires, rotated_to=new.key_id, updated_at=now)
    with ControlWriter(settings) as writer:
        writer.put_api_key(new)
        offset = writer.put_api_key(retired)
    return IssuedKey(token, new, offset), retired


def list_keys(settings: Settings, tenant_id: str | None = None) -> list[ApiKey]:
    """Every key of a tenant (or all), oldest first; records hold hashes, never secrets."""
    keys = read_control(settings).api_keys.values()
    chosen = [k for k in keys if tenant_id is None or k.tenant_id == tenant_id]
    return sorted(chosen, key=lambda k: (k.created_at, k.key_id))

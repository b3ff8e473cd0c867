"""The operator lifecycle of API keys: create, list, revoke and rotate.

Keys are ``ApiKey`` records on the compacted control topic (written by
:class:`ingest.control.ControlWriter`, folded by :mod:`ledger.control`); only an
HMAC of the secret is stored (:mod:`query_api.tokens`). The full key is returned
once, by :func:`create_key` / :func:`rotate_key`, and never logged.

Rotation mints a new key with the same tenant, scopes and name, and gives the old
key ``expires_at = now + settings.key_rotation_grace_seconds`` (default 24 h) and
``rotated_to = <new key_id>``; revocation sets ``revoked_at = now`` at once.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from ingest.control import ControlWriter
from ledger.control import ControlFold, read_control
from query_api.tokens import KEY_ID_RE, PREFIX, SCOPES, hash_secret, key_status
from schemas.events import ApiKey
from schemas.rules import check_tenant
from velora.errors import ErrorDetail, NotFound, ValidationError
from velora.settings import Settings


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
    check_tenant(tenant_id)
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

"""The operator lifecycle of API keys: create, list, revoke and rotate.

Keys are ``ApiKey`` records on the compacted control topic (written by
:class:`ingest.control.ControlWriter`, folded by :mod:`ledger.control`); only an
HMAC of the secret is stored (:mod:`query_api.tokens`). The full key is returned
once, by :func:`create_key` / :func:`rotate_key`, and never logged.

Rotation mints a new key with the same tenant, scopes, name, environment and
allow-list, and gives the old key ``expires_at = now + settings.key_rotation_grace_seconds``
(default 24 h) and ``rotated_to = <new key_id>``; revocation sets ``revoked_at = now``
at once. Names (:func:`schemas.rules.check_key_name`), tenants
(:func:`schemas.rules.check_tenant`) and allow-list CIDRs are validated before
anything is written.

**Races.** Two operators (or scripts) may act on one key at once, each from its own
read of the control topic. The fold is sticky (``ledger.control.merge_key``: a
revocation is never undone, an expiry never extended), and after every write the
lifecycle re-reads the topic and, when the last record of the key (the one that
compaction keeps) differs from the folded state, writes the folded state again
(:func:`_settle`). A rotation whose key turns out to be revoked by then is refused
and its replacement is never written. So in every interleaving of ``revoke`` and
``rotate`` the key ends revoked, on running nodes and after compaction. The
``fold`` parameters are the seam that lets a test act on a stale read.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from ingest.control import ControlWriter
from ledger.control import ControlFold, read_control
from query_api.tokens import KEY_ID_RE, SCOPES, Peppers, format_token, hash_secret, key_status
from schemas.events import KEY_ENVIRONMENTS, ApiKey
from schemas.rules import check_key_name, check_tenant
from velora.errors import ErrorDetail, NotFound, Unavailable, ValidationError
from velora.networks import parse_network
from velora.settings import Settings

SETTLE_ROUNDS = 5


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
        "environment": key.environment,
        "scopes": list(key.scopes),
        "allowed_ips": list(key.allowed_ips),
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


def parse_allow_ips(values: Iterable[str]) -> tuple[str, ...]:
    """Canonical CIDRs of ``--allow-ip`` values (IPv4 or IPv6; an address is a /32 or /128)."""
    out: list[str] = []
    for i, value in enumerate(values):
        try:
            network = parse_network(value)
        except ValueError as exc:
            raise ValidationError(
                f"--allow-ip value {i + 1} {exc}",
                details=(ErrorDetail("allow_ip", str(exc)),),
            ) from None
        if network not in out:
            out.append(network)
    return tuple(out)


def check_environment(environment: str) -> str:
    """``environment`` if it is a key environment (``live`` or ``staging``), else a 422."""
    if environment not in KEY_ENVIRONMENTS:
        reason = f"must be one of {', '.join(KEY_ENVIRONMENTS)}"
        detail = ErrorDetail("environment", reason)
        raise ValidationError(f"environment {reason}", details=(detail,))
    return environment


def mint(
    settings: Settings,
    template: ApiKey,
    now: datetime,
    taken: frozenset[str] = frozenset(),
) -> tuple[str, ApiKey]:
    """A new token and its record (not yet written), with ``template``'s tenant, scopes,
    name, environment and allow-list; ``taken`` key ids are avoided."""
    key_id = secrets.token_hex(4)
    while key_id in taken:
        key_id = secrets.token_hex(4)
    secret = secrets.token_hex(16)
    pepper_id, pepper = Peppers(settings).current()
    record = replace(
        template,
        key_id=key_id,
        secret_hash=hash_secret(pepper, secret),
        pepper_id=pepper_id,
        created_at=now,
        updated_at=now,
        expires_at=None,
        revoked_at=None,
        rotated_to=None,
    )
    return format_token(record.environment, key_id, secret), record


def create_key(
    settings: Settings,
    tenant_id: str,
    scopes: tuple[str, ...],
    name: str | None = None,
    *,
    environment: str | None = None,
    allowed_ips: Iterable[str] = (),
) -> IssuedKey:
    """Mint a key, write it to the control topic, return it (the token is shown once).

    ``environment`` defaults to the one this process serves (``VELORA_ENVIRONMENT``).
    """
    check_tenant(tenant_id)
    if name is not None:
        check_key_name(name)
    env = check_environment(environment or settings.environment)
    networks = parse_allow_ips(allowed_ips)
    fold = read_control(settings)
    now = datetime.now(UTC)
    template = ApiKey(
        key_id="",
        tenant_id=tenant_id,
        name=name,
        scopes=scopes,
        secret_hash="",
        created_at=now,
        updated_at=now,
        environment=env,
        allowed_ips=networks,
    )
    token, record = mint(settings, template, now, frozenset(fold.api_keys))
    with ControlWriter(settings) as writer:
        offset = writer.put_api_key(record)
    return IssuedKey(token, record, offset)


def _existing(fold: ControlFold, key_id: str) -> ApiKey:
    key = fold.api_keys.get(key_id) if KEY_ID_RE.fullmatch(key_id) else None
    if key is None:
        raise NotFound(f"no API key {key_id!r}")
    return key


def _settle(settings: Settings, writer: ControlWriter, key_id: str) -> tuple[ApiKey, int]:
    """Make the last record of ``key_id`` (what compaction keeps) its folded state.

    Returns the folded state and the offset of the last record written here (-1: none).
    """
    offset = -1
    for _ in range(SETTLE_ROUNDS):
        fold = read_control(settings)
        folded = _existing(fold, key_id)
        if fold.last_written.get(key_id) == folded:
            return folded, offset
        offset = writer.put_api_key(folded)
    raise Unavailable(
        f"API key {key_id} is being changed concurrently; run the command again", retry_after=1
    )


def _refuse_rotation(key_id: str, status: str) -> ValidationError:
    return ValidationError(
        f"API key {key_id} is {status}; only an active key can be rotated",
        details=(ErrorDetail("key_id", "not active"),),
    )


def revoke_key(
    settings: Settings, key_id: str, *, fold: ControlFold | None = None
) -> tuple[ApiKey, int]:
    """Revoke a key now; returns its new state and the control offset (-1: already revoked).

    ``fold`` is the view to act on (default: the topic read now).
    """
    key = _existing(fold if fold is not None else read_control(settings), key_id)
    now = datetime.now(UTC)
    if key.revoked_at is not None:
        return key, -1
    revoked = replace(key, revoked_at=now, updated_at=now)
    with ControlWriter(settings) as writer:
        offset = writer.put_api_key(revoked)
        state, rewritten = _settle(settings, writer, key_id)
    return state, max(offset, rewritten)


def rotate_key(
    settings: Settings, key_id: str, *, fold: ControlFold | None = None
) -> tuple[IssuedKey, ApiKey]:
    """Mint a replacement with the same scopes; the old key expires after the grace period.

    Refused (422) for a key that is not active, also when a revocation lands while
    the rotation is written: the replacement is then never written.
    """
    view = fold if fold is not None else read_control(settings)
    old = _existing(view, key_id)
    now = datetime.now(UTC)
    if key_status(old, now) != "active":
        raise _refuse_rotation(key_id, key_status(old, now))
    token, new = mint(settings, old, now, frozenset(view.api_keys))
    grace_end = now + timedelta(seconds=settings.key_rotation_grace_seconds)
    expires = grace_end if old.expires_at is None else min(old.expires_at, grace_end)
    retired = replace(old, expires_at=expires, rotated_to=new.key_id, updated_at=now)
    with ControlWriter(settings) as writer:
        writer.put_api_key(retired)
        state, _ = _settle(settings, writer, key_id)
        if state.revoked_at is not None:
            raise _refuse_rotation(key_id, "revoked")
        offset = writer.put_api_key(new)
    return IssuedKey(token, new, offset), state


def list_keys(settings: Settings, tenant_id: str | None = None) -> list[ApiKey]:
    """Every key of a tenant (or all), oldest first; records hold hashes, never secrets."""
    if tenant_id is not None:
        check_tenant(tenant_id)
    keys = read_control(settings).api_keys.values()
    chosen = [k for k in keys if tenant_id is None or k.tenant_id == tenant_id]
    return sorted(chosen, key=lambda k: (k.created_at, k.key_id))

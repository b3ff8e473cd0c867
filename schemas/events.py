"""Typed event structs that mirror the ``.avsc`` contract one-to-one.

``tests/test_events_contract.py`` keeps the dataclass fields in step with the
latest schema version, so a field added to one and not the other fails CI.
Timestamps are always timezone-aware; :meth:`AuditEvent.to_avro` refuses naive ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from schemas.times import from_micros, to_micros

AUDIT_EVENT = "health.velora.audit.AuditEvent"
API_KEY = "health.velora.control.ApiKey"
TENANT_SETTINGS = "health.velora.control.TenantSettings"

CRUD = ("create", "read", "update", "delete", "other")
OUTCOME_RESULTS = ("success", "failure", "denied", "unknown")
PHI_MODES = ("server", "client", "sidecar")
KEY_ENVIRONMENTS = ("live", "staging")


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acted: a user, a service, an API key or the system."""

    type: str
    id: str
    name: str | None = None
    email: str | None = None
    ip: str | None = None
    user_agent: str | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """What the action touched."""

    type: str
    id: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """How the action ended."""

    result: str = "unknown"
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One action taken on a tenant's data (schema ``AuditEvent``)."""

    event_id: str
    tenant_id: str
    occurred_at: datetime
    received_at: datetime
    action: str
    actor: Actor
    outcome: Outcome
    source: str
    crud: str = "other"
    category: str | None = None
    targets: tuple[Target, ...] = ()
    request_id: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    schema_version: int = 1

    def to_mapping(self) -> dict[str, Any]:
        """The record's fields as plain dicts and lists, timestamps as datetimes."""
        a, o = self.actor, self.outcome
        return {
            "event_id": self.event_id,
            "tenant_id": self.tenant_id,
            "occurred_at": self.occurred_at,
            "received_at": self.received_at,
            "action": self.action,
            "crud": self.crud,
            "category": self.category,
            "actor": {
                "type": a.type,
                "id": a.id,
                "name": a.name,
                "email": a.email,
                "ip": a.ip,
                "user_agent": a.user_agent,
            },
            "targets": [{"type": t.type, "id": t.id, "name": t.name} for t in self.targets],
            "outcome": {"result": o.result, "reason": o.reason},
            "request_id": self.request_id,
            "source": self.source,
            "metadata": dict(self.metadata),
            "schema_version": self.schema_version,
        }

    def to_avro(self) -> dict[str, Any]:
        """The record as the codec takes it (timestamps as epoch micros)."""
        record = self.to_mapping()
        record["occurred_at"] = to_micros(self.occurred_at, "occurred_at")
        record["received_at"] = to_micros(self.received_at, "received_at")
        return record

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> AuditEvent:
        """Build from a decoded record (timestamps as datetimes or micros)."""
        return cls(
            event_id=record["event_id"],
            tenant_id=record["tenant_id"],
            occurred_at=from_micros(record["occurred_at"]),
            received_at=from_micros(record["received_at"]),
            action=record["action"],
            crud=record.get("crud", "other"),
            category=record.get("category"),
            actor=Actor(**record["actor"]),
            targets=tuple(Target(**t) for t in record.get("targets", ())),
            outcome=Outcome(**record["outcome"]),
            request_id=record.get("request_id"),
            source=record["source"],
            metadata=dict(record.get("metadata") or {}),
            schema_version=record.get("schema_version", 1),
        )


@dataclass(frozen=True, slots=True)
class ApiKey:
    """Current state of one API key (schema ``ApiKey``, on the control topic).

    Holds an HMAC of the secret, never the key itself. ``pepper_id`` names the
    ``VELORA_KEY_PEPPERS`` entry that hashed it (None: the legacy
    ``VELORA_KEY_PEPPER``); ``environment`` is ``live`` or ``staging``;
    ``allowed_ips`` holds canonical CIDRs (empty: any address).
    """

    key_id: str
    tenant_id: str
    scopes: tuple[str, ...]
    secret_hash: str
    created_at: datetime
    updated_at: datetime
    name: str | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    rotated_to: str | None = None
    pepper_id: str | None = None
    environment: str = "live"
    allowed_ips: tuple[str, ...] = ()

    def to_avro(self) -> dict[str, Any]:
        """The record as the codec takes it."""
        return {
            "key_id": self.key_id,
            "tenant_id": self.tenant_id,
            "name": self.name,
            "scopes": list(self.scopes),
            "secret_hash": self.secret_hash,
            "created_at": to_micros(self.created_at, "created_at"),
            "expires_at": None
            if self.expires_at is None
            else to_micros(self.expires_at, "expires_at"),
            "revoked_at": None
            if self.revoked_at is None
            else to_micros(self.revoked_at, "revoked_at"),
            "rotated_to": self.rotated_to,
            "updated_at": to_micros(self.updated_at, "updated_at"),
            "pepper_id": self.pepper_id,
            "environment": self.environment,
            "allowed_ips": list(self.allowed_ips),
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> ApiKey:
        """Build from a decoded record."""

        def opt(name: str) -> datetime | None:
            value = record.get(name)
            return None if value is None else from_micros(value)

        return cls(
            key_id=record["key_id"],
            tenant_id=record["tenant_id"],
            name=record.get("name"),
            scopes=tuple(record["scopes"]),
            secret_hash=record["secret_hash"],
            created_at=from_micros(record["created_at"]),
            expires_at=opt("expires_at"),
            revoked_at=opt("revoked_at"),
            rotated_to=record.get("rotated_to"),
            updated_at=from_micros(record["updated_at"]),
            pepper_id=record.get("pepper_id"),
            environment=record.get("environment", "live"),
            allowed_ips=tuple(record.get("allowed_ips") or ()),
        )


@dataclass(frozen=True, slots=True)
class TenantSettings:
    """Current settings of one tenant (schema ``TenantSettings``, on the control topic)."""

    tenant_id: str
    updated_at: datetime
    phi_mode: str = "server"

    def to_avro(self) -> dict[str, Any]:
        """The record as the codec takes it."""
        return {
            "tenant_id": self.tenant_id,
            "phi_mode": self.phi_mode,
            "updated_at": to_micros(self.updated_at, "updated_at"),
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> TenantSettings:
        """Build from a decoded record."""
        return cls(
            tenant_id=record["tenant_id"],
            phi_mode=record.get("phi_mode", "server"),
            updated_at=from_micros(record["updated_at"]),
        )


STRUCTS: dict[str, type[AuditEvent] | type[ApiKey] | type[TenantSettings]] = {
    AUDIT_EVENT: AuditEvent,
    API_KEY: ApiKey,
    TENANT_SETTINGS: TenantSettings,
}

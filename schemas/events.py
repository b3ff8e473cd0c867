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
PHI_KEYSET = "health.velora.control.PhiKeyset"
WEBHOOK_ENDPOINT = "health.velora.control.WebhookEndpoint"
WEBHOOK_HEALTH = "health.velora.control.WebhookHealth"
WEBHOOK_JOB = "health.velora.webhooks.WebhookJob"
WEBHOOK_ATTEMPT = "health.velora.webhooks.WebhookAttempt"

CRUD = ("create", "read", "update", "delete", "other")
OUTCOME_RESULTS = ("success", "failure", "denied", "unknown")
PHI_MODES = ("server", "client", "sidecar")
KEY_ENVIRONMENTS = ("live", "staging")
WEBHOOK_FORMATS = ("json", "ndjson", "splunk_hec")
WEBHOOK_TRIGGERS = ("event", "retry", "manual", "replay", "test")
WEBHOOK_OUTCOMES = ("delivered", "retry_scheduled", "failed", "dropped")


def _opt_micros(value: datetime | None, name: str) -> int | None:
    return None if value is None else to_micros(value, name)


def _opt_time(value: Any) -> datetime | None:
    return None if value is None else from_micros(value)


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
    phi_metadata_keys: tuple[str, ...] = ()

    def to_avro(self) -> dict[str, Any]:
        """The record as the codec takes it."""
        return {
            "tenant_id": self.tenant_id,
            "phi_mode": self.phi_mode,
            "updated_at": to_micros(self.updated_at, "updated_at"),
            "phi_metadata_keys": list(self.phi_metadata_keys),
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> TenantSettings:
        """Build from a decoded record."""
        return cls(
            tenant_id=record["tenant_id"],
            phi_mode=record.get("phi_mode", "server"),
            updated_at=from_micros(record["updated_at"]),
            phi_metadata_keys=tuple(record.get("phi_metadata_keys") or ()),
        )


@dataclass(frozen=True, slots=True)
class PhiKeyset:
    """A server-mode tenant's wrapped PHI keyset (schema ``PhiKeyset``, on the control topic).

    ``wrapped`` is AES-GCM ciphertext under ``VELORA_SECRETS_KEY`` (``phi.wrap``),
    never key material; ``primary_kid`` is the id of the key that tokenizes.
    """

    tenant_id: str
    wrapped: str
    primary_kid: str
    updated_at: datetime

    def to_avro(self) -> dict[str, Any]:
        """The record as the codec takes it."""
        return {
            "tenant_id": self.tenant_id,
            "wrapped": self.wrapped,
            "primary_kid": self.primary_kid,
            "updated_at": to_micros(self.updated_at, "updated_at"),
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> PhiKeyset:
        """Build from a decoded record."""
        return cls(
            tenant_id=record["tenant_id"],
            wrapped=record["wrapped"],
            primary_kid=record["primary_kid"],
            updated_at=from_micros(record["updated_at"]),
        )


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    """Configuration of one webhook endpoint (schema ``WebhookEndpoint``, on the control topic).

    ``secret_enc``, ``previous_secret_enc`` and ``splunk_token_enc`` are AES-GCM
    ciphertexts (``webhooks.secrets.SecretBox``), never plaintext.
    """

    endpoint_id: str
    tenant_id: str
    url: str
    secret_enc: str
    created_at: datetime
    updated_at: datetime
    description: str | None = None
    event_types: tuple[str, ...] = ()
    format: str = "json"
    previous_secret_enc: str | None = None
    previous_secret_expires_at: datetime | None = None
    splunk_token_enc: str | None = None
    enabled: bool = True

    def to_avro(self) -> dict[str, Any]:
        """The record as the codec takes it."""
        return {
            "endpoint_id": self.endpoint_id,
            "tenant_id": self.tenant_id,
            "url": self.url,
            "description": self.description,
            "event_types": list(self.event_types),
            "format": self.format,
            "secret_enc": self.secret_enc,
            "previous_secret_enc": self.previous_secret_enc,
            "previous_secret_expires_at": _opt_micros(
                self.previous_secret_expires_at, "previous_secret_expires_at"
            ),
            "splunk_token_enc": self.splunk_token_enc,
            "enabled": self.enabled,
            "created_at": to_micros(self.created_at, "created_at"),
            "updated_at": to_micros(self.updated_at, "updated_at"),
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> WebhookEndpoint:
        """Build from a decoded record."""
        return cls(
            endpoint_id=record["endpoint_id"],
            tenant_id=record["tenant_id"],
            url=record["url"],
            description=record.get("description"),
            event_types=tuple(record.get("event_types") or ()),
            format=record.get("format", "json"),
            secret_enc=record["secret_enc"],
            previous_secret_enc=record.get("previous_secret_enc"),
            previous_secret_expires_at=_opt_time(record.get("previous_secret_expires_at")),
            splunk_token_enc=record.get("splunk_token_enc"),
            enabled=bool(record.get("enabled", True)),
            created_at=from_micros(record["created_at"]),
            updated_at=from_micros(record["updated_at"]),
        )


@dataclass(frozen=True, slots=True)
class WebhookHealth:
    """Delivery health of one endpoint (schema ``WebhookHealth``, on the control topic)."""

    endpoint_id: str
    tenant_id: str
    updated_at: datetime
    failing_since: datetime | None = None
    disabled_at: datetime | None = None
    disabled_reason: str | None = None

    def to_avro(self) -> dict[str, Any]:
        """The record as the codec takes it."""
        return {
            "endpoint_id": self.endpoint_id,
            "tenant_id": self.tenant_id,
            "failing_since": _opt_micros(self.failing_since, "failing_since"),
            "disabled_at": _opt_micros(self.disabled_at, "disabled_at"),
            "disabled_reason": self.disabled_reason,
            "updated_at": to_micros(self.updated_at, "updated_at"),
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> WebhookHealth:
        """Build from a decoded record."""
        return cls(
            endpoint_id=record["endpoint_id"],
            tenant_id=record["tenant_id"],
            failing_since=_opt_time(record.get("failing_since")),
            disabled_at=_opt_time(record.get("disabled_at")),
            disabled_reason=record.get("disabled_reason"),
            updated_at=from_micros(record["updated_at"]),
        )


@dataclass(frozen=True, slots=True)
class WebhookJob:
    """A delivery due at ``due_at`` (schema ``WebhookJob``: retry and request topics)."""

    delivery_id: str
    endpoint_id: str
    tenant_id: str
    attempt: int
    due_at: datetime
    created_at: datetime
    trigger: str = "event"
    deferrals: int = 0
    events: tuple[bytes, ...] = ()

    def to_avro(self) -> dict[str, Any]:
        """The record as the codec takes it."""
        return {
            "delivery_id": self.delivery_id,
            "endpoint_id": self.endpoint_id,
            "tenant_id": self.tenant_id,
            "trigger": self.trigger,
            "attempt": self.attempt,
            "deferrals": self.deferrals,
            "due_at": to_micros(self.due_at, "due_at"),
            "created_at": to_micros(self.created_at, "created_at"),
            "events": list(self.events),
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> WebhookJob:
        """Build from a decoded record."""
        return cls(
            delivery_id=record["delivery_id"],
            endpoint_id=record["endpoint_id"],
            tenant_id=record["tenant_id"],
            trigger=record.get("trigger", "event"),
            attempt=int(record["attempt"]),
            deferrals=int(record.get("deferrals", 0)),
            due_at=from_micros(record["due_at"]),
            created_at=from_micros(record["created_at"]),
            events=tuple(bytes(e) for e in record.get("events") or ()),
        )


@dataclass(frozen=True, slots=True)
class WebhookAttempt:
    """One delivery attempt (schema ``WebhookAttempt``, on the attempts topic)."""

    attempt_id: str
    delivery_id: str
    endpoint_id: str
    tenant_id: str
    event_ids: tuple[str, ...]
    event_type: str
    attempt: int
    attempted_at: datetime
    trigger: str = "event"
    status_code: int | None = None
    latency_ms: float | None = None
    outcome: str = "failed"
    error_class: str | None = None
    next_attempt_at: datetime | None = None

    def to_avro(self) -> dict[str, Any]:
        """The record as the codec takes it."""
        return {
            "attempt_id": self.attempt_id,
            "delivery_id": self.delivery_id,
            "endpoint_id": self.endpoint_id,
            "tenant_id": self.tenant_id,
            "event_ids": list(self.event_ids),
            "event_type": self.event_type,
            "attempt": self.attempt,
            "trigger": self.trigger,
            "attempted_at": to_micros(self.attempted_at, "attempted_at"),
            "status_code": self.status_code,
            "latency_ms": self.latency_ms,
            "outcome": self.outcome,
            "error_class": self.error_class,
            "next_attempt_at": _opt_micros(self.next_attempt_at, "next_attempt_at"),
        }

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> WebhookAttempt:
        """Build from a decoded record."""
        return cls(
            attempt_id=record["attempt_id"],
            delivery_id=record["delivery_id"],
            endpoint_id=record["endpoint_id"],
            tenant_id=record["tenant_id"],
            event_ids=tuple(record["event_ids"]),
            event_type=record["event_type"],
            attempt=int(record["attempt"]),
            trigger=record.get("trigger", "event"),
            attempted_at=from_micros(record["attempted_at"]),
            status_code=record.get("status_code"),
            latency_ms=record.get("latency_ms"),
            outcome=record.get("outcome", "failed"),
            error_class=record.get("error_class"),
            next_attempt_at=_opt_time(record.get("next_attempt_at")),
        )


STRUCTS: dict[str, type[Any]] = {
    AUDIT_EVENT: AuditEvent,
    API_KEY: ApiKey,
    TENANT_SETTINGS: TenantSettings,
    PHI_KEYSET: PhiKeyset,
    WEBHOOK_ENDPOINT: WebhookEndpoint,
    WEBHOOK_HEALTH: WebhookHealth,
    WEBHOOK_JOB: WebhookJob,
    WEBHOOK_ATTEMPT: WebhookAttempt,
}

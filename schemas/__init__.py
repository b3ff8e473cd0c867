"""The Avro contract: every schema version ever written, the codec and typed structs."""

from schemas.codec import AvroCodec, SchemaRegistry, SchemaVersion
from schemas.events import (
    API_KEY,
    AUDIT_EVENT,
    TENANT_SETTINGS,
    Actor,
    ApiKey,
    AuditEvent,
    Outcome,
    Target,
    TenantSettings,
)
from schemas.times import from_micros, to_micros

__all__ = [
    "API_KEY",
    "AUDIT_EVENT",
    "TENANT_SETTINGS",
    "Actor",
    "ApiKey",
    "AuditEvent",
    "AvroCodec",
    "Outcome",
    "SchemaRegistry",
    "SchemaVersion",
    "Target",
    "TenantSettings",
    "from_micros",
    "to_micros",
]

"""The size limits of the audit-event contract, in characters unless named otherwise.

Every entry point (ingest validation, the public API's path and filter checks,
cursors, the read auditor) takes its numbers from here, so no two places can
disagree about how long an identifier may be.
"""

from __future__ import annotations

MAX_EVENT_ID = 128
"""Longest ``event_id`` anything accepts (ingest writes canonical UUIDs: 36)."""
MAX_TENANT_ID = 64
MAX_EVENT_BYTES = 32 * 1024
"""Largest encoded (Avro single-object) event."""
MAX_TARGETS = 50
MAX_METADATA_KEYS = 50
MAX_METADATA_KEY_LEN = 40
MAX_METADATA_VALUE_LEN = 500
MAX_KEY_NAME = 128
"""Longest API-key name (it becomes ``actor.name`` of the key's read-audit events)."""
MAX_FILTER_TEXT = 256
"""Longest text value of a public-API filter."""

FIELD_LIMITS: dict[str, int] = {
    "action": 128,
    "source": 128,
    "request_id": 128,
    "category": 64,
    "actor.type": 32,
    "actor.id": 256,
    "actor.name": 256,
    "actor.email": 320,
    "actor.ip": 64,
    "actor.user_agent": 1024,
    "target.type": 64,
    "target.id": 256,
    "target.name": 256,
    "outcome.reason": 1024,
}
"""Maximum length of each string field of an ``AuditEvent``."""

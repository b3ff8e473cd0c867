"""Validate one raw audit event and build the typed :class:`~schemas.AuditEvent`.

Shared by the library (:class:`ingest.AuditProducer`) and HTTP ingest. Every rule
that fails is reported, each as an :class:`~velora.errors.ErrorDetail` naming the
field (``actor.ip``, ``targets[2].id``, ``metadata.k``); reasons never echo the
value, so no PHI reaches logs or error bodies.

Two classes of strings, decided per field:

- **identifiers** (``tenant_id``, ``event_id``, ``source``, ``request_id``,
  ``category``, ``actor.type``, ``actor.id``, ``actor.email``, ``target.type``,
  ``target.id``): must be :meth:`str.isprintable` - no control (Cc), format (Cf:
  zero-width, bidi marks and overrides, BOM), surrogate, private-use, unassigned
  or separator characters other than the ASCII space. Some have a stricter
  pattern (tenant_id, action, event_id, metadata keys); ``actor.email`` must hold
  an ``@`` and no space, or be a PHI token (``tok_v1_...``, client- and sidecar-mode).
- **free text** (``actor.name``, ``actor.user_agent``, ``target.name``,
  ``outcome.reason``, metadata values): any Unicode, including emoji, ZWJ
  sequences, combining marks and RTL marks, but no C0/C1 control characters
  (NUL, newline, tab, ESC...) and no lone surrogates.

**Reserved names.** Actions under ``audit_log.`` and sources under ``velora.``
belong to the system (the query node records reads and failed authentications
with them): they are refused (422 naming the field) unless the caller is
in-process system code that asked for ``system=True``. A service token restricted
to some sources (``VELORA_INGEST_TOKENS`` ``token=src1|src2``) passes them as
``sources``, and an event with another ``source`` is refused the same way.

Timestamps are RFC 3339 date-time strings (:func:`schemas.times.parse_rfc3339`,
so always with an offset) or aware ``datetime`` objects from library callers;
they are normalised to UTC, must not be more than 24 h ahead of ``now`` and not
before 1970.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import fields
from datetime import datetime
from typing import Any

from uuid_utils import uuid7

from ingest.fields import (
    EMPTY,
    Errors,
    fail,
    ident,
    normal_ip,
    now_micros,
    obj,
    remember,
    text,
    timestamp,
)
from phi.tokens import is_token
from schemas import Actor, AuditEvent, Outcome, Target
from schemas.events import CRUD, OUTCOME_RESULTS
from schemas.limits import (
    FIELD_LIMITS,
    MAX_EVENT_BYTES,
    MAX_METADATA_KEY_LEN,
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE_LEN,
    MAX_TARGETS,
)
from schemas.rules import EVENT_ID_PATTERN, TENANT_RULE, TEXT_FORBIDDEN, clip, valid_tenant
from velora.errors import ErrorDetail

ACTION_RE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)+")
UUID_RE = re.compile(EVENT_ID_PATTERN)
METADATA_KEY_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,39}")
RESERVED_ACTION_PREFIX = "audit_log."
RESERVED_SOURCE_PREFIX = "velora."

_EVENT_FIELDS = frozenset(f.name for f in fields(AuditEvent))
_ACTOR_FIELDS = frozenset(f.name for f in fields(Actor))
_TARGET_FIELDS = frozenset(f.name for f in fields(Target))
_OUTCOME_FIELDS = frozenset(f.name for f in fields(Outcome))
# Values that passed their pattern before: tenants, actions and metadata keys repeat in
# nearly every event, so a set lookup replaces the regex. Bounded; cleared when full.
_good_tenants: set[str] = set()
_good_actions: set[str] = set()
_good_keys: set[str] = set()


def validate_event(
    raw: Mapping[str, Any],
    now: datetime,
    *,
    system: bool = False,
    sources: frozenset[str] | None = None,
) -> AuditEvent:
    """Check ``raw`` against every rule and return the typed event.

    ``now`` (aware UTC) bounds future timestamps and is the default
    ``received_at``. A missing ``event_id`` becomes a new UUIDv7; a given one is
    kept as is, so a resend dedups in the ledger. ``system`` admits the reserved
    names (in-process system code only); ``sources``, when given, are the only
    ``source`` values allowed. Raises :class:`~velora.errors.ValidationError`
    listing every failed rule.
    """
    return AuditEvent.from_avro(to_record(raw, now, system=system, sources=sources))


def to_record(
    raw: Mapping[str, Any],
    now: datetime,
    *,
    system: bool = False,
    sources: frozenset[str] | None = None,
) -> dict[str, Any]:
    """Like :func:`validate_event`, but return the Avro record the codec writes.

    This is the hot path of ingest: one pass over the input building the record
    (timestamps as epoch microseconds) without intermediate dataclasses.
    """
    errors: Errors = []
    if not isinstance(raw, dict | Mapping):
        fail([ErrorDetail("event", "must be an object")])
    if not _EVENT_FIELDS.issuperset(raw):
        for key in sorted(str(k) for k in raw if k not in _EVENT_FIELDS)[:5]:
            errors.append(ErrorDetail(clip(key), "unknown field"))
    get = raw.get

    event_id = get("event_id")
    if event_id is None:
        event_id = str(uuid7())
    elif type(event_id) is not str or not UUID_RE.fullmatch(event_id):
        errors.append(ErrorDetail("event_id", "must be a UUID in canonical lowercase text form"))

    tenant_id = get("tenant_id")
    if tenant_id is None:
        errors.append(ErrorDetail("tenant_id", "is required"))
    elif type(tenant_id) is str and tenant_id in _good_tenants:
        pass
    elif valid_tenant(tenant_id):
        remember(_good_tenants, tenant_id)
    else:
        errors.append(ErrorDetail("tenant_id", f"must be {TENANT_RULE}"))

    action = get("action")
    if action is None:
        errors.append(ErrorDetail("action", "is required"))
    elif type(action) is str and action in _good_actions:
        pass
    elif type(action) is str and len(action) <= 128 and ACTION_RE.fullmatch(action):
        remember(_good_actions, action)
    else:
        errors.append(
            ErrorDetail("action", "must match ^[a-z][a-z0-9_]*(\\.[a-z0-9_]+)+$ (at most 128)")
        )
    if not system and type(action) is str and action.startswith(RESERVED_ACTION_PREFIX):
        errors.append(ErrorDetail("action", "actions under 'audit_log.' are reserved for Velora"))

    occurred_at = timestamp(errors, get("occurred_at"), "occurred_at", now, required=True)
    received_at = timestamp(errors, get("received_at"), "received_at", now, required=False)

    crud = get("crud")
    if crud is None:
        crud = "other"
    elif crud not in CRUD:
        errors.append(ErrorDetail("crud", f"must be one of {', '.join(CRUD)}"))

    source = ident(errors, get("source"), "source", FIELD_LIMITS["source"], required=True)
    if source is not None:
        if not system and source.startswith(RESERVED_SOURCE_PREFIX):
            errors.append(ErrorDetail("source", "sources under 'velora.' are reserved for Velora"))
        elif sources is not None and source not in sources:
            errors.append(ErrorDetail("source", "not a source this service token may write"))
    category = ident(errors, get("category"), "category", FIELD_LIMITS["category"])
    request_id = ident(errors, get("request_id"), "request_id", FIELD_LIMITS["request_id"])
    actor = _actor(errors, get("actor"))
    targets = _targets(errors, get("targets"))
    outcome = _outcome(errors, get("outcome"))
    metadata = _metadata(errors, get("metadata"))

    version = get("schema_version")
    if version is not None and (type(version) is not int or version != 1):
        errors.append(ErrorDetail("schema_version", "must be 1"))

    if errors:
        fail(errors)
    return {
        "event_id": event_id,
        "tenant_id": tenant_id,
        "occurred_at": occurred_at,
        "received_at": now_micros(now) if received_at is None else received_at,
        "action": action,
        "crud": crud,
        "category": category,
        "actor": actor,
        "targets": targets,
        "outcome": outcome,
        "request_id": request_id,
        "source": source,
        "metadata": metadata,
        "schema_version": 1,
    }


def event_as_mapping(event: AuditEvent) -> dict[str, Any]:
    """A typed event as the raw mapping :func:`validate_event` takes.

    Library callers that build :class:`AuditEvent` objects go through the same
    rules as JSON callers; an empty ``event_id`` means "fill one in".
    """
    return {**event.to_mapping(), "event_id": event.event_id or None}


def check_encoded_size(encoded: bytes) -> None:
    """Reject an event whose encoded form exceeds :data:`MAX_EVENT_BYTES`."""
    if len(encoded) > MAX_EVENT_BYTES:
        fail(
            [
                ErrorDetail(
                    "event",
                    f"encoded event is {len(encoded)} bytes; the limit is {MAX_EVENT_BYTES}",
                )
            ]
        )


# -- nested objects -------------------------------------------------------------------


def _actor(errors: Errors, value: Any) -> dict[str, Any] | None:
    fast = _actor_fast(value)
    if fast is not None:
        return fast
    if value is None:
        errors.append(ErrorDetail("actor", "is required"))
        return None
    n = len(errors)
    raw = obj(errors, value, "actor", _ACTOR_FIELDS)
    if len(errors) > n and raw is EMPTY:
        return None
    g = raw.get
    actor_type = ident(errors, g("type"), "actor.type", FIELD_LIMITS["actor.type"], required=True)
    actor_id = ident(errors, g("id"), "actor.id", FIELD_LIMITS["actor.id"], required=True)
    name = text(errors, g("name"), "actor.name", FIELD_LIMITS["actor.name"])
    email = ident(errors, g("email"), "actor.email", FIELD_LIMITS["actor.email"])
    if email is not None and not is_token(email) and ("@" not in email or " " in email):
        errors.append(ErrorDetail("actor.email", "must be an e-mail address"))
    ip = ident(errors, g("ip"), "actor.ip", FIELD_LIMITS["actor.ip"])
    if ip is not None:
        ip = normal_ip(ip)
        if ip is None:
            errors.append(ErrorDetail("actor.ip", "must be an IPv4 or IPv6 address"))
    user_agent = text(errors, g("user_agent"), "actor.user_agent", FIELD_LIMITS["actor.user_agent"])
    if len(errors) > n:
        return None
    return {
        "type": actor_type,
        "id": actor_id,
        "name": name,
        "email": email,
        "ip": ip,
        "user_agent": user_agent,
    }


def _actor_fast(value: Any) -> dict[str, Any] | None:
    """The actor when every field passes the strictest form of its rule, else None.

    The hot path: plain printable strings within bounds. Anything else (free
    text with RTL marks or emoji ZWJ sequences, a bad field...) returns None and
    goes through the detailed checks of :func:`_actor`, which accept or name
    the problem. Never accepts what :func:`_actor` would reject.
    """
    if type(value) is not dict or not _ACTOR_FIELDS.issuperset(value):
        return None
    g = value.get
    kind, ident, name, email, ip, agent = (
        g("type"), g("id"), g("name"), g("email"), g("ip"), g("user_agent")
    )  # fmt: skip
    if not (
        type(kind) is str and 0 < len(kind) <= 32 and kind.isprintable()
        and type(ident) is str and 0 < len(ident) <= 256 and ident.isprintable()
        and (name is None or (type(name) is str and len(name) <= 256 and name.isprintable()))
        and (agent is None or (type(agent) is str and len(agent) <= 1024 and agent.isprintable()))
        and (email is None or (
            type(email) is str and 0 < len(email) <= 320 and email.isprintable()
            and "@" in email and " " not in email
        ))
    ):  # fmt: skip
        return None
    if ip is not None:
        if type(ip) is not str or not 0 < len(ip) <= 64 or not ip.isprintable():
            return None
        ip = normal_ip(ip)
        if ip is None:
            return None
    return {"type": kind, "id": ident, "name": name, "email": email, "ip": ip, "user_agent": agent}


def _targets(errors: Errors, value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        errors.append(ErrorDetail("targets", "must be an array"))
        return []
    if len(value) > MAX_TARGETS:
        errors.append(ErrorDetail("targets", f"must have at most {MAX_TARGETS} items"))
        return []
    out = []
    for i, item in enumerate(value):
        if type(item) is dict and _TARGET_FIELDS.issuperset(item):  # fast path, as in _actor
            t_type, t_id, t_name = item.get("type"), item.get("id"), item.get("name")
            if (
                type(t_type) is str and 0 < len(t_type) <= 64 and t_type.isprintable()
                and type(t_id) is str and 0 < len(t_id) <= 256 and t_id.isprintable()
                and (t_name is None or (
                    type(t_name) is str and len(t_name) <= 256 and t_name.isprintable()
                ))
            ):  # fmt: skip
                out.append({"type": t_type, "id": t_id, "name": t_name})
                continue
        name = f"targets[{i}]"
        n = len(errors)
        raw = obj(errors, item, name, _TARGET_FIELDS)
        if raw is EMPTY and len(errors) > n:
            continue
        t_type = ident(
            errors, raw.get("type"), f"{name}.type", FIELD_LIMITS["target.type"], required=True
        )
        t_id = ident(errors, raw.get("id"), f"{name}.id", FIELD_LIMITS["target.id"], required=True)
        t_name = text(errors, raw.get("name"), f"{name}.name", FIELD_LIMITS["target.name"])
        if len(errors) == n:
            out.append({"type": t_type, "id": t_id, "name": t_name})
    return out


def _outcome(errors: Errors, value: Any) -> dict[str, Any]:
    if value is None:
        return {"result": "unknown", "reason": None}
    n = len(errors)
    raw = obj(errors, value, "outcome", _OUTCOME_FIELDS)
    result = raw.get("result")
    if result is None:
        result = "unknown"
    elif result not in OUTCOME_RESULTS:
        errors.append(ErrorDetail("outcome.result", f"must be one of {', '.join(OUTCOME_RESULTS)}"))
    reason = text(errors, raw.get("reason"), "outcome.reason", FIELD_LIMITS["outcome.reason"])
    if len(errors) > n:
        return {}
    return {"result": result, "reason": reason}


def _metadata(errors: Errors, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict | Mapping):
        errors.append(ErrorDetail("metadata", "must be an object of strings"))
        return {}
    if len(value) > MAX_METADATA_KEYS:
        errors.append(ErrorDetail("metadata", f"must have at most {MAX_METADATA_KEYS} keys"))
        return {}
    for key, item in value.items():
        if type(key) is str and key in _good_keys:
            pass
        elif type(key) is str and METADATA_KEY_RE.fullmatch(key):
            remember(_good_keys, key)
        else:
            where = f"metadata.{clip(key)}" if type(key) is str else "metadata"
            errors.append(
                ErrorDetail(where, f"keys must be 1-{MAX_METADATA_KEY_LEN} of [A-Za-z0-9_.:-]")
            )
            continue
        if type(item) is str and len(item) <= MAX_METADATA_VALUE_LEN and item.isprintable():
            continue
        if type(item) is not str:
            errors.append(ErrorDetail(f"metadata.{key}", "must be a string"))
        elif len(item) > MAX_METADATA_VALUE_LEN:
            errors.append(
                ErrorDetail(
                    f"metadata.{key}", f"must be at most {MAX_METADATA_VALUE_LEN} characters"
                )
            )
        elif not item.isprintable() and TEXT_FORBIDDEN.search(item):
            errors.append(
                ErrorDetail(
                    f"metadata.{key}", "must not contain control characters or lone surrogates"
                )
            )
    return dict(value)

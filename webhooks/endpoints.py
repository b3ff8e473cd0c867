"""Webhook endpoints as the tenant writes them: field rules, event-type patterns, views.

:func:`parse_fields` checks a create or update body (a JSON object) and reports
every bad field in one 422: unknown fields, ``url`` (form only: the address check,
which needs DNS, is :func:`webhooks.urls.check_destination`), ``description`` (at
most :data:`MAX_DESCRIPTION` printable characters), ``event_types`` (at most
:data:`MAX_EVENT_TYPES` patterns, each an exact action such as ``member.viewed`` or
a prefix such as ``claim.*``), ``format``, ``splunk_token`` (only with
``splunk_hec``, and required by it) and ``enabled``.

:func:`matches` is how the dispatcher applies ``event_types`` (empty: every
action). :func:`public_view` is the API's JSON for an endpoint: never a secret,
never a token. :func:`new_record`, :func:`updated_record` and :func:`rotated_record`
build the control records the API writes (secrets encrypted with
:class:`~webhooks.secrets.SecretBox`).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from schemas.events import WEBHOOK_FORMATS, WebhookEndpoint, WebhookHealth
from velora.errors import ErrorDetail, ValidationError
from webhooks.secrets import SecretBox, new_signing_secret
from webhooks.urls import parse_url

MAX_DESCRIPTION = 256
MAX_EVENT_TYPES = 50
MAX_PATTERN = 128
MAX_SPLUNK_TOKEN = 128
MAX_ENDPOINTS_PER_TENANT = 16
FIELDS = ("url", "description", "event_types", "format", "splunk_token", "enabled")
PATTERN_RE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)+|[a-z][a-z0-9_]*(\.[a-z0-9_]+)*\.\*")
ENDPOINT_ID_RE = re.compile(r"we_[0-9a-f]{24}")
_TOKEN_RE = re.compile(r"[\x21-\x7e]+")


def new_endpoint_id() -> str:
    """``we_`` + 24 random hex characters."""
    return "we_" + secrets.token_hex(12)


def matches(patterns: Sequence[str], action: str) -> bool:
    """Whether ``action`` is one of ``patterns`` (``claim.*`` is a prefix; empty: all)."""
    if not patterns:
        return True
    for p in patterns:
        if p.endswith(".*"):
            if action.startswith(p[:-1]):
                return True
        elif p == action:
            return True
    return False


def parse_fields(body: Any, *, creating: bool, allow_insecure_loopback: bool) -> dict[str, Any]:
    """The checked fields of a create (all rules) or update (only the fields given) body."""
    if not isinstance(body, Mapping):
        raise ValidationError(
            "the body must be a JSON object", (ErrorDetail("body", "not an object"),)
        )
    errors: list[ErrorDetail] = []
    out: dict[str, Any] = {}
    for name in body:
        if name not in FIELDS:
            shown = str(name)[:64]
            errors.append(ErrorDetail(shown, f"unknown field; known: {', '.join(FIELDS)}"))
    if "url" in body:
        try:
            out["url"] = parse_url(body["url"], allow_insecure_loopback).url
        except ValidationError as exc:
            errors.extend(exc.details)
    elif creating:
        errors.append(ErrorDetail("url", "is required"))
    if "description" in body:
        d = body["description"]
        if d is not None and (
            not isinstance(d, str) or len(d) > MAX_DESCRIPTION or not d.isprintable()
        ):
            errors.append(
                ErrorDetail("description", f"must be at most {MAX_DESCRIPTION} printable chars")
            )
        else:
            out["description"] = d or None
    if "event_types" in body:
        out["event_types"] = _patterns(body["event_types"], errors)
    if "format" in body:
        if body["format"] not in WEBHOOK_FORMATS:
            errors.append(ErrorDetail("format", f"must be one of {', '.join(WEBHOOK_FORMATS)}"))
        else:
            out["format"] = body["format"]
    if "splunk_token" in body:
        token = body["splunk_token"]
        if token is not None and (
            not isinstance(token, str)
            or len(token) > MAX_SPLUNK_TOKEN
            or not _TOKEN_RE.fullmatch(token)
        ):
            errors.append(
                ErrorDetail("splunk_token", f"must be 1-{MAX_SPLUNK_TOKEN} visible characters")
            )
        else:
            out["splunk_token"] = token
    if "enabled" in body:
        if not isinstance(body["enabled"], bool):
            errors.append(ErrorDetail("enabled", "must be true or false"))
        else:
            out["enabled"] = body["enabled"]
    if errors:
        raise ValidationError(
            f"invalid webhook endpoint: {', '.join(e.field for e in errors)}", tuple(errors)
        )
    return out


def check_splunk_token(fmt: str, has_token: bool) -> None:
    """``splunk_hec`` needs a token; the other formats take none."""
    if fmt == "splunk_hec" and not has_token:
        raise ValidationError(
            "format splunk_hec needs a splunk_token",
            (ErrorDetail("splunk_token", "is required for splunk_hec"),),
        )
    if fmt != "splunk_hec" and has_token:
        raise ValidationError(
            "splunk_token is only for format splunk_hec",
            (ErrorDetail("splunk_token", "only for splunk_hec"),),
        )


def _patterns(value: Any, errors: list[ErrorDetail]) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_EVENT_TYPES:
        errors.append(
            ErrorDetail("event_types", f"must be a list of at most {MAX_EVENT_TYPES} patterns")
        )
        return ()
    out: list[str] = []
    for i, p in enumerate(value):
        if not isinstance(p, str) or len(p) > MAX_PATTERN or not PATTERN_RE.fullmatch(p):
            errors.append(
                ErrorDetail(
                    "event_types",
                    "each must be an action (member.viewed) or a prefix (claim.*), "
                    f"at most {MAX_PATTERN} characters",
                    index=i,
                )
            )
        elif p not in out:
            out.append(p)
    return tuple(out)


def active(endpoint: WebhookEndpoint, health: WebhookHealth | None) -> bool:
    """Enabled by the tenant and not disabled by a dispatcher."""
    return endpoint.enabled and (health is None or health.disabled_at is None)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def public_view(endpoint: WebhookEndpoint, health: WebhookHealth | None) -> dict[str, Any]:
    """The API's JSON for an endpoint (no secret, no token)."""
    disabled_reason = None
    if not endpoint.enabled:
        disabled_reason = "by_tenant"
    elif health is not None and health.disabled_at is not None:
        disabled_reason = health.disabled_reason or "by_dispatcher"
    return {
        "id": endpoint.endpoint_id,
        "url": endpoint.url,
        "description": endpoint.description,
        "event_types": list(endpoint.event_types),
        "format": endpoint.format,
        "enabled": active(endpoint, health),
        "disabled_reason": disabled_reason,
        "has_splunk_token": endpoint.splunk_token_enc is not None,
        "previous_secret_expires_at": _iso(endpoint.previous_secret_expires_at),
        "failing_since": _iso(None if health is None else health.failing_since),
        "created_at": _iso(endpoint.created_at),
        "updated_at": _iso(endpoint.updated_at),
    }


def new_record(
    box: SecretBox, tenant_id: str, fields: Mapping[str, Any], now: datetime
) -> tuple[WebhookEndpoint, str]:
    """A new endpoint from checked ``fields`` and its signing secret (shown once)."""
    endpoint_id = new_endpoint_id()
    fmt = fields.get("format", "json")
    token = fields.get("splunk_token")
    check_splunk_token(fmt, token is not None)
    secret = new_signing_secret()
    record = WebhookEndpoint(
        endpoint_id=endpoint_id,
        tenant_id=tenant_id,
        url=fields["url"],
        secret_enc=box.encrypt(secret, endpoint_id, "secret"),
        created_at=now,
        updated_at=now,
        description=fields.get("description"),
        event_types=tuple(fields.get("event_types", ())),
        format=fmt,
        splunk_token_enc=None if token is None else box.encrypt(token, endpoint_id, "splunk_token"),
        enabled=fields.get("enabled", True),
    )
    return record, secret


def updated_record(
    box: SecretBox, current: WebhookEndpoint, fields: Mapping[str, Any], now: datetime
) -> WebhookEndpoint:
    """``current`` with the checked ``fields`` of an update applied."""
    fmt = fields.get("format", current.format)
    token_enc = current.splunk_token_enc
    if "splunk_token" in fields:
        token = fields["splunk_token"]
        token_enc = (
            None if token is None else box.encrypt(token, current.endpoint_id, "splunk_token")
        )
    elif fmt != "splunk_hec":
        token_enc = None  # switching away from Splunk forgets its token
    check_splunk_token(fmt, token_enc is not None)
    return replace(
        current,
        url=fields.get("url", current.url),
        description=fields.get("description", current.description),
        event_types=tuple(fields.get("event_types", current.event_types)),
        format=fmt,
        splunk_token_enc=token_enc,
        enabled=fields.get("enabled", current.enabled),
        updated_at=now,
    )


def rotated_record(
    box: SecretBox, current: WebhookEndpoint, overlap: timedelta, now: datetime
) -> tuple[WebhookEndpoint, str]:
    """``current`` with a new signing secret; the old one also signs for ``overlap``."""
    secret = new_signing_secret()
    record = replace(
        current,
        secret_enc=box.encrypt(secret, current.endpoint_id, "secret"),
        previous_secret_enc=current.secret_enc,
        previous_secret_expires_at=now + overlap,
        updated_at=now,
    )
    return record, secret

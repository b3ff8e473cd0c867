"""Signing deliveries, and verifying them (``velora webhooks listen``, the docs' samples).

Every POST carries two signature schemes over the same raw body, with the same
timestamp ``t`` (Unix seconds, new on every attempt):

- ``Velora-Signature: t=<t>,v1=<hex>[,v1=<hex>]``, Stripe's scheme: ``v1`` is the
  lowercase hex HMAC-SHA256 of ``"<t>.<body>"`` keyed with the whole secret string
  (``whsec_...``, UTF-8), exactly what ``stripe.WebhookSignature.verify_header``
  checks.
- Standard Webhooks: ``webhook-id`` (the delivery id, the same on every attempt),
  ``webhook-timestamp: <t>`` and ``webhook-signature: v1,<base64>[ v1,<base64>]``,
  the base64 HMAC-SHA256 of ``"<id>.<t>.<body>"`` keyed with the base64-decoded
  bytes after ``whsec_``.

During a secret rotation the list of secrets holds the new one and the old one,
and each header carries one ``v1`` per secret, so a receiver holding either
verifies. Verification compares in constant time and refuses a timestamp more
than :data:`TOLERANCE_S` away from now, in either direction.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping, Sequence

from velora.errors import AuthenticationError, ErrorDetail
from webhooks.secrets import standard_key

VELORA_SIGNATURE = "Velora-Signature"
TOLERANCE_S = 300


def signature_headers(
    secrets: Sequence[str], delivery_id: str, body: bytes, timestamp: int
) -> dict[str, str]:
    """The signature headers of one attempt, one ``v1`` per secret in ``secrets``."""
    t = str(timestamp)
    signed = t.encode() + b"." + body
    velora = ",".join(
        f"v1={hmac.new(s.encode(), signed, hashlib.sha256).hexdigest()}" for s in secrets
    )
    standard_signed = f"{delivery_id}.{t}.".encode() + body
    standard = " ".join(
        "v1,"
        + base64.b64encode(
            hmac.new(standard_key(s), standard_signed, hashlib.sha256).digest()
        ).decode("ascii")
        for s in secrets
    )
    return {
        VELORA_SIGNATURE: f"t={t},{velora}",
        "webhook-id": delivery_id,
        "webhook-timestamp": t,
        "webhook-signature": standard,
    }


def _refuse(header: str, reason: str) -> AuthenticationError:
    return AuthenticationError(f"{header}: {reason}", (ErrorDetail(header, reason),))


def _fresh(t: str, header: str, now: float | None) -> None:
    if not t.isdigit():
        raise _refuse(header, "no timestamp")
    if abs((time.time() if now is None else now) - int(t)) > TOLERANCE_S:
        raise _refuse(header, "timestamp outside the tolerance")


def verify_velora(
    body: bytes, header: str | None, secret: str, *, now: float | None = None
) -> None:
    """Check ``Velora-Signature`` against ``secret``; raises :class:`AuthenticationError`."""
    if not header:
        raise _refuse(VELORA_SIGNATURE, "missing")
    parts = [p.partition("=") for p in header.split(",")]
    t = next((v for k, _, v in parts if k.strip() == "t"), "")
    _fresh(t, VELORA_SIGNATURE, now)
    expected = hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
    if not any(k.strip() == "v1" and hmac.compare_digest(v, expected) for k, _, v in parts):
        raise _refuse(VELORA_SIGNATURE, "no v1 signature matches")


def verify_standard(
    body: bytes, headers: Mapping[str, str], secret: str, *, now: float | None = None
) -> None:
    """Check the Standard Webhooks headers against ``secret``; raises on a mismatch."""
    msg_id, t = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    if not msg_id or not signatures:
        raise _refuse("webhook-signature", "missing")
    _fresh(t, "webhook-timestamp", now)
    digest = hmac.new(standard_key(secret), f"{msg_id}.{t}.".encode() + body, hashlib.sha256)
    expected = base64.b64encode(digest.digest()).decode("ascii")
    for item in signatures.split(" "):
        version, _, value = item.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return
    raise _refuse("webhook-signature", "no v1 signature matches")

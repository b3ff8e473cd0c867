"""Verify a Velora webhook delivery with the standard library only.

Usage: VELORA_WEBHOOK_SECRET=whsec_... python verify_webhook.py request.json
(request.json: {"headers": {...}, "body": "<the raw body>"}; in a web framework,
pass the raw request body and its headers to verify() instead).
"""

import base64
import hashlib
import hmac
import json
import os
import sys
import time

TOLERANCE_S = 300


def verify_velora_signature(body: bytes, header: str, secret: str) -> bool:
    """Velora-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">, keyed with the secret."""
    items = [part.split("=", 1) for part in header.split(",") if "=" in part]
    t = next((v for k, v in items if k == "t"), "")
    if not t.isdigit() or abs(time.time() - int(t)) > TOLERANCE_S:
        return False
    expected = hmac.new(secret.encode(), t.encode() + b"." + body, hashlib.sha256).hexdigest()
    return any(k == "v1" and hmac.compare_digest(v, expected) for k, v in items)


def verify_standard_webhooks(body: bytes, headers: dict, secret: str) -> bool:
    """webhook-signature: v1,<base64 HMAC-SHA256 of "id.t.body">, keyed with the decoded secret."""
    msg_id, t = headers["webhook-id"], headers["webhook-timestamp"]
    if not t.isdigit() or abs(time.time() - int(t)) > TOLERANCE_S:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{t}.".encode() + body, hashlib.sha256).digest()
    expected = base64.b64encode(digest).decode()
    signatures = headers["webhook-signature"].split(" ")
    return any(hmac.compare_digest(s, "v1," + expected) for s in signatures)


def verify(body: bytes, headers: dict, secret: str) -> bool:
    headers = {k.lower(): v for k, v in headers.items()}
    return verify_velora_signature(
        body, headers.get("velora-signature", ""), secret
    ) and verify_standard_webhooks(body, headers, secret)


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        request = json.load(f)
    body = request["body"].encode()
    if not verify(body, request["headers"], os.environ["VELORA_WEBHOOK_SECRET"]):
        print("signature does not verify")
        sys.exit(1)
    for line in body.splitlines() or [body]:
        event = json.loads(line)
        print(f"verified {event['id']} {event['type']}")

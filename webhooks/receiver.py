"""``velora webhooks listen``: a local receiver that verifies each delivery (``stripe listen``).

:func:`receiver_app` answers any ``POST``: it checks both signature schemes
(``Velora-Signature`` and ``webhook-signature``) against the secrets it was given
(one during normal operation; the old and the new one around a rotation), prints
one line per event (``<time> <webhook-id> <type> <event id>``), and answers 200, or
400 when a signature does not verify (a sender then retries, as it should for a
forged or stale request). Batches (``ndjson``, ``splunk_hec``) print a line per event.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from velora.errors import AuthenticationError, PayloadTooLarge, error_body, status_for
from webhooks.signing import VELORA_SIGNATURE, verify_standard, verify_velora


def envelopes_of(body: bytes) -> list[dict[str, Any]]:
    """The envelopes in a body of any format (json, ndjson, concatenated HEC events)."""
    text = body.decode("utf-8")
    decoder = json.JSONDecoder()
    out, i = [], 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return out
        value, i = decoder.raw_decode(text, i)
        out.append(value["event"] if "event" in value and "sourcetype" in value else value)


def verify(body: bytes, headers: Any, secrets: Sequence[str]) -> str | None:
    """None if both schemes verify with one of ``secrets``, else why not."""
    problems = []
    for check in (
        lambda s: verify_velora(body, headers.get(VELORA_SIGNATURE), s),
        lambda s: verify_standard(body, headers, s),
    ):
        for secret in secrets:
            try:
                check(secret)
                break
            except AuthenticationError as exc:
                reason = exc.message
        else:
            problems.append(reason)
    return "; ".join(problems) or None


MAX_DELIVERY_BYTES = 32 * 1024 * 1024
"""The largest delivery the receiver reads (a full ``ndjson`` batch is far smaller)."""


async def _bounded_body(request: Request) -> bytes | None:
    """The request body, or None once it is over :data:`MAX_DELIVERY_BYTES`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_DELIVERY_BYTES:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_DELIVERY_BYTES:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def receiver_app(
    secrets: Sequence[str], out: TextIO = sys.stdout, on_delivery: Callable[..., None] | None = None
) -> Starlette:
    """The receiver (see the module docstring)."""

    async def receive(request: Request) -> JSONResponse:
        body = await _bounded_body(request)
        if body is None:
            too_large = PayloadTooLarge("the body is over 32 MiB")
            return JSONResponse(error_body(too_large), status_code=status_for(too_large))
        problem = verify(body, request.headers, secrets)
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        msg_id = request.headers.get("webhook-id", "-")
        if problem is not None:
            print(f"{stamp} REFUSED {msg_id}: {problem}", file=out, flush=True)
            return JSONResponse({"verified": False, "reason": problem}, status_code=400)
        try:
            envelopes = envelopes_of(body)
        except (ValueError, KeyError, TypeError):
            print(f"{stamp} REFUSED {msg_id}: body is not JSON", file=out, flush=True)
            return JSONResponse({"verified": True, "reason": "not JSON"}, status_code=400)
        for e in envelopes:
            print(f"{stamp} {msg_id} {e.get('type')} {e.get('id')}", file=out, flush=True)
        if on_delivery is not None:
            on_delivery(request.headers, envelopes)
        return JSONResponse({"verified": True, "events": len(envelopes)})

    return Starlette(routes=[Route("/{path:path}", receive, methods=["POST"])])

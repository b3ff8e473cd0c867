"""Read and parse an ingest request body: bounded while streaming, JSON array or NDJSON.

Limits (see ``docs/ingest.md``): at most :data:`MAX_BODY_BYTES` of body and
:data:`MAX_EVENTS` events, else :class:`~velora.errors.PayloadTooLarge` (413).
The size is checked against ``Content-Length`` before reading and again while
the body streams in, so an unbounded (chunked) body never sits in memory; the
same sizes are claimed from the server's memory budget
(:class:`~ingest.budget.Claim`), which answers 503 when it is spent.
Malformed input is a :class:`~velora.errors.ValidationError` (422) naming where
it broke: ``body`` (line and column) for a JSON array, ``line N`` for NDJSON.
Items are returned as parsed; whether each is a valid event is the pipeline's
call, item by item.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from ingest.budget import Claim
from velora.errors import ErrorDetail, PayloadTooLarge, UnsupportedMediaType, ValidationError

MAX_BODY_BYTES = 5 * 1024 * 1024
MAX_EVENTS = 1000

JSON = "application/json"
NDJSON = "application/x-ndjson"
MEDIA_TYPES = {JSON: JSON, NDJSON: NDJSON, "application/ndjson": NDJSON}


def media_type(content_type: str | None) -> str:
    """The body format named by a ``Content-Type`` header (:data:`JSON` or :data:`NDJSON`)."""
    base, _, params = (content_type or "").partition(";")
    kind = MEDIA_TYPES.get(base.strip().lower())
    charset = params.strip().lower()
    if kind is None or (charset and charset.replace(" ", "") not in ("charset=utf-8",)):
        raise UnsupportedMediaType(
            "Content-Type must be application/json or application/x-ndjson (UTF-8)",
            details=(ErrorDetail("Content-Type", "unsupported media type"),),
        )
    return kind


async def read_limited(
    stream: AsyncIterator[bytes],
    content_length: str | None,
    limit: int = MAX_BODY_BYTES,
    claim: Claim | None = None,
) -> bytearray:
    """The whole body, refusing it (413) as soon as it is known to exceed ``limit``.

    With a ``claim``, the declared size is claimed before the first byte is read and
    a chunked body's size as it grows (503 when the memory budget lacks it). The
    body grows in one buffer: no list of chunks, no second copy to join them.
    """
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise ValidationError(
                "invalid Content-Length header",
                details=(ErrorDetail("Content-Length", "not an integer"),),
            ) from None
        if declared > limit:
            raise _too_large(f"body is {declared} bytes; the limit is {limit}")
        if claim is not None:
            claim.cover(declared)
    body = bytearray()
    try:
        async for chunk in stream:
            if len(body) + len(chunk) > limit:
                raise _too_large(f"body exceeds the {limit}-byte limit")
            if claim is not None:
                claim.cover(len(body) + len(chunk))
            body += chunk
    except BaseException:
        body.clear()  # the traceback keeps this frame (and so the buffer) until the gc runs
        raise
    return body


def parse_events(body: bytes | bytearray, kind: str, max_events: int = MAX_EVENTS) -> list[Any]:
    """The items of a JSON-array or NDJSON body (each not yet validated)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _malformed("body", f"not valid UTF-8 at byte {exc.start}") from None
    items = _parse_ndjson(text, max_events) if kind == NDJSON else _parse_array(text)
    if not items:
        raise _malformed("body", "no events: send at least one event")
    if len(items) > max_events:
        raise _too_large(f"batch has {len(items)} events; the limit is {max_events}")
    return items


def _parse_array(text: str) -> list[Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _malformed(
            "body", f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise _malformed("body", f"invalid JSON: {_why(exc)}") from None
    if not isinstance(data, list):
        raise _malformed("body", "must be a JSON array of event objects")
    return data


def _parse_ndjson(text: str, max_events: int) -> list[Any]:
    items: list[Any] = []
    loads = json.loads
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        if len(items) >= max_events:
            raise _too_large(f"batch has more than {max_events} events; the limit is {max_events}")
        try:
            items.append(loads(line))
        except json.JSONDecodeError as exc:
            raise _malformed(
                f"line {lineno}", f"invalid JSON at column {exc.colno}: {exc.msg}"
            ) from None
        except (ValueError, RecursionError) as exc:
            raise _malformed(f"line {lineno}", f"invalid JSON: {_why(exc)}") from None
    return items


def _why(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return "number too large" if "digits" in str(exc) else type(exc).__name__


def _malformed(where: str, reason: str) -> ValidationError:
    return ValidationError(
        f"malformed body: {where}: {reason}", details=(ErrorDetail(where, reason),)
    )


def _too_large(message: str) -> PayloadTooLarge:
    return PayloadTooLarge(message, details=(ErrorDetail("body", message),))

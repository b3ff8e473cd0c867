"""Read and parse an ingest request body: bounded while streaming, JSON array or NDJSON.

Limits (see ``docs/ingest.md``): at most :data:`MAX_BODY_BYTES` of body and
:data:`MAX_EVENTS` events, else :class:`~velora.errors.PayloadTooLarge` (413).
The size is checked against ``Content-Length`` before reading and again while
the body streams in, so an unbounded (chunked) body never sits in memory; the
same sizes are claimed from the server's memory budget
(:class:`~ingest.budget.Claim`), which answers 503 when it is spent.
Malformed input is a :class:`~velora.errors.ValidationError` (422) naming where
it broke: ``body`` (line and column) for a JSON array, ``line N`` for NDJSON.
An object that repeats a key (``{"action": "a", "action": "b"}``, at any depth)
is malformed too: the whole body is refused, naming the event's ``index`` and the
key's path (``actor.id``, ``targets[1].type``), since which value was meant is
unknown (Python's ``json`` would silently keep the last).
Items are returned as parsed; whether each is a valid event is the pipeline's
call, item by item.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from ingest.budget import Claim
from schemas.rules import clip
from velora.errors import ErrorDetail, PayloadTooLarge, UnsupportedMediaType, ValidationError

MAX_BODY_BYTES = 5 * 1024 * 1024
MAX_EVENTS = 1000

JSON = "application/json"
NDJSON = "application/x-ndjson"
MEDIA_TYPES = {JSON: JSON, NDJSON: NDJSON, "application/ndjson": NDJSON}


class _DuplicateKey(ValueError):
    """A JSON object of the body repeats a key (located afterwards, off the hot path)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise _DuplicateKey
    return obj


class _Marked(dict[str, Any]):
    """An object that repeated ``duplicate`` (built only to locate a duplicate)."""

    duplicate: str


def _marking(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = _Marked(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                obj.duplicate = key
                break
            seen.add(key)
    return obj


_loads = json.JSONDecoder(object_pairs_hook=_unique_keys).decode
_loads_marking = json.JSONDecoder(object_pairs_hook=_marking).decode


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
        data = _loads(text)
    except _DuplicateKey:
        raise _duplicate(text, None) from None
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
    loads = _loads
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        if len(items) >= max_events:
            raise _too_large(f"batch has more than {max_events} events; the limit is {max_events}")
        try:
            items.append(loads(line))
        except _DuplicateKey:
            raise _duplicate(line, (len(items), lineno)) from None
        except json.JSONDecodeError as exc:
            raise _malformed(
                f"line {lineno}", f"invalid JSON at column {exc.colno}: {exc.msg}"
            ) from None
        except (ValueError, RecursionError) as exc:
            raise _malformed(f"line {lineno}", f"invalid JSON: {_why(exc)}") from None
    return items


def _duplicate(text: str, item: tuple[int, int] | None) -> ValidationError:
    """The 422 for a repeated key: which event (``index``) and where in it (``field``).

    ``item`` is ``(index, line)`` for an NDJSON line; ``None`` for a JSON array body,
    whose offending element gives the index.
    """
    try:
        data = _loads_marking(text)
        if item is None and isinstance(data, list):
            index, path = next(
                ((i, p) for i, v in enumerate(data) if (p := _duplicate_path(v)) is not None),
                (None, None),
            )
        else:
            index, path = (item[0] if item else None), _duplicate_path(data)
    except RecursionError:
        index, path = (item[0] if item else None), None
    where = f"line {item[1]}: " if item else (f"event {index}: " if index is not None else "")
    field = path or "body"
    reason = "duplicate key: each key may appear only once in an object"
    return ValidationError(
        f"malformed body: {where}duplicate key {field}",
        details=(ErrorDetail(field, reason, index),),
    )


def _duplicate_path(value: Any, path: str = "") -> str | None:
    """The path of the first repeated key in ``value`` (parsed by ``_loads_marking``)."""
    if isinstance(value, dict):
        repeated = getattr(value, "duplicate", None)
        if repeated is not None:
            return _join(path, repeated)
        for key, child in value.items():
            found = _duplicate_path(child, _join(path, key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, child in enumerate(value):
            found = _duplicate_path(child, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def _join(path: str, key: str) -> str:
    key = clip(key)
    return f"{path}.{key}" if path else key


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

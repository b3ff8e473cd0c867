"""The one exception hierarchy of the project, and its HTTP status table.

::

    VeloraError                      500  base of everything we raise on purpose
    ├── ConfigError                  500  a VELORA_* setting is missing or invalid
    ├── BrokerError                  500  the local Kafka runtime could not be fetched/started
    ├── SchemaError                  500  the Avro contract itself is broken (bad .avsc)
    ├── LedgerMismatch               500  the DuckDB ledger does not belong to this log: rebuild
    ├── BadRequest                   400  the HTTP request itself is malformed (framing)
    ├── CodecError                   422  a record could not be encoded or decoded
    │   ├── EncodeError              422  wrong type, missing field, naive datetime
    │   └── DecodeError              422  truncated bytes, bad magic, corrupt body
    │       └── UnknownSchema        422  the writer schema's fingerprint is not deployed here
    ├── ValidationError              422  request or event failed validation (names the field)
    ├── AuthenticationError          401  missing, malformed, unknown or revoked credential
    ├── PermissionDenied             403  authenticated, but the scope is missing
    ├── NotFound                     404  unknown resource (also other tenants' resources)
    ├── MethodNotAllowed             405  the path exists, not with this HTTP method
    ├── RequestTimeout               408  the request's headers or body arrived too slowly
    ├── PayloadTooLarge              413  body or batch over its limit
    ├── UriTooLong                   414  the request line's URL is over its limit
    ├── UnsupportedMediaType         415  the body's Content-Type is not one we read
    ├── RateLimited                  429  token bucket empty; carries retry_after
    ├── HeadersTooLarge              431  the request line and headers are over their limit
    └── Unavailable                  503  a dependency (Kafka, the ledger) is down; retry_after

Every class maps to one HTTP status in :data:`HTTP_STATUS`; :func:`status_for`
walks the MRO, so a handler registered for a base class covers its subclasses.
Dependencies' errors (kafka, duckdb, fastavro) are translated at their boundary
with ``raise ... from exc`` and never leak past it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ErrorDetail:
    """One problem with one input: which field or parameter, and why."""

    field: str
    reason: str
    index: int | None = None

    def to_json(self) -> dict[str, Any]:
        """Render for an error body."""
        out: dict[str, Any] = {"field": self.field, "reason": self.reason}
        if self.index is not None:
            out["index"] = self.index
        return out


@dataclass
class VeloraError(Exception):
    """Base of every error this project raises on purpose."""

    message: str
    details: Sequence[ErrorDetail] = field(default_factory=tuple)
    retry_after: float | None = None

    type_name = "internal_error"

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class ConfigError(VeloraError):
    """A VELORA_* setting is missing or has an invalid value."""

    type_name = "config_error"


class BrokerError(VeloraError):
    """The local Kafka runtime could not be fetched, formatted, started or stopped."""

    type_name = "broker_error"


class SchemaError(VeloraError):
    """An .avsc file in the schema folder is invalid or inconsistent."""

    type_name = "schema_error"


class LedgerMismatch(VeloraError):
    """The ledger's stored offsets or topic identity do not match the log (never rewind)."""

    type_name = "ledger_mismatch"


class BadRequest(VeloraError):
    """The HTTP request is malformed (framing, request line, header syntax)."""

    type_name = "bad_request"


class CodecError(VeloraError):
    """A record could not be encoded to or decoded from Avro."""

    type_name = "codec_error"


class EncodeError(CodecError):
    """A record does not match its schema (type, missing field, naive datetime)."""

    type_name = "encode_error"


class DecodeError(CodecError):
    """Bytes are not a valid single-object-encoded record of a known schema."""

    type_name = "decode_error"


@dataclass
class UnknownSchema(DecodeError):
    """A message names a writer schema (``fp``, hex fingerprint) this process does not hold."""

    fp: str = ""

    type_name = "unknown_schema"


class ValidationError(VeloraError):
    """Input failed validation; ``details`` names each offending field."""

    type_name = "validation_error"


class AuthenticationError(VeloraError):
    """The credential is missing, malformed, unknown, expired or revoked."""

    type_name = "authentication_error"


class PermissionDenied(VeloraError):
    """The credential is valid but lacks the scope this call needs."""

    type_name = "permission_denied"


class NotFound(VeloraError):
    """The resource does not exist, or belongs to another tenant."""

    type_name = "not_found"


class MethodNotAllowed(VeloraError):
    """The path exists but not with this HTTP method."""

    type_name = "method_not_allowed"


class RequestTimeout(VeloraError):
    """The request's headers or body did not arrive within their time limit."""

    type_name = "request_timeout"


class UriTooLong(VeloraError):
    """The request line's URL (path and query) is longer than the server accepts."""

    type_name = "uri_too_long"


class HeadersTooLarge(VeloraError):
    """The request line and headers together are larger than the server accepts."""

    type_name = "headers_too_large"


class UnsupportedMediaType(VeloraError):
    """The request body's Content-Type is not one this endpoint reads."""

    type_name = "unsupported_media_type"


class PayloadTooLarge(VeloraError):
    """The request body or batch exceeds its limit."""

    type_name = "payload_too_large"


class RateLimited(VeloraError):
    """Too many requests; retry after ``retry_after`` seconds."""

    type_name = "rate_limited"


class Unavailable(VeloraError):
    """A dependency is unavailable; nothing was acknowledged. Retry later."""

    type_name = "unavailable"


HTTP_STATUS: dict[type[VeloraError], int] = {
    VeloraError: 500,
    ConfigError: 500,
    BrokerError: 500,
    SchemaError: 500,
    LedgerMismatch: 500,
    BadRequest: 400,
    CodecError: 422,
    ValidationError: 422,
    AuthenticationError: 401,
    PermissionDenied: 403,
    NotFound: 404,
    MethodNotAllowed: 405,
    RequestTimeout: 408,
    PayloadTooLarge: 413,
    UriTooLong: 414,
    UnsupportedMediaType: 415,
    RateLimited: 429,
    HeadersTooLarge: 431,
    Unavailable: 503,
}


def status_for(exc: VeloraError) -> int:
    """The HTTP status of ``exc``: the first class in its MRO found in the table."""
    for klass in type(exc).__mro__:
        if klass in HTTP_STATUS:
            return HTTP_STATUS[klass]  # type: ignore[index]
    return 500


def error_body(exc: VeloraError) -> dict[str, Any]:
    """The one JSON error shape: ``{"error": {"type", "message", "details"}}``."""
    return {
        "error": {
            "type": exc.type_name,
            "message": exc.message,
            "details": [d.to_json() for d in exc.details],
        }
    }

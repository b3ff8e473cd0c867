"""Bearer API-key authentication and scope checks.

``Authorization: Bearer vlk_live_<key_id>_<secret>``. The key_id finds the
``ApiKey`` record (folded from the control topic by ``ledger.control.ControlState``);
the secret's HMAC is compared with the stored hash by :func:`hmac.compare_digest`.
An unknown key id still computes and compares a hash, so timing does not tell an
unknown key from a wrong secret. Missing, malformed, unknown, wrong, revoked or
expired keys all answer the same 401; the token never reaches a log or an error.

The tenant of every request is the key's tenant; nothing in the request can
choose another one.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from starlette.requests import Request

from query_api.tokens import hash_secret, key_status, parse_token
from schemas.events import ApiKey
from velora.errors import AuthenticationError, ErrorDetail, PermissionDenied
from velora.settings import Settings

log = logging.getLogger(__name__)

_DUMMY_HASH = "0" * 64
INVALID_KEY = "the API key is invalid, revoked or expired"


class KeySource(Protocol):
    """Where API keys are looked up (``ControlState``)."""

    def api_key(self, key_id: str) -> ApiKey | None:
        """The current state of one key, or None."""
        ...


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: one API key of one tenant."""

    key_id: str
    tenant_id: str
    scopes: frozenset[str]
    name: str | None = None


def _fail(message: str, reason: str) -> AuthenticationError:
    return AuthenticationError(message, (ErrorDetail("Authorization", reason),))


class Authenticator:
    """Turns an ``Authorization`` header into a :class:`Principal` or a 401."""

    def __init__(
        self,
        settings: Settings,
        keys: KeySource,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._pepper = settings.key_pepper
        self._keys = keys
        self._clock = clock

    def authenticate(self, header: str | None) -> Principal:
        """The caller of a request with this header; raises AuthenticationError."""
        if not header:
            raise _fail(
                "missing Authorization header; send 'Authorization: Bearer <key>'", "missing"
            )
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _fail("the Authorization header must be 'Bearer <key>'", "wrong scheme")
        parsed = parse_token(token.strip())
        if parsed is None:
            raise _fail("malformed API key; expected vlk_live_<8 hex>_<32 hex>", "malformed key")
        key_id, secret = parsed
        record = self._keys.api_key(key_id)
        candidate = hash_secret(self._pepper, secret)
        matches = hmac.compare_digest(
            candidate, record.secret_hash if record is not None else _DUMMY_HASH
        )
        if record is None or not matches:
            log.info("authentication failed: unknown key or wrong secret (key_id %s)", key_id)
            raise _fail(INVALID_KEY, "invalid key")
        status = key_status(record, self._clock())
        if status != "active":
            log.info("authentication failed: key %s is %s", key_id, status)
            raise _fail(INVALID_KEY, "invalid key")
        return Principal(key_id, record.tenant_id, frozenset(record.scopes), record.name)


def principal_of(request: Request) -> Principal:
    """The principal the middleware attached to this request."""
    principal = request.scope.get("state", {}).get("principal")
    if not isinstance(principal, Principal):
        raise _fail("authentication required", "missing")
    return principal


def require_scope(request: Request, scope: str) -> Principal:
    """The request's principal if its key has ``scope``; else 403 naming the scope."""
    principal = principal_of(request)
    if scope not in principal.scopes:
        raise PermissionDenied(
            f"this API key lacks the {scope} scope",
            (ErrorDetail("scope", f"requires {scope}"),),
        )
    return principal

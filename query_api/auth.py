"""Bearer API-key authentication and scope checks.

``Authorization: Bearer vlk_live_<key_id>_<secret>`` (``vlk_test_`` for staging
keys). The key_id finds the ``ApiKey`` record (folded from the control topic by
``ledger.control.ControlState``); the secret's HMAC under the pepper the record
names is compared with the stored hash by :func:`hmac.compare_digest`. An unknown
key id still computes and compares a hash, so timing does not tell an unknown key
from a wrong secret.

:meth:`Authenticator.check` returns a :class:`Principal` or a :class:`Failure`,
in this order of checks: header and format, known key id, secret, environment
(a node serves ``settings.environment`` only; a key of the other one, or a token
whose prefix disagrees with its record, is refused), status (revoked, expired),
and the key's IP allow-list. Every failure but the last answers the same 401,
and the token never reaches a log or an error; a request from outside the key's
allow-list answers 403 naming the reason but not the list. The failure's
``reason`` class (``wrong_secret``, ``revoked``, ...) and, for a known key id, its
tenant, are what the caller records in that tenant's trail.

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

from query_api.tokens import Peppers, hash_secret, key_status, parse_token
from schemas.events import ApiKey
from velora.errors import AuthenticationError, ErrorDetail, PermissionDenied, VeloraError
from velora.networks import NetworkSet
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


@dataclass(frozen=True)
class Failure:
    """A refused credential: the error to answer and what to record about it.

    ``reason`` is a class (``missing``, ``malformed``, ``unknown_key``,
    ``wrong_secret``, ``pepper_retired``, ``wrong_environment``, ``revoked``,
    ``expired``, ``ip_not_allowed``), never a secret. ``key_id`` is set when the
    token was well-formed, ``tenant_id`` when that key id is a known key.
    """

    error: VeloraError
    reason: str
    key_id: str | None = None
    tenant_id: str | None = None


def _fail(message: str, reason: str) -> AuthenticationError:
    return AuthenticationError(message, (ErrorDetail("Authorization", reason),))


def _invalid() -> AuthenticationError:
    return _fail(INVALID_KEY, "invalid key")


class Authenticator:
    """Turns an ``Authorization`` header (and the client address) into a Principal or Failure."""

    def __init__(
        self,
        settings: Settings,
        keys: KeySource,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._peppers = Peppers(settings)
        self._environment = settings.environment
        self._keys = keys
        self._clock = clock

    def check(self, header: str | None, client_ip: str | None) -> Principal | Failure:
        """The caller of a request with this header from ``client_ip``, or why not."""
        if not header:
            error = _fail(
                "missing Authorization header; send 'Authorization: Bearer <key>'", "missing"
            )
            return Failure(error, "missing")
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            error = _fail("the Authorization header must be 'Bearer <key>'", "wrong scheme")
            return Failure(error, "malformed")
        parsed = parse_token(token.strip())
        if parsed is None:
            error = _fail("malformed API key; expected vlk_live_<8 hex>_<32 hex>", "malformed key")
            return Failure(error, "malformed")
        key_id = parsed.key_id
        record = self._keys.api_key(key_id)
        pepper = self._peppers.get(record.pepper_id) if record is not None else None
        candidate = hash_secret(pepper or self._peppers.current()[1], parsed.secret)
        stored = record.secret_hash if record is not None and pepper is not None else _DUMMY_HASH
        matches = hmac.compare_digest(candidate, stored)
        if record is None:
            return self._refused("unknown_key", key_id, None)
        if pepper is None:
            return self._refused("pepper_retired", key_id, record.tenant_id)
        if not matches:
            return self._refused("wrong_secret", key_id, record.tenant_id)
        if record.environment != self._environment or parsed.environment != record.environment:
            return self._refused("wrong_environment", key_id, record.tenant_id)
        status = key_status(record, self._clock())
        if status != "active":
            return self._refused(status, key_id, record.tenant_id)
        if record.allowed_ips and client_ip not in NetworkSet(record.allowed_ips):
            log.info("authentication refused: key %s used from outside its allow-list", key_id)
            error = PermissionDenied(
                "this API key may not be used from your network address",
                (ErrorDetail("client_ip", "not in the API key's allowed networks"),),
            )
            return Failure(error, "ip_not_allowed", key_id, record.tenant_id)
        return Principal(key_id, record.tenant_id, frozenset(record.scopes), record.name)

    @staticmethod
    def _refused(reason: str, key_id: str, tenant_id: str | None) -> Failure:
        log.info("authentication failed: %s (key_id %s)", reason, key_id)
        return Failure(_invalid(), reason, key_id, tenant_id)

    def authenticate(self, header: str | None, client_ip: str | None = None) -> Principal:
        """Like :meth:`check`, but raise the failure's error."""
        outcome = self.check(header, client_ip)
        if isinstance(outcome, Failure):
            raise outcome.error
        return outcome


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

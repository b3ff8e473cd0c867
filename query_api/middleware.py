"""The gate in front of every protected public route: authenticate, rate-limit, audit.

For each HTTP request under the public prefix (except the open OpenAPI document
and reference page) :class:`PublicApiMiddleware`:

1. refuses with 429 a client IP whose authentication-failure bucket is empty
   (``settings.auth_failure_limit`` failures, refilled over a minute);
2. authenticates the Bearer key (401 on any failure, which takes a token from
   the IP's failure bucket);
3. takes a token from the key's bucket (``rate_limit_burst`` tokens, refilled at
   ``rate_limit_per_second``), 429 with ``Retry-After`` when empty;
4. attaches the :class:`~query_api.auth.Principal` to ``request.scope["state"]``,
   runs the route, adds ``RateLimit-Limit/Remaining/Reset`` to the answer, and
   turns an unexpected exception into the common 500 body (with those headers);
5. queues an ``audit_log.viewed`` event for the call (any status but 429).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from query_api.auth import Authenticator, Principal
from query_api.ratelimit import BucketMap, Decision
from query_api.read_audit import ReadAuditor, read_event
from schemas.events import Target
from velora.errors import AuthenticationError, RateLimited, VeloraError
from velora.http_errors import error_response

log = logging.getLogger(__name__)

FAILURE_WINDOW_S = 60.0


class PublicApiMiddleware:
    """Authentication, rate limits, error rendering and read auditing for the public API."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticator: Authenticator,
        key_buckets: BucketMap,
        failure_buckets: BucketMap,
        auditor: Callable[[], ReadAuditor | None],
        prefix: str,
        open_paths: Iterable[str],
    ) -> None:
        self.app = app
        self._auth = authenticator
        self._keys = key_buckets
        self._failures = failure_buckets
        self._auditor = auditor
        self._prefix = prefix
        self._open = tuple(open_paths)

    def _protected(self, path: str) -> bool:
        if not path.startswith(self._prefix):
            return False
        return not any(path == p or path.startswith(p + "/") for p in self._open)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        client_ip = scope["client"][0] if scope.get("client") else "unknown"
        gate = self._failures.peek(client_ip)
        if not gate.allowed:
            error = RateLimited(
                "too many failed authentication attempts from this client",
                retry_after=gate.retry_after_s,
            )
            await error_response(error, gate.headers())(scope, receive, send)
            return
        try:
            principal = self._auth.authenticate(headers.get("authorization"))
        except AuthenticationError as exc:
            failed = self._failures.take(client_ip)
            limit_headers = {k: v for k, v in failed.headers().items() if k != "Retry-After"}
            await error_response(exc, limit_headers)(scope, receive, send)
            return
        decision = self._keys.take(principal.key_id)
        if not decision.allowed:
            error = RateLimited(
                "rate limit exceeded for this API key", retry_after=decision.retry_after_s
            )
            await error_response(error, decision.headers())(scope, receive, send)
            return
        status = await self._call_route(scope, receive, send, principal, decision)
        auditor = self._auditor()
        if auditor is not None:
            state = scope.get("state", {})
            target = state.get("audit_target") or Target("audit_log", principal.tenant_id)
            auditor.record(
                read_event(
                    principal,
                    status=status,
                    target=target,
                    client_ip=client_ip,
                    user_agent=headers.get("user-agent"),
                    request_id=None,
                    metadata={
                        "method": scope["method"],
                        "path": scope["path"][:512],
                        **state.get("audit_metadata", {}),
                    },
                )
            )

    async def _call_route(
        self, scope: Scope, receive: Receive, send: Send, principal: Principal, decision: Decision
    ) -> int:
        scope.setdefault("state", {})["principal"] = principal
        started = False
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal started, status
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                MutableHeaders(scope=message).update(decision.headers())
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            log.error(
                "unhandled %s on %s %s",
                type(exc).__name__,
                scope["method"],
                scope["path"],
                exc_info=(type(exc), exc, exc.__traceback__),
            )
            if started:
                raise
            error = VeloraError("internal error; the incident has been logged")
            await error_response(error, decision.headers())(scope, receive, send)
            status = 500
        return status

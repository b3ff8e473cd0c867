"""The gate in front of every protected public route: control state, auth, limits, audit.

For each HTTP request under the public prefix (except the open OpenAPI document
and reference page) :class:`PublicApiMiddleware`:

1. answers 503 with ``Retry-After`` while the API-key state cannot be trusted:
   until the control fold has reached the end offsets seen at start, and while it
   is staler than ``settings.control_max_staleness_s`` (``ControlState.serving_problem``);
2. authenticates the Bearer key (:class:`~query_api.auth.Authenticator`). Valid
   credentials are never refused by the failure gate: only a *failed*
   authentication takes a token from the failure buckets of its client IP and of
   its key id (``settings.auth_failure_limit`` each, refilled over a minute), and
   a failure past either limit answers 429 with ``Retry-After`` instead of 401
   (or 403). A failure whose key id belongs to a tenant is recorded in that
   tenant's trail as ``audit_log.auth_failed`` with the reason class (a throttled
   one at most once a minute per key id, so a flood cannot fill a trail);
3. takes a token from the key's bucket (``rate_limit_burst`` tokens, refilled at
   ``rate_limit_per_second``), 429 with ``Retry-After`` when empty;
4. attaches the :class:`~query_api.auth.Principal` to ``request.scope["state"]``,
   runs the route, adds ``RateLimit-Limit/Remaining/Reset`` to the answer, and
   turns an unexpected exception into the common 500 body (with those headers);
5. audits the call as ``audit_log.viewed`` (any status but 429). In ``required``
   read-audit mode the route's answer is held until Kafka acknowledged that
   record and replaced by a 503 when it was not; in ``best_effort`` mode the
   record is queued and the answer streams as it is made. A route that knows its
   status before its slow part may send the record ahead, alongside that part
   (:func:`query_api.read_audit.go_ahead`): the answer then waits for the slower of
   the two, not both in turn; if the route answers another status after all, that
   status is recorded too before the answer leaves.

The client IP is the ASGI ``client``: the socket peer, or, behind a proxy listed
in ``VELORA_TRUSTED_PROXIES``, the address uvicorn's proxy-headers middleware
took from ``X-Forwarded-For`` (see :mod:`velora.proxies`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from query_api.auth import Authenticator, Failure, Principal
from query_api.ratelimit import BucketMap, Decision
from query_api.read_audit import AHEAD_KEY, ReadAuditor, auth_failed_event, read_event
from schemas.events import AuditEvent, Target
from velora.errors import RateLimited, Unavailable, VeloraError
from velora.http_errors import error_response

log = logging.getLogger(__name__)

FAILURE_WINDOW_S = 60.0
CONTROL_RETRY_AFTER_S = 5.0


class ControlGate(Protocol):
    """What the middleware asks the control state (``ledger.control.ControlState``)."""

    def serving_problem(self) -> str | None:
        """Why authenticated routes must answer 503 now, or None."""
        ...


class FailureGate:
    """Failure buckets per client IP and per key id, and a notice bucket for audit records."""

    def __init__(self, limit: int) -> None:
        rate = limit / FAILURE_WINDOW_S
        self.by_ip = BucketMap(limit, rate)
        self.by_key = BucketMap(limit, rate)
        self.notices = BucketMap(1, 1 / FAILURE_WINDOW_S)

    def fail(self, client_ip: str, key_id: str | None) -> tuple[Decision, Decision | None]:
        """Take one token from the IP's bucket and (if known) the key id's bucket."""
        ip = self.by_ip.take(client_ip)
        key = self.by_key.take(key_id) if key_id is not None else None
        return ip, key


class _Refused(Exception):
    """A streamed answer whose read could not be recorded: an error was sent instead."""


class PublicApiMiddleware:
    """Authentication, rate limits, error rendering and read auditing for the public API."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        authenticator: Authenticator,
        control: ControlGate,
        key_buckets: BucketMap,
        failures: FailureGate,
        auditor: Callable[[], ReadAuditor | None],
        prefix: str,
        open_paths: Iterable[str],
    ) -> None:
        self.app = app
        self._auth = authenticator
        self._control = control
        self._keys = key_buckets
        self._failures = failures
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
        problem = self._control.serving_problem()
        if problem is not None:
            error = Unavailable(f"{problem}; retry shortly", retry_after=CONTROL_RETRY_AFTER_S)
            await error_response(error)(scope, receive, send)
            return
        headers = Headers(scope=scope)
        client_ip = scope["client"][0] if scope.get("client") else "unknown"
        outcome = self._auth.check(headers.get("authorization"), client_ip)
        if isinstance(outcome, Failure):
            await self._refuse(scope, receive, send, outcome, client_ip, headers)
            return
        principal = outcome
        decision = self._keys.take(principal.key_id)
        if not decision.allowed:
            error = RateLimited(
                "rate limit exceeded for this API key", retry_after=decision.retry_after_s
            )
            await error_response(error, decision.headers())(scope, receive, send)
            return
        auditor = self._auditor()
        if auditor is not None and auditor.mode == "required":
            await self._serve_audited(scope, receive, send, principal, decision, auditor, headers)
            return
        status = await self._call_route(scope, receive, send, principal, decision)
        if auditor is not None:
            auditor.record(self._read_event(scope, principal, status, client_ip, headers))

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        failure: Failure,
        client_ip: str,
        headers: Headers,
    ) -> None:
        """Answer a failed authentication (401/403, or 429 past a failure limit) and record it."""
        by_ip, by_key = self._failures.fail(client_ip, failure.key_id)
        refused = [d for d in (by_ip, by_key) if d is not None and not d.allowed]
        reason = failure.reason
        if refused:
            retry = max(d.retry_after_s for d in refused)
            error: VeloraError = RateLimited(
                "too many failed authentication attempts; wait before retrying",
                retry_after=retry,
            )
            answer_headers = {**refused[0].headers(), "Retry-After": str(retry)}
            reason = "throttled"
        else:
            error = failure.error
            answer_headers = {k: v for k, v in by_ip.headers().items() if k != "Retry-After"}
        auditor = self._auditor()
        if failure.tenant_id is not None and failure.key_id is not None and auditor is not None:
            if reason != "throttled" or self._failures.notices.take(failure.key_id).allowed:
                auditor.record(
                    auth_failed_event(
                        key_id=failure.key_id,
                        tenant_id=failure.tenant_id,
                        reason=reason,
                        client_ip=client_ip,
                        user_agent=headers.get("user-agent"),
                        method=scope["method"],
                        path=scope["path"],
                    )
                )
        await error_response(error, answer_headers)(scope, receive, send)

    def _read_event(
        self, scope: Scope, principal: Principal, status: int, client_ip: str, headers: Headers
    ) -> AuditEvent:
        state = scope.get("state", {})
        target = state.get("audit_target") or Target("audit_log", principal.tenant_id)
        return read_event(
            principal,
            status=status,
            target=target,
            action=state.get("audit_action"),
            client_ip=client_ip,
            user_agent=headers.get("user-agent"),
            request_id=None,
            metadata={
                "method": scope["method"],
                "path": scope["path"][:512],
                **state.get("audit_metadata", {}),
            },
        )

    async def _serve_audited(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        principal: Principal,
        decision: Decision,
        auditor: ReadAuditor,
        headers: Headers,
    ) -> None:
        """Run the route, hold its answer until the read's audit record is acknowledged.

        A streamed answer (a body sent in parts: an export) is held only until its
        first part: its record is confirmed then, before any byte leaves, and the rest
        streams. Holding all of it kept a whole export in memory and past the request
        deadline before its first byte.
        """
        held: list[Message] = []
        streaming = False
        client_ip = scope["client"][0] if scope.get("client") else "unknown"
        ahead: list[tuple[int, asyncio.Task[None]]] = []

        def go_ahead(status: int) -> None:
            if ahead:
                return
            event = self._read_event(scope, principal, status, client_ip, headers)
            task = asyncio.ensure_future(auditor.confirm(event))
            task.add_done_callback(_retrieve)  # also when the call is cancelled
            ahead.append((status, task))

        async def settle(status: int) -> None:
            """The call's record acknowledged (else Unavailable): the one sent ahead when
            it holds this status, else a record of this status (after the one ahead)."""
            if ahead:
                recorded, task = ahead[0]
                if recorded == status:
                    await task
                    return
                with contextlib.suppress(Unavailable):
                    await task  # a record that did not hold; this status is recorded now
            await auditor.confirm(self._read_event(scope, principal, status, client_ip, headers))

        scope.setdefault("state", {})[AHEAD_KEY] = go_ahead

        async def hold(message: Message) -> None:
            nonlocal streaming
            if streaming:
                await send(message)
                return
            held.append(message)
            if message["type"] == "http.response.body" and message.get("more_body", False):
                status = held[0]["status"] if held[0]["type"] == "http.response.start" else 200
                try:
                    await settle(status)
                except Unavailable as exc:
                    await error_response(exc, decision.headers())(scope, receive, send)
                    raise _Refused from exc
                streaming = True
                for part in held:
                    await send(part)
                held.clear()

        try:
            status = await self._call_route(scope, receive, hold, principal, decision)
        except _Refused:
            return
        if streaming:
            return
        try:
            await settle(status)
        except Unavailable as exc:
            await error_response(exc, decision.headers())(scope, receive, send)
            return
        for message in held:
            await send(message)

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
        except _Refused:
            raise
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


def _retrieve(task: asyncio.Task[None]) -> None:
    """Mark a record's outcome seen: the auditor logged and counted a failure already."""
    if not task.cancelled():
        task.exception()

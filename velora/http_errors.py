"""Starlette exception handlers shared by every HTTP surface (query node, ingest).

Every error answered has the one shape of :func:`velora.errors.error_body`.

``{"error": {"type", "message", "details": [{"field", "reason"}]}}`` for the
project's own errors (status from :data:`velora.errors.HTTP_STATUS`), for
Starlette's own 404/405, and for unexpected exceptions (a bare 500 with no stack
trace, no exception text: the traceback goes to the server log only).
``Retry-After`` accompanies 429 and 503, ``WWW-Authenticate: Bearer`` every 401.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from velora.errors import (
    AuthenticationError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    VeloraError,
    error_body,
    status_for,
)

log = logging.getLogger(__name__)


def error_response(exc: VeloraError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """Render one of our errors with its status and the headers its status calls for."""
    status = status_for(exc)
    out = dict(headers or {})
    if status in (429, 503) and exc.retry_after is not None and "Retry-After" not in out:
        out["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    if status == 401:
        out["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error_body(exc), status_code=status, headers=out)


async def velora_error(request: Request, exc: Exception) -> Response:
    """Handler for :class:`VeloraError` and all its subclasses."""
    if not isinstance(exc, VeloraError):  # pragma: no cover - registered for VeloraError only
        return await unexpected_error(request, exc)
    if status_for(exc) >= 500:
        log.error("%s on %s %s: %s", exc.type_name, request.method, request.url.path, exc.message)
    return error_response(exc)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own HTTP errors (unknown route, wrong method) in the common shape."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) else {}
    error: VeloraError
    if status == 404:
        error = NotFound(f"no route {request.url.path}")
    elif status == 405:
        error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
    elif status == 413:
        error = PayloadTooLarge("request body too large")
    elif status == 401:
        error = AuthenticationError("authentication required")
    else:
        error = VeloraError("request failed")
        body = error_body(error)
        body["error"]["type"] = "http_error"
        return JSONResponse(body, status_code=status, headers=headers)
    response = error_response(error)
    response.headers.update(headers)
    return response


async def unexpected_error(request: Request, exc: Exception) -> Response:
    """A bug or an untranslated dependency error: log it, answer a bare 500."""
    log.error(
        "unhandled %s on %s %s",
        type(exc).__name__,
        request.method,
        request.url.path,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    return error_response(VeloraError("internal error; the incident has been logged"))


EXCEPTION_HANDLERS = {
    VeloraError: velora_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}

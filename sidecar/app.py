"""The sidecar's ASGI app: the API reverse proxy and the webhook relay (Starlette + httpx).

Routes:

- ``/api/v2/public/{path}`` (any method): forwarded to ``VELORA_SIDECAR_UPSTREAM``
  with the same path, ``Authorization`` unchanged, PHI filter values tokenized
  (:meth:`sidecar.rewrite.Rewriter.query`); the answer comes back detokenized
  (:meth:`~sidecar.rewrite.Rewriter.response`). A ``Link: rel="next"`` header is
  rebuilt for the sidecar's own URL and the caller's plain filters.
- ``POST /webhooks/relay``: a delivery from Velora. Both signatures are checked
  against ``VELORA_SIDECAR_VELORA_SECRET`` (401 otherwise); the body is
  detokenized, signed again in both schemes with ``VELORA_SIDECAR_RELAY_SECRET``
  (same ``webhook-id``, a new timestamp) and POSTed to ``VELORA_SIDECAR_SIEM_URL``.
  The SIEM's 2xx is answered 200, anything else 502, so Velora retries.
- ``GET /healthz``.

**Fails closed.** A tokenizer error, a token that does not open, a body the sidecar
cannot rewrite, an upstream that cannot be reached: 502 in the one error shape
(``bad_gateway``), naming the field; nothing is forwarded. Log lines name paths and
error classes, never values. Upstream answers larger than :data:`MAX_BODY_BYTES`
are refused (502) rather than streamed unrewritten.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlencode

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from sidecar.rewrite import Rewriter, SidecarFailure
from velora.errors import AuthenticationError, ErrorDetail, error_body
from velora.http_errors import EXCEPTION_HANDLERS
from webhooks.receiver import verify
from webhooks.signing import signature_headers

log = logging.getLogger(__name__)

PREFIX = "/api/v2/public"
RELAY_PATH = "/webhooks/relay"
MAX_BODY_BYTES = 64 * 1024 * 1024
_PASS_HEADERS = ("content-type", "cache-control", "retry-after", "www-authenticate",
                 "content-disposition", "x-request-id")  # fmt: skip


def bad_gateway(exc: SidecarFailure) -> JSONResponse:
    """The 502 answer of a failure (no value, no token in it)."""
    return JSONResponse(error_body(exc), status_code=502)


def create_sidecar_app(
    rewriter: Rewriter,
    upstream: str,
    *,
    velora_secret: str | None = None,
    relay_secret: str | None = None,
    siem_url: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    timeout_s: float = 30.0,
) -> Starlette:
    """The sidecar app (``transport`` is a seam for tests that fake a dead upstream)."""
    state: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state["client"] = httpx.AsyncClient(
            timeout=timeout_s, follow_redirects=False, transport=transport
        )
        try:
            yield
        finally:
            await state["client"].aclose()

    async def proxy(request: Request) -> Response:
        try:
            items = rewriter.query(request.query_params.multi_items())
            headers = {"accept": request.headers.get("accept", "*/*")}
            if "authorization" in request.headers:
                headers["authorization"] = request.headers["authorization"]
            if "content-type" in request.headers:
                headers["content-type"] = request.headers["content-type"]
            body = await request.body()
            try:
                answer = await state["client"].request(
                    request.method,
                    upstream + request.url.path,
                    params=items,
                    headers=headers,
                    content=body or None,
                )
            except httpx.HTTPError as exc:
                raise SidecarFailure(
                    f"sidecar: Velora could not be reached ({type(exc).__name__})",
                    (ErrorDetail("upstream", "unreachable"),),
                ) from None
            if len(answer.content) > MAX_BODY_BYTES:
                raise SidecarFailure(
                    "sidecar: the answer is too large to rewrite",
                    (ErrorDetail("response", "too large"),),
                )
            content = rewriter.response(answer.content, answer.headers.get("content-type", ""))
        except SidecarFailure as exc:
            log.warning("sidecar refused %s %s: %s", request.method, request.url.path, exc.message)
            return bad_gateway(exc)
        out = {k: v for k, v in answer.headers.items() if k.lower() in _PASS_HEADERS}
        if "link" in answer.headers:
            link = _next_link(request, content, answer.headers.get("content-type", ""))
            if link:
                out["link"] = link
        return Response(content, status_code=answer.status_code, headers=out)

    async def relay(request: Request) -> Response:
        if not (velora_secret and relay_secret and siem_url):
            return JSONResponse(
                error_body(SidecarFailure("sidecar: the webhook relay is not configured")),
                status_code=502,
            )
        body = await request.body()
        problem = verify(body, request.headers, [velora_secret])
        if problem is not None:
            raise AuthenticationError(f"delivery signature does not verify: {problem}")
        try:
            plain = rewriter.delivery(body)
            headers = signature_headers(
                [relay_secret], request.headers.get("webhook-id", ""), plain, int(time.time())
            )
            headers["content-type"] = request.headers.get("content-type", "application/json")
            try:
                answer = await state["client"].post(siem_url, content=plain, headers=headers)
            except httpx.HTTPError as exc:
                raise SidecarFailure(
                    f"sidecar: the SIEM could not be reached ({type(exc).__name__})",
                    (ErrorDetail("siem", "unreachable"),),
                ) from None
            if not 200 <= answer.status_code < 300:
                raise SidecarFailure(
                    f"sidecar: the SIEM answered {answer.status_code}",
                    (ErrorDetail("siem", f"answered {answer.status_code}"),),
                )
        except SidecarFailure as exc:
            log.warning("sidecar relay refused a delivery: %s", exc.message)
            return bad_gateway(exc)
        return JSONResponse({"relayed": True})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    return Starlette(
        routes=[
            Route(PREFIX + "/{path:path}", proxy, methods=methods),
            Route(RELAY_PATH, relay, methods=["POST"]),
            Route("/healthz", healthz),
        ],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )


def _next_link(request: Request, content: bytes, content_type: str) -> str | None:
    """``Link: rel="next"`` for the sidecar's URL, from the answer's ``next_cursor``."""
    if not content_type.startswith("application/json"):
        return None
    try:
        cursor = json.loads(content).get("page", {}).get("next_cursor")
    except (ValueError, AttributeError):
        return None
    if not cursor:
        return None
    items = [(k, v) for k, v in request.query_params.multi_items() if k != "cursor"]
    items.append(("cursor", cursor))
    return f'<{request.url.replace(query=urlencode(items))}>; rel="next"'

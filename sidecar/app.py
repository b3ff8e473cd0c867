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
error classes, never values. NDJSON and CSV exports are rewritten as they stream
(:mod:`sidecar.exports`; a failure after the first bytes cuts the stream short);
other upstream answers larger than :data:`MAX_BODY_BYTES` are refused (502)
rather than passed on unrewritten.
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
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from sidecar.exports import STREAMED, ExportStream
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
        answer: httpx.Response | None = None
        try:
            items = rewriter.query(request.query_params.multi_items())
            headers = {"accept": request.headers.get("accept", "*/*")}
            if "authorization" in request.headers:
                headers["authorization"] = request.headers["authorization"]
            if "content-type" in request.headers:
                headers["content-type"] = request.headers["content-type"]
            body = await request.body()
            client = state["client"]
            try:
                answer = await client.send(
                    client.build_request(
                        request.method,
                        upstream + request.url.path,
                        params=items,
                        headers=headers,
                        content=body or None,
                    ),
                    stream=True,
                )
            except httpx.HTTPError as exc:
                raise SidecarFailure(
                    f"sidecar: Velora could not be reached ({type(exc).__name__})",
                    (ErrorDetail("upstream", "unreachable"),),
                ) from None
            content_type = answer.headers.get("content-type", "")
            out = {k: v for k, v in answer.headers.items() if k.lower() in _PASS_HEADERS}
            media = content_type.split(";", 1)[0].strip().lower()
            if media in STREAMED and 200 <= answer.status_code < 300:
                return await _streamed(rewriter, answer, media, out)
            content = await _read(answer)
            content = rewriter.response(content, content_type, str(request.base_url))
        except SidecarFailure as exc:
            log.warning("sidecar refused %s %s: %s", request.method, request.url.path, exc.message)
            if answer is not None:
                await answer.aclose()
            return bad_gateway(exc)
        if "link" in answer.headers:
            link = _next_link(request, content, content_type)
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


async def _read(answer: httpx.Response) -> bytes:
    """The whole answer, at most :data:`MAX_BODY_BYTES` (:class:`SidecarFailure` beyond)."""
    parts, size = [], 0
    try:
        async for chunk in answer.aiter_bytes():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise SidecarFailure(
                    "sidecar: the answer is too large to rewrite",
                    (ErrorDetail("response", "too large"),),
                )
            parts.append(chunk)
    except httpx.HTTPError as exc:
        raise SidecarFailure(
            f"sidecar: Velora's answer broke off ({type(exc).__name__})",
            (ErrorDetail("upstream", "broke off"),),
        ) from None
    finally:
        await answer.aclose()
    return b"".join(parts)


async def _streamed(
    rewriter: Rewriter, answer: httpx.Response, media: str, headers: dict[str, str]
) -> Response:
    """An NDJSON or CSV export rewritten as it streams (:mod:`sidecar.exports`).

    Velora's answer is read until the first rewritten bytes exist, so a failure
    before them is still a 502; a failure later ends the stream early (the caller
    sees a transfer cut short, never a token).
    """
    stream = ExportStream(rewriter, media)
    chunks = answer.aiter_bytes()
    first = b""
    ended = False
    try:
        while not first:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                first, ended = stream.close(), True
                break
            first = stream.feed(chunk)
    except httpx.HTTPError as exc:
        await answer.aclose()
        raise SidecarFailure(
            f"sidecar: Velora's answer broke off ({type(exc).__name__})",
            (ErrorDetail("upstream", "broke off"),),
        ) from None
    except BaseException:
        await answer.aclose()
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            if first:
                yield first
            if ended:
                return
            async for chunk in chunks:
                out = stream.feed(chunk)
                if out:
                    yield out
            rest = stream.close()
            if rest:
                yield rest
        except SidecarFailure as exc:
            log.warning("sidecar cut an export short: %s", exc.message)
            raise
        finally:
            await answer.aclose()

    return StreamingResponse(body(), status_code=answer.status_code, headers=headers)


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

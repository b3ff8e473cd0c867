"""Routes of the exports (scope ``audit:export``; the tenant is the key's).

- ``GET  /api/v2/public/audit/export?since&until&format=ndjson|csv|parquet&<filters>``
  streams the export (oldest first) with a ``Content-Disposition`` filename;
  at most ``settings.export_max_streams`` run at once on a node (429 beyond).
- ``POST /api/v2/public/audit/exports`` (same query parameters) answers 202 with a
  job; ``GET /api/v2/public/audit/exports/{id}`` its status, rows and, once done, a
  signed ``download_url`` (``GET /api/v2/public/audit/export-files/{id}?expires&signature``,
  which needs no key: the signature is the credential, see :mod:`query_api.export_jobs`).

Every export is recorded in the tenant's trail as an ``audit_log.exported`` event
whose actor is the key, with the filters, the format and the row count (and
``complete: false`` when a stream ended early), through the read auditor.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import anyio
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from phi.policy import Revealer
from query_api.auth import Principal, require_scope
from query_api.export_jobs import ExportJob, ExportJobs, sign, verify
from query_api.exports import FORMATS, ExportProgress, Format, export_chunks
from query_api.filters import Filters, as_mapping, with_phi
from query_api.links import base_url
from query_api.ranges import RangedRequest, bad, parse_ranged
from query_api.read_audit import ReadAuditor, read_event
from query_api.routes import ledger_reader, phi_safe
from query_api.serialize import tenant_phi
from schemas.events import Target
from velora.errors import NotFound, RateLimited
from velora.settings import Settings

log = logging.getLogger(__name__)

EXPORT_SCOPE = "audit:export"
EXPORTED = "audit_log.exported"
QUEUE_CHUNKS = 2
_DONE = object()


def _format(parsed: RangedRequest) -> Format:
    name = parsed.own.get("format", "ndjson")
    fmt = FORMATS.get(name)
    if fmt is None:
        raise bad("format", f"must be one of {', '.join(FORMATS)}")
    return fmt


def _parse(request: Request, principal: Principal) -> tuple[RangedRequest, Format, Revealer]:
    """The request's filters (PHI filter values widened as the tenant's mode says), its
    format and the tenant's revealer (a server-mode tenant without its keyset: 503 here,
    before any work)."""
    parsed = parse_ranged(request.query_params.multi_items(), ("format",))
    fmt = _format(parsed)
    phi = tenant_phi(request.app.state, principal.tenant_id)
    request.scope["state"]["audit_metadata"] = {
        **{k: v[:256] for k, v in phi_safe(as_mapping(parsed.filters), phi.mode).items()},
        "format": fmt.name,
    }
    reveal = phi.revealer()
    filters = with_phi(parsed.filters, phi.id_filter_values)
    return replace(parsed, filters=filters), fmt, reveal


def filename(tenant_id: str, filters: Filters, fmt: Format) -> str:
    """``velora-audit-<tenant>-<since>-<until>.<ext>`` (times compact UTC)."""
    assert filters.since is not None and filters.until is not None
    stamp = "%Y%m%dT%H%M%SZ"
    return (
        f"velora-audit-{tenant_id}-{filters.since.strftime(stamp)}-"
        f"{filters.until.strftime(stamp)}.{fmt.extension}"
    )


def _disposition(name: str) -> str:
    return f'attachment; filename="{name}"'


def exported_event(
    principal: Principal,
    request: Request | None,
    filters: Filters,
    fmt: Format,
    rows: int,
    *,
    mode: str,
    complete: bool,
    target: Target,
    phi_mode: str | None = None,
) -> Any:
    """The ``audit_log.exported`` event of one export (PHI filter values redacted for a
    server-mode tenant, ``phi_mode``, as in every read audit)."""
    headers = request.headers if request is not None else {}
    client = request.client.host if request is not None and request.client else None
    metadata: Mapping[str, str] = {
        **{k: v[:256] for k, v in phi_safe(as_mapping(filters), phi_mode).items()},
        "format": fmt.name,
        "rows": str(rows),
        "mode": mode,
        "complete": "true" if complete else "false",
    }
    event = read_event(
        principal,
        status=200,
        target=target,
        client_ip=client,
        user_agent=headers.get("user-agent"),
        request_id=None,
        metadata=metadata,
    )
    if complete:
        return replace(event, action=EXPORTED)
    ended = replace(event.outcome, result="failure", reason="the export ended early")
    return replace(event, action=EXPORTED, outcome=ended)


def _record(app_state: Any, event: Any) -> None:
    auditor: ReadAuditor | None = getattr(app_state, "auditor", None)
    if auditor is None:
        log.error("export %s not recorded: no read auditor", event.event_id)
        return
    auditor.record(event)


# -- the streamed export ------------------------------------------------------------


class _Producer(threading.Thread):
    """Runs the export in a thread of its own; chunks go through a small bounded queue."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__(name="velora-export", daemon=True)
        self.chunks = chunks
        self.queue: queue.Queue[object] = queue.Queue(maxsize=QUEUE_CHUNKS)
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            for chunk in self.chunks:
                if not self._put(chunk):
                    return
            self._put(_DONE)
        except BaseException as exc:  # handed to the request, which raises or logs it
            self._put(exc)
        finally:
            self.chunks.close()  # type: ignore[attr-defined]

    def _put(self, item: object) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    async def next(self) -> object:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.queue.get)


async def export_stream(request: Request) -> Response:
    """The export as one streamed answer (NDJSON, CSV or Parquet), oldest first."""
    principal = require_scope(request, EXPORT_SCOPE)
    parsed, fmt, reveal = _parse(request, principal)
    slots: threading.BoundedSemaphore = request.app.state.export_streams
    if not slots.acquire(blocking=False):
        raise RateLimited("too many exports are running on this node; retry later", retry_after=5)
    try:
        cur = await ledger_reader(request).read(lambda c: c.cursor())
        progress = ExportProgress()
        stop = threading.Event()
        producer = _Producer(
            export_chunks(cur, principal.tenant_id, parsed.filters, fmt, progress, stop, reveal)
        )
        producer.start()
        first = await producer.next()  # a failure before any byte is an ordinary error answer
        if isinstance(first, BaseException):
            producer.join()
            cur.close()
            raise first
    except BaseException:
        slots.release()
        raise
    app_state = request.app.state

    async def body() -> AsyncIterator[bytes]:
        item: object = first
        try:
            while item is not _DONE:
                if isinstance(item, BaseException):
                    log.error("export of tenant %s broke off: %s", principal.tenant_id,
                              type(item).__name__)  # fmt: skip
                    raise item
                assert isinstance(item, bytes)
                if item:
                    yield item
                item = await producer.next()
        finally:
            stop.set()
            producer.stop.set()
            # a client that left cancels this body: the clean-up must still run to the end
            with anyio.CancelScope(shield=True):
                await asyncio.to_thread(producer.join)
            try:  # wake a get() still waiting for the cancelled read of a chunk
                producer.queue.put_nowait(_DONE)
            except queue.Full:
                pass
            cur.close()
            slots.release()
            _record(
                app_state,
                exported_event(
                    principal,
                    request,
                    parsed.filters,
                    fmt,
                    progress.rows,
                    mode="stream",
                    complete=item is _DONE,
                    target=Target("audit_log", principal.tenant_id),
                    phi_mode="server" if reveal.active else None,
                ),
            )

    name = filename(principal.tenant_id, parsed.filters, fmt)
    return StreamingResponse(
        body(), media_type=fmt.media_type, headers={"Content-Disposition": _disposition(name)}
    )


# -- export jobs ---------------------------------------------------------------------


def _jobs(request: Request) -> ExportJobs:
    return request.app.state.export_jobs


def _job_json(request: Request, job: ExportJob) -> dict[str, Any]:
    settings: Settings = request.app.state.settings
    assert job.filters.since is not None and job.filters.until is not None
    out: dict[str, Any] = {
        "id": job.id,
        "status": job.status,
        "format": job.fmt.name,
        "since": job.filters.since.isoformat(),
        "until": job.filters.until.isoformat(),
        "filters": dict(as_mapping(replace(job.filters, since=None, until=None))),
        "rows": job.progress.rows,
        "created_at": job.created_at.isoformat(),
        "finished_at": None if job.finished_at is None else job.finished_at.isoformat(),
        "download_url": None,
        "expires_at": None,
        "error": job.error,
    }
    if job.status == "done":
        expires = int(time.time()) + settings.export_link_ttl_seconds
        signature = sign(settings.cursor_secret, job.tenant_id, job.id, expires)
        query = urlencode({"expires": expires, "signature": signature})
        path = f"{request.app.state.api_prefix}/audit/export-files/{job.id}?{query}"
        out["download_url"] = base_url(request, settings) + path
        out["expires_at"] = datetime.fromtimestamp(expires, UTC).isoformat()
    return out


async def create_job(request: Request) -> JSONResponse:
    """Queue an export job; 202 with its status and ``Location``."""
    principal = require_scope(request, EXPORT_SCOPE)
    parsed, fmt, reveal = _parse(request, principal)
    cur = await ledger_reader(request).read(lambda c: c.cursor())
    job = _jobs(request).submit(principal, parsed.filters, fmt, cur, reveal)
    request.scope["state"]["audit_target"] = Target("audit_export", job.id)
    location = f"{request.app.state.api_prefix}/audit/exports/{job.id}"
    return JSONResponse(_job_json(request, job), status_code=202, headers={"Location": location})


def _no_query(request: Request) -> None:
    for name, _ in request.query_params.multi_items():
        raise bad(name[:40], "unknown parameter; this route takes none")


async def get_job(request: Request) -> JSONResponse:
    """A job's status, rows and, once done, a signed download URL."""
    principal = require_scope(request, EXPORT_SCOPE)
    _no_query(request)
    job_id: str = request.path_params["job_id"][:64]
    request.scope["state"]["audit_target"] = Target("audit_export", job_id)
    job = _jobs(request).get(principal.tenant_id, job_id)
    return JSONResponse(_job_json(request, job))


async def download(request: Request) -> Response:
    """A finished job's file, for a valid, unexpired signed link (no key needed)."""
    settings: Settings = request.app.state.settings
    job_id: str = request.path_params["job_id"][:64]
    gone = NotFound("no such export file, or the link expired: ask the job for a new link")
    params = dict(request.query_params)
    expires_raw, signature = params.get("expires", ""), params.get("signature", "")
    well_formed = expires_raw.isdigit() and len(expires_raw) <= 12
    if set(params) != {"expires", "signature"} or not well_formed:
        raise gone
    expires = int(expires_raw)
    job = _jobs(request).find(job_id)
    if (
        job is None
        or job.status != "done"
        or job.path is None
        or expires < time.time()
        or not verify(settings.cursor_secret, job.tenant_id, job.id, expires, signature)
    ):
        raise gone
    _record(
        request.app.state,
        read_event(
            job.principal,
            status=200,
            target=Target("audit_export", job.id),
            client_ip=request.client.host if request.client else None,
            user_agent=request.headers.get("user-agent"),
            request_id=None,
            metadata={"method": "GET", "path": request.url.path[:512], "download": "true"},
        ),
    )
    name = filename(job.tenant_id, job.filters, job.fmt)
    return FileResponse(
        job.path, media_type=job.fmt.media_type, headers={"Content-Disposition": _disposition(name)}
    )


def export_routes(prefix: str) -> list[Route]:
    """The export routes under ``prefix`` (``/api/v2/public``)."""
    return [
        Route(f"{prefix}/audit/export", export_stream, methods=["GET"]),
        Route(f"{prefix}/audit/exports", create_job, methods=["POST"]),
        Route(f"{prefix}/audit/exports/{{job_id}}", get_job, methods=["GET"]),
        Route(f"{prefix}/audit/export-files/{{job_id}}", download, methods=["GET"]),
    ]


def make_export_jobs(settings: Settings, state: Any) -> ExportJobs:
    """The node's export jobs; a finished job is recorded through ``state.auditor``."""

    def finished(job: ExportJob) -> None:
        _record(
            state,
            exported_event(
                job.principal,
                None,
                job.filters,
                job.fmt,
                job.progress.rows,
                mode="job",
                complete=job.status == "done",
                target=Target("audit_export", job.id),
                phi_mode="server" if job.reveal is not None and job.reveal.active else None,
            ),
        )

    return ExportJobs(
        settings.state_dir / "exports",
        max_running=settings.export_max_jobs,
        retention_s=settings.export_retention_seconds,
        on_finished=finished,
    )

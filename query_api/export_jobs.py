"""Export jobs: an export written to a file under the node's state folder, downloaded later.

``POST /api/v2/public/audit/exports`` submits a job to :class:`ExportJobs`, which
runs at most ``settings.export_max_jobs`` at once (the others wait queued, at most
:data:`MAX_WAITING`) and writes each with :func:`query_api.exports.export_chunks` to
``<state_dir>/exports/<id>.<ext>`` (``.part`` until complete). A job belongs to the
tenant of the key that made it: any other tenant gets the same 404 as for an unknown
id. Jobs live in the node's memory; the files of a previous run are removed at
start, and a finished job (with its file) is dropped after
``settings.export_retention_seconds``.

**Download URLs** are signed like the cursors (:mod:`query_api.cursor`): an
HMAC-SHA256 under ``settings.cursor_secret`` of the tenant, the job id and the
expiry (``settings.export_link_ttl_seconds`` after the status call that issued
it), domain-separated from cursors. The URL alone grants the download until it
expires, so it can be handed to a browser or a download tool; a changed id,
expiry or signature, an expired link, or a job that is gone answer the same 404.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from phi.policy import Revealer
from query_api.auth import Principal
from query_api.exports import ExportProgress, Format, export_chunks
from query_api.filters import Filters
from velora.errors import NotFound, RateLimited
from velora.settings import Secret

log = logging.getLogger(__name__)

MAX_WAITING = 32
"""Jobs queued (not yet running) on one node; one more answers 429."""
_SIGNING_DOMAIN = b"velora export download v1"


@dataclass
class ExportJob:
    """One export job and what it has produced."""

    id: str
    principal: Principal
    filters: Filters
    fmt: Format
    created_at: datetime
    status: str = "queued"
    """``queued``, ``running``, ``done`` or ``failed``."""
    progress: ExportProgress = field(default_factory=ExportProgress)
    finished_at: datetime | None = None
    error: str | None = None
    path: Path | None = None
    finished_mono: float | None = None
    reveal: Revealer | None = field(default=None, repr=False)
    """Opens a server-mode tenant's PHI (None: as stored)."""

    @property
    def tenant_id(self) -> str:
        """The tenant the job belongs to (its key's)."""
        return self.principal.tenant_id


class ExportJobs:
    """The export jobs of one query node."""

    def __init__(
        self,
        directory: Path,
        *,
        max_running: int,
        retention_s: float,
        on_finished: Callable[[ExportJob], None],
    ) -> None:
        self.directory = directory
        self._retention_s = retention_s
        self._on_finished = on_finished
        self._jobs: dict[str, ExportJob] = {}
        self._stops: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_running, thread_name_prefix="export-job")
        if directory.exists():
            shutil.rmtree(directory, ignore_errors=True)  # jobs of a previous run are gone
        directory.mkdir(parents=True, exist_ok=True)

    def submit(
        self,
        principal: Principal,
        filters: Filters,
        fmt: Format,
        cursor: duckdb.DuckDBPyConnection,
        reveal: Revealer | None = None,
    ) -> ExportJob:
        """Queue a job that exports with ``cursor`` (which the job closes); ``reveal``
        opens a server-mode tenant's PHI."""
        self._sweep()
        with self._lock:
            waiting = sum(1 for j in self._jobs.values() if j.status == "queued")
            if waiting >= MAX_WAITING:
                cursor.close()
                raise RateLimited("too many export jobs are waiting; retry later", retry_after=30)
            job = ExportJob(
                id=f"exp_{secrets.token_hex(16)}",
                principal=principal,
                filters=filters,
                fmt=fmt,
                created_at=datetime.now(UTC),
                reveal=reveal,
            )
            self._jobs[job.id] = job
            self._stops[job.id] = threading.Event()
        self._pool.submit(self._run, job, cursor)
        return job

    def get(self, tenant_id: str, job_id: str) -> ExportJob:
        """The tenant's job; 404 for an unknown id and for another tenant's job."""
        self._sweep()
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or job.tenant_id != tenant_id:
            raise NotFound("no such export job")
        return job

    def find(self, job_id: str) -> ExportJob | None:
        """Any tenant's job by id (for a signed download, which names no tenant)."""
        self._sweep()
        with self._lock:
            return self._jobs.get(job_id)

    def _run(self, job: ExportJob, cursor: duckdb.DuckDBPyConnection) -> None:
        stop = self._stops[job.id]
        final = self.directory / f"{job.id}.{job.fmt.extension}"
        partial = final.with_name(final.name + ".part")
        try:
            if stop.is_set():
                raise InterruptedError("the node is stopping")
            job.status = "running"
            with partial.open("wb") as out:
                for chunk in export_chunks(
                    cursor, job.tenant_id, job.filters, job.fmt, job.progress, stop, job.reveal
                ):
                    out.write(chunk)
            if stop.is_set():
                raise InterruptedError("the node is stopping")
            partial.rename(final)
            job.path = final
            job.status = "done"
        except Exception as exc:  # any failure ends the job as failed, with its class only
            partial.unlink(missing_ok=True)
            job.status = "failed"
            job.error = "the export did not complete; submit it again"
            log.error("export job %s of tenant %s failed: %s", job.id, job.tenant_id,
                      type(exc).__name__)  # fmt: skip
        finally:
            job.finished_at = datetime.now(UTC)
            job.finished_mono = time.monotonic()
            try:
                cursor.close()
            except duckdb.Error:
                pass
        try:
            self._on_finished(job)
        except Exception as exc:  # recording is another component: log, never crash the pool
            log.error("export job %s: recording it failed: %s", job.id, type(exc).__name__)

    def _sweep(self) -> None:
        """Drop finished jobs (and their files) older than the retention."""
        now = time.monotonic()
        with self._lock:
            old = [
                j
                for j in self._jobs.values()
                if j.finished_mono is not None and now - j.finished_mono > self._retention_s
            ]
            for job in old:
                del self._jobs[job.id]
                self._stops.pop(job.id, None)
        for job in old:
            if job.path is not None:
                job.path.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop running jobs, drop queued ones, wait for the workers."""
        with self._lock:
            for stop in self._stops.values():
                stop.set()
        self._pool.shutdown(wait=True, cancel_futures=False)


# -- signed download links ---------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _mac(secret: Secret, tenant_id: str, job_id: str, expires: int) -> str:
    mac = hmac.new(secret.reveal().encode(), digestmod=hashlib.sha256)
    for part in (_SIGNING_DOMAIN, tenant_id.encode(), job_id.encode(), str(expires).encode()):
        mac.update(len(part).to_bytes(4, "big"))
        mac.update(part)
    return _b64(mac.digest()[:16])


def sign(secret: Secret, tenant_id: str, job_id: str, expires: int) -> str:
    """The signature of a download link valid until ``expires`` (Unix seconds)."""
    return _mac(secret, tenant_id, job_id, expires)


def verify(secret: Secret, tenant_id: str, job_id: str, expires: int, signature: str) -> bool:
    """Whether ``signature`` is the one :func:`sign` made for these values."""
    expected = _mac(secret, tenant_id, job_id, expires)
    return hmac.compare_digest(signature.encode(), expected.encode())

"""Ingest benchmarks: events/s through the library and through HTTP ingest.

- ``library``: :meth:`ingest.AuditProducer.send_many` with 500-event batches from
  two caller threads in this process (one prepares a batch while the other waits
  for its acks), each call returning only once Kafka acknowledged (``acks=all``);
  also with one thread. Floor: 30k/s.
- ``http``: the real ``velora ingest serve`` (uvicorn, in a subprocess) fed
  500-event JSON arrays by a few concurrent ``httpx`` clients; every answer is
  checked to be a 200 with 500 accepted items. Floor: 15k/s.

Each figure is the median of several runs over fresh events (server-assigned
ids), with CPU use: this process (``measure_cpu``) and, for HTTP, the server
process (from ``/proc``). Results go to ``bench/results/ingest.json``.

Run alone with ``python -m bench ingest [--bootstrap host:port]``; without
``--bootstrap`` it starts its own broker in a temporary folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from bench.report import CpuSample, Row, measure_cpu, process_cpu_s, write_results
from ingest import Accepted, AuditProducer
from velora.errors import BrokerError
from velora.settings import Settings

LIBRARY_FLOOR = 30_000.0
HTTP_FLOOR = 15_000.0
BATCH = 500
LIBRARY_THREADS = 2  # more caller threads cost ~20% CPU in GIL hand-offs (docs/ingest.md)
HTTP_CLIENTS = 4
RUNS = 5
LIBRARY_EVENTS_PER_RUN = 100_000
HTTP_REQUESTS_PER_RUN = 200  # x 500 events
TENANTS = 20


def run(settings: Settings) -> list[Row]:
    """Measure library and HTTP ingest against ``settings.kafka_bootstrap``."""
    return [*library(settings), *http(settings)]


def sample_events(n: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` realistic events (about 350 bytes of JSON each) over :data:`TENANTS` tenants."""
    base = datetime.now(UTC) - timedelta(minutes=5)
    return [
        {
            "tenant_id": f"tenant-{(seed + i) % TENANTS:02d}",
            "occurred_at": (base + timedelta(milliseconds=i)).isoformat(),
            "action": "claim.viewed",
            "crud": "read",
            "category": "claims",
            "actor": {
                "type": "user",
                "id": f"user-{i % 250}",
                "name": "Dr. Dana Whitfield",
                "email": "dana@example.org",
                "ip": f"10.1.{i % 8}.{i % 200}",
                "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0",
            },
            "targets": [{"type": "claim", "id": f"CLM-{seed}-{i}", "name": "Outpatient claim"}],
            "outcome": {"result": "success"},
            "request_id": f"req-{seed}-{i}",
            "source": "claims-service",
            "metadata": {"page": str(i % 10), "region": "eu-west-1"},
        }
        for i in range(n)
    ]


def library(settings: Settings) -> list[Row]:
    """Events/s through ``AuditProducer.send_many`` (and with one caller thread)."""
    batches = [sample_events(BATCH, seed=s) for s in range(LIBRARY_THREADS)]
    with AuditProducer(settings) as producer:
        for batch in batches:  # connect, fetch metadata, warm caches
            _check(producer.send_many(batch))

        def measure(threads: int, total: int) -> tuple[float, CpuSample]:
            per_thread = total // threads // BATCH

            def work(batch: list[dict[str, Any]]) -> None:
                for _ in range(per_thread):
                    _check(producer.send_many(batch))

            with measure_cpu() as cpu:
                _parallel([lambda b=batches[t]: work(b) for t in range(threads)])
            return per_thread * threads * BATCH / cpu.wall_s, cpu

        many = [measure(LIBRARY_THREADS, LIBRARY_EVENTS_PER_RUN) for _ in range(RUNS)]
        single = [measure(1, LIBRARY_EVENTS_PER_RUN // 2) for _ in range(3)]
    rate = statistics.median(r for r, _ in many)
    rate_1 = statistics.median(r for r, _ in single)
    cpu_pct = statistics.median(c.cpu_percent for _, c in many)
    data = {
        "events_per_s": round(rate),
        "runs": [round(r) for r, _ in many],
        "cpu_percent": round(cpu_pct, 1),
        "cpu_us_per_event": round(
            1e6 * statistics.median(c.cpu_s / (r * c.wall_s) for r, c in many), 1
        ),
        "threads": LIBRARY_THREADS,
        "batch": BATCH,
        "events_per_run": LIBRARY_EVENTS_PER_RUN,
        "single_thread_events_per_s": round(rate_1),
        "floor": LIBRARY_FLOOR,
        "meets_floor": rate >= LIBRARY_FLOOR,
    }
    write_results("ingest", "library", data)
    return [
        Row(
            f"library send_many, {LIBRARY_THREADS} threads x {BATCH}",
            rate,
            "events/s",
            f">= {LIBRARY_FLOOR:,.0f}",
            extra=data,
        ),
        Row(f"library send_many, 1 thread x {BATCH}", rate_1, "events/s"),
        Row("library CPU (this process)", cpu_pct, "% of core"),
    ]


def http(settings: Settings) -> list[Row]:
    """Events/s through ``velora ingest serve`` with 500-event JSON batches."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request
    token = secrets.token_urlsafe(24)
    bodies = [json.dumps(sample_events(BATCH, seed=s)).encode() for s in range(HTTP_CLIENTS)]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with _IngestServer(settings, token) as server:
        clients = [httpx.Client(base_url=server.url, timeout=60) for _ in range(HTTP_CLIENTS)]
        try:
            for client, body in zip(clients, bodies, strict=True):  # warm up
                _check_http(client.post("/internal/v1/events", content=body, headers=headers))

            def measure() -> tuple[float, CpuSample, float]:
                per_client = HTTP_REQUESTS_PER_RUN // HTTP_CLIENTS

                def work(client: httpx.Client, body: bytes) -> None:
                    for _ in range(per_client):
                        _check_http(
                            client.post("/internal/v1/events", content=body, headers=headers)
                        )

                server_cpu0 = server.cpu_seconds()
                with measure_cpu() as cpu:
                    _parallel(
                        [lambda c=c, b=b: work(c, b) for c, b in zip(clients, bodies, strict=True)]
                    )
                server_pct = 100 * (server.cpu_seconds() - server_cpu0) / cpu.wall_s
                return per_client * HTTP_CLIENTS * BATCH / cpu.wall_s, cpu, server_pct

            runs = [measure() for _ in range(RUNS)]
        finally:
            for client in clients:
                client.close()
    rate = statistics.median(r for r, _, _ in runs)
    server_pct = statistics.median(s for _, _, s in runs)
    client_pct = statistics.median(c.cpu_percent for _, c, _ in runs)
    data = {
        "events_per_s": round(rate),
        "requests_per_s": round(rate / BATCH, 1),
        "runs": [round(r) for r, _, _ in runs],
        "server_cpu_percent": round(server_pct, 1),
        "client_cpu_percent": round(client_pct, 1),
        "clients": HTTP_CLIENTS,
        "batch": BATCH,
        "body_bytes": len(bodies[0]),
        "requests_per_run": HTTP_REQUESTS_PER_RUN,
        "floor": HTTP_FLOOR,
        "meets_floor": rate >= HTTP_FLOOR,
    }
    write_results("ingest", "http", data)
    return [
        Row(
            f"http POST {BATCH}-event batches, {HTTP_CLIENTS} clients",
            rate,
            "events/s",
            f">= {HTTP_FLOOR:,.0f}",
            extra=data,
        ),
        Row("http ingest server CPU", server_pct, "% of core"),
        Row("http bench clients CPU", client_pct, "% of core"),
    ]


def _check(results: list[Any]) -> None:
    if not all(isinstance(r, Accepted) for r in results):
        raise BrokerError(f"bench events were rejected: {results[:3]}")


def _check_http(response: httpx.Response) -> None:
    if response.status_code != 200 or response.json()["accepted"] != BATCH:
        raise BrokerError(f"ingest answered {response.status_code}: {response.text[:300]}")


def _parallel(jobs: list[Callable[[], None]]) -> None:
    """Run ``jobs`` in threads; re-raise the first failure."""
    errors: list[BaseException] = []

    def guard(job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as exc:  # handed to the caller below
            errors.append(exc)

    threads = [threading.Thread(target=guard, args=(job,)) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


class _IngestServer:
    """``velora ingest serve --port 0`` in a subprocess; knows its URL and CPU time."""

    def __init__(self, settings: Settings, token: str) -> None:
        self.env: dict[str, str] = {
            **{k: v for k, v in os.environ.items() if not k.startswith("VELORA_")},
            "VELORA_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "VELORA_TOPIC_PREFIX": settings.topic_prefix,
            "VELORA_INGEST_TOKENS": token,
            "VELORA_INGEST_HOST": "127.0.0.1",
            "VELORA_INGEST_PORT": "0",
            "VELORA_LOG_LEVEL": "WARNING",
        }
        self.url = ""
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> _IngestServer:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "ingest", "serve"],
            env={**self.env, "VELORA_LOG_LEVEL": "INFO"},  # INFO: the service logs its port
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            self.url = self._wait_port()
        except BaseException:  # not started, or interrupted meanwhile: never leave it running
            self.__exit__()
            raise
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _wait_port(self) -> str:
        stderr = self.proc.stderr if self.proc is not None else None
        if self.proc is None or stderr is None:  # pragma: no cover - stderr=PIPE gives one
            raise BrokerError("no stderr pipe to read the server's port from")
        deadline = time.monotonic() + 60
        seen: list[str] = []
        while time.monotonic() < deadline:
            line = stderr.readline()
            seen.append(line)
            m = re.search(r"listening on (http://[\d.]+:\d+)", line)
            if m:
                return m.group(1)
            if not line and self.proc.poll() is not None:
                break
        raise BrokerError("ingest server did not start:\n" + "".join(seen[-20:]))

    def _drain(self) -> None:
        if self.proc is not None and self.proc.stderr is not None:
            for _ in self.proc.stderr:
                pass

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server process so far."""
        if self.proc is None:
            return 0.0
        return process_cpu_s(self.proc.pid)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

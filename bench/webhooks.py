"""Webhook benchmarks (``webhooks.json``): deliveries/s, and ingest-to-delivery latency.

Method. A minimal receiver runs in its own process (``bench/webhook_receiver.py``:
raw ASGI under uvicorn, answers 200, records each event id's arrival time). A real
dispatcher runs as ``velora webhooks dispatch`` in its own process.

- **Deliveries/s** (``json`` and ``ndjson``): one endpoint of one tenant;
  :data:`EVENTS` events are written to the audit topic first, then the dispatcher is
  started; the rate is events delivered over the time from the first arrival to the
  last (group join and start-up excluded). Every event must arrive.
- **Baseline**: in the same run, against the same receiver, a bare ``httpx`` loop
  (``AsyncClient``, the same number of concurrent requests as the dispatcher's
  per-endpoint concurrency, a body of the same size) POSTs :data:`EVENTS` times;
  the ratio is dispatcher / baseline.
- **Latency**: the dispatcher follows the log while events are produced at a steady
  :data:`RATE` per second for :data:`SECONDS` seconds; for each event, arrival
  (receiver clock) minus the producer's acknowledgement (same machine, wall clock);
  p50 and p99 over all events.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from typing import Any

import httpx

from bench.report import Row, percentile, process_cpu_s, write_results
from tests.factory import EventFactory, fast_producer
from velora.settings import Settings
from velora.topics import ensure_topics

EVENTS = 20_000
RATE = 1_000
SECONDS = 15.0
JSON_FLOOR = 2_000.0
P99_FLOOR_MS = 1_000.0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ReceiverProcess:
    def __init__(self) -> None:
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.webhook_receiver", str(self.port)]
        )
        self.url = f"http://127.0.0.1:{self.port}/hook"
        try:
            self._wait_ready()
        except BaseException:  # not started, or interrupted meanwhile: never leave it running
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.stats()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the benchmark receiver did not start")

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url, timeout=30) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def _settings(base: Settings, tag: str) -> Settings:
    s = base.with_overrides(
        topic_prefix=f"{base.topic_prefix}-{tag}-{uuid.uuid4().hex[:6]}",
        audit_partitions=1,
        webhooks_allow_insecure_loopback=True,
    )
    ensure_topics(s)
    return s


def _env(s: Settings) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("VELORA_")},
        "VELORA_KAFKA_BOOTSTRAP": s.kafka_bootstrap,
        "VELORA_TOPIC_PREFIX": s.topic_prefix,
        "VELORA_AUDIT_PARTITIONS": str(s.audit_partitions),
        "VELORA_WEBHOOKS_ALLOW_INSECURE_LOOPBACK": "1",
        "VELORA_DISPATCHER_PORT": "0",
        "VELORA_LOG_LEVEL": "WARNING",
    }


def _endpoint(s: Settings, url: str, fmt: str) -> None:
    from tests.webhook_support import create_endpoint

    create_endpoint(s, "tenant-00", url, format=fmt)


def _dispatcher(s: Settings) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "cli", "webhooks", "dispatch"], env=_env(s))


def _wait_all(rx: ReceiverProcess, ids: set[str], timeout: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        arrivals = rx.stats()["arrivals"]
        if ids <= set(arrivals):
            return {i: arrivals[i] for i in ids}
        if time.monotonic() > deadline:
            missing = len(ids - set(arrivals))
            raise RuntimeError(f"{missing} of {len(ids)} events not delivered in {timeout:.0f}s")
        time.sleep(0.5)


def throughput(base: Settings, fmt: str, events: int) -> dict[str, Any]:
    """Deliveries/s of one endpoint in format ``fmt`` (see the module docstring)."""
    s = _settings(base, fmt)
    rx = ReceiverProcess()
    try:
        _endpoint(s, rx.url, fmt)
        factory = EventFactory(tenants=1)
        made = list(factory.stream(events))
        producer = fast_producer(s)
        for e in made:
            producer.send(s.audit_topic, key=e.key, value=e.value)
        producer.flush()
        producer.close()
        proc = _dispatcher(s)
        try:
            while not rx.stats()["requests"] and proc.poll() is None:
                time.sleep(0.05)
            cpu_at_first = process_cpu_s(proc.pid)  # start-up and the group join left out
            arrivals = _wait_all(rx, {e.event_id for e in made}, timeout=600)
            cpu = process_cpu_s(proc.pid) - cpu_at_first
        finally:
            proc.terminate()
            proc.wait(60)
        span = max(arrivals.values()) - min(arrivals.values())
        return {
            "events": events,
            "seconds": span,
            "deliveries_per_s": events / span,
            "requests": rx.stats()["requests"],
            "dispatcher_cpu_ms_per_event": cpu * 1000 / events,
        }
    finally:
        rx.stop()


def bare_httpx(events: int, concurrency: int, body_size: int) -> dict[str, Any]:
    """A bare httpx POST loop to the same kind of receiver: requests/s."""
    rx = ReceiverProcess()
    retried = [0]
    try:

        async def run() -> float:
            async with httpx.AsyncClient(timeout=10) as client:
                queue: asyncio.Queue[int] = asyncio.Queue()
                for i in range(events):
                    queue.put_nowait(i)
                pad = "x" * max(0, body_size - 40)

                async def worker() -> None:
                    while not queue.empty():
                        i = queue.get_nowait()
                        body = json.dumps({"id": f"e{i}", "type": "bench", "pad": pad})
                        for _ in range(3):  # as the dispatcher, a failed POST is sent again
                            try:
                                r = await client.post(
                                    rx.url,
                                    content=body,
                                    headers={"content-type": "application/json"},
                                )
                                break
                            except httpx.TransportError:
                                retried[0] += 1
                        else:
                            raise RuntimeError("the receiver refused a POST three times")
                        r.raise_for_status()

                started = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(concurrency)))
                return time.perf_counter() - started

        seconds = asyncio.run(run())
        return {
            "events": events,
            "seconds": seconds,
            "posts_per_s": events / seconds,
            "concurrency": concurrency,
            "resent_after_transport_errors": retried[0],
        }
    finally:
        rx.stop()


def latency(base: Settings, rate: int, seconds: float) -> dict[str, Any]:
    """Ingest (ack) -> delivery latency at a steady rate, json."""
    s = _settings(base, "latency")
    rx = ReceiverProcess()
    proc = None
    try:
        _endpoint(s, rx.url, "json")
        proc = _dispatcher(s)
        time.sleep(5)  # the dispatcher joins its group
        factory = EventFactory(tenants=1)
        producer = fast_producer(s)
        acked: dict[str, float] = {}

        def on_ack(event_id: str) -> Any:
            return lambda _meta: acked.__setitem__(event_id, time.time())

        total = int(rate * seconds)
        tick = 0.01
        per_tick = max(1, int(rate * tick))
        started = time.perf_counter()
        sent = 0
        while sent < total:
            for e in factory.stream(min(per_tick, total - sent)):
                producer.send(s.audit_topic, key=e.key, value=e.value).add_callback(
                    on_ack(e.event_id)
                )
                sent += 1
            time.sleep(max(0.0, started + sent / rate - time.perf_counter()))
        producer.flush()
        producer.close()
        arrivals = _wait_all(rx, set(acked), timeout=300)
        lat = [1000.0 * (arrivals[i] - acked[i]) for i in acked]
        return {
            "rate": rate,
            "seconds": seconds,
            "events": len(lat),
            "p50_ms": percentile(lat, 50),
            "p99_ms": percentile(lat, 99),
            "mean_ms": statistics.fmean(lat),
        }
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
        rx.stop()


def run(settings: Settings, *, quick: bool = False) -> list[Row]:
    """Run the webhook benchmarks; write ``bench/results/webhooks.json``."""
    events = EVENTS // (10 if quick else 1)
    json_run = throughput(settings, "json", events)
    nd_run = throughput(settings, "ndjson", events)
    body = len(json.dumps({"x": "y" * 900}))
    bare = bare_httpx(events, settings.webhooks_concurrency, body)
    lat = latency(settings, RATE, SECONDS / (5 if quick else 1))
    ratio = json_run["deliveries_per_s"] / bare["posts_per_s"]
    data = {
        "json": json_run,
        "ndjson": nd_run,
        "bare_httpx": bare,
        "json_vs_bare_httpx": ratio,
        "latency": lat,
        "floors": {"json_deliveries_per_s": JSON_FLOOR, "p99_ms": P99_FLOOR_MS},
    }
    write_results("webhooks", "webhooks", data)
    return [
        Row("json deliveries/s", json_run["deliveries_per_s"], "/s", f">= {JSON_FLOOR:,.0f}"),
        Row("json dispatcher CPU/event", json_run["dispatcher_cpu_ms_per_event"], "ms"),
        Row("ndjson deliveries/s", nd_run["deliveries_per_s"], "/s"),
        Row("ndjson dispatcher CPU/event", nd_run["dispatcher_cpu_ms_per_event"], "ms"),
        Row("bare httpx POSTs/s", bare["posts_per_s"], "/s"),
        Row("json / bare httpx", ratio, "ratio"),
        Row(f"ack -> delivery p50 @ {RATE}/s", lat["p50_ms"], "ms"),
        Row(f"ack -> delivery p99 @ {RATE}/s", lat["p99_ms"], "ms", f"< {P99_FLOOR_MS:,.0f}"),
    ]

"""Soak: five minutes of steady HTTP ingest while four clients page the API.

**System.** ``velora node`` and ``velora ingest serve`` as child processes (as
``velora run`` starts them, so with every HTTP limit), on the bench broker.

**Load.** 5,000 events/s for :data:`DURATION_S`: :data:`SENDERS` threads (in their
own process, :mod:`bench.soak_clients`) each own a share of :data:`TENANTS` tenants
and post a :data:`BATCH`-event JSON array on a fixed schedule, waiting for each
answer. Event ids are chosen here, so a batch
that was not acknowledged (503, timeout) is resent as is until it is: the ledger
must then hold exactly the acknowledged events. A tenant's events come from one
thread, in order, with rising ``occurred_at``, so its trail (newest first) must be
its acknowledged events in reverse.

**Readers.** :data:`PAGERS` threads (in another process) walk whole trails (``limit`` 500, following
``next_cursor``) tenant after tenant for the whole run, checking that no walk
repeats an event or breaks the ``(occurred_at, event_id)`` order.

**Measured.** Every :data:`SAMPLE_EVERY_S` s: the node's and ingest's RSS (from
``/proc``), events acknowledged, the node's lag. Growth per million events is
the least-squares slope of RSS over events acknowledged, from the first sample
under load on. At the end, once the node has caught up, every tenant's trail is
read back: every acknowledged event exactly once, in order, and nothing else.
Results go to ``bench/results/soak.json``; a lost, repeated or misordered event
fails the run.

Run alone with ``python -m bench soak [--bootstrap host:port]``.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.report import Row, percentile, process_cpu_s, write_results
from bench.soak_clients import (
    BATCH,
    LIST_PATH,
    PAGE_LIMIT,
    SOURCE,
    LoadProcess,
    ReadersProcess,
    order_problem,
    walk,
)
from cli.keys import create_key
from velora.errors import BrokerError
from velora.memory import rss_bytes
from velora.settings import Settings

DURATION_S = 300
RATE = 5_000  # events/s, all senders together
SENDERS = 20  # one tenant each; 20 requests in flight absorb a slow ack on a busy machine
TENANTS = 20
PAGERS = 4
SAMPLE_EVERY_S = 30
MB = 1_000_000


def run(settings: Settings) -> list[Row]:
    """The soak against ``settings.kafka_bootstrap``; raises if any event was lost."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
    token = secrets.token_urlsafe(24)
    tenants = [f"soak-{i:02d}" for i in range(TENANTS)]
    logs = settings.state_dir
    with (
        _Child(settings, logs / "node.log", ["node"], token) as node,
        _Child(settings, logs / "ingest.log", ["ingest", "serve"], token) as ingest,
    ):
        _wait(lambda: _get(f"{node.url}/readyz").status_code == 200, 120, "the node to be ready")
        keys = {t: create_key(settings, t, ("audit:read",), name="soak").token for t in tenants}
        for t in tenants:  # the node has folded every key
            _wait(lambda t=t: _list(node.url, keys[t]).status_code == 200, 60, "the soak keys")
        load = LoadProcess(
            ingest.url,
            token,
            tenants,
            rate=RATE,
            senders=SENDERS,
            duration_s=DURATION_S,
            out=logs / "senders.json",
        )
        readers = ReadersProcess(node.url, keys, tenants, pagers=PAGERS, out=logs / "pagers.json")
        samples: list[dict[str, Any]] = []
        cpu0 = {"node": node.cpu_s(), "ingest": ingest.cpu_s()}
        samples.append(_sample(0.0, load.count, node, ingest))
        load.start()
        readers.start()
        started = time.monotonic()
        for n in range(1, DURATION_S // SAMPLE_EVERY_S + 1):
            time.sleep(max(0.0, started + n * SAMPLE_EVERY_S - time.monotonic()))
            samples.append(_sample(time.monotonic() - started, load.count, node, ingest))
            print(f"soak: {_describe(samples[-1])}", file=sys.stderr)
        sent = load.join()
        elapsed = time.monotonic() - started
        read = readers.stop()
        cpu = {"node": node.cpu_s() - cpu0["node"], "ingest": ingest.cpu_s() - cpu0["ingest"]}
        caught_up = _wait_caught_up(node.url)
        verdict = _verify(node.url, keys, sent["acked"])
        final = _sample(time.monotonic() - started, load.count, node, ingest)
    data = _results(sent, read, samples, final, verdict, elapsed, cpu, caught_up)
    write_results("soak", "soak", data)
    if not verdict["ok"]:
        raise BrokerError(f"soak: the ledger does not hold the acknowledged events: {verdict}")
    growth = data["rss_growth_mb_per_million_events"]
    return [
        Row(
            f"http ingest held for {DURATION_S} s, {PAGERS} readers paging",
            data["events_per_s"],
            "events/s",
            f"target {RATE:,}",
            extra=data,
        ),
        Row("acknowledged events read back once, in order", verdict["read_back"], "events"),
        Row("node RSS growth per million events", growth["node"], "MB"),
        Row("ingest RSS growth per million events", growth["ingest"], "MB"),
        Row("page of 500, p50 (readers)", data["readers"]["page_ms_p50"], "ms"),
        Row("page of 500, p99 (readers)", data["readers"]["page_ms_p99"], "ms"),
    ]


class _Child:
    """``python -m cli ARGS`` for the bench settings; knows its URL, RSS and CPU time."""

    def __init__(self, settings: Settings, log: Path, args: list[str], token: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VELORA_")}
        env.update({
            "VELORA_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "VELORA_TOPIC_PREFIX": settings.topic_prefix,
            "VELORA_AUDIT_PARTITIONS": str(settings.audit_partitions),
            "VELORA_DUCKDB_PATH": str(settings.duckdb_path),
            "VELORA_STATE_DIR": str(settings.state_dir),
            "VELORA_KEY_PEPPER": settings.key_pepper.reveal(),
            "VELORA_CURSOR_SECRET": settings.cursor_secret.reveal(),
            "VELORA_INGEST_TOKENS": token,
            "VELORA_NODE_PORT": "0",
            "VELORA_INGEST_PORT": "0",
            "VELORA_RATE_LIMIT_BURST": "1000000",  # the readers measure paging, not limits
            "VELORA_RATE_LIMIT_PER_SECOND": "1000000",
            "VELORA_AUTH_FAILURE_LIMIT": "1000000",  # polling for the keys meets 401s first
            "VELORA_LOG_LEVEL": "INFO",  # INFO: the service logs its port
        })  # fmt: skip
        self.log_path = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log, "ab")  # closed in __exit__
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", *args], env=env, stdout=self._log, stderr=self._log
        )
        self.url = ""

    def __enter__(self) -> _Child:
        try:
            _wait(self._started, 120, f"{self.log_path.stem} to start")
        except BaseException:
            self.__exit__()
            raise
        return self

    def _started(self) -> bool:
        if self.proc.poll() is not None:
            tail = self.log_path.read_bytes()[-2000:].decode(errors="replace")
            raise BrokerError(f"{self.log_path.stem} exited: {tail}")
        found = re.findall(rb"listening on (http://[\d.]+:\d+)", self.log_path.read_bytes())
        self.url = found[-1].decode() if found else ""
        return bool(self.url)

    def rss_mb(self) -> float:
        return rss_bytes(self.proc.pid) / MB

    def cpu_s(self) -> float:
        """User + system CPU seconds of the process so far."""
        return process_cpu_s(self.proc.pid)

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def _wait_caught_up(url: str) -> float:
    """Seconds until the node reports lag 0 twice in a row (its end offsets refresh ~1/s)."""
    t0 = time.monotonic()
    zeros = 0
    while zeros < 2:
        if time.monotonic() - t0 > 600:
            raise BrokerError("the node did not catch up within 10 minutes")
        lag = _get(f"{url}/readyz").json().get("lag")
        zeros = zeros + 1 if lag == 0 else 0
        time.sleep(1.1)
    return time.monotonic() - t0


def _verify(url: str, keys: dict[str, str], acked: dict[str, list[str]]) -> dict[str, Any]:
    """Every tenant's trail against its acknowledged events: once each, in order, no more."""
    missing = repeated = unexpected = misordered = read_back = 0
    with httpx.Client(base_url=url, timeout=120) as client:
        for tenant, key in keys.items():
            seen = walk(client, key)
            ours = [eid for _, eid, source in seen if source == SOURCE]
            expected = list(reversed(acked.get(tenant, [])))  # newest first
            missing += len(set(expected) - set(ours))
            unexpected += len(set(ours) - set(expected))
            repeated += len(ours) - len(set(ours))
            read_back += len(set(ours) & set(expected))
            misordered += ours != expected or order_problem(seen) is not None
    ok = missing == repeated == unexpected == misordered == 0
    return {
        "ok": ok,
        "read_back": read_back,
        "acknowledged": sum(len(v) for v in acked.values()),
        "missing": missing,
        "repeated": repeated,
        "unexpected": unexpected,
        "misordered_tenants": misordered,
    }


def _sample(t: float, acked: int, node: _Child, ingest: _Child) -> dict[str, Any]:
    try:
        lag = _get(f"{node.url}/readyz").json().get("lag")
    except (httpx.HTTPError, ValueError):
        lag = None
    return {
        "t_s": round(t, 1),
        "events_acked": acked,
        "node_rss_mb": round(node.rss_mb(), 1),
        "ingest_rss_mb": round(ingest.rss_mb(), 1),
        "node_lag": lag,
    }


def _describe(s: dict[str, Any]) -> str:
    return (
        f"t={s['t_s']:.0f}s acked={s['events_acked']:,} node={s['node_rss_mb']:.0f}MB "
        f"ingest={s['ingest_rss_mb']:.0f}MB lag={s['node_lag']}"
    )


def _slope_mb_per_million(samples: list[dict[str, Any]], field: str) -> float:
    """Least-squares slope of ``field`` (MB) over events acknowledged, per million events."""
    pts = [(s["events_acked"], s[field]) for s in samples if s["events_acked"] > 0]
    if len(pts) < 2:
        return 0.0
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var * 1e6


def _results(
    sent: dict[str, Any],
    read: dict[str, Any],
    samples: list[dict[str, Any]],
    final: dict[str, Any],
    verdict: dict[str, Any],
    elapsed: float,
    cpu: dict[str, float],
    caught_up_s: float,
) -> dict[str, Any]:
    return {
        "duration_s": DURATION_S,
        "target_events_per_s": RATE,
        "events_per_s": round(verdict["acknowledged"] / sent["seconds"]),
        "events_acknowledged": verdict["acknowledged"],
        "sending_s": round(sent["seconds"], 1),
        "batches": sent["batches"],
        "batch": BATCH,
        "senders": SENDERS,
        "tenants": TENANTS,
        "resent_batches": sent["resends"],
        "max_schedule_slip_s": round(sent["max_slip_s"], 2),
        "readers": {
            "clients": PAGERS,
            "page_limit": PAGE_LIMIT,
            "walks": read["walks"],
            "pages": len(read["page_ms"]),
            "events_read": read["events_read"],
            "retried_pages": read["retried_pages"],
            "page_ms_p50": round(percentile(read["page_ms"], 50), 1),
            "page_ms_p99": round(percentile(read["page_ms"], 99), 1),
            "order_violations": read["violations"][:10],
        },
        "verification": verdict,
        "caught_up_after_load_s": round(caught_up_s, 1),
        "cpu_percent_of_a_core": {k: round(100 * v / elapsed, 1) for k, v in cpu.items()},
        "samples": samples,
        "after_verification": final,
        "rss_growth_mb_per_million_events": {
            "node": round(_slope_mb_per_million(samples, "node_rss_mb"), 1),
            "ingest": round(_slope_mb_per_million(samples, "ingest_rss_mb"), 1),
        },
    }


def _get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=10)


def _list(url: str, key: str) -> httpx.Response:
    return httpx.get(
        f"{url}{LIST_PATH}", params={"limit": 1}, headers={"Authorization": f"Bearer {key}"}
    )


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise BrokerError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)

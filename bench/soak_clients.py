"""The soak's clients, each group in its own process: the senders and the pagers.

They run beside the node and ingest on the same machine, so they must stay cheap
and must not share one interpreter lock: :class:`LoadProcess` runs the senders'
threads in one process, :class:`ReadersProcess` the pagers' threads in another.
Each reports its live count through shared memory and its results, at the end,
through a JSON file (1.5 million acknowledged ids are too many for a pipe).

A sender's body is a fixed template per tenant (made once from
:func:`bench.ingest.sample_events`) with a fresh ``event_id`` and a rising
``occurred_at`` spliced into each event: building a 500-event batch that way takes
about 2 ms where ``json.dumps`` of fresh dicts took 37 ms.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import threading
import time
import traceback
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench.ingest import sample_events

BATCH = 500  # as the ingest bench; ingest works on 2 requests at once (INGEST_WORKERS)
PAGE_LIMIT = 500
SOURCE = "soak-bench"
EVENTS_PATH = "/internal/v1/events"
LIST_PATH = "/api/v2/public/audit/events"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ID, _AT = "@@event_id@@", "@@occurred_at@@"

_ctx = mp.get_context("spawn")


class Batches:
    """``BATCH``-event JSON bodies for some tenants: fresh ids, ``occurred_at`` rising.

    Event ``i`` of a batch belongs to ``tenants[i % len(tenants)]``; times rise by
    1 µs per event and never repeat across batches, so a tenant's events are in
    ``(occurred_at, event_id)`` order in the order they were sent.
    """

    def __init__(self, tenants: list[str], seed: int = 0) -> None:
        self.tenants = tenants
        self._templates: list[str] = []
        for i, event in enumerate(sample_events(BATCH, seed=seed)):
            event.update(tenant_id=tenants[i % len(tenants)], source=SOURCE)
            event.update(occurred_at=_AT, event_id=_ID)
            text = json.dumps(event, separators=(",", ":")).replace("%", "%%")
            assert text.index(_AT) < text.index(_ID)  # the order of the % arguments below
            self._templates.append(text.replace(_AT, "%s").replace(_ID, "%s"))
        self._last_us = 0

    def next(self) -> tuple[bytes, list[tuple[str, str]]]:
        """One body, and its events' ``(tenant_id, event_id)`` in order."""
        start = max(time.time_ns() // 1000, self._last_us + 1)
        self._last_us = start + BATCH - 1
        base = EPOCH + timedelta(microseconds=start)
        ids = [str(uuid.uuid4()) for _ in range(BATCH)]
        parts = [
            t % ((base + timedelta(microseconds=i)).isoformat(), ids[i])
            for i, t in enumerate(self._templates)
        ]
        body = ("[" + ",".join(parts) + "]").encode()
        n = len(self.tenants)
        return body, [(self.tenants[i % n], ids[i]) for i in range(BATCH)]


class LoadProcess:
    """The senders: ``senders`` threads, each posting its tenants' batches on a schedule.

    A batch goes out every ``BATCH / (rate / senders)`` seconds per thread, waiting
    for each answer; one that was not acknowledged (429, 503, a transport error) is
    resent as is until it is, so the ledger must hold exactly the acknowledged events.
    """

    def __init__(
        self,
        url: str,
        token: str,
        tenants: list[str],
        *,
        rate: int,
        senders: int,
        duration_s: float,
        out: Path,
    ) -> None:
        self.out = out
        self._count = _ctx.Value("q", 0)
        args = (url, token, tenants, rate, senders, duration_s, str(out), self._count)
        self.proc = _ctx.Process(target=_load_main, args=args, name="soak-senders", daemon=True)

    def start(self) -> None:
        self.proc.start()

    @property
    def count(self) -> int:
        """Events acknowledged so far."""
        return int(self._count.value)

    def join(self) -> dict[str, Any]:
        """Wait for the end; the results (``acked``: tenant -> ids in order, ``seconds``
        from the first send to the last answer, counters)."""
        self.proc.join()
        return _results_of(self.out, self.proc)


class ReadersProcess:
    """``pagers`` threads walking whole trails, tenant after tenant, until stopped."""

    def __init__(
        self, url: str, keys: dict[str, str], tenants: list[str], *, pagers: int, out: Path
    ) -> None:
        self.out = out
        self._stop = _ctx.Event()
        args = (url, keys, tenants, pagers, str(out), self._stop)
        self.proc = _ctx.Process(target=_readers_main, args=args, name="soak-pagers", daemon=True)

    def start(self) -> None:
        self.proc.start()

    def stop(self) -> dict[str, Any]:
        """Stop the pagers; their results (page times, walks, violations)."""
        self._stop.set()
        self.proc.join()
        return _results_of(self.out, self.proc)


def _results_of(out: Path, proc: Any) -> dict[str, Any]:
    if not out.exists():
        raise RuntimeError(f"{proc.name} exited with {proc.exitcode} and wrote no results")
    results: dict[str, Any] = json.loads(out.read_text())
    if results.get("error"):
        raise RuntimeError(f"{proc.name} failed: {results['error']}")
    return results


# -- the senders' process ----------------------------------------------------------------
def _load_main(
    url: str,
    token: str,
    tenants: list[str],
    rate: int,
    senders: int,
    duration_s: float,
    out: str,
    count: Any,
) -> None:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    acked: dict[str, list[str]] = defaultdict(list)
    stats = {"batches": 0, "resends": 0, "max_slip_s": 0.0}
    errors: list[str] = []
    lock = threading.Lock()
    until = time.monotonic() + duration_s
    interval = BATCH / (rate / senders)

    def send(mine: list[str], seed: int) -> None:
        batches = Batches(mine, seed)
        due = time.monotonic()
        with httpx.Client(base_url=url, timeout=30, headers=headers) as client:
            while time.monotonic() < until:
                body, events = batches.next()
                while not _post(client, body):
                    with lock:
                        stats["resends"] += 1
                    time.sleep(0.5)
                with lock:
                    for tenant, event_id in events:
                        acked[tenant].append(event_id)
                    stats["batches"] += 1
                with count.get_lock():
                    count.value += len(events)
                due += interval
                slip = time.monotonic() - due
                if slip > 0:
                    with lock:
                        stats["max_slip_s"] = max(stats["max_slip_s"], slip)
                else:
                    time.sleep(-slip)

    def guard(mine: list[str], seed: int) -> None:
        try:
            send(mine, seed)
        except BaseException:
            errors.append(traceback.format_exc(limit=3))

    threads = [
        threading.Thread(target=guard, args=(tenants[i::senders], i), daemon=True)
        for i in range(senders)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats["seconds"] = time.monotonic() - started
    result = {**stats, "acked": acked, "error": errors[0] if errors else None}
    Path(out).write_bytes(orjson.dumps(result))


def _post(client: httpx.Client, body: bytes) -> bool:
    """True once acknowledged; False for an answer worth resending; raises otherwise."""
    try:
        r = client.post(EVENTS_PATH, content=body)
    except httpx.TransportError:
        return False
    if r.status_code in (429, 503):
        return False
    if r.status_code != 200 or r.json()["accepted"] != BATCH:
        raise RuntimeError(f"ingest answered {r.status_code}: {r.text[:300]}")
    return True


# -- the pagers' process -----------------------------------------------------------------
def _readers_main(
    url: str, keys: dict[str, str], tenants: list[str], pagers: int, out: str, stop: Any
) -> None:
    page_ms: list[float] = []
    stats = {"walks": 0, "events_read": 0, "retried_pages": 0}
    violations: list[str] = []
    errors: list[str] = []
    halt = threading.Event()
    lock = threading.Lock()

    def timed(ms: float, retried: bool) -> None:
        with lock:
            page_ms.append(ms)
            stats["retried_pages"] += retried

    def read(first: int) -> None:
        n = first
        try:
            with httpx.Client(base_url=url, timeout=60) as client:
                while not halt.is_set():
                    tenant = tenants[n % len(tenants)]
                    n += pagers
                    seen = walk(client, keys[tenant], halt, timed)
                    problem = order_problem(seen)
                    with lock:
                        stats["walks"] += 1
                        stats["events_read"] += len(seen)
                        if problem:
                            violations.append(f"{tenant}: {problem}")
        except BaseException:
            errors.append(traceback.format_exc(limit=3))

    threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(pagers)]
    for t in threads:
        t.start()
    stop.wait()
    halt.set()
    for t in threads:
        t.join()
    result = {
        **stats,
        "page_ms": page_ms,
        "violations": violations,
        "error": errors[0] if errors else None,
    }
    Path(out).write_bytes(orjson.dumps(result))


def walk(
    client: httpx.Client,
    key: str,
    stop: threading.Event | None = None,
    on_page: Callable[[float, bool], None] | None = None,
) -> list[tuple[str, str, str]]:
    """One tenant's whole trail, newest first: ``(occurred_at, event_id, source)`` each."""
    params: dict[str, Any] = {"limit": PAGE_LIMIT}
    out: list[tuple[str, str, str]] = []
    while stop is None or not stop.is_set():
        t0 = time.perf_counter()
        r = client.get(LIST_PATH, params=params, headers={"Authorization": f"Bearer {key}"})
        if r.status_code in (429, 503):
            if on_page:
                on_page(1000 * (time.perf_counter() - t0), True)
            time.sleep(float(r.headers.get("retry-after", "1")))
            continue
        if r.status_code != 200:
            raise RuntimeError(f"the node answered {r.status_code}: {r.text[:300]}")
        if on_page:
            on_page(1000 * (time.perf_counter() - t0), False)
        body = orjson.loads(r.content)
        out.extend((e["occurred_at"], e["event_id"], e["source"]) for e in body["events"])
        cursor = body["page"]["next_cursor"]
        if cursor is None:
            break
        params = {"limit": PAGE_LIMIT, "cursor": cursor}
    return out


def order_problem(seen: list[tuple[str, str, str]]) -> str | None:
    """A repeated event or a break of the newest-first order in one walk, if any."""
    ids = [e[1] for e in seen]
    if len(set(ids)) != len(ids):
        return f"{len(ids) - len(set(ids))} events repeated"
    keys = [(datetime.fromisoformat(at), eid) for at, eid, _ in seen]
    for a, b in itertools.pairwise(keys):
        if not a > b:
            return f"order broken at {b[1]}"
    return None

"""Ledger benchmarks: materializer catch-up rate, and ack -> visible-in-DuckDB latency.

**Catch-up** (``ingest.json`` section ``materializer``). One million events are
produced first, quickly: :class:`~tests.factory.EventFactory` encodes a few
thousand varied templates with the codec and stamps a new UUIDv7 into a copy for
each event; a batching :class:`~kafka.KafkaProducer` sends them. Only the catch-up
is timed: from starting a :class:`~ledger.materializer.Materializer` on an empty
DuckDB (with the :class:`~ledger.target_keeper.TargetSetKeeper`, the
:class:`~ledger.copy_keeper.CopyKeeper` and, unless ``VELORA_WARM_COPIES=false``, the
:class:`~ledger.copy_warmer.CopyWarmer` beside it, as in a query node, all waiting
while the backlog is replayed) until it has committed the end offsets it saw at
start; then how long each keeper takes to catch up after it. Several runs, each
on a new DuckDB file; the median is reported, with this process's CPU use.

**Freshness** (section ``freshness``). A materializer follows a new, empty topic.
Events are produced at a paced, steady rate (5,000/s by default, in 5 ms ticks)
for a number of seconds. For every event the producer's ack callback records the
time and the (partition, offset) the broker assigned. The materializer's
``on_batch`` callback records the time after every commit, with the next offset
stored per partition. An event is *visible* from the first commit whose stored
offset for its partition is past its offset: from then on every new DuckDB
read sees the row (the callback runs after ``COMMIT`` returns, so the figure
errs on the slow side). Latency = visible - ack; p50 and p99 over all events
of a run, median over runs. Both clocks are this process's ``time.monotonic``.
"""

from __future__ import annotations

import bisect
import logging
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kafka import KafkaProducer

from bench.report import Row, measure_cpu, percentile, write_results
from cli.commands.node import quiet_kafka_selector
from ledger import target_sets
from ledger.copy_keeper import CopyKeeper
from ledger.copy_warmer import CopyWarmer
from ledger.keeper import Keeper
from ledger.materializer import Materializer
from ledger.store import LedgerStore
from ledger.target_keeper import BUSY_LAG, TargetSetKeeper
from tests.factory import EventFactory, fast_producer
from velora.errors import VeloraError
from velora.settings import Settings
from velora.topics import end_offsets, ensure_topics

log = logging.getLogger(__name__)

CATCHUP_EVENTS = 1_000_000
CATCHUP_RUNS = 3
CATCHUP_FLOOR = 50_000.0
FRESHNESS_RATE = 5_000
FRESHNESS_SECONDS = 15.0
FRESHNESS_RUNS = 3
FRESHNESS_P99_FLOOR_MS = 1_000.0


def run(settings: Settings, *, quick: bool = False) -> list[Row]:
    """Run both benchmarks against ``settings.kafka_bootstrap``; write and return the rows."""
    quiet_kafka_selector()  # as the node does: the materializer's polls hold the GIL
    scale = 10 if quick else 1
    rows = catch_up(settings, events=CATCHUP_EVENTS // scale, runs=CATCHUP_RUNS)
    rows += freshness(settings, seconds=FRESHNESS_SECONDS / scale, runs=FRESHNESS_RUNS)
    return rows


def _bench_settings(settings: Settings, tag: str, duckdb_path: Path) -> Settings:
    prefix = f"{settings.topic_prefix}-bench-{tag}-{uuid.uuid4().hex[:8]}"
    bench = settings.with_overrides(topic_prefix=prefix, duckdb_path=duckdb_path)
    ensure_topics(bench)
    return bench


# -- catch-up ----------------------------------------------------------------------
def load(settings: Settings, events: int, factory: EventFactory | None = None) -> float:
    """Produce ``events`` new events to the audit topic as fast as possible; returns events/s."""
    factory = factory or EventFactory()
    producer = fast_producer(settings)
    started = time.perf_counter()
    try:
        for e in factory.stream(events):
            producer.send(settings.audit_topic, key=e.key, value=e.value)
        producer.flush()
    finally:
        producer.close()
    return events / (time.perf_counter() - started)


def _busy(materializer: Materializer) -> Callable[[], bool]:
    """The target-set keeper's test, as a query node makes it (beside the materializer)."""
    return lambda: materializer.status().lag > BUSY_LAG


def _keepers(bench: Settings, store: LedgerStore, materializer: Materializer) -> list[Keeper]:
    """The keepers a query node runs beside its materializer (not started)."""
    busy = _busy(materializer)
    keepers: list[Keeper] = [
        TargetSetKeeper(store, bench.audit_topic, busy=busy),
        CopyKeeper(store, busy=busy),
    ]
    if bench.warm_copies:
        keepers.append(CopyWarmer(store, busy=busy))
    return keepers


def catch_up(settings: Settings, *, events: int, runs: int) -> list[Row]:
    """Materializer catch-up from an empty DuckDB to the end offsets, ``runs`` times."""
    with tempfile.TemporaryDirectory(prefix="velora-bench-") as tmp:
        bench = _bench_settings(settings, "catchup", Path(tmp) / "catchup.duckdb")
        produced = load(bench, events)
        total = sum(end_offsets(bench, bench.audit_topic).values())
        rates, cpus, sets_s, copies_s = [], [], [], []
        for i in range(runs):
            path = Path(tmp) / f"run{i}.duckdb"
            store = LedgerStore(path)
            materializer = Materializer(bench, store)
            keepers = _keepers(bench, store, materializer)
            with measure_cpu() as cpu:
                for k in keepers:
                    k.start()
                materializer.start()
                done = materializer.wait_caught_up(timeout=600)
            materializer.stop()
            sets_started = time.perf_counter()  # the keepers waited; now they have the backlog
            sets_done = _wait_for_sets(store, total, timeout=600)
            sets_s.append(time.perf_counter() - sets_started)
            copies_done = _wait_for_copies(store, timeout=600)
            copies_s.append(time.perf_counter() - sets_started)
            for k in keepers:
                k.stop()
            rows = store.count()
            store.close()
            if not done or rows != total:
                raise VeloraError(f"catch-up run {i} ended at {rows} of {total} rows")
            if not sets_done:
                raise VeloraError(f"catch-up run {i}: the target sets did not catch up")
            if not copies_done:
                raise VeloraError(f"catch-up run {i}: the sorted copies did not catch up")
            rates.append(total / cpu.wall_s)
            cpus.append(cpu.cpu_percent)
            log.info("catch-up run %d: %.0f events/s, %.0f%% CPU", i, rates[-1], cpus[-1])
            for suffix in ("", ".wal"):
                Path(str(path) + suffix).unlink(missing_ok=True)
    result: dict[str, Any] = {
        "events": total,
        "events_per_s_median": statistics.median(rates),
        "events_per_s_runs": rates,
        "cpu_percent_median": statistics.median(cpus),
        "cpu_percent_runs": cpus,
        "floor_events_per_s": CATCHUP_FLOOR,
        "producer_events_per_s": produced,
        "max_batch": settings.materializer_max_batch,
        "target_sets_after_s_median": statistics.median(sets_s),
        "target_sets_after_s_runs": sets_s,
        "sorted_copies_after_s_median": statistics.median(copies_s),
        "sorted_copies_after_s_runs": copies_s,
    }
    write_results("ingest", "materializer", result)
    return [
        Row(
            "materializer catch-up",
            result["events_per_s_median"],
            "events/s",
            f">= {CATCHUP_FLOOR:,.0f}",
            {"cpu_percent": result["cpu_percent_median"]},
        ),
        Row("target sets caught up after it", result["target_sets_after_s_median"], "s", ""),
        Row("sorted copies caught up after it", result["sorted_copies_after_s_median"], "s", ""),
    ]


def _wait_for_copies(store: LedgerStore, timeout: float) -> bool:
    """Wait until the sorted copies' mark covers every committed row."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store.copies.mark >= store.copies.last:
            return True
        time.sleep(0.1)
    return False


def _wait_for_sets(store: LedgerStore, total: int, timeout: float) -> bool:
    """Wait until the target sets' marks cover all ``total`` rows."""
    deadline = time.monotonic() + timeout
    cur = store.db.new_cursor()
    try:
        while time.monotonic() < deadline:
            clause, params = target_sets.uncovered(cur)
            late = cur.execute(
                f"SELECT count(*) FROM audit_events WHERE {clause}",
                params,
            ).fetchall()[0][0]
            if late == 0 and store.count() == total:
                return True
            time.sleep(0.2)
        return False
    finally:
        cur.close()


# -- freshness ---------------------------------------------------------------------
class _Commits:
    """Commit times per partition, from the materializer's ``on_batch`` callback."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_partition: dict[int, tuple[list[int], list[float]]] = {}

    def on_batch(self, rows: int, stored: dict[int, int]) -> None:
        now = time.monotonic()
        with self._lock:
            for p, next_offset in stored.items():
                offsets, times = self.by_partition.setdefault(p, ([], []))
                if not offsets or next_offset > offsets[-1]:
                    offsets.append(next_offset)
                    times.append(now)

    def visible_at(self, partition: int, offset: int) -> float | None:
        """When the record at ``offset`` became visible (first stored next offset past it)."""
        with self._lock:
            offsets, times = self.by_partition.get(partition, ([], []))
            i = bisect.bisect_right(offsets, offset)
            return times[i] if i < len(times) else None


def _paced_load(
    settings: Settings, rate: int, seconds: float, factory: EventFactory
) -> list[tuple[int, int, float]]:
    """Produce at ``rate``/s for ``seconds``; returns (partition, offset, ack time) per event."""
    acks: list[tuple[int, int, float]] = []
    lock = threading.Lock()

    def on_ack(meta: Any) -> None:
        t = time.monotonic()
        with lock:
            acks.append((meta.partition, meta.offset, t))

    producer = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=2, client_id="bench"
    )
    try:
        started = time.monotonic()
        sent = 0
        total = int(rate * seconds)
        while sent < total:
            due = min(total, int((time.monotonic() - started) * rate) + 1)
            while sent < due:
                e = factory.make()
                producer.send(settings.audit_topic, key=e.key, value=e.value).add_callback(on_ack)
                sent += 1
            time.sleep(0.005)
        producer.flush()
    finally:
        producer.close()
    return acks


def freshness(settings: Settings, *, seconds: float, runs: int) -> list[Row]:
    """Ack -> visible latency at a steady :data:`FRESHNESS_RATE` events/s."""
    factory = EventFactory()
    p50s, p99s, maxes, cpus, rates = [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="velora-bench-") as tmp:
        for i in range(runs):
            bench = _bench_settings(settings, "fresh", Path(tmp) / f"fresh{i}.duckdb")
            commits = _Commits()
            store = LedgerStore(bench.duckdb_path)
            materializer = Materializer(bench, store, on_batch=commits.on_batch)
            keepers = _keepers(bench, store, materializer)
            for k in keepers:
                k.start()
            materializer.start()
            try:
                materializer.wait_caught_up(timeout=60)
                with measure_cpu() as cpu:
                    acks = _paced_load(bench, FRESHNESS_RATE, seconds, factory)
                last = {p: o for p, o, _ in acks}
                for p, o in last.items():
                    materializer.wait_for_offset(p, o, timeout=60)
            finally:
                materializer.stop()
                for k in keepers:
                    k.stop()
                store.close()
            latencies = []
            for p, o, acked in acks:
                seen = commits.visible_at(p, o)
                if seen is None:
                    raise VeloraError(f"offset {o} of partition {p} never became visible")
                latencies.append((seen - acked) * 1000.0)
            p50s.append(percentile(latencies, 50))
            p99s.append(percentile(latencies, 99))
            maxes.append(max(latencies))
            cpus.append(cpu.cpu_percent)
            rates.append(len(acks) / cpu.wall_s)
            log.info("freshness run %d: p50 %.1f ms, p99 %.1f ms", i, p50s[-1], p99s[-1])
    result: dict[str, Any] = {
        "rate_events_per_s": FRESHNESS_RATE,
        "achieved_events_per_s_median": statistics.median(rates),
        "seconds": seconds,
        "p50_ms_median": statistics.median(p50s),
        "p99_ms_median": statistics.median(p99s),
        "max_ms_median": statistics.median(maxes),
        "p50_ms_runs": p50s,
        "p99_ms_runs": p99s,
        "cpu_percent_median": statistics.median(cpus),
        "floor_p99_ms": FRESHNESS_P99_FLOOR_MS,
        "method": "ack callback time -> first commit whose stored next offset passes the record",
    }
    write_results("ingest", "freshness", result)
    return [
        Row("ack -> visible p50", result["p50_ms_median"], "ms"),
        Row(
            "ack -> visible p99",
            result["p99_ms_median"],
            "ms",
            f"< {FRESHNESS_P99_FLOOR_MS:,.0f}",
            {"cpu_percent": result["cpu_percent_median"]},
        ),
    ]

"""What the heads cost the writer: one committed batch, with and without heads to keep.

``python -m bench.heads [--rows 500] [--batches 30]`` writes a ledger of 100,000
events over 20 tenants in a temp folder through :class:`ledger.store.LedgerStore`
(as the materializer does), then times ``write_batch`` of ``--rows``-row batches
(the fast path: insert, offsets, commit, heads) in four set-ups, ``--batches`` each:

- **no heads** (a node with ``VELORA_HEAD_EVENTS=0``);
- **20 tenants' heads**, every tenant of the batch loaded;
- **20 tenants' heads + 80 action heads**, three actions and one prefix per tenant;
- **... + 120 id heads**, six actors per tenant as well.

Median and max per batch; the difference to "no heads" is what applying a commit
to the heads costs the writer, and the median CPU time in ``TenantHeads.committed``
alone is the part it spends holding their lock (the difference also holds what
the heads' objects cost the garbage collector, and the noise of the DuckDB write). Writes
``bench/results/heads.json``. What the figures say is in ``docs/ledger.md`` ("The
head").
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from bench.report import RESULTS_DIR, Row, print_table, write_results
from ledger.decode import EventDecoder
from ledger.head import Scope, TenantHeads
from ledger.store import LedgerStore
from query_api import queries
from query_api.filters import Filters
from query_api.head_pages import scope_filters
from tests.factory import sample_record
from tests.ledger_support import CODEC

TENANTS = tuple(f"tenant-{i:02d}" for i in range(20))
SCOPES: tuple[Scope, ...] = (
    ("=", "claim.viewed"),
    ("=", "user.login"),
    ("=", "patient.searched"),
    ("^", "claim."),
)
ACTORS = tuple(f"user-{k}" for k in range(6))
"""Actors with id heads, per tenant (of the factory's 500)."""
STORED = 100_000
TOPIC = "bench.heads"


class Batches:
    """Encoded and decoded like the materializer's batches, one partition, one second apart."""

    def __init__(self) -> None:
        self.rng = random.Random(1)
        self.offset = 0
        self.second = 0

    def next(self, rows: int) -> pa.Table:
        base = datetime(2026, 11, 1, tzinfo=UTC)
        records = []
        for _ in range(rows):
            self.second += 1
            at = base + timedelta(seconds=self.second)
            records.append(sample_record(self.rng, self.rng.choice(TENANTS), at))
        values = [CODEC.encode("AuditEvent", r) for r in records]
        offsets = np.arange(self.offset, self.offset + rows, dtype=np.int64)
        self.offset += rows
        return EventDecoder(CODEC).decode(values, np.zeros(rows, np.int32), offsets).table


def _heads(store: LedgerStore, scoped: bool, ids: bool = False) -> TenantHeads:
    heads = TenantHeads(
        scoped_capacity=len(TENANTS) * len(SCOPES), id_capacity=len(TENANTS) * len(ACTORS)
    )
    cur = store.cursor()
    for tenant in TENANTS:
        heads.load(tenant, lambda n, t=tenant: queries.list_events(cur, t, Filters(), None, n))
        id_scopes: list[Scope] = [("@", actor) for actor in ACTORS] if ids else []
        for scope in [*(SCOPES if scoped else ()), *id_scopes, *id_scopes]:  # ids: 2nd ask
            f = scope_filters(scope)
            heads.load(
                tenant, lambda n, t=tenant, f=f: queries.list_events(cur, t, f, None, n), scope
            )
    return heads


def _timed(
    store: LedgerStore, batches: list[pa.Table], source: Batches
) -> tuple[list[float], list[float]]:
    """Each batch's ``write_batch`` time, and the writer's CPU time in
    ``TenantHeads.committed`` (the heads' share alone, spent holding their lock), in ms."""
    took, applying = [], []
    heads = store.heads
    if heads is not None:
        apply = heads.committed

        def timed_apply(*args: Any) -> None:
            start = time.thread_time()  # CPU: a preempted writer does not count
            apply(*args)
            applying.append((time.thread_time() - start) * 1000)

        heads.committed = timed_apply  # type: ignore[method-assign]
    for table in batches:
        start = time.perf_counter()
        store.write_batch(table, TOPIC, {0: source.offset})
        took.append((time.perf_counter() - start) * 1000)
    return took, applying


def run(rows: int, batches: int, stored: int = STORED, directory: Path = RESULTS_DIR) -> list[Row]:
    """Times ``batches`` commits of ``rows`` rows per set-up over a ledger of ``stored``
    events; writes the results under ``directory``."""
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="velora-bench-heads-") as tmp:
        store = LedgerStore(Path(tmp) / "heads.duckdb")
        source = Batches()
        try:
            for _ in range(max(1, stored // 5_000)):
                store.write_batch(source.next(min(stored, 5_000)), TOPIC, {0: source.offset})
            for label, heads in (
                ("no heads", None),
                ("20 tenants' heads", lambda: _heads(store, scoped=False)),
                ("20 tenants' heads + 80 action heads", lambda: _heads(store, scoped=True)),
                ("... + 120 id heads", lambda: _heads(store, scoped=True, ids=True)),
            ):
                store.heads = None if heads is None else heads()
                results_heads = 0 if store.heads is None else store.heads.scoped
                id_heads = 0 if store.heads is None else store.heads.ids
                made = [source.next(rows) for _ in range(batches)]
                took, applying = _timed(store, made, source)
                results[label] = {
                    "p50_ms": statistics.median(took),
                    "max_ms": max(took),
                    "action_heads": results_heads,
                    "id_heads": id_heads,
                    "committed_cpu_p50_ms": statistics.median(applying) if applying else 0.0,
                }
        finally:
            store.close()
    write_results("heads", f"{rows} rows", results, directory)
    bare = results["no heads"]["p50_ms"]
    return [
        Row(
            name,
            r["p50_ms"],
            "ms p50",
            f"max {r['max_ms']:.1f}; heads +{r['p50_ms'] - bare:.1f}; "
            f"CPU in committed() {r['committed_cpu_p50_ms']:.1f}",
        )
        for name, r in results.items()
    ]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.heads", description=__doc__)
    p.add_argument("--rows", type=int, default=500, help="rows per committed batch")
    p.add_argument("--batches", type=int, default=30, help="batches timed per set-up")
    args = p.parse_args(argv)
    rows = run(args.rows, args.batches)
    print_table(f"heads: the writer's write_batch of {args.rows} rows, 20 tenants", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

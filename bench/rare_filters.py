"""Where a rare filter's page goes in DuckDB: the floor under "one actor of 2,000".

``python -m bench.rare_filters [--events N]`` generates the query benchmark's events
(:func:`bench.query.generate`, 10M by default, in a temp folder) and times DuckDB
alone (no HTTP, one thread calling; median and p90 over the eight actors
``usr_0040``..``usr_0047`` of the biggest tenant, three rounds):

- **node's query, log order**: :func:`query_api.queries.list_events` as the node ran it
  before the sorted copies (window hints on, all 20 columns of 51 rows);
- **same window, all columns**: one query over the smallest window that holds the 51
  rows (the best any window probe can do);
- **same window, order columns only**: what finding the 51 rows costs;
- **51 rows by rowid** and **by primary key**: fetching the found rows back;
- **node's query, sorted copies**: the same page read through the sorted copies
  (:mod:`ledger.sorted_copies`, built here as a node's keeper builds them; the time
  taken is ``built_s``);
- **one target id**: the node's query for a target id, without the copies (a scan of
  the tenant's ``targets`` lists) and with them (eight targets of the tenant's newest
  events).

Writes ``bench/results/rare_filters.json``. What the figures say is in
``docs/ledger.md`` ("The floor, and what would remove it").
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from bench.query import generate
from bench.report import Row, print_table, write_results
from ledger import sorted_copies
from query_api.filters import Filters
from query_api.queries import COLUMNS, ORDER, WindowHints, list_events
from schemas.times import from_micros

TENANT = "tenant-00"
ACTORS = tuple(f"usr_{k:04d}" for k in range(40, 48))
ROUNDS = 3


def _timed(fn: Callable[[str], Any]) -> dict[str, float]:
    """Median and p90 in ms of ``fn(actor)`` over :data:`ACTORS`, :data:`ROUNDS` times."""
    for actor in ACTORS:  # warm: every block read once
        fn(actor)
    ms = []
    for _ in range(ROUNDS):
        for actor in ACTORS:
            t0 = time.perf_counter()
            fn(actor)
            ms.append((time.perf_counter() - t0) * 1000.0)
    ms.sort()
    return {"p50_ms": statistics.median(ms), "p90_ms": ms[int(len(ms) * 0.9)]}


def _in(n: int) -> str:
    return ", ".join("?" * n)


def measure(con: duckdb.DuckDBPyConnection, end: datetime) -> dict[str, dict[str, float]]:
    """Every shape's time (see the module docstring); ``con`` holds the generated rows."""
    hints = WindowHints()
    pages = {
        a: list_events(con.cursor(), TENANT, Filters(actor_id=a), None, 51, end, hints)
        for a in ACTORS
    }
    lowest = {a: from_micros(page[-1]["occurred_us"]) for a, page in pages.items()}
    where = "tenant_id = ? AND actor_id = ? AND occurred_at >= ?"

    def window(select: str) -> Callable[[str], Any]:
        sql = f"SELECT {select} FROM audit_events WHERE {where} {ORDER} LIMIT 51"
        return lambda a: con.cursor().execute(sql, [TENANT, a, lowest[a]]).fetchall()

    found = {a: window("rowid, ledger_key")(a) for a in ACTORS}

    def by(column: str, index: int) -> Callable[[str], Any]:
        def fetch(a: str) -> Any:
            keys = [r[index] for r in found[a]]
            sql = f"SELECT {COLUMNS} FROM audit_events WHERE {column} IN ({_in(len(keys))})"
            return con.cursor().execute(sql, keys).fetchall()

        return fetch

    def node(a: str) -> Any:
        return list_events(con.cursor(), TENANT, Filters(actor_id=a), None, 51, end, hints)

    results = {
        "node's query, log order": _timed(node),
        "same window, all columns": _timed(window(COLUMNS)),
        "same window, order columns only": _timed(window("occurred_at, event_id")),
        "51 rows by rowid": _timed(by("rowid", 0)),
        "51 rows by primary key": _timed(by("ledger_key", 1)),
    }
    t0 = time.perf_counter()
    sorted_copies.catch_up(con)
    con.execute("CHECKPOINT")
    built_s = time.perf_counter() - t0
    mark = sorted_copies.ReadMark(sorted_copies.mark_of(sorted_copies.runs(con)), newer=False)

    def copies(f: Filters) -> Any:
        return list_events(con.cursor(), TENANT, f, None, 51, end, hints, copies=mark)

    results["node's query, sorted copies"] = _timed(lambda a: copies(Filters(actor_id=a)))
    results["node's query, sorted copies"]["built_s"] = built_s
    targets = [
        r[0]
        for r in con.execute(
            "SELECT targets[1].id FROM audit_events WHERE tenant_id = ? "
            "ORDER BY rowid DESC LIMIT ?",
            [TENANT, len(ACTORS)],
        ).fetchall()
    ]
    by_target = dict(zip(ACTORS, targets, strict=True))  # _timed goes over ACTORS
    results["one target id, node's query, log order"] = _timed(
        lambda a: list_events(
            con.cursor(), TENANT, Filters(target_id=by_target[a]), None, 51, end, hints
        )
    )
    results["one target id, node's query, sorted copies"] = _timed(
        lambda a: copies(Filters(target_id=by_target[a]))
    )
    return results


def run(events: int) -> list[Row]:
    """Generate, measure, write ``rare_filters.json``; the table's rows."""
    end = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1)
    with tempfile.TemporaryDirectory(prefix="velora-rare-") as tmp:
        path = Path(tmp) / "ledger.duckdb"
        print(f"generating {events:,} events ...", flush=True)
        generate(path, events, end)
        con = duckdb.connect(str(path))
        try:
            results = measure(con, end)
        finally:
            con.close()
    write_results("rare_filters", f"{events / 1e6:g}M", results)
    return [
        Row(name, r["p50_ms"], "ms p50", f"p90 {r['p90_ms']:.1f}") for name, r in results.items()
    ]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.rare_filters", description=__doc__)
    p.add_argument("--events", type=int, default=10_000_000)
    args = p.parse_args(argv)
    rows = run(args.events)
    print_table(f"rare filters: one actor of 2,000, {args.events:,} events, DuckDB alone", rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

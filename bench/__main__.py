"""``python -m bench [SUITE ...]`` (``make bench``): prints tables, writes bench/results/*.json.

By default it starts its own broker (fresh state folder, free ports) so results do
not depend on whatever else runs; ``--bootstrap`` uses an existing one instead.
SIGTERM stops a run the way Ctrl-C does: each suite stops the processes it
started, then the broker stops and the working folder is removed.
The benchmarks live outside the installed package: they use development-only
dependencies (httpx) and the test suite's event factory.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import shutil
import signal
import sys
import tempfile
import uuid
from pathlib import Path

from bench.report import Row, print_table
from velora.broker import BrokerConfig, LocalBroker
from velora.errors import ConfigError, VeloraError
from velora.settings import Settings
from velora.topics import ensure_topics

SUITES = {
    "ingest": ("bench.ingest", "ingest: library and HTTP ingest"),
    "ledger": ("bench.ledger", "ledger: materializer catch-up and freshness"),
    "query": ("bench.query", "query: public API latency"),
    "soak": ("bench.soak", "soak: 5 min of HTTP ingest at 5,000 events/s while 4 clients page"),
    "analytics": ("bench.analytics", "analytics: endpoint latency, rollups vs rows, exports"),
    "webhooks": ("bench.webhooks", "webhooks: deliveries/s and ingest-to-delivery latency"),
    "phi": ("bench.phi", "phi: tokenization values/s, server-mode HTTP ingest vs plain"),
}


def build_parser() -> argparse.ArgumentParser:
    """``python -m bench`` arguments."""
    p = argparse.ArgumentParser(
        prog="python -m bench", description="run the benchmarks (results in bench/results/)"
    )
    p.add_argument(
        "suites",
        nargs="*",
        metavar="SUITE",
        help=f"which suites to run: {', '.join(SUITES)} (default: all)",
    )
    p.add_argument("--bootstrap", help="use this Kafka instead of starting a fresh one")
    p.add_argument(
        "--query-events",
        type=_sizes,
        metavar="N[,N...]",
        help="the query suite's ledger sizes (default: 1000000,10000000)",
    )
    return p


def _sizes(raw: str) -> tuple[int, ...]:
    """``--query-events``: one or more positive event counts, comma-separated."""
    try:
        sizes = tuple(int(part) for part in raw.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of event counts: {raw!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"event counts must be 1 or more: {raw!r}")
    return sizes


def main(argv: list[str] | None = None) -> int:
    """Run the chosen suites; exit code 0, or 2 with one line on a project error."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    signal.signal(signal.SIGTERM, _terminated)
    try:
        return run_suites(args, Settings.from_env())
    except VeloraError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: stopped; the processes it started are stopped", file=sys.stderr)
        return 130


def _terminated(signum: int, frame: object) -> None:
    """SIGTERM: unwind like Ctrl-C, so every ``finally`` stops what it started."""
    raise KeyboardInterrupt


def run_suites(args: argparse.Namespace, settings: Settings) -> int:
    """Start a broker (unless ``--bootstrap``), run each suite, print its table."""
    suites = args.suites or list(SUITES)
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise ConfigError(f"unknown bench suite {unknown[0]!r}; choose from {', '.join(SUITES)}")
    workdir = Path(tempfile.mkdtemp(prefix="velora-bench-"))
    print(f"bench: working in {workdir}", file=sys.stderr)
    broker = None
    try:
        bootstrap = args.bootstrap
        if not bootstrap:
            broker = LocalBroker(
                BrokerConfig(
                    state_dir=workdir / "kafka",
                    cache_dir=settings.cache_dir,
                    version=settings.kafka_version,
                    heap_mb=settings.broker_heap_mb,
                )
            )
            took = broker.start()
            bootstrap = broker.bootstrap
            print(f"bench: kafka {broker.version_from_log()} ready in {took:.1f}s", file=sys.stderr)
        for suite in suites:
            module, title = SUITES[suite]
            run_settings = settings.with_overrides(
                kafka_bootstrap=bootstrap,
                topic_prefix=f"bench{uuid.uuid4().hex[:8]}",
                state_dir=workdir / suite,
                duckdb_path=workdir / suite / "ledger.duckdb",
            )
            (workdir / suite).mkdir(parents=True, exist_ok=True)
            ensure_topics(run_settings)
            options = {"sizes": args.query_events} if suite == "query" and args.query_events else {}
            rows: list[Row] = importlib.import_module(module).run(run_settings, **options)
            print_table(title, rows)
        print("\nresults written under bench/results/", file=sys.stderr)
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

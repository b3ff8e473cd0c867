"""``velora kafka fetch|start|stop|status|topics``: the local broker for development and tests."""

from __future__ import annotations

import argparse
import json
import sys

from velora.broker import BrokerConfig, LocalBroker, fetch, is_fetched
from velora.settings import Settings


def broker_for(settings: Settings) -> LocalBroker:
    """The local broker described by the settings (state under ``VELORA_STATE_DIR/kafka``)."""
    return LocalBroker(
        BrokerConfig(
            state_dir=settings.state_dir / "kafka",
            cache_dir=settings.cache_dir,
            version=settings.kafka_version,
            port=settings.broker_port,
            controller_port=settings.controller_port,
            heap_mb=settings.broker_heap_mb,
        )
    )


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``kafka`` command group."""
    p = sub.add_parser("kafka", help="fetch, start, stop or inspect the local Kafka broker")
    ks = p.add_subparsers(dest="kafka_command", required=True, metavar="ACTION")
    ks.add_parser(
        "fetch", help="download the broker's jars from Maven Central (cached)"
    ).set_defaults(func=_fetch)
    start = ks.add_parser("start", help="format (once), start and wait until ready; create topics")
    start.add_argument("--timeout", type=float, default=120.0, help="seconds to wait (default 120)")
    start.set_defaults(func=_start)
    ks.add_parser("stop", help="stop the broker cleanly (SIGTERM, then wait)").set_defaults(
        func=_stop
    )
    ks.add_parser(
        "status", help="print the broker's state as JSON; exit 0 if it runs, 1 if not"
    ).set_defaults(func=_status)
    ks.add_parser("topics", help="create the project's topics if missing").set_defaults(
        func=_topics
    )


def _fetch(args: argparse.Namespace, settings: Settings) -> int:
    fetch(settings.cache_dir, settings.kafka_version)
    return 0


def _start(args: argparse.Namespace, settings: Settings) -> int:
    from velora.topics import ensure_topics

    broker = broker_for(settings)
    if broker.running():
        print(f"kafka already running at {broker.bootstrap}", file=sys.stderr)
    else:
        took = broker.start(timeout=args.timeout)
        version = broker.version_from_log() or settings.kafka_version
        print(f"kafka {version} ready at {broker.bootstrap} in {took:.1f}s", file=sys.stderr)
    created = ensure_topics(settings.with_overrides(kafka_bootstrap=broker.bootstrap))
    for name in created:
        print(f"created topic {name}", file=sys.stderr)
    print(broker.bootstrap)
    return 0


def _stop(args: argparse.Namespace, settings: Settings) -> int:
    stopped = broker_for(settings).stop()
    print("kafka stopped" if stopped else "kafka was not running", file=sys.stderr)
    return 0


def _status(args: argparse.Namespace, settings: Settings) -> int:
    broker = broker_for(settings)
    running = broker.running()
    state = {
        "running": running,
        "bootstrap": broker.bootstrap if running else None,
        "port": broker.port if broker.formatted else None,
        "controller_port": broker.controller_port if broker.formatted else None,
        "version": broker.version_from_log() if running else None,
        "jars_cached": is_fetched(settings.cache_dir, settings.kafka_version),
        "state_dir": str(broker.state_dir),
    }
    print(json.dumps(state, indent=2))
    return 0 if running else 1


def _topics(args: argparse.Namespace, settings: Settings) -> int:
    from velora.topics import ensure_topics

    for name in ensure_topics(settings):
        print(f"created topic {name}", file=sys.stderr)
    return 0

"""``velora ledger rebuild [--yes]``: throw the DuckDB view away and replay the whole log.

Kafka is the source of truth, so the ledger can always be rebuilt. The old file
(and its WAL) is moved aside to ``<name>.old`` first, then the audit topic is
replayed from the beginning with a progress bar on stderr; the command returns
once it has caught up to the end offsets it saw at start. A node must not be
running on the same file (DuckDB's lock is checked first).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from cli.commands.node import quiet_kafka_selector
from velora.errors import ConfigError, Unavailable
from velora.settings import Settings

log = logging.getLogger("velora.ledger")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``ledger`` command group."""
    p = sub.add_parser("ledger", help="operate on this node's DuckDB ledger")
    ls = p.add_subparsers(dest="ledger_command", required=True, metavar="ACTION")
    rebuild = ls.add_parser("rebuild", help="move the DuckDB file aside and replay the whole log")
    rebuild.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    rebuild.set_defaults(func=rebuild_command)


def rebuild_command(args: argparse.Namespace, settings: Settings) -> int:
    """Rebuild the ledger; exit 0 once caught up."""
    from velora.topics import ensure_topics

    quiet_kafka_selector()
    path = settings.duckdb_path
    if path.exists():
        _check_not_in_use(path)
        if not args.yes and not _confirm(path):
            print("velora: rebuild cancelled", file=sys.stderr)
            return 1
        moved = _move_aside(path)
        print(f"moved the old ledger to {moved}", file=sys.stderr)
    ensure_topics(settings)
    rows = rebuild(settings)
    print(f"ledger rebuilt: {rows} events in {path}", file=sys.stderr)
    return 0


def rebuild(settings: Settings) -> int:
    """Replay the audit topic into a new ledger at ``settings.duckdb_path``; return its rows."""
    from ledger.node import QueryNode
    from ledger.progress import ReplayProgress

    progress = ReplayProgress("rebuilding ledger")
    node = QueryNode(settings, on_batch=progress.on_batch)
    started = time.monotonic()
    try:
        node.start()
        materializer = node.materializer
        store = node.store
        if materializer is None or store is None:
            raise Unavailable("the ledger did not start")
        progress.attach(materializer)
        while not materializer.wait_caught_up(timeout=1.0):
            error = materializer.status().error
            if error:
                log.warning("replay is retrying: %s", error)
        rows = store.count()
    finally:
        progress.close()
        node.stop()
    log.info("replayed in %.1fs", time.monotonic() - started)
    return rows


def _check_not_in_use(path: Path) -> None:
    import duckdb

    try:
        duckdb.connect(str(path)).close()
    except duckdb.Error as exc:
        raise ConfigError(
            f"{path} is in use (stop the query node first): {type(exc).__name__}"
        ) from exc


def _confirm(path: Path) -> bool:
    if not sys.stdin.isatty():
        raise ConfigError("refusing to rebuild without --yes when stdin is not a terminal")
    answer = input(f"Move {path} aside and replay the whole log? [y/N] ")
    return answer.strip().lower() in {"y", "yes"}


def _move_aside(path: Path) -> Path:
    target = path.with_name(path.name + ".old")
    for suffix in ("", ".wal"):
        src = Path(str(path) + suffix)
        dst = Path(str(target) + suffix)
        if dst.exists():
            dst.unlink()
        if src.exists():
            src.rename(dst)
    return target

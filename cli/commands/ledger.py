"""``velora ledger rebuild [--yes]``: throw the DuckDB view away and replay the whole log.

Kafka is the source of truth, so the ledger can always be rebuilt. The old file
(and its WAL) is moved aside to ``<name>.old`` first, then the audit topic is
replayed from the beginning with a progress bar on stderr; the command returns
once it has caught up to the end offsets it saw at start, or exits 2 with the
error when it cannot (see ``ledger.rebuild``). A node must not be running on the
same file (DuckDB's lock is checked first).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.commands.node import quiet_kafka_selector
from velora.errors import ConfigError
from velora.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``ledger`` command group."""
    p = sub.add_parser("ledger", help="operate on this node's DuckDB ledger")
    ls = p.add_subparsers(dest="ledger_command", required=True, metavar="ACTION")
    rebuild = ls.add_parser("rebuild", help="move the DuckDB file aside and replay the whole log")
    rebuild.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    rebuild.set_defaults(func=rebuild_command)


def rebuild_command(args: argparse.Namespace, settings: Settings) -> int:
    """Rebuild the ledger; exit 0 once caught up, 2 with the error when it cannot finish."""
    from ledger.layout import move_aside
    from ledger.progress import ReplayProgress
    from ledger.rebuild import rebuild
    from schemas.rules import clip
    from velora.topics import ensure_topics

    quiet_kafka_selector()
    path = settings.duckdb_path
    if path.exists():
        _check_not_in_use(path)
        if not args.yes and not _confirm(path):
            print("velora: rebuild cancelled", file=sys.stderr)
            return 1
        moved = move_aside(path)
        print(f"moved the old ledger to {moved}", file=sys.stderr)
    ensure_topics(settings)
    progress = ReplayProgress("rebuilding ledger")
    try:
        report = rebuild(settings, on_batch=progress.on_batch, on_start=progress.attach)
    finally:
        progress.close()
    print(
        f"ledger rebuilt: {report.rows} events in {path} ({report.seconds:.1f}s); "
        f"{report.quarantined} records quarantined, {report.conflicts} conflicting copies",
        file=sys.stderr,
    )
    for tenant, events in report.bad_tenants:
        print(
            f"warning: {events} events of tenant {clip(tenant)!r} break the tenant-id rule "
            "(no API key can read them)",
            file=sys.stderr,
        )
    return 0


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

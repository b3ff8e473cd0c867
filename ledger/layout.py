"""Which layout a ledger file has, and what a node does about an older one.

The ledger file records :data:`~ledger.tables.LAYOUT_VERSION` in ``ledger_meta``.
A node that finds a file of an older layout (or one from before the version was
recorded) never migrates it by hand: :func:`prepare_ledger` moves it aside and the
node rebuilds the ledger from the log, which is the source of truth. The same
table also records the identity (Kafka topic id) of the audit topic the file was
built from, so a file is never silently continued against another log.
"""

from __future__ import annotations

import logging
from enum import Enum
from pathlib import Path

import duckdb

from ledger.duck import duckdb_errors
from ledger.tables import LAYOUT_VERSION

log = logging.getLogger(__name__)

LAYOUT_KEY = "layout_version"


class LedgerState(Enum):
    """What :func:`prepare_ledger` found."""

    FRESH = "fresh"
    """No ledger yet: the node replays the whole log."""
    CURRENT = "current"
    """A ledger of this layout: the node resumes at its stored offsets."""
    REBUILD = "rebuild"
    """A ledger of an older layout was moved aside: the node replays the whole log."""


def stored_layout(con: duckdb.DuckDBPyConnection) -> int | None:
    """The layout version a file records: 1 if it predates versions, None if it is empty."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    if "audit_events" not in tables:
        return None
    if "ledger_meta" not in tables:
        return 1
    row = con.execute("SELECT value FROM ledger_meta WHERE key = ?", [LAYOUT_KEY]).fetchone()
    return 1 if row is None else int(row[0])


def prepare_ledger(path: Path) -> LedgerState:
    """Check the ledger file at ``path`` before a node opens it; move an outdated one aside."""
    if not path.exists():
        return LedgerState.FRESH
    with duckdb_errors(f"inspect {path.name}"):
        con = duckdb.connect(str(path))
        try:
            found = stored_layout(con)
        finally:
            con.close()
    if found is None:
        return LedgerState.FRESH
    if found == LAYOUT_VERSION:
        return LedgerState.CURRENT
    moved = move_aside(path, f".v{found}.old")
    log.warning(
        "ledger %s has layout v%d, this node writes v%d: moved it to %s and rebuilding "
        "from the log",
        path.name,
        found,
        LAYOUT_VERSION,
        moved.name,
    )
    return LedgerState.REBUILD


def move_aside(path: Path, suffix: str = ".old") -> Path:
    """Rename a ledger file and its write-ahead log to ``<name><suffix>`` (replacing one)."""
    target = path.with_name(path.name + suffix)
    for extra in ("", ".wal"):
        src = Path(str(path) + extra)
        dst = Path(str(target) + extra)
        if dst.exists():
            dst.unlink()
        if src.exists():
            src.rename(dst)
    return target

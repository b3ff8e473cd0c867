"""What a ledger's DuckDB needs in memory: the primary key's index grows with every event.

``audit_events.ledger_key`` is the table's primary key (the dedup of the write path,
:mod:`ledger.tables`): an ART index that DuckDB keeps in memory as it writes and
counts against its memory limit. Cached table blocks are evicted when the limit is
reached; the index is not, so a limit set below it makes every write fail with
DuckDB's "Out of Memory Error", and the materializer restarts without making
progress until the limit is raised. Measured with DuckDB 2.0.1 and keys of the
ledger's shape: a 256 MB limit failed after 2.3M events, 512 MB after 5.0M, about
:data:`INDEX_MB_PER_MILLION` MB per million (``tests/test_memory_need.py`` measures
it again on every run). A node started with 0 (DuckDB's default, 80% of the
machine's RAM) never meets it before the machine is full.
"""

from __future__ import annotations

import duckdb

INDEX_MB_PER_MILLION = 100
"""Memory the primary key's index takes per million events, in MB."""

WORKING_MB = 64
"""Room on top of the index: the write batch, queries and the blocks they read (also
the smallest limit the setting takes)."""

SETTING = "VELORA_DUCKDB_MEMORY_LIMIT_MB"


def needed_mb(events: int) -> int:
    """The smallest memory limit, in MB, that a ledger of ``events`` events can write with."""
    return WORKING_MB + round(events * INDEX_MB_PER_MILLION / 1_000_000)


def shortfall(limit_mb: int, events: int) -> str | None:
    """Why ``limit_mb`` (0: DuckDB's default) is too small for ``events``, or None."""
    need = needed_mb(events)
    if not limit_mb or limit_mb >= need:
        return None
    return (
        f"{SETTING}={limit_mb} is below what a ledger of {events:,} events needs "
        f"(about {need:,} MB: its primary-key index alone takes about "
        f"{INDEX_MB_PER_MILLION} MB per million events); writes fail with out-of-memory "
        f"once the index fills the limit: raise it, or set 0 for DuckDB's default"
    )


def out_of_memory(limit_mb: int) -> str:
    """The reason shown for DuckDB's out-of-memory error, with the setting to change."""
    limit = f"{SETTING}={limit_mb}" if limit_mb else f"{SETTING}=0 (80% of RAM)"
    return (
        f"DuckDB is out of memory at {limit}; the ledger's primary-key index takes about "
        f"{INDEX_MB_PER_MILLION} MB per million events: raise the limit and restart"
    )


def is_out_of_memory(exc: BaseException | None) -> bool:
    """Whether DuckDB failed for want of memory. It says so in several classes: an
    ``OutOfMemoryException``, a commit's ``TransactionException`` ("Failed to commit:
    could not allocate block ...") and a checkpoint's ``FatalException``."""
    if isinstance(exc, duckdb.OutOfMemoryException):
        return True
    text = str(exc)
    return isinstance(exc, duckdb.Error) and (
        "failed to allocate" in text or "could not allocate" in text
    )

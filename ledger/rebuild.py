"""Replay the whole audit log into a new ledger file, and report what it found.

Kafka is the source of truth, so a ledger can always be rebuilt: :func:`rebuild`
starts a :class:`~ledger.node.QueryNode` on an empty file and returns once it has
caught up with the end offsets it saw at start. It never hangs on a failure:

- a mismatch with the log (:class:`~velora.errors.LedgerMismatch`) or a partition
  held for a writer schema that is not deployed (:class:`~velora.errors.SchemaError`)
  stops it at once with an error that says what to do;
- any other failure is retried like on a node, and :data:`MAX_FAILURES` failures in
  a row without progress stop it with :class:`~velora.errors.Unavailable`.

The report counts what could not become a row (quarantined records, conflicting
copies) and lists tenant ids that break the tenant-id rule: their events are in the
ledger, but no API key can be issued for such a tenant, so they would otherwise be
silently unreachable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ledger.materializer import BatchCallback, Materializer
from ledger.node import QueryNode
from schemas.rules import TENANT_RE
from velora.errors import LedgerMismatch, SchemaError, Unavailable
from velora.settings import Settings

log = logging.getLogger(__name__)

MAX_FAILURES = 5


@dataclass
class RebuildReport:
    """What a replay produced."""

    rows: int
    quarantined: int
    conflicts: int
    seconds: float
    bad_tenants: list[tuple[str, int]] = field(default_factory=list)
    """``(tenant_id, events)`` for every tenant id that breaks the tenant-id rule."""


def rebuild(
    settings: Settings,
    on_batch: BatchCallback | None = None,
    on_start: Callable[[Materializer], None] | None = None,
) -> RebuildReport:
    """Replay the audit topic into a new ledger at ``settings.duckdb_path``."""
    node = QueryNode(settings, on_batch=on_batch)
    started = time.monotonic()
    try:
        node.start()
        materializer, store = node.materializer, node.store
        if materializer is None or store is None:
            raise Unavailable("the ledger did not start")
        if on_start is not None:
            on_start(materializer)
        while not materializer.wait_caught_up(timeout=1.0):
            _check(materializer)
        _check(materializer)
        cur = store.cursor()
        bad = cur.execute(
            "SELECT tenant_id, count(*) FROM audit_events "
            "WHERE NOT regexp_full_match(tenant_id, ?) GROUP BY 1 ORDER BY 1",
            [TENANT_RE.pattern],
        ).fetchall()
        return RebuildReport(
            rows=store.count(),
            quarantined=store.quarantined,
            conflicts=store.conflicts,
            seconds=time.monotonic() - started,
            bad_tenants=[(str(t), int(n)) for t, n in bad],
        )
    finally:
        node.stop()


def _check(materializer: Materializer) -> None:
    """Raise if the replay cannot finish; log while it is retrying."""
    s = materializer.status()
    if s.fatal:
        raise LedgerMismatch(s.fatal)
    if s.held:
        p, (offset, fp) = min(s.held.items())
        raise SchemaError(
            f"partition {p} is held at offset {offset} by writer schema {fp}, which this "
            "installation does not have: deploy that schema version, then rebuild again"
        )
    if s.failures >= MAX_FAILURES:
        raise Unavailable(f"replay failed {s.failures} times in a row ({s.error})", retry_after=5)
    if s.error:
        log.warning("replay is retrying: %s", s.error)

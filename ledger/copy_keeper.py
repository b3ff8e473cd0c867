"""The copy keeper: sorts the ledger's new rows into the sorted copies, behind the writer.

Each step (:func:`ledger.sorted_copies.next_step`) rebuilds one ``seq`` range of both
copies in its own transaction on its own cursor, beside the writer's (they write
different tables), and then publishes the new mark. Pages read the rows past the
mark from ``audit_events`` themselves, so an answer never depends on how far behind
the keeper is; past :data:`~ledger.sorted_copies.TAIL_READ_MAX` rows they stop using
the copies until it has caught up.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from ledger import sorted_copies
from ledger.keeper import Keeper
from ledger.store import LedgerStore

INTERVAL_S = 5.0
"""How often the keeper looks for new rows (a run once a row group's worth, or
``FLUSH_S``, has come in)."""


class CopyKeeper(Keeper):
    """Keeps ``store``'s sorted copies caught up with its rows (a daemon thread)."""

    NAME = "sorted-copies"

    def __init__(
        self,
        store: LedgerStore,
        interval: float = INTERVAL_S,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__(interval, busy)
        self.store = store
        self._runs = 0
        self._waiting: float | None = None
        """Since when rows past the mark wait for a run's worth (None: none wait)."""

    def step(self, upto: int | None = None, flush: bool = True) -> bool:
        """One step, in one transaction, taking new rows up to ``seq`` ``upto`` (None:
        all committed), fewer than a run's worth only with ``flush``
        (:func:`~ledger.sorted_copies.next_step`); False when there was nothing to do."""
        cur = self.store.db.new_cursor()
        try:
            with self.store.copies_lock:
                after, stepped = sorted_copies.step(cur, upto, flush)
                self._runs = len(after)
                if not stepped:
                    return False
                marks = self.store.copies
                marks.mark = max(marks.mark, sorted_copies.mark_of(after))
        finally:
            cur.close()
        self._stepped()
        return True

    def _round(self) -> None:
        """Every step there is for the rows committed when the round began (a backlog
        in runs of BACKLOG_ROWS, then the merges). Rows committed meanwhile wait for
        the next round: under a steady ingest every step would find some, and the
        keeper would never pause beside the writer. Fewer rows than a run's worth wait
        for more, up to FLUSH_S."""
        marks = self.store.copies
        upto = marks.last
        now = time.monotonic()
        if upto <= marks.mark:
            self._waiting = None
        elif self._waiting is None:
            self._waiting = now
        flush = self._waiting is not None and now - self._waiting >= sorted_copies.FLUSH_S
        while self._go_on() and self.step(upto, flush):
            if self.store.copies.mark >= upto:
                self._waiting = None

    def status(self) -> dict[str, object]:
        """What ``/readyz`` shows: the rows committed past the mark (not sorted yet), the
        runs, and :meth:`Keeper.status`'s steps, error and time since the last step."""
        marks = self.store.copies
        return {
            "rows_behind": max(0, marks.last - marks.mark),
            "runs": self._runs,
            **super().status(),
        }

"""The copy keeper: sorts the ledger's new rows into the sorted copies, behind the writer.

Each step (:func:`ledger.sorted_copies.next_step`) rebuilds one ``seq`` range of both
copies in its own transaction on its own cursor, beside the writer's (they write
different tables), and then publishes the new mark. Pages read the rows past the
mark from ``audit_events`` themselves, so an answer never depends on how far behind
the keeper is; past :data:`~ledger.sorted_copies.TAIL_READ_MAX` rows they stop using
the copies until it has caught up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable

import duckdb

from ledger import sorted_copies
from ledger.store import LedgerStore

log = logging.getLogger(__name__)

INTERVAL_S = 5.0
"""How often the keeper looks for new rows (a run once a row group's worth, or
``FLUSH_S``, has come in)."""
NICE = 10
"""The keeper thread's scheduling niceness (Linux): the writer and the API come first."""
RETRY_S = 5.0


class CopyKeeper:
    """Keeps ``store``'s sorted copies caught up with its rows (a daemon thread)."""

    def __init__(
        self,
        store: LedgerStore,
        interval: float = INTERVAL_S,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self.store = store
        self.busy = busy
        """While it answers True (the materializer replays a backlog), no step runs: the
        two would share the CPU, and sorting the backlog later in large runs is cheaper."""
        self.interval = interval
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.steps = 0
        self.error: str | None = None
        self._last_step: float | None = None
        self._runs = 0
        self._waiting: float | None = None
        """Since when rows past the mark wait for a run's worth (None: none wait)."""

    def start(self) -> None:
        """Start the thread."""
        self._thread = threading.Thread(target=self._run, name="sorted-copies", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the step in flight."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(60)
            self._thread = None

    def step(self, upto: int | None = None, flush: bool = True) -> bool:
        """One step, in one transaction, taking new rows up to ``seq`` ``upto`` (None:
        all committed), fewer than a run's worth only with ``flush``
        (:func:`~ledger.sorted_copies.next_step`); False when there was nothing to do."""
        cur = self.store.db.new_cursor()
        try:
            with self.store.copies_lock:
                stored = sorted_copies.runs(cur)
                last = sorted_copies.last_seq(cur)
                last = last if upto is None else min(last, upto)
                step = sorted_copies.next_step(stored, last, flush)
                if step is None:
                    self._runs = len(stored)
                    return False
                run, replaces = step
                cur.execute("BEGIN TRANSACTION")
                try:
                    sorted_copies.rebuild(cur, run, replaces)
                    cur.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(duckdb.Error):  # a failed COMMIT ended it already
                        cur.execute("ROLLBACK")
                    raise
                self.store.copies.mark = max(self.store.copies.mark, run.hi)
                self._runs = len(stored) - len(replaces) + 1
        finally:
            cur.close()
        self.steps += 1
        self._last_step = time.monotonic()
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
        while not self._stop.is_set() and not self._busy() and self.step(upto, flush):
            if self.store.copies.mark >= upto:
                self._waiting = None

    def status(self) -> dict[str, object]:
        """What ``/readyz`` shows: the rows committed past the mark (not sorted yet),
        the runs, the steps so far, the last error class (None once a step succeeds
        again) and the seconds since the last step (None: none yet)."""
        last = self._last_step
        marks = self.store.copies
        return {
            "rows_behind": max(0, marks.last - marks.mark),
            "runs": self._runs,
            "steps": self.steps,
            "error": self.error,
            "last_step_s_ago": None if last is None else round(time.monotonic() - last, 1),
        }

    def _busy(self) -> bool:
        return self.busy is not None and self.busy()

    def _run(self) -> None:
        with contextlib.suppress(AttributeError, OSError):  # per thread on Linux only
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._round()
                self.error = None
                wait = max(0.0, self.interval - (time.monotonic() - started))
            except Exception as exc:  # any failure: log it, keep the thread, retry later
                self.error = type(exc).__name__
                log.warning(
                    "sorted copies step failed (%s); retrying in %.0fs", self.error, RETRY_S
                )
                wait = RETRY_S
            self._wake.wait(wait)
            self._wake.clear()

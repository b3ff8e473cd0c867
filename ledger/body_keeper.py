"""The body keeper: appends new rows' page bodies (:mod:`ledger.page_bodies`) behind the writer.

A page whose rows all have bodies takes them from the store; one with a row
committed since the last step is read from DuckDB whole, so an answer never depends
on how far behind the keeper is.
"""

from __future__ import annotations

from collections.abc import Callable

from ledger.keeper import Keeper
from ledger.page_bodies import PageBodies
from ledger.store import LedgerStore

INTERVAL_S = 1.0
"""How often the keeper looks for new rows."""


class BodyKeeper(Keeper):
    """Keeps ``bodies`` caught up with ``store``'s committed rows (a daemon thread)."""

    NAME = "page-bodies"

    def __init__(
        self,
        store: LedgerStore,
        bodies: PageBodies,
        interval: float = INTERVAL_S,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__(interval, busy)
        self.store = store
        self.bodies = bodies

    def step(self) -> bool:
        """One step (:meth:`PageBodies.step`); False when there was nothing to do."""
        before = self.bodies.high
        if self.store.copies.last <= before:  # the writer numbered nothing new
            return False
        self.bodies.step(self.store.db.cursor())  # the keeper thread's own cursor
        if self.bodies.high == before:
            return False
        self._stepped()
        return True

    def _round(self) -> None:
        """Steps until the bodies reach the rows committed (or the keeper must yield)."""
        while self._go_on() and self.step():
            pass

    def status(self) -> dict[str, object]:
        """What ``/readyz`` shows: the rows committed past the newest body, and
        :meth:`Keeper.status`'s steps, error and time since the last step."""
        return {
            "rows_behind": max(0, self.store.copies.last - self.bodies.high),
            "lookup_errors": self.bodies.errors,
            **super().status(),
        }

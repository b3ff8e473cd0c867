"""A tqdm progress bar (on stderr) for replaying the log into an empty ledger."""

from __future__ import annotations

import sys
import threading

from tqdm import tqdm

from ledger.materializer import Materializer


class ReplayProgress:
    """Feeds a tqdm bar from materializer commits; the total is known once it has started.

    Pass :meth:`on_batch` as the materializer's ``on_batch`` callback and call
    :meth:`attach` with the materializer; :meth:`close` ends the bar.
    """

    def __init__(self, description: str = "replaying audit log") -> None:
        self.description = description
        self._bar: tqdm | None = None
        self._materializer: Materializer | None = None
        self._base: int | None = None
        self._lock = threading.Lock()
        self._finished = False

    def attach(self, materializer: Materializer, base: int = 0) -> None:
        """Follow ``materializer``; ``base`` is the sum of offsets stored before it started."""
        self._materializer = materializer
        self._base = base

    def on_batch(self, rows: int, stored: dict[int, int]) -> None:
        """Materializer callback: advance the bar to the committed offsets."""
        materializer = self._materializer
        if materializer is None or self._base is None:
            return
        status = materializer.status()
        if status.target is None:
            return
        total = max(0, sum(status.target.values()) - self._base)
        done = min(total, max(0, sum(stored.values()) - self._base))
        with self._lock:
            if self._finished:
                return
            if total == 0:  # the log was empty at start: nothing to replay, no bar
                self._finished = True
                return
            if self._bar is None:
                self._bar = tqdm(
                    total=total, desc=self.description, unit="ev", unit_scale=True, file=sys.stderr
                )
            self._bar.n = done
            self._bar.refresh()
            if done >= total:
                self._finished = True
                self._bar.close()
                self._bar = None

    def close(self) -> None:
        """Finish the bar."""
        with self._lock:
            self._finished = True
            if self._bar is not None:
                self._bar.close()
                self._bar = None

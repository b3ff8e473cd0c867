"""A background keeper: a niced thread that runs rounds of steps behind the writer.

The target-set keeper (:mod:`ledger.target_keeper`) and the copy keeper
(:mod:`ledger.copy_keeper`) each bring a derived structure up to the rows the writer
has committed. Both run the same way, written here once: a round every ``interval``
seconds, none while ``busy`` answers True (the materializer replays a backlog), the
thread niced so that the writer and the API come first, and a failed round logged
and retried without losing the thread. A subclass supplies its round and its status.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

NICE = 10
"""The keeper threads' scheduling niceness (Linux): the writer and the API come first."""
RETRY_S = 5.0
"""The wait after a failed round."""


class Keeper:
    """A daemon thread calling :meth:`_round` every ``interval`` seconds, unless ``busy``.

    Subclasses set :attr:`NAME` (the thread's name and the log's word for it) and
    implement :meth:`_round`, calling :meth:`_stepped` after each committed step.
    """

    NAME = "keeper"
    JOIN_S = 60.0
    """How long :meth:`stop` waits for the step in flight."""

    def __init__(self, interval: float, busy: Callable[[], bool] | None = None) -> None:
        self.interval = interval
        self.busy = busy
        """While it answers True (the materializer replays a backlog), no step runs: the
        two would share the CPU, and catching up later in large steps is cheaper."""
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.steps = 0
        self.error: str | None = None
        """The class of the last round's failure (None once a round succeeds)."""
        self._last_step: float | None = None

    def start(self) -> None:
        """Start the thread."""
        self._thread = threading.Thread(target=self._run, name=self.NAME, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop after the step in flight."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.JOIN_S)
            self._thread = None

    def status(self) -> dict[str, object]:
        """The steps so far, the last error class (None once a round succeeds again) and
        the seconds since the last step (None: none yet)."""
        last = self._last_step
        return {
            "steps": self.steps,
            "error": self.error,
            "last_step_s_ago": None if last is None else round(time.monotonic() - last, 1),
        }

    def _round(self) -> None:
        """The steps there are now; it stops early when :meth:`_go_on` turns False."""
        raise NotImplementedError

    def _stepped(self) -> None:
        self.steps += 1
        self._last_step = time.monotonic()

    def _go_on(self) -> bool:
        """Whether a round may take another step: not stopping, and not busy."""
        return not self._stop.is_set() and not (self.busy is not None and self.busy())

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
                    "%s step failed (%s); retrying in %.0fs", self.NAME, self.error, RETRY_S
                )
                wait = RETRY_S
            self._wake.wait(wait)
            self._wake.clear()

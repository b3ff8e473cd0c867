"""Logging for what a client can make happen often: at most one line per interval.

A refused request (a slow client cut off, a saturated server, a full memory
budget) is worth a log line, but a flood of them must not become a flood of lines
(disk, log shipping, the operator's attention). :class:`Throttled` writes the
first and then at most one line per interval, saying how many it left out.
"""

from __future__ import annotations

import logging
import time


class Throttled:
    """A log line that a flood would repeat: written at most once per ``every_s``.

    The next line written says how many were left out, so a hostile client cannot
    fill the disk with one line per refused request.
    """

    def __init__(self, logger: logging.Logger, level: int, every_s: float = 10.0) -> None:
        self._logger = logger
        self._level = level
        self._every_s = every_s
        self._next = 0.0
        self._skipped = 0

    def __call__(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now < self._next:
            self._skipped += 1
            return
        if self._skipped:
            message += " (and %d more since the last such line)"
            args = (*args, self._skipped)
        self._logger.log(self._level, message, *args)
        self._next = now + self._every_s
        self._skipped = 0

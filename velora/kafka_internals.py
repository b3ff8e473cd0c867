"""Guarded use of kafka-python internals: probe once, warn once, answer yes or no.

Three fast paths reach into kafka-python below its public API: the ingest
appender (:mod:`ingest.appender`), the ledger's record runs
(:mod:`ledger.record_runs`) and the producer's tracking of half-made network
clients (:mod:`ingest.producer`). Each has a public path that gives the same
result, only slower or leakier. Two repairs use the same guard: a group join whose
assignment kafka-python dropped (:mod:`velora.group_join`; without it, a consumer's
own rule for a member left without partitions recovers, only later), and closing
the socket of a failed connection attempt (:mod:`velora.kafka_sockets`; without it,
the garbage collector closes it, only later). The contract every fast path keeps:

- its private kafka-python modules are imported inside its probe, never at the
  top of a module, so a moved or renamed module cannot fail an import;
- the probe runs at most once per process, on first use, and only on the exact
  kafka-python version the project pins (:data:`PINNED_KAFKA_PYTHON`);
- the probe checks every class, method and attribute the fast path touches
  (:func:`require`, or by running the fast path on a small batch it builds) and
  returns what the fast path needs (classes, a subclass it derived) or raises;
- if the version differs or the probe raises anything, :meth:`InternalsGuard.internals`
  answers ``None``, the caller takes its public path, and one warning naming the
  fast path and the reason is logged, once per process. Per-object checks made
  later (a consumer without the expected fetcher) go through
  :meth:`InternalsGuard.decline`, which shares that one warning.

Reasons name kafka-python's classes and attributes only, never a broker address
or a record.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Generic, TypeVar

import kafka

log = logging.getLogger(__name__)

PINNED_KAFKA_PYTHON = "3.0.12"
"""The kafka-python version the fast paths were written against (pinned in pyproject.toml)."""

T = TypeVar("T")


class InternalsChanged(Exception):
    """A kafka-python internal that a fast path needs is missing or not as expected."""


def require(owner: object, *names: str) -> None:
    """Raise :class:`InternalsChanged` naming the first of ``names`` that ``owner`` lacks."""
    for name in names:
        if not hasattr(owner, name):
            if isinstance(owner, ModuleType):
                label = owner.__name__
            elif isinstance(owner, type):
                label = owner.__qualname__
            else:
                label = type(owner).__qualname__
            raise InternalsChanged(f"{label}.{name} is missing")


class InternalsGuard(Generic[T]):
    """Whether one fast path may use kafka-python internals; thread-safe.

    ``probe`` imports the private modules, checks the internals and returns what
    the fast path needs; it runs once, on the first :meth:`internals` call.
    """

    def __init__(self, fast_path: str, probe: Callable[[], T]) -> None:
        self.fast_path = fast_path
        self._probe = probe
        self._probe_lock = threading.Lock()
        self._warn_lock = threading.Lock()
        self._probed = False
        self._internals: T | None = None
        self._warned = False

    def internals(self) -> T | None:
        """What the probe returned, or ``None``: then take the public path."""
        if not self._probed:
            with self._probe_lock:
                if not self._probed:
                    self._internals = self._run_probe()
                    self._probed = True
        return self._internals

    def decline(self, reason: str) -> None:
        """Log, once per process, that the public path is taken and why."""
        with self._warn_lock:
            if self._warned:
                return
            self._warned = True
        log.warning(
            "%s: kafka-python internals not as in %s (%s); using the public path",
            self.fast_path,
            PINNED_KAFKA_PYTHON,
            reason,
        )

    def reset(self) -> None:
        """Forget the probe's answer and the warning (for tests that change kafka-python)."""
        with self._probe_lock, self._warn_lock:
            self._probed = False
            self._internals = None
            self._warned = False

    def _run_probe(self) -> T | None:
        version = getattr(kafka, "__version__", None)
        if version != PINNED_KAFKA_PYTHON:
            self.decline(f"kafka-python is {version}")
            return None
        try:
            return self._probe()
        except Exception as exc:  # any surprise in a probe means "no", never a failure
            self.decline(f"{type(exc).__name__}: {exc}")
            return None

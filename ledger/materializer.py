"""The Kafka -> DuckDB loop that materializes the audit topic exactly once.

Two threads, one bounded queue between them:

- the **reader** (:class:`~ledger.log_reader.LogReader`) assigns every partition of
  the audit topic, seeks each one to the offset stored in DuckDB, and polls. Each
  poll becomes one :class:`~ledger.log_reader.Poll`: its records decoded into an
  Arrow table shaped like ``audit_events``, its quarantined records, and per
  partition the offset of the NEXT record to read.
- the **writer** merges whatever polls are queued (up to ``MERGE_POLLS`` polls of
  ``materializer_max_batch`` rows) and hands them to
  :meth:`~ledger.store.LedgerStore.write_batch`, which commits the rows, the
  quarantine and the offsets in one transaction.

Kafka parsing and Avro decoding hold the GIL while DuckDB's insert releases it, so
the two threads overlap on two cores.

**Nothing dies silently.** Any exception in either thread (a Kafka or DuckDB error,
an Arrow error, a bug, an exception from the ``on_batch`` callback) stops both
threads; the supervisor logs it with its traceback, counts it, shows it in
:meth:`Materializer.status` (a reason naming the stage and the error class, never
an address or a value) and starts again from the offsets stored in DuckDB after a
growing back-off (:data:`RETRY_SECONDS` up to :data:`MAX_RETRY_SECONDS`), so
nothing is lost or applied twice. The reason clears once the loop makes progress
again. A :class:`~velora.errors.LedgerMismatch` (stored offsets outside the log, a
recreated topic) is never retried: the materializer stops and reports it as fatal.

Readiness: at start the reader asks for the end offsets (the last stable offsets,
as ``read_committed`` sees them). The materializer is *caught up* once every
partition's stored offset has reached them; the lag is measured against end
offsets refreshed about once a second.
"""

from __future__ import annotations

import logging
import queue
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

from ledger.decode import EventDecoder
from ledger.duck import duckdb_error
from ledger.log_reader import LogReader, Poll
from ledger.memory_need import is_out_of_memory, out_of_memory, shortfall
from ledger.store import LedgerStore
from velora.errors import LedgerMismatch, VeloraError
from velora.settings import Settings
from velora.topics import topic_id

log = logging.getLogger(__name__)

REFRESH_SECONDS = 1.0
RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 30.0
QUEUE_DEPTH = 8
# A DuckDB transaction costs a lot on its own (the primary-key index, the WAL
# fsync): 5,000-row transactions commit ~70k rows/s here, 20,000-row ones ~120k/s.
# So when polls queue up (catch-up), the writer merges up to this many polls'
# worth of rows into one transaction; at a steady trickle each poll commits alone.
MERGE_POLLS = 8
# The reader thread holds the GIL for long stretches (kafka-python parses records in
# Python); every DuckDB call of the writer needs it back briefly. With the default
# 5 ms switch interval each hand-back costs up to 5 ms and the writer runs at a
# third of its speed; 0.5 ms keeps it fed.
SWITCH_INTERVAL = 0.0005
TOPIC_ID_KEY = "audit_topic_id"

#: ``on_batch(rows_in_batch, stored_offsets)`` after every commit (progress bars, metrics).
BatchCallback = Callable[[int, dict[int, int]], None]


class StageError(Exception):
    """An exception of one stage of the loop (``read``, ``write``, ``on_batch``), for the reason."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(f"{stage}: {type(cause).__name__}")
        self.stage = stage
        self.cause = cause


@dataclass
class Status:
    """A snapshot of the materializer's progress."""

    running: bool
    caught_up: bool
    stored: dict[int, int] = field(default_factory=dict)
    target: dict[int, int] | None = None
    end: dict[int, int] = field(default_factory=dict)
    error: str | None = None
    """Why the loop is restarting (cleared once it makes progress again)."""
    fatal: str | None = None
    """Why the loop stopped for good (the ledger does not match the log)."""
    held: dict[int, tuple[int, str]] = field(default_factory=dict)
    restarts: int = 0
    failures: int = 0
    """Failures since the loop last made progress."""

    @property
    def lag(self) -> int:
        """Records in the log (at the last refresh) that are not materialized yet."""
        return sum(max(0, e - self.stored.get(p, 0)) for p, e in self.end.items())


class Materializer:
    """Follows the audit topic into a :class:`LedgerStore`; start it, stop it, watch it."""

    def __init__(
        self,
        settings: Settings,
        store: LedgerStore,
        *,
        decoder: EventDecoder | None = None,
        on_batch: BatchCallback | None = None,
        record_runs: bool = True,
    ) -> None:
        """``record_runs=False`` keeps kafka-python's per-record path (tests compare both)."""
        self.settings = settings
        self.record_runs = record_runs
        self.store = store
        self.topic = settings.audit_topic
        self.decoder = decoder or EventDecoder()
        self.on_batch = on_batch
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._stored: dict[int, int] = {}
        self._target: dict[int, int] | None = None
        self._end: dict[int, int] = {}
        self._error: str | None = None
        self._fatal: str | None = None
        self._held: dict[int, tuple[int, str]] = {}
        self._restarts = 0
        self._failures = 0
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------
    def start(self) -> None:
        """Start following the topic in background threads."""
        if self._thread is not None:
            return
        if sys.getswitchinterval() > SWITCH_INTERVAL:
            sys.setswitchinterval(SWITCH_INTERVAL)
        self._stored = self.store.stored_offsets(self.topic)
        self._thread = threading.Thread(target=self._supervise, name="materializer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the batch in flight is committed (or abandoned, if it fails)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # -- observation ------------------------------------------------------------
    def status(self) -> Status:
        """Progress as of now."""
        with self._cond:
            stored = dict(self._stored)
            target = None if self._target is None else dict(self._target)
            caught_up = self._caught_up_locked()
            running = self._thread is not None and self._thread.is_alive()
            return Status(
                running,
                caught_up,
                stored,
                target,
                dict(self._end),
                self._error,
                self._fatal,
                dict(self._held),
                self._restarts,
                self._failures,
            )

    def wait_for_offset(self, partition: int, offset: int, timeout: float) -> bool:
        """Wait until the record at ``offset`` of ``partition`` is materialized (or quarantined)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._stored.get(partition, 0) <= offset:
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set() or self._fatal:
                    return False
                self._cond.wait(left)
        return True

    def wait_caught_up(self, timeout: float | None = None) -> bool:
        """Wait until caught up to the end offsets seen at start (False on timeout or fatal)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._caught_up_locked():
                left = None if deadline is None else deadline - time.monotonic()
                if (left is not None and left <= 0) or self._stop.is_set() or self._fatal:
                    return False
                self._cond.wait(left if left is not None else 1.0)
        return True

    def _caught_up_locked(self) -> bool:
        target = self._target
        return target is not None and all(self._stored.get(p, 0) >= o for p, o in target.items())

    # -- the supervisor -----------------------------------------------------------
    def _supervise(self) -> None:
        while not self._stop.is_set():
            try:
                self._run_once()
            except LedgerMismatch as exc:
                self._stop_for_good(exc.message)
                return
            except Exception as exc:
                err = duckdb_error(exc.cause if isinstance(exc, StageError) else exc)
                if isinstance(err, duckdb.FatalException):  # unusable until the file is reopened
                    self._stop_for_good(self.store.db.invalidate(self._duckdb_reason(err)))
                    return
                self._failed(exc)

    def _stop_for_good(self, reason: str) -> None:
        log.critical("materializer stopped for good: %s", reason)
        with self._cond:
            self._fatal = reason
            self._cond.notify_all()

    def _duckdb_reason(self, cause: BaseException) -> str:
        """An error of DuckDB's, with what to change when it ran out of memory."""
        if is_out_of_memory(duckdb_error(cause)):  # raised as is, or translated
            return out_of_memory(self.settings.duckdb_memory_limit_mb)
        return _describe(cause)

    def _failed(self, exc: Exception) -> None:
        stage, cause = (exc.stage, exc.cause) if isinstance(exc, StageError) else ("run", exc)
        reason = f"{stage} failed: {self._duckdb_reason(cause)}"
        with self._cond:
            self._error = reason
            self._restarts += 1
            self._failures += 1
            failures = self._failures
            self._cond.notify_all()
        delay = min(MAX_RETRY_SECONDS, RETRY_SECONDS * 2 ** min(failures - 1, 10))
        delay *= random.uniform(0.8, 1.2)
        log.error(
            "materializer %s (failure %d in a row); restarting from the stored offsets in %.1fs",
            reason,
            failures,
            delay,
            exc_info=(type(cause), cause, cause.__traceback__),
        )
        self._stop.wait(delay)

    def _progressed(self) -> None:
        """The loop works again: clear the reason (called with ``_cond`` held)."""
        if self._error is not None:
            log.info("materializer recovered after %d restarts", self._restarts)
        self._error = None
        self._failures = 0

    # -- one run ------------------------------------------------------------------
    def _run_once(self) -> None:
        stored = self.store.stored_offsets(self.topic)
        with self._cond:
            self._stored = dict(stored)
        reader = LogReader(
            self.settings,
            self.decoder,
            record_runs=self.record_runs,
            topic_id=lambda: topic_id(self.settings, self.topic),
        )
        work: queue.Queue[Poll | None] = queue.Queue(QUEUE_DEPTH)
        failure: list[BaseException] = []
        writer = threading.Thread(
            target=self._write_loop, args=(work, failure), name="materializer-writer", daemon=True
        )
        try:
            try:
                self._open(reader, stored)
                writer.start()
                self._read_loop(reader, work, lambda: bool(failure) or not writer.is_alive())
            except LedgerMismatch:
                raise
            except Exception as exc:
                raise StageError("read", exc) from exc
        finally:
            if writer.is_alive():
                _put(work, None, lambda: not writer.is_alive())
                writer.join()
            reader.close()
        if failure:
            raise failure[0]

    def _open(self, reader: LogReader, stored: dict[int, int]) -> None:
        end = reader.open(stored, self.store.meta(TOPIC_ID_KEY))
        current = reader.current_topic_id()
        if current is not None:
            self.store.set_meta(TOPIC_ID_KEY, current)
        with self._cond:
            first = self._target is None
            if first:  # readiness compares with the FIRST start's end offsets
                self._target = dict(end)
            self._end = dict(end)
            self._cond.notify_all()
        if first:  # the events stored plus those to read, against the memory limit
            events = self.store.count() + sum(max(0, o - stored.get(p, 0)) for p, o in end.items())
            short = shortfall(self.settings.duckdb_memory_limit_mb, events)
            if short is not None:
                log.warning("%s", short)

    def _read_loop(
        self, reader: LogReader, work: queue.Queue[Poll | None], writer_gone: Callable[[], bool]
    ) -> None:
        refreshed = time.monotonic()
        give_up = lambda: writer_gone() or self._stop.is_set()  # noqa: E731
        while not give_up():
            batch = reader.poll()
            if reader.held != self._held:
                with self._cond:
                    self._held = dict(reader.held)
            if batch is not None:
                _put(work, batch, give_up)
            reader.recheck_holds()
            if time.monotonic() - refreshed >= REFRESH_SECONDS:
                refreshed = time.monotonic()
                end = reader.end_offsets()
                with self._cond:
                    self._end = end
                    self._progressed()

    # -- the writer -----------------------------------------------------------------
    def _write_loop(self, work: queue.Queue[Poll | None], failure: list[BaseException]) -> None:
        limit = self.settings.materializer_max_batch * MERGE_POLLS
        try:
            while True:
                first = work.get()
                if first is None:
                    return
                batches, rows, done = [first], first.table.num_rows, False
                while rows < limit:
                    try:
                        more = work.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        done = True
                        break
                    batches.append(more)
                    rows += more.table.num_rows
                self._write(batches)
                if done:
                    return
        except StageError as exc:
            failure.append(exc)
        except Exception as exc:
            failure.append(StageError("write", exc))

    def _write(self, batches: list[Poll]) -> None:
        """Commit queued polls in one transaction (the store keeps the first copy of a key)."""
        table = batches[0].table
        if len(batches) > 1:
            table = pa.concat_tables([b.table for b in batches])
        next_offsets: dict[int, int] = {}
        quarantined: list[tuple[int, int, str]] = []
        for b in batches:
            next_offsets.update(b.next_offsets)
            quarantined.extend(b.quarantined)
        self.store.write_batch(table, self.topic, next_offsets, quarantined)
        with self._cond:
            self._stored.update(next_offsets)
            stored = dict(self._stored)
            self._progressed()
            self._cond.notify_all()
        if self.on_batch is not None:
            try:
                self.on_batch(sum(b.read for b in batches), stored)
            except Exception as exc:
                raise StageError("on_batch callback", exc) from exc


def _describe(exc: BaseException) -> str:
    """An error for a log line or a probe: our own message (no addresses), else the class."""
    if isinstance(exc, VeloraError):
        return f"{type(exc).__name__}: {exc.message}"
    return type(exc).__name__


def _put(work: queue.Queue[Poll | None], item: Poll | None, give_up: Callable[[], bool]) -> None:
    """Put into the bounded queue, unless ``give_up()`` turns true while it is full."""
    while True:
        try:
            work.put(item, timeout=0.1)
            return
        except queue.Full:
            if give_up():
                return

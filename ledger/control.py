"""Control state: the compacted control topic folded into in-memory maps.

The control topic (one partition, ``cleanup.policy=compact``) holds the full
current state of each API key (``api_key:<key_id>``), each tenant's settings
(``tenant:<tenant_id>``), each server-mode tenant's wrapped PHI keyset
(``phi_keyset:<tenant_id>``) and each webhook endpoint (``webhook:<endpoint_id>``, its
configuration with encrypted secrets, and ``webhook_health:<endpoint_id>``, what the
dispatchers found about it). Folding it from the beginning, latest record per key
wins, gives every node the same view. A ``None`` value (tombstone) deletes.

- :class:`ControlFold` is the pure fold (no Kafka), shared by the follower and
  by one-shot readers. For API keys it is **sticky**: a later record without
  ``revoked_at`` never un-revokes a key, ``expires_at`` only ever moves earlier
  and ``rotated_to`` is never cleared, so a writer that acted on a stale view (a
  rotation racing a revocation) cannot bring a key back. ``last_written`` keeps
  the last record as written per key, which is what compaction keeps: the key
  lifecycle (``cli.keys``) rewrites the folded state when the two differ.
- :class:`ControlState` follows the topic in a background thread (short polls,
  so a revocation applies on a running node well within 2 s) and answers
  look-ups under a lock. ``position`` is the offset of the *next* record to
  fold; :meth:`ControlState.wait_for_offset` waits until a given offset is folded.

  - **Start-up gating.** :meth:`ControlState.serving_problem` names why the API
    must not authenticate yet: until the fold has reached the end offset seen
    when the follower first connected, and whenever it is stale.
  - **Freshness.** About once a second the follower asks for the topic's end
    offset; once its position reaches that end, the state is known to be as
    fresh as the moment of the question. Older than
    ``settings.control_max_staleness_s`` is stale (a Kafka outage, a stuck
    follower), and authenticated routes answer 503.
  - **Nothing dies silently.** Any exception in the follower (Kafka, the fold,
    a bug) is logged with its offset, shown in :meth:`ControlState.readiness`
    (the class name only: no address or secret), counted in ``restarts``, and
    the follower restarts with backoff from the offset it had reached.
- :func:`read_control` folds the topic once, up to its current end (CLI).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime

from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from schemas.codec import AvroCodec
from schemas.events import (
    API_KEY,
    PHI_KEYSET,
    TENANT_SETTINGS,
    WEBHOOK_ENDPOINT,
    WEBHOOK_HEALTH,
    ApiKey,
    PhiKeyset,
    TenantSettings,
    WebhookEndpoint,
    WebhookHealth,
)
from velora.errors import DecodeError, Unavailable
from velora.kafka_clients import KAFKA_ERRORS, close_quietly, map_kafka_errors, new_consumer
from velora.settings import Settings

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 200
POSITION_TIMEOUT_MS = 5000
"""Longest wait for the follower's position (kafka-python waits without bound by
default while it validates a position against a broker that went away)."""
END_CHECK_INTERVAL_S = 1.0
"""How often the follower confirms its position against the topic's end offset."""
BACKOFF_S = (0.5, 10.0)
"""First and longest wait before the follower restarts after a failure."""


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return a if b is None else b
    return min(a, b)


def merge_key(previous: ApiKey | None, record: ApiKey) -> ApiKey:
    """The folded state of a key after ``record``: revocation and expiry are sticky."""
    if previous is None:
        return record
    return replace(
        record,
        revoked_at=_earliest(previous.revoked_at, record.revoked_at),
        expires_at=_earliest(previous.expires_at, record.expires_at),
        rotated_to=record.rotated_to or previous.rotated_to,
        updated_at=max(previous.updated_at, record.updated_at),
    )


@dataclass
class ControlFold:
    """API keys and tenant settings, folded from the control topic in log order."""

    api_keys: dict[str, ApiKey] = field(default_factory=dict)
    last_written: dict[str, ApiKey] = field(default_factory=dict)
    tenants: dict[str, TenantSettings] = field(default_factory=dict)
    phi_keysets: dict[str, PhiKeyset] = field(default_factory=dict)
    webhooks: dict[str, WebhookEndpoint] = field(default_factory=dict)
    webhook_health: dict[str, WebhookHealth] = field(default_factory=dict)
    codec: AvroCodec = field(default_factory=AvroCodec)
    skipped: int = 0

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        """Fold one control record; undecodable or unknown records are skipped (and logged)."""
        if key is None:
            self.skipped += 1
            return
        kind, _, ident = key.decode("utf-8", "replace").partition(":")
        if value is None:
            if kind == "api_key":
                self.api_keys.pop(ident, None)
                self.last_written.pop(ident, None)
            elif kind == "tenant":
                self.tenants.pop(ident, None)
            elif kind == "phi_keyset":
                self.phi_keysets.pop(ident, None)
            elif kind == "webhook":
                self.webhooks.pop(ident, None)
            elif kind == "webhook_health":
                self.webhook_health.pop(ident, None)
            return
        try:
            name, record = self.codec.decode(value)
        except DecodeError as exc:
            self.skipped += 1
            log.warning("skipping undecodable control record %s: %s", kind, exc)
            return
        if kind == "api_key" and name == API_KEY:
            written = ApiKey.from_avro(record)
            self.last_written[ident] = written
            self.api_keys[ident] = merge_key(self.api_keys.get(ident), written)
        elif kind == "tenant" and name == TENANT_SETTINGS:
            self.tenants[ident] = TenantSettings.from_avro(record)
        elif kind == "phi_keyset" and name == PHI_KEYSET:
            self.phi_keysets[ident] = PhiKeyset.from_avro(record)
        elif kind == "webhook" and name == WEBHOOK_ENDPOINT:
            self.webhooks[ident] = WebhookEndpoint.from_avro(record)
        elif kind == "webhook_health" and name == WEBHOOK_HEALTH:
            self.webhook_health[ident] = WebhookHealth.from_avro(record)
        else:
            self.skipped += 1


def _consumer(settings: Settings) -> tuple[KafkaConsumer, TopicPartition]:
    tp = TopicPartition(settings.control_topic, 0)
    consumer = new_consumer(settings, "velora-control", fetch_max_wait_ms=100)
    try:
        with map_kafka_errors("control topic assignment"):
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
    except BaseException:
        close_quietly(consumer)
        raise
    return consumer, tp


ConsumerFactory = Callable[[Settings], tuple[KafkaConsumer, TopicPartition]]


def read_control(settings: Settings, timeout: float = 30.0) -> ControlFold:
    """Fold the control topic from the beginning up to its current end, once."""
    consumer, tp = _consumer(settings)
    fold = ControlFold()
    try:
        with map_kafka_errors("control topic read"):
            end = consumer.end_offsets([tp])[tp]
            deadline = time.monotonic() + timeout
            while consumer.position(tp) < end:
                if time.monotonic() > deadline:
                    raise Unavailable(
                        f"control topic not read to its end in {timeout:.0f}s", retry_after=5
                    )
                for records in consumer.poll(timeout_ms=POLL_TIMEOUT_MS).values():
                    for rec in records:
                        fold.apply(rec.key, rec.value)
    finally:
        close_quietly(consumer)
    return fold


class ControlState:
    """Follows the control topic in a background thread; thread-safe look-ups.

    ``fold`` and ``consumer_factory`` are seams for fault-injection tests.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        fold: ControlFold | None = None,
        consumer_factory: ConsumerFactory = _consumer,
        clock: Callable[[], float] = time.monotonic,
        refresh_s: float = END_CHECK_INTERVAL_S,
    ) -> None:
        """``refresh_s``: how often the topic's end offset is read, which bounds how far
        :meth:`folded_as_of` trails the wall clock."""
        self._settings = settings
        self._refresh_s = refresh_s
        self._fold = fold if fold is not None else ControlFold()
        self._factory = consumer_factory
        self._clock = clock
        self._cond = threading.Condition()
        self._position = 0
        self._start_end: int | None = None
        self._confirmed_at: float | None = None
        self._confirmed_wall: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: str | None = None
        self.restarts = 0

    # -- lifecycle ------------------------------------------------------------------
    def start(self, wait_timeout: float = 30.0) -> bool:
        """Start following; wait (up to ``wait_timeout``) until caught up with the topic.

        Never raises for Kafka trouble: the follower keeps retrying, and until it
        has caught up :meth:`serving_problem` says so. Returns whether it caught up.
        """
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="velora-control", daemon=True)
            self._thread.start()
        with self._cond:
            return self._cond.wait_for(self._caught_up, timeout=wait_timeout)

    def stop(self) -> None:
        """Stop the follower thread and close its consumer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        backoff = BACKOFF_S[0]
        while not self._stop.is_set():
            consumer: KafkaConsumer | None = None
            attempt_started = time.monotonic()
            try:
                consumer, tp = self._factory(self._settings)
                if self._position > 0:
                    consumer.seek(tp, self._position)
                self._follow(consumer, tp)
                return
            except Exception as exc:  # anything: never stop following silently
                if time.monotonic() - attempt_started > 30 * BACKOFF_S[1]:
                    backoff = BACKOFF_S[0]  # it ran well for a while: start the backoff over
                self._failed(exc, backoff)
            finally:
                if consumer is not None:
                    close_quietly(consumer)
            self._stop.wait(backoff)
            backoff = min(BACKOFF_S[1], backoff * 2)

    def _failed(self, exc: Exception, backoff: float) -> None:
        with self._cond:
            self.restarts += 1
            self._error = f"control follower failed ({type(exc).__name__}); restarting"
            position = self._position
        if isinstance(exc, (*KAFKA_ERRORS, Unavailable)):  # their text may name brokers
            log.warning(
                "control follower at offset %d: Kafka %s; restart %d in %.1fs",
                position,
                type(exc).__name__,
                self.restarts,
                backoff,
            )
        else:
            log.error(
                "control follower at offset %d failed; restart %d in %.1fs",
                position,
                self.restarts,
                backoff,
                exc_info=(type(exc), exc, exc.__traceback__),
            )

    def _follow(self, consumer: KafkaConsumer, tp: TopicPartition) -> None:
        """Poll and fold until stopped; any exception ends this attempt (and restarts)."""
        pending: tuple[float, int, float] | None = None
        next_check = 0.0
        poll_ms = min(POLL_TIMEOUT_MS, max(10, int(self._refresh_s * 1000)))
        while not self._stop.is_set():
            now = self._clock()
            if now >= next_check:
                with map_kafka_errors("control topic end offsets"):
                    wall = time.time()
                    end = consumer.end_offsets([tp])[tp]
                pending = (now, end, wall)
                next_check = now + self._refresh_s
                with self._cond:
                    if self._start_end is None:
                        self._start_end = end
            with map_kafka_errors("control topic poll"):
                batches = consumer.poll(timeout_ms=poll_ms)
            # Never call Kafka with the lock held: every authenticated request takes it
            # on the event loop, and position() waits for the broker when it has to
            # fetch the position again (a broker that went away: up to its timeout).
            with map_kafka_errors("control topic position"):
                position = consumer.position(tp, timeout_ms=POSITION_TIMEOUT_MS)
            with self._cond:
                for records in batches.values():
                    for rec in records:
                        self._fold.apply(rec.key, rec.value)
                        self._position = max(self._position, rec.offset + 1)
                if position is not None:  # None: not known within the timeout
                    self._position = max(self._position, position)
                if pending is not None and self._position >= pending[1]:
                    self._confirmed_at = pending[0]
                    self._confirmed_wall = pending[2]
                    pending = None
                self._error = None
                self._cond.notify_all()

    # -- state ----------------------------------------------------------------------
    def _caught_up(self) -> bool:
        return self._start_end is not None and self._position >= self._start_end

    def _age(self) -> float | None:
        return None if self._confirmed_at is None else self._clock() - self._confirmed_at

    def folded_as_of(self) -> float | None:
        """A wall-clock time (epoch seconds) by which every control record then in the
        topic is folded, or None before the first confirmation. A record acknowledged
        before that time (an endpoint, a key) is known here."""
        with self._cond:
            return self._confirmed_wall

    @property
    def position(self) -> int:
        """Offset of the next control record to fold."""
        with self._cond:
            return self._position

    def caught_up(self) -> bool:
        """True once everything present at start has been folded."""
        with self._cond:
            return self._caught_up()

    def serving_problem(self) -> str | None:
        """Why authenticated routes must answer 503 now, or None when the state is usable."""
        with self._cond:
            if not self._caught_up():
                return "API-key state is still loading"
            age = self._age()
            if age is None or age > self._settings.control_max_staleness_s:
                return "API-key state is stale"
            return None

    def wait_for_offset(self, offset: int, timeout: float) -> bool:
        """Block until the record at ``offset`` is folded; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._position > offset, timeout=timeout)

    def api_key(self, key_id: str) -> ApiKey | None:
        """The current state of one API key, or None."""
        with self._cond:
            return self._fold.api_keys.get(key_id)

    def api_keys(self, tenant_id: str | None = None) -> list[ApiKey]:
        """Every key (of one tenant, if given), oldest first."""
        with self._cond:
            keys = list(self._fold.api_keys.values())
        if tenant_id is not None:
            keys = [k for k in keys if k.tenant_id == tenant_id]
        return sorted(keys, key=lambda k: (k.created_at, k.key_id))

    def tenant_settings(self, tenant_id: str) -> TenantSettings | None:
        """One tenant's settings, or None when never set."""
        with self._cond:
            return self._fold.tenants.get(tenant_id)

    def phi_keyset(self, tenant_id: str) -> PhiKeyset | None:
        """One server-mode tenant's wrapped PHI keyset, or None."""
        with self._cond:
            return self._fold.phi_keysets.get(tenant_id)

    def webhook_endpoint(self, endpoint_id: str) -> WebhookEndpoint | None:
        """The current configuration of one webhook endpoint, or None."""
        with self._cond:
            return self._fold.webhooks.get(endpoint_id)

    def webhook_endpoints(self, tenant_id: str | None = None) -> list[WebhookEndpoint]:
        """Every webhook endpoint (of one tenant, if given), oldest first."""
        with self._cond:
            endpoints = list(self._fold.webhooks.values())
        if tenant_id is not None:
            endpoints = [e for e in endpoints if e.tenant_id == tenant_id]
        return sorted(endpoints, key=lambda e: (e.created_at, e.endpoint_id))

    def webhook_health(self, endpoint_id: str) -> WebhookHealth | None:
        """What the dispatchers recorded about one endpoint's deliveries, or None."""
        with self._cond:
            return self._fold.webhook_health.get(endpoint_id)

    def readiness(self) -> dict[str, object]:
        """The follower's state for ``/readyz``; ``ready`` only when caught up, fresh, healthy."""
        with self._cond:
            age = self._age()
            stale = age is None or age > self._settings.control_max_staleness_s
            caught_up = self._caught_up()
            out: dict[str, object] = {
                "ready": caught_up and not stale and self._error is None,
                "caught_up": caught_up,
                "position": self._position,
                "end_at_start": self._start_end,
                "age_s": None if age is None else round(age, 1),
                "stale": caught_up and stale,
                "error": self._error,
                "restarts": self.restarts,
            }
        if not caught_up:
            out["reason"] = "control state still loading"
        elif stale:
            out["reason"] = (
                f"control state stale: not confirmed against Kafka for more than "
                f"{self._settings.control_max_staleness_s}s"
            )
        elif self._error is not None:
            out["reason"] = self._error
        return out

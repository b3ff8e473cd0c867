"""Control state: the compacted control topic folded into in-memory maps.

The control topic (one partition, ``cleanup.policy=compact``) holds the full
current state of each API key (``api_key:<key_id>``), each tenant's settings
(``tenant:<tenant_id>``) and each webhook endpoint (``webhook:<endpoint_id>``, its
configuration with encrypted secrets, and ``webhook_health:<endpoint_id>``, what the
dispatchers found about it). Folding it from the beginning, latest record per key
wins, gives every node the same view. A ``None`` value (tombstone) deletes.

- :class:`ControlFold` is the pure fold (no Kafka), shared by the follower and
  by one-shot readers.
- :class:`ControlState` follows the topic in a background thread (short polls,
  so a revocation applies on a running node well within 2 s) and answers
  look-ups under a lock. ``position`` is the offset of the *next* record to
  fold; :meth:`ControlState.wait_for_offset` waits until a given offset is folded.
- :func:`read_control` folds the topic once, up to its current end (CLI).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from schemas.codec import AvroCodec
from schemas.events import (
    API_KEY,
    TENANT_SETTINGS,
    WEBHOOK_ENDPOINT,
    WEBHOOK_HEALTH,
    ApiKey,
    TenantSettings,
    WebhookEndpoint,
    WebhookHealth,
)
from velora.errors import DecodeError, Unavailable
from velora.kafka_clients import KAFKA_ERRORS, close_quietly, map_kafka_errors, new_consumer
from velora.settings import Settings

log = logging.getLogger(__name__)

POLL_TIMEOUT_MS = 200


@dataclass
class ControlFold:
    """API keys and tenant settings, latest record per control key."""

    api_keys: dict[str, ApiKey] = field(default_factory=dict)
    tenants: dict[str, TenantSettings] = field(default_factory=dict)
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
            elif kind == "tenant":
                self.tenants.pop(ident, None)
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
            self.api_keys[ident] = ApiKey.from_avro(record)
        elif kind == "tenant" and name == TENANT_SETTINGS:
            self.tenants[ident] = TenantSettings.from_avro(record)
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
    except Unavailable:
        close_quietly(consumer)
        raise
    return consumer, tp


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
    """Follows the control topic in a background thread; thread-safe look-ups."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._fold = ControlFold()
        self._cond = threading.Condition()
        self._position = 0
        self._start_end: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: str | None = None

    def start(self, wait_timeout: float = 30.0) -> None:
        """Start following; wait (up to ``wait_timeout``) until caught up with the topic's end."""
        consumer, tp = _consumer(self._settings)
        try:
            with map_kafka_errors("control topic end offsets"):
                self._start_end = consumer.end_offsets([tp])[tp]
        except Unavailable:
            close_quietly(consumer)
            raise
        self._thread = threading.Thread(
            target=self._run, args=(consumer, tp), name="velora-control", daemon=True
        )
        self._thread.start()
        if self._start_end and not self.wait_for_offset(self._start_end - 1, wait_timeout):
            log.warning("control state not caught up after %.0fs; serving anyway", wait_timeout)

    def stop(self) -> None:
        """Stop the follower thread and close its consumer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self, consumer: KafkaConsumer, tp: TopicPartition) -> None:
        try:
            while not self._stop.is_set():
                try:
                    batches = consumer.poll(timeout_ms=POLL_TIMEOUT_MS)
                    position = consumer.position(tp)
                except KAFKA_ERRORS as exc:
                    self._error = type(exc).__name__
                    log.warning("control topic poll failed (%s); retrying", type(exc).__name__)
                    self._stop.wait(1.0)
                    continue
                with self._cond:
                    for records in batches.values():
                        for rec in records:
                            self._fold.apply(rec.key, rec.value)
                    self._position = max(self._position, position)
                    self._error = None
                    self._cond.notify_all()
        finally:
            close_quietly(consumer)

    @property
    def position(self) -> int:
        """Offset of the next control record to fold."""
        with self._cond:
            return self._position

    def caught_up(self) -> bool:
        """True once everything present at start has been folded."""
        with self._cond:
            return self._start_end is not None and self._position >= self._start_end

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
        """``{"caught_up", "position", "error"}`` for the readiness probe."""
        with self._cond:
            return {
                "caught_up": self._start_end is not None and self._position >= self._start_end,
                "position": self._position,
                "error": self._error,
            }

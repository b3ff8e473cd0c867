"""Sample audit events and a fast producer, for tests and benchmarks.

:class:`EventFactory` encodes a few thousand varied events once with the real
codec, then stamps a fresh UUIDv7 ``event_id`` into a copy of one of them for
every event it makes: ``event_id`` is the first field of ``AuditEvent``, so in the
encoded body it sits right after the 10-byte single-object header and its
one-byte length (36 characters -> zigzag ``0x48``). The result is byte-for-byte
what ``codec.encode`` would produce for the stamped record (a test checks this),
at a fraction of the cost, so a benchmark can load a million events quickly.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import uuid_utils
from kafka import KafkaProducer

from schemas.codec import HEADER_LEN, AvroCodec
from schemas.events import AuditEvent
from velora.settings import Settings

_ID_AT = HEADER_LEN + 1  # the event_id's 36 bytes follow the header and its length byte
_ACTIONS = ("claim.viewed", "claim.updated", "patient.searched", "user.login", "report.exported")
_CRUD = ("create", "read", "update", "delete", "other")
_RESULTS = ("success", "success", "success", "failure", "denied")


def sample_record(rng: random.Random, tenant_id: str, occurred_at: datetime) -> dict[str, object]:
    """One varied, valid AuditEvent record (codec form, timestamps in micros)."""
    actor = rng.randrange(500)
    n_targets = rng.choice((0, 1, 1, 2, 3))
    names = (None, "Claim 7")
    event = {
        "event_id": str(uuid_utils.uuid7()),
        "tenant_id": tenant_id,
        "occurred_at": occurred_at,
        "received_at": occurred_at + timedelta(milliseconds=rng.randrange(1, 500)),
        "action": rng.choice(_ACTIONS),
        "crud": rng.choice(_CRUD),
        "category": rng.choice((None, "claims", "auth", "reports")),
        "actor": {
            "type": rng.choice(("user", "service", "api_key")),
            "id": f"user-{actor}",
            "name": rng.choice((None, f"User Nr {actor}", "Zoë Åström")),
            "email": None if actor % 3 else f"user{actor}@example.com",
            "ip": rng.choice((None, "10.0.0.1", "2001:db8::1")),
            "user_agent": rng.choice((None, "Mozilla/5.0 (X11; Linux x86_64)")),
        },
        "targets": [
            {"type": "claim", "id": f"claim-{rng.randrange(10**6)}", "name": rng.choice(names)}
            for _ in range(n_targets)
        ],
        "outcome": {"result": rng.choice(_RESULTS), "reason": rng.choice((None, "policy"))},
        "request_id": rng.choice((None, str(uuid_utils.uuid4()))),
        "source": rng.choice(("claims-service", "portal", "batch")),
        "metadata": {f"k{i}": "v" * i for i in range(rng.choice((0, 1, 3)))},
        "schema_version": 1,
    }
    return AuditEvent.from_avro(event).to_avro()


@dataclass(frozen=True)
class Made:
    """One made event: its id, Kafka key (tenant) and encoded value."""

    event_id: str
    key: bytes
    value: bytes


class EventFactory:
    """Makes encoded audit events quickly from pre-encoded templates."""

    def __init__(
        self,
        codec: AvroCodec | None = None,
        *,
        templates: int = 2000,
        tenants: int = 20,
        seed: int = 7,
    ) -> None:
        self.codec = codec or AvroCodec()
        rng = random.Random(seed)
        start = datetime.now(UTC) - timedelta(days=30)
        self._templates: list[tuple[bytes, bytes]] = []
        for i in range(templates):
            tenant = f"tenant-{i % tenants:02d}"
            record = sample_record(rng, tenant, start + timedelta(seconds=i))
            value = self.codec.encode("AuditEvent", record)
            if value[HEADER_LEN] != 0x48:  # pragma: no cover - guarded by a test
                raise ValueError("event_id is not the first, 36-character field")
            self._templates.append((tenant.encode(), value))
        self._next = 0

    def make(self) -> Made:
        """A new event (fresh UUIDv7 event_id) from the next template."""
        key, template = self._templates[self._next % len(self._templates)]
        self._next += 1
        event_id = str(uuid_utils.uuid7())
        value = template[:_ID_AT] + event_id.encode() + template[_ID_AT + 36 :]
        return Made(event_id, key, value)

    def stream(self, n: int) -> Iterator[Made]:
        """``n`` new events."""
        for _ in range(n):
            yield self.make()


def fast_producer(settings: Settings) -> KafkaProducer:
    """A batching producer (acks=all) for loading many events."""
    return KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id="velora-loader",
        acks="all",
        linger_ms=20,
        batch_size=512 * 1024,
        max_request_size=8 * 1024 * 1024,
    )


def produce(settings: Settings, events: list[Made], producer: KafkaProducer | None = None) -> int:
    """Send ``events`` to the audit topic and wait for every ack; returns how many were acked."""
    own = producer is None
    producer = producer or fast_producer(settings)
    try:
        futures = [producer.send(settings.audit_topic, key=e.key, value=e.value) for e in events]
        producer.flush()
        return sum(1 for f in futures if f.succeeded())
    finally:
        if own:
            producer.close()

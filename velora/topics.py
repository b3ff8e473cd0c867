"""The project's Kafka topics and their required settings, created idempotently.

- audit topic ``<prefix>.audit.v1``: key = tenant_id, ``retention.ms=-1``,
  ``cleanup.policy=delete`` (never compacted), ``VELORA_AUDIT_PARTITIONS`` partitions.
- control topic ``<prefix>.control.v1``: ``cleanup.policy=compact``, one partition,
  key = ``<kind>:<id>`` (``api_key:<key_id>``, ``tenant:<tenant_id>``, ...), value =
  the entity's full current state as a single-object Avro record.
"""

from __future__ import annotations

from dataclasses import dataclass

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.structs import TopicPartition

from velora.errors import Unavailable
from velora.settings import Settings


@dataclass(frozen=True)
class TopicSpec:
    """A topic the project needs, with the configs it must have."""

    name: str
    partitions: int
    configs: dict[str, str]


def required_topics(settings: Settings) -> list[TopicSpec]:
    """Every topic the spine needs."""
    return [
        TopicSpec(
            settings.audit_topic,
            settings.audit_partitions,
            {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"},
        ),
        TopicSpec(
            settings.control_topic,
            1,
            {"cleanup.policy": "compact", "min.compaction.lag.ms": "0"},
        ),
    ]


def ensure_topics(settings: Settings) -> list[str]:
    """Create missing topics; return the names that were created."""
    admin = _admin(settings)
    created: list[str] = []
    try:
        existing = set(admin.list_topics())
        for spec in required_topics(settings):
            if spec.name in existing:
                continue
            try:
                admin.create_topics(
                    [NewTopic(spec.name, spec.partitions, 1, topic_configs=spec.configs)]
                )
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass
    except KafkaError as exc:
        raise Unavailable(f"kafka at {settings.kafka_bootstrap}: {exc}", retry_after=5) from exc
    finally:
        admin.close()
    return created


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """The current log-end offset of every partition of ``topic``."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        client_id="velora-offsets",
    )
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        return {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
    except KafkaError as exc:
        raise Unavailable(f"kafka at {settings.kafka_bootstrap}: {exc}", retry_after=5) from exc
    finally:
        consumer.close()


def _admin(settings: Settings) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap,
            client_id="velora-admin",
            request_timeout_ms=15000,
        )
    except KafkaError as exc:
        raise Unavailable(f"kafka at {settings.kafka_bootstrap}: {exc}", retry_after=5) from exc

"""The project's Kafka topics and their required settings, created idempotently.

- audit topic ``<prefix>.audit.v1``: key = tenant_id, ``retention.ms=-1``,
  ``cleanup.policy=delete`` (never compacted), ``VELORA_AUDIT_PARTITIONS`` partitions.
- control topic ``<prefix>.control.v1``: ``cleanup.policy=compact``, one partition,
  key = ``<kind>:<id>`` (``api_key:<key_id>``, ``tenant:<tenant_id>``, ...), value =
  the entity's full current state as a single-object Avro record.

:func:`ensure_topics` creates what is missing (replication factor: the broker's
default) and waits until every partition has a leader. For topics that already
exist it checks the settings that protect data (``retention.*``,
``cleanup.policy``) and refuses to run against an audit topic that would delete
or compact history.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import TopicAlreadyExistsError, for_code
from kafka.structs import TopicPartition

from velora.errors import ConfigError
from velora.kafka_clients import close_quietly, map_kafka_errors, new_admin, new_consumer
from velora.settings import Settings

log = logging.getLogger(__name__)

# Topic configs that, if different on an existing topic, would lose or rewrite data.
GUARDED_CONFIGS = ("retention.ms", "retention.bytes", "cleanup.policy")
# Scheduled deliveries wait at most a day (the longest delay is 7 days when configured);
# two weeks leaves room for a dispatcher group that is down for days.
WEBHOOK_JOB_RETENTION_MS = str(14 * 86_400_000)


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
        *webhook_topics(settings),
    ]


def webhook_topics(settings: Settings) -> list[TopicSpec]:
    """The dispatchers' topics: requests, one retry topic per delay, and the attempt log."""
    jobs = {"retention.ms": WEBHOOK_JOB_RETENTION_MS, "cleanup.policy": "delete"}
    n = settings.audit_partitions
    return [
        TopicSpec(settings.webhook_requests_topic, n, dict(jobs)),
        *(TopicSpec(t, n, dict(jobs)) for t in settings.webhook_retry_topics),
        TopicSpec(
            settings.webhook_attempts_topic,
            n,
            {"retention.ms": "-1", "retention.bytes": "-1", "cleanup.policy": "delete"},
        ),
    ]


def ensure_topics(settings: Settings) -> list[str]:
    """Create missing topics and check existing ones; return the names created.

    Raises :class:`ConfigError` when an existing topic has a guarded config that
    differs from its spec (e.g. an audit topic with a finite ``retention.ms``).
    """
    admin = new_admin(settings)
    created: list[str] = []
    specs = required_topics(settings)
    try:
        with map_kafka_errors("topic setup"):
            existing = set(admin.list_topics())
            missing = [spec for spec in specs if spec.name not in existing]
            if missing:
                created = _create(admin, missing)
            _check_existing(admin, [s for s in specs if s.name not in created])
    finally:
        close_quietly(admin)
    return created


def _create(admin: KafkaAdminClient, specs: list[TopicSpec]) -> list[str]:
    """Create ``specs`` in one request (one topic found existing meanwhile is fine)."""
    answer = admin.create_topics(
        {
            spec.name: {
                "num_partitions": spec.partitions,
                "replication_factor": -1,
                "configs": spec.configs,
            }
            for spec in specs
        },
        raise_errors=False,
    )
    created = []
    for topic in answer.get("topics", []):
        code = topic.get("error_code", 0)
        if code == 0:
            created.append(topic["name"])
        elif code != TopicAlreadyExistsError.errno:
            raise for_code(code)(f"create topic {topic['name']}")
    if created:
        admin.wait_for_topics(created)
    order = [spec.name for spec in specs]
    return sorted(created, key=order.index)


def _check_existing(admin: KafkaAdminClient, specs: list[TopicSpec]) -> None:
    """Compare the guarded configs and partition counts of topics that already existed."""
    if not specs:
        return
    resources = [
        ConfigResource(
            ConfigResourceType.TOPIC, s.name, [k for k in GUARDED_CONFIGS if k in s.configs]
        )
        for s in specs
    ]
    described = admin.describe_configs(resources, config_filter="all").get("topic", {})
    for spec in specs:
        actual = described.get(spec.name, {})
        wrong = [
            f"{key}={(actual.get(key) or {}).get('value')} (must be {spec.configs[key]})"
            for key in GUARDED_CONFIGS
            if key in spec.configs and (actual.get(key) or {}).get("value") != spec.configs[key]
        ]
        if wrong:
            raise ConfigError(
                f"topic {spec.name} exists with {', '.join(wrong)}; fix the topic "
                "(kafka-configs.sh --alter) or choose another VELORA_TOPIC_PREFIX"
            )
    partitions = {
        t["name"]: len(t["partitions"]) for t in admin.describe_topics([s.name for s in specs])
    }
    for spec in specs:
        if partitions.get(spec.name, spec.partitions) != spec.partitions:
            log.warning(
                "topic %s has %d partitions, not the configured %d; the topic wins",
                spec.name,
                partitions[spec.name],
                spec.partitions,
            )


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """The current log-end offset of every partition of ``topic``."""
    consumer = new_consumer(settings, "velora-offsets")
    try:
        with map_kafka_errors("end offsets"):
            partitions = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            return {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
    finally:
        close_quietly(consumer)


def topic_id(settings: Settings, topic: str) -> str | None:
    """The broker's id of ``topic`` (KIP-516), or None if the broker reports none.

    A topic that is deleted and created again under the same name gets a new id;
    the ledger records the id it was built from and refuses to continue on another.
    """
    admin = new_admin(settings)
    try:
        with map_kafka_errors("topic metadata"):
            described = admin.describe_topics([topic])
    finally:
        close_quietly(admin)
    for entry in described:
        if entry.get("name") == topic and entry.get("topic_id") is not None:
            value = str(entry["topic_id"])
            return None if value == "00000000-0000-0000-0000-000000000000" else value
    return None

"""The project's topics on the real broker: infinite audit retention, a compacted control topic.

Configs are read back from the broker with ``KafkaAdminClient.describe_configs``,
not from our own spec, so a config the broker dropped or overrode fails here.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

from velora.errors import ConfigError
from velora.settings import Settings
from velora.topics import end_offsets, ensure_topics, required_topics


@pytest.fixture
def admin(kafka_bootstrap: str) -> Iterator[KafkaAdminClient]:
    client = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="test-topics")
    try:
        yield client
    finally:
        client.close()


def topic_configs(admin: KafkaAdminClient, topic: str) -> dict[str, str]:
    described = admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all"
    )
    return {k: v["value"] for k, v in described["topic"][topic].items()}


def partition_leaders(admin: KafkaAdminClient, topic: str) -> list[int]:
    (described,) = admin.describe_topics([topic])
    return [
        p["leader_id"] for p in sorted(described["partitions"], key=lambda p: p["partition_index"])
    ]


def fresh(kafka_bootstrap: str, **changes: object) -> Settings:
    return Settings.from_env(
        {}, kafka_bootstrap=kafka_bootstrap, topic_prefix=f"t{uuid.uuid4().hex[:12]}", **changes
    )


def test_audit_topic_keeps_everything_forever(settings, admin):
    configs = topic_configs(admin, settings.audit_topic)
    assert configs["retention.ms"] == "-1"
    assert configs["retention.bytes"] == "-1"
    assert configs["cleanup.policy"] == "delete"
    leaders = partition_leaders(admin, settings.audit_topic)
    assert len(leaders) == settings.audit_partitions == 3
    assert all(leader >= 0 for leader in leaders)


def test_audit_partition_count_defaults_to_six(kafka_bootstrap, admin):
    s = fresh(kafka_bootstrap)
    assert s.audit_partitions == 6
    names = [t.name for t in required_topics(s)]
    assert names[:2] == [s.audit_topic, s.control_topic]
    assert ensure_topics(s) == names
    assert len(partition_leaders(admin, s.audit_topic)) == 6


def test_audit_partition_count_is_configurable(kafka_bootstrap, admin):
    s = Settings.from_env(
        {"VELORA_AUDIT_PARTITIONS": "11", "VELORA_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:12]}"},
        kafka_bootstrap=kafka_bootstrap,
    )
    ensure_topics(s)
    assert len(partition_leaders(admin, s.audit_topic)) == 11
    assert sorted(end_offsets(s, s.audit_topic)) == list(range(11))


def test_control_topic_is_compacted_with_one_partition(settings, admin):
    configs = topic_configs(admin, settings.control_topic)
    assert configs["cleanup.policy"] == "compact"
    assert configs["min.compaction.lag.ms"] == "0"
    assert len(partition_leaders(admin, settings.control_topic)) == 1


def test_ensure_topics_is_idempotent(settings, admin):
    before = {t: topic_configs(admin, t) for t in (settings.audit_topic, settings.control_topic)}
    assert ensure_topics(settings) == []
    assert ensure_topics(settings) == []
    after = {t: topic_configs(admin, t) for t in (settings.audit_topic, settings.control_topic)}
    assert after == before


def test_new_topics_are_ready_to_produce_at_once(kafka_bootstrap):
    s = fresh(kafka_bootstrap, audit_partitions=4)
    ensure_topics(s)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", max_block_ms=5000)
    try:
        for p in range(4):
            producer.send(s.audit_topic, value=b"x", partition=p).get(timeout=10)
    finally:
        producer.close()
    assert end_offsets(s, s.audit_topic) == {0: 1, 1: 1, 2: 1, 3: 1}


@pytest.mark.parametrize(
    ("which", "configs", "shown"),
    [
        ("audit", {"retention.ms": "604800000"}, "retention.ms=604800000 (must be -1)"),
        ("audit", {"cleanup.policy": "compact"}, "cleanup.policy=compact (must be delete)"),
        ("audit", {"retention.bytes": "1073741824"}, "retention.bytes=1073741824 (must be -1)"),
        ("control", {"cleanup.policy": "delete"}, "cleanup.policy=delete (must be compact)"),
    ],
)
def test_an_existing_topic_that_would_lose_data_is_refused(
    kafka_bootstrap, admin, which, configs, shown
):
    s = fresh(kafka_bootstrap)
    topic = s.audit_topic if which == "audit" else s.control_topic
    admin.create_topics(
        {topic: {"num_partitions": 1, "replication_factor": 1, "configs": configs}},
        wait_for_metadata=True,
    )
    with pytest.raises(ConfigError) as info:
        ensure_topics(s)
    message = str(info.value)
    assert message.startswith(f"topic {topic} exists with ")
    assert shown in message


def test_an_existing_topic_with_other_partition_count_is_kept(kafka_bootstrap, admin, caplog):
    s = fresh(kafka_bootstrap, audit_partitions=6)
    spec = next(t for t in required_topics(s) if t.name == s.audit_topic)
    admin.create_topics(
        {s.audit_topic: {"num_partitions": 2, "replication_factor": 1, "configs": spec.configs}},
        wait_for_metadata=True,
    )
    with caplog.at_level(logging.WARNING, logger="velora.topics"):
        assert ensure_topics(s) == [t.name for t in required_topics(s)][1:]
    assert len(partition_leaders(admin, s.audit_topic)) == 2
    assert f"topic {s.audit_topic} has 2 partitions, not the configured 6" in caplog.text


def test_webhook_topics_hold_jobs_two_weeks_and_attempts_forever(kafka_bootstrap, admin):
    s = Settings.from_env(
        {
            "VELORA_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:12]}",
            "VELORA_WEBHOOKS_RETRY_SCHEDULE": "1,2,2,30",
        },
        kafka_bootstrap=kafka_bootstrap,
        audit_partitions=2,
    )
    retry = tuple(f"{s.topic_prefix}.webhooks.retry.{i}.v1" for i in range(3))
    assert s.webhook_retry_topics == retry
    created = ensure_topics(s)
    for topic in (s.webhook_requests_topic, *s.webhook_retry_topics):
        assert topic in created
        configs = topic_configs(admin, topic)
        assert configs["retention.ms"] == str(14 * 86_400_000)
        assert configs["cleanup.policy"] == "delete"
        assert len(partition_leaders(admin, topic)) == 2
    attempts = topic_configs(admin, s.webhook_attempts_topic)
    assert attempts["retention.ms"] == "-1" and attempts["cleanup.policy"] == "delete"

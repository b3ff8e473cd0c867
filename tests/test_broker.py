"""The local broker really runs Kafka 4.x and keeps data across a clean restart."""

from __future__ import annotations

from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from tests.helpers import make_broker
from velora.settings import Settings
from velora.topics import ensure_topics


def test_shared_broker_is_kafka_4(kafka_bootstrap):
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        assert admin.describe_cluster()["brokers"]
    finally:
        admin.close()


def test_records_survive_broker_restart(tmp_path):
    broker = make_broker(tmp_path / "kafka")
    broker.start()
    try:
        assert broker.version_from_log().startswith("4.")
        settings = Settings.from_env({}, kafka_bootstrap=broker.bootstrap, topic_prefix="durable")
        ensure_topics(settings)
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
        sent = [f"record-{i}".encode() for i in range(500)]
        for i, value in enumerate(sent):
            producer.send(settings.audit_topic, key=f"tenant-{i % 7}".encode(), value=value)
        producer.flush()
        producer.close()
        port = broker.port

        assert broker.stop()
        assert not broker.running()
        broker.start()
        assert broker.port == port

        consumer = KafkaConsumer(
            bootstrap_servers=broker.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            consumer_timeout_ms=10_000,
        )
        tps = [TopicPartition(settings.audit_topic, p) for p in range(settings.audit_partitions)]
        consumer.assign(tps)
        end = consumer.end_offsets(tps)
        assert sum(end.values()) == len(sent)
        got = []
        for message in consumer:
            got.append(message.value)
            if len(got) == len(sent):
                break
        consumer.close()
        assert sorted(got) == sorted(sent)
    finally:
        broker.stop()

"""Fixtures: one real Kafka broker per test session, unique topics and DuckDB files per test.

The broker is started by the test run itself (fetched jars, KRaft, free ports), or
taken from ``VELORA_TEST_KAFKA_BOOTSTRAP`` when that is set.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import CACHE_DIR, make_broker
from velora import kafka_sockets
from velora.settings import Settings
from velora.topics import ensure_topics


def pytest_configure(config: pytest.Config) -> None:
    """Tests make kafka-python clients of their own too: close their failed attempts'
    sockets as the project's client factory does (:mod:`velora.kafka_sockets`)."""
    kafka_sockets.install()


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a running Kafka broker shared by the whole session."""
    external = os.environ.get("VELORA_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    broker = make_broker(tmp_path_factory.mktemp("kafka"))
    took = broker.start()
    print(f"\nkafka {broker.version_from_log()} ready at {broker.bootstrap} in {took:.1f}s")
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def settings(kafka_bootstrap: str, tmp_path: Path) -> Settings:
    """Settings for one test: unique topic prefix, DuckDB file in tmp_path, topics created."""
    s = Settings.from_env(
        {},
        kafka_bootstrap=kafka_bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:12]}",
        audit_partitions=3,
        state_dir=tmp_path / "state",
        duckdb_path=tmp_path / "ledger.duckdb",
        cache_dir=CACHE_DIR,
    )
    ensure_topics(s)
    return s

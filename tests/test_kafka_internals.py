"""The fast paths into kafka-python's internals step aside when those internals change.

Each fast path (the ingest batch append, the ledger's record runs, closing a
half-made producer client) is broken here the way a kafka-python upgrade could
break it: another version, a private module that no longer imports, a class moved
out of its module, an attribute gone. Each time the public path must be taken,
the result must still be right against the real broker, and exactly one warning
must be logged for the process.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kafka
import pytest
from kafka import KafkaConsumer, KafkaProducer

import ingest.appender
import ingest.producer
import ledger.log_reader
import ledger.record_runs
import velora.group_join
import velora.kafka_sockets
from ingest import Accepted, AuditProducer
from ingest.appender import Appender, TenantPartitioner
from ledger.materializer import Materializer
from ledger.store import LedgerStore
from tests.factory import EventFactory, Made, fast_producer
from tests.helpers import REPO
from tests.test_producer import raw_event, read_topic
from velora.kafka_internals import (
    PINNED_KAFKA_PYTHON,
    InternalsChanged,
    InternalsGuard,
    require,
)
from velora.settings import Settings

GUARDS = {
    "append": ingest.appender.GUARD,
    "runs": ledger.record_runs.GUARD,
    "join": velora.group_join.GUARD,
    "sockets": velora.kafka_sockets.GUARD,
}
PRIVATE_MODULES = (
    "kafka.consumer.fetcher",
    "kafka.protocol.consumer",
    "kafka.record.default_records",
    "kafka.record.memory_records",
    "kafka.producer.producer_batch",
    "kafka.producer.record_accumulator",
    "kafka.net.compat",
)


@pytest.fixture(autouse=True)
def fresh_guards() -> Iterator[None]:
    """Every test probes afresh, and leaves no answer behind for the rest of the suite."""
    for guard in GUARDS.values():
        guard.reset()
    yield
    for guard in GUARDS.values():
        guard.reset()


@pytest.fixture(scope="module")
def factory() -> EventFactory:
    return EventFactory(templates=200)


def warnings_of(caplog: pytest.LogCaptureFixture, guard: InternalsGuard[Any]) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "velora.kafka_internals"
        and r.levelno == logging.WARNING
        and r.getMessage().startswith(f"{guard.fast_path}:")
    ]


# -- the shared guard ------------------------------------------------------------------


def test_the_pin_in_pyproject_is_the_version_the_guards_expect() -> None:
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert f'"kafka-python=={PINNED_KAFKA_PYTHON}"' in pyproject
    assert kafka.__version__ == PINNED_KAFKA_PYTHON


def test_every_fast_path_is_taken_on_the_pinned_kafka_python(caplog) -> None:
    caplog.set_level(logging.WARNING)
    for guard in GUARDS.values():
        assert guard.internals() is not None, guard.fast_path
    assert not caplog.records


def test_a_guard_probes_once_and_warns_once(caplog, monkeypatch) -> None:
    caplog.set_level(logging.WARNING)
    calls: list[int] = []

    def probe() -> str:
        calls.append(1)
        require(kafka, "no_such_internal")
        return "never"

    guard = InternalsGuard("a probe", probe)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: guard.internals(), range(8)))
    guard.decline("a consumer without a fetcher")
    assert answers == [None] * 8
    assert len(calls) == 1
    assert warnings_of(caplog, guard) == [
        f"a probe: kafka-python internals not as in {PINNED_KAFKA_PYTHON} "
        "(InternalsChanged: kafka.no_such_internal is missing); using the public path"
    ]

    monkeypatch.setattr(kafka, "__version__", "3.1.0")
    other = InternalsGuard("another probe", probe)
    assert other.internals() is None
    assert len(calls) == 1  # the version is checked before anything is imported
    assert "(kafka-python is 3.1.0)" in warnings_of(caplog, other)[0]


def test_a_probe_that_fails_in_any_way_means_the_public_path(caplog) -> None:
    caplog.set_level(logging.WARNING)

    def probe() -> str:
        raise TypeError("__init__() got an unexpected keyword argument 'now'")

    guard = InternalsGuard("a probe", probe)
    assert guard.internals() is None
    assert len(warnings_of(caplog, guard)) == 1
    with pytest.raises(InternalsChanged, match=r"Settings\.nope is missing"):
        require(Settings, "audit_topic", "nope")


def test_no_private_module_is_imported_at_import_time() -> None:
    # kafka-python itself is loaded first, as any client of it would be; then its
    # private modules vanish, and every module of ours must still import and answer.
    code = f"""
import logging, sys
logging.basicConfig(level=logging.WARNING, format="%(name)s %(message)s")
import kafka
for name in {PRIVATE_MODULES!r}:
    sys.modules[name] = None
import ingest, ingest.appender, ingest.producer, ledger.decode, ledger.log_reader
import ledger.materializer
import ledger.record_runs
assert ledger.record_runs.GUARD.internals() is None
assert ingest.appender.GUARD.internals() is None
print("imported")
"""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "imported"
    warned = [line for line in out.stderr.splitlines() if "using the public path" in line]
    assert len(warned) == 2, out.stderr
    assert all("ModuleNotFoundError" in line for line in warned), warned


# -- the ledger's record runs ------------------------------------------------------------


def _produce_placed(settings: Settings, events: list[Made]) -> dict[str, tuple[int, int]]:
    """Send ``events``; each event id's (partition, offset) as Kafka acknowledged it."""
    producer = fast_producer(settings)
    try:
        futures = [producer.send(settings.audit_topic, key=e.key, value=e.value) for e in events]
        producer.flush()
        placed = {}
        for e, f in zip(events, futures, strict=True):
            md = f.get(timeout=30)
            placed[e.event_id] = (md.partition, md.offset)
        return placed
    finally:
        producer.close()


def _new_consumer(settings: Settings) -> KafkaConsumer:
    return KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=None)


def _break_record_runs(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import kafka.consumer.fetcher
    from kafka.record.default_records import DefaultRecordBatch

    if how == "version":
        monkeypatch.setattr(kafka, "__version__", "3.0.13")
    elif how == "fetcher-module":
        monkeypatch.setitem(sys.modules, "kafka.consumer.fetcher", None)
    elif how == "isolation-module":
        monkeypatch.setitem(sys.modules, "kafka.protocol.consumer", None)
    elif how == "fetcher-class-moved":
        monkeypatch.delattr(kafka.consumer.fetcher, "Fetcher")
    elif how == "batch-attribute-gone":
        monkeypatch.delattr(DefaultRecordBatch, "records_count")


@pytest.mark.parametrize(
    "how",
    [
        "version",
        "fetcher-module",
        "isolation-module",
        "fetcher-class-moved",
        "batch-attribute-gone",
    ],
)
def test_record_runs_step_aside_and_the_ledger_is_still_right(
    settings, factory, tmp_path, monkeypatch, caplog, how
) -> None:
    caplog.set_level(logging.WARNING)
    placed = _produce_placed(settings, [factory.make() for _ in range(600)])
    _break_record_runs(how, monkeypatch)
    installed: list[bool] = []

    def spy(consumer: KafkaConsumer) -> bool:
        installed.append(ledger.record_runs.install(consumer))
        return installed[-1]

    monkeypatch.setattr(ledger.log_reader, "install_record_runs", spy)
    store = LedgerStore(tmp_path / "public.duckdb")
    m = Materializer(settings, store)
    m.start()
    try:
        assert m.wait_caught_up(timeout=60)
    finally:
        m.stop()
    rows = store.cursor().execute(
        "SELECT event_id::VARCHAR, kafka_partition, kafka_offset FROM audit_events"
    )
    assert {r[0]: (r[1], r[2]) for r in rows.fetchall()} == placed
    store.close()
    assert installed and not any(installed)

    consumer = _new_consumer(settings)  # a second consumer: the answer is remembered
    try:
        assert not ledger.record_runs.install(consumer)
    finally:
        consumer.close()
    assert len(warnings_of(caplog, ledger.record_runs.GUARD)) == 1


def test_record_runs_step_aside_for_a_consumer_without_the_expected_fetcher(
    settings, monkeypatch, caplog
) -> None:
    caplog.set_level(logging.WARNING)
    consumer = _new_consumer(settings)
    try:
        assert ledger.record_runs.install(consumer)  # as it comes
        other = _new_consumer(settings)
        try:
            fetcher = other._fetcher
            monkeypatch.setattr(other, "_fetcher", object())
            assert not ledger.record_runs.install(other)
            assert not ledger.record_runs.install(other)
            monkeypatch.setattr(other, "_fetcher", fetcher)
        finally:
            other.close()
    finally:
        consumer.close()
    [warning] = warnings_of(caplog, ledger.record_runs.GUARD)
    assert "KafkaConsumer._fetcher is not a Fetcher" in warning


# -- the ingest batch append and the producer's network client ----------------------------


def _break_append(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import kafka.producer.producer_batch
    import kafka.record.memory_records

    if how == "version":
        monkeypatch.setattr(kafka, "__version__", "3.0.13")
    elif how == "batch-module":
        monkeypatch.setitem(sys.modules, "kafka.producer.producer_batch", None)
    elif how == "records-module":
        monkeypatch.setitem(sys.modules, "kafka.record.memory_records", None)
    elif how == "batch-class-moved":
        monkeypatch.delattr(kafka.producer.producer_batch, "ProducerBatch")
    elif how == "builder-class-moved":
        monkeypatch.delattr(kafka.record.memory_records, "MemoryRecordsBuilder")


def _send_and_check(settings: Settings) -> None:
    """Two producers, on the public path, send batches and single events; every ack is right."""
    acks = []
    for round_ in range(2):
        with AuditProducer(settings, timeout=15.0, batch_size=4096) as p:
            results = p.send_many([raw_event(i, tenant=f"t{i % 4}") for i in range(120)])
            acks += [r.ack for r in results if isinstance(r, Accepted)]
            acks.append(p.send(raw_event(500 + round_, tenant="t1")).result(timeout=15))
            assert p._appender is not None and not p._appender.fast
    assert len(acks) == 2 * 121
    placed = {rec["event_id"]: (part, off) for part, off, _, rec in read_topic(settings)}
    assert len(placed) == len(acks)
    for ack in acks:
        assert placed[ack.event_id] == (ack.partition, ack.offset)


@pytest.mark.parametrize(
    "how",
    ["version", "batch-module", "records-module", "batch-class-moved", "builder-class-moved"],
)
def test_the_batch_append_steps_aside_and_acks_are_still_right(
    settings, monkeypatch, caplog, how
) -> None:
    caplog.set_level(logging.WARNING)
    _break_append(how, monkeypatch)
    _send_and_check(settings)
    assert len(warnings_of(caplog, ingest.appender.GUARD)) == 1


def test_the_batch_append_steps_aside_for_a_producer_shaped_otherwise(
    settings, monkeypatch, caplog
) -> None:
    caplog.set_level(logging.WARNING)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    try:
        partitioner = TenantPartitioner()
        assert Appender(producer, settings.audit_topic, partitioner, fast=True).fast
        acc = producer._accumulator
        batches = acc._batches
        monkeypatch.setattr(acc, "_batches", dict(batches))  # no longer a defaultdict
        for _ in range(2):
            assert not Appender(producer, settings.audit_topic, partitioner, fast=True).fast
        monkeypatch.setattr(acc, "_batches", batches)
    finally:
        producer.close()
    [warning] = warnings_of(caplog, ingest.appender.GUARD)
    assert "RecordAccumulator._batches is missing or not as expected" in warning

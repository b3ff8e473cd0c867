"""The materializer: exactly once from a real broker, resume at stored offsets, decode paths."""

from __future__ import annotations

import random
import threading

import duckdb
import numpy as np
import pytest

from ledger.decode import EventDecoder
from ledger.materializer import Materializer
from ledger.store import LedgerStore
from tests.factory import EventFactory, produce, sample_record
from tests.helpers import wait_for
from velora.topics import end_offsets


@pytest.fixture(scope="module")
def factory():
    return EventFactory(templates=300)


def _ids(store: LedgerStore) -> list[str]:
    return [
        r[0]
        for r in store.cursor().execute("SELECT event_id::VARCHAR FROM audit_events").fetchall()
    ]


def test_materializes_every_acked_event_once_and_stores_next_offsets(settings, factory):
    events = [factory.make() for _ in range(3000)]
    assert produce(settings, events + events[:200]) == 3200  # 200 re-sent duplicates
    store = LedgerStore(settings.duckdb_path)
    m = Materializer(settings, store)
    m.start()
    try:
        assert m.wait_caught_up(timeout=60)
        ids = _ids(store)
        assert sorted(ids) == sorted(e.event_id for e in events)
        end = end_offsets(settings, settings.audit_topic)
        assert store.stored_offsets(settings.audit_topic) == end
        assert sum(end.values()) == 3200
        assert m.status().lag == 0
    finally:
        m.stop()
        store.close()


def test_restart_resumes_at_the_stored_next_offset(settings, factory):
    first = [factory.make() for _ in range(500)]
    produce(settings, first)
    store = LedgerStore(settings.duckdb_path)
    m = Materializer(settings, store)
    m.start()
    assert m.wait_caught_up(timeout=60)
    m.stop()
    stored = store.stored_offsets(settings.audit_topic)
    store.close()

    second = [factory.make() for _ in range(300)]
    produce(settings, second)
    read: list[int] = []
    store = LedgerStore(settings.duckdb_path)
    m = Materializer(settings, store, on_batch=lambda n, _: read.append(n))
    m.start()
    try:
        assert m.wait_caught_up(timeout=60)
        assert sum(read) == 300  # only records at or after the stored offsets were read
        first_new = store.cursor().execute(
            "SELECT kafka_partition, min(kafka_offset) FROM audit_events "
            "WHERE event_id IN (SELECT unnest(?::UUID[])) GROUP BY 1",
            [[e.event_id for e in second]],
        )
        for partition, offset in first_new.fetchall():
            assert offset == stored.get(partition, 0)  # resumed AT the stored offset
        assert store.count() == 800
    finally:
        m.stop()
        store.close()


class FlakyStore(LedgerStore):
    """Fault injection at the commit seam: the first ``failures`` commits raise."""

    def __init__(self, *args, failures: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.failures = failures

    def _commit(self, cur):
        if self.failures:
            self.failures -= 1
            raise duckdb.IOException("injected commit failure")
        super()._commit(cur)


def test_failed_commits_are_retried_from_stored_offsets(settings, factory, monkeypatch):
    monkeypatch.setattr("ledger.materializer.RETRY_SECONDS", 0.05)
    events = [factory.make() for _ in range(2000)]
    produce(settings, events)
    store = FlakyStore(settings.duckdb_path, failures=3)
    m = Materializer(settings, store)
    m.start()
    try:
        assert m.wait_caught_up(timeout=60)
        ids = _ids(store)
        assert len(ids) == len(set(ids)) == 2000
        assert store.failures == 0
        assert store.stored_offsets(settings.audit_topic) == end_offsets(
            settings, settings.audit_topic
        )
    finally:
        m.stop()
        store.close()


def test_wait_for_offset_returns_once_materialized(settings, factory):
    store = LedgerStore(settings.duckdb_path)
    m = Materializer(settings, store)
    m.start()
    try:
        assert m.wait_caught_up(timeout=60)
        assert not m.wait_for_offset(0, 0, timeout=0.05)
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        event = factory.make()
        meta = producer.send(settings.audit_topic, key=event.key, value=event.value).get(30)
        producer.close()
        assert m.wait_for_offset(meta.partition, meta.offset, timeout=30)
        found = store.cursor().execute(
            "SELECT count(*) FROM audit_events WHERE event_id = ?", [event.event_id]
        )
        assert found.fetchone() == (1,)
    finally:
        m.stop()
        store.close()


def test_stop_is_prompt_and_idempotent(settings):
    store = LedgerStore(settings.duckdb_path)
    m = Materializer(settings, store)
    m.start()
    wait_for(lambda: m.status().target is not None, timeout=30)
    done = threading.Event()
    threading.Thread(target=lambda: (m.stop(), done.set())).start()
    assert done.wait(10)
    m.stop()
    assert not m.status().running
    store.close()


# -- decoding -------------------------------------------------------------------
def _edge_records(rng):
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    records = [sample_record(rng, f"tenant-{i % 3}", now) for i in range(400)]
    records[0]["targets"] = []
    records[0]["metadata"] = {}
    records[1]["targets"] = [{"type": "t", "id": str(i), "name": None} for i in range(70)]
    records[1]["metadata"] = {f"key-{i}": "✓" * i for i in range(40)}
    records[2]["actor"]["name"] = "ü" * 300  # a two-byte length varint
    records[3]["occurred_at"] = -1  # before the epoch
    records[4]["outcome"]["reason"] = ""
    return records


def test_fast_decode_equals_the_fastavro_reference(factory):
    codec = factory.codec
    decoder = EventDecoder(codec)
    values = [codec.encode("AuditEvent", r) for r in _edge_records(random.Random(3))]
    parts = np.arange(len(values), dtype=np.int32) % 3
    offsets = np.arange(len(values), dtype=np.int64)
    fast = decoder.decode(values, parts, offsets)
    slow = decoder._slow(values, parts, offsets)
    assert fast.table.equals(slow.table)
    assert fast.table.num_rows == len(values)
    row = fast.table.slice(1, 1).to_pylist()[0]
    assert len(row["targets"]) == 70 and len(row["metadata"]) == 40


def test_fast_decode_rejects_corruption_like_fastavro(factory):
    decoder = EventDecoder(factory.codec)
    values = [factory.make().value for _ in range(20)]
    values[7] = values[7][:-3]  # truncated body
    values[9] = values[9] + b"\x00"  # trailing byte
    out = decoder.decode(values, np.zeros(20, dtype=np.int32), np.arange(20, dtype=np.int64))
    assert out.table.num_rows == 18
    assert [o for _, o, _ in out.quarantined] == [7, 9]
    assert all(why.startswith("decode: ") for *_, why in out.quarantined)


def test_duplicates_inside_one_batch_keep_the_lowest_position(factory):
    from ledger.duplicates import first_copies

    decoder = EventDecoder(factory.codec)
    events = [factory.make() for _ in range(5)]
    values = [events[1].value] + [e.value for e in events]
    # the repeat is read first but sits later in the log (partition 1 > partition 0)
    parts = np.asarray([1, 0, 0, 0, 0, 0], dtype=np.int32)
    out = decoder.decode(values, parts, np.arange(6, dtype=np.int64))
    winners, losers = first_copies(out.table)
    assert sorted(winners.column("event_id").to_pylist()) == sorted(e.event_id for e in events)
    assert winners.column("kafka_offset").to_pylist() == [1, 2, 3, 4, 5]
    assert losers.column("kafka_partition").to_pylist() == [1]
    assert first_copies(winners)[1] is None  # unique keys: nothing to drop


def test_factory_output_equals_codec_encoding(factory):
    made = factory.make()
    _, record = factory.codec.decode(made.value)
    assert record["event_id"] == made.event_id
    from schemas.events import AuditEvent

    assert factory.codec.encode("AuditEvent", AuditEvent.from_avro(record).to_avro()) == made.value


# -- record runs: whole record batches out of kafka-python ---------------------------
def _read_all(settings, *, runs: bool, seek: dict[int, int] | None = None):
    """(partition, offset, value) of every committed record, by either path."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    from ledger.record_runs import RecordRun, install

    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    try:
        if runs:
            assert install(consumer)
        tps = [TopicPartition(settings.audit_topic, p) for p in range(settings.audit_partitions)]
        consumer.assign(tps)
        for tp in tps:
            if seek and tp.partition in seek:
                consumer.seek(tp, seek[tp.partition])
            else:
                consumer.seek_to_beginning(tp)
        end = {tp: o for tp, o in consumer.end_offsets(tps).items()}
        out = []
        wait_for(
            lambda: (
                out.extend(
                    (tp.partition, *item)
                    for tp, items in consumer.poll(timeout_ms=100).items()
                    for item in (
                        [
                            (o, v)
                            for r in items
                            if isinstance(r, RecordRun)
                            for o, v in zip(r.offsets.tolist(), r.values(), strict=True)
                        ]
                        if runs
                        else [(r.offset, r.value) for r in items]
                    )
                )
                or all(consumer.position(tp) >= end[tp] for tp in tps)
            ),
            timeout=60,
        )
        return sorted(out), {tp.partition: consumer.position(tp) for tp in tps}
    finally:
        consumer.close()


def test_record_runs_equal_kafka_pythons_records(settings, factory):
    from kafka import KafkaProducer

    plain = [factory.make() for _ in range(700)]
    produce(settings, plain)
    gz = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, compression_type="gzip", linger_ms=20
    )
    for e in [factory.make() for _ in range(300)]:
        gz.send(settings.audit_topic, key=e.key, value=e.value)
    gz.send(settings.audit_topic, key=b"tenant-00", value=None)  # a null value
    gz.flush()
    gz.close()
    tx = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, transactional_id=f"tx-{settings.topic_prefix}"
    )
    tx.init_transactions()
    tx.begin_transaction()
    aborted = [factory.make() for _ in range(50)]
    for e in aborted:
        tx.send(settings.audit_topic, key=e.key, value=e.value)
    tx.abort_transaction()
    tx.begin_transaction()
    committed = [factory.make() for _ in range(40)]
    for e in committed:
        tx.send(settings.audit_topic, key=e.key, value=e.value)
    tx.commit_transaction()
    tx.close()

    standard, positions = _read_all(settings, runs=False)
    fast, fast_positions = _read_all(settings, runs=True)
    assert fast == standard
    assert fast_positions == positions
    seen = {v for _, _, v in standard}
    assert not seen & {e.value for e in aborted}
    assert {e.value for e in committed} <= seen
    assert None in seen

    # a seek into the middle of a record batch starts exactly there
    middle = {p: positions[p] // 2 for p in positions}
    assert _read_all(settings, runs=True, seek=middle)[0] == [
        r for r in standard if r[1] >= middle[r[0]]
    ]


def test_materializer_paths_give_equal_tables(settings, factory, tmp_path):
    events = [factory.make() for _ in range(1500)]
    produce(settings, events + events[:100])
    tables = []
    for runs in (True, False):
        store = LedgerStore(tmp_path / f"runs-{runs}.duckdb")
        m = Materializer(settings, store, record_runs=runs)
        m.start()
        assert m.wait_caught_up(timeout=60)
        m.stop()
        query = "SELECT * FROM audit_events ORDER BY event_id"
        tables.append(store.cursor().sql(query).to_arrow_table())
        store.close()
    assert tables[0].num_rows == 1500
    assert tables[0].equals(tables[1])


def test_merged_polls_keep_the_first_copy_of_a_repeated_event(settings, factory):
    from ledger.log_reader import Poll

    decoder = EventDecoder(factory.codec)
    events = [factory.make() for _ in range(4)]

    def poll(evs, first_offset):
        table = decoder.decode(
            [e.value for e in evs],
            np.zeros(len(evs), dtype=np.int32),
            np.arange(first_offset, first_offset + len(evs), dtype=np.int64),
        ).table
        return Poll(table, len(evs), {0: first_offset + len(evs)})

    store = LedgerStore(settings.duckdb_path)
    m = Materializer(settings, store)
    try:
        m._write([poll(events, 0), poll([events[2], factory.make()], 4)])  # one transaction
        rows = store.cursor().execute(
            "SELECT kafka_offset FROM audit_events WHERE event_id = ?", [events[2].event_id]
        )
        assert rows.fetchall() == [(2,)]
        assert store.count() == 5
        assert store.stored_offsets(settings.audit_topic) == {0: 6}
    finally:
        store.close()

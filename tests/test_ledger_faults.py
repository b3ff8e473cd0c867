"""Nothing dies silently: fault injection, quarantine, held partitions, offsets out of range."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading

import duckdb
import pyarrow as pa
import pytest
from kafka import KafkaAdminClient

from ledger import materializer as materializer_module
from ledger.decode import EventDecoder
from ledger.log_reader import check_offsets
from ledger.materializer import Materializer
from ledger.node import QueryNode
from ledger.rebuild import rebuild
from ledger.store import LedgerStore
from schemas.codec import HEADER_LEN, MAGIC, AvroCodec, SchemaRegistry
from tests.factory import Made, produce
from tests.helpers import REPO, wait_for
from tests.ledger_support import encoded, materialize, partition_of, schema_folder
from tests.test_node import node_env
from velora.errors import LedgerMismatch, Unavailable
from velora.topics import end_offsets, ensure_topics

EVOLUTION = REPO / "tests" / "fixtures" / "evolution"


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(materializer_module, "RETRY_SECONDS", 0.05)
    monkeypatch.setattr(materializer_module, "MAX_RETRY_SECONDS", 0.2)


def _load(settings, n=300):
    produce(settings, [encoded(f"tenant-{i % 5}", seed=i) for i in range(n)])
    return n


class Watch:
    """Samples a node's readiness in the background: ready must always mean caught up."""

    def __init__(self, node: QueryNode, expected_rows: int) -> None:
        self.node, self.expected = node, expected_rows
        self.samples: list[dict] = []
        self.stale_while_ready: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            state = self.node.readiness()
            self.samples.append(state)
            store = self.node.store
            if state.get("ready") and store is not None:
                rows = store.count()
                if rows < self.expected:
                    self.stale_while_ready.append(rows)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def reasons(self) -> set[str]:
        return {s["reason"] for s in self.samples if s.get("reason")}


class FailingDecoder(EventDecoder):
    """Fault injection: the first ``failures`` decodes raise what kafka-python internals might."""

    def __init__(self, failures: int, exc: type[Exception] = AttributeError) -> None:
        super().__init__()
        self.failures, self.exc = failures, exc

    def _maybe_fail(self) -> None:
        if self.failures:
            self.failures -= 1
            raise self.exc("injected: 'NoneType' object has no attribute '_buffer'")

    def decode(self, *args, **kwargs):
        self._maybe_fail()
        return super().decode(*args, **kwargs)

    def decode_runs(self, *args, **kwargs):
        self._maybe_fail()
        return super().decode_runs(*args, **kwargs)


class FailingInsert(LedgerStore):
    """Fault injection: the first ``failures`` writes raise an Arrow error."""

    failures = 2

    def write_batch(self, *args, **kwargs):
        if FailingInsert.failures:
            FailingInsert.failures -= 1
            raise pa.ArrowInvalid("injected: column types differ")
        super().write_batch(*args, **kwargs)


def _recovers(node: QueryNode, expected: int, reason: str, monkeypatch) -> None:
    # restart after 0.5 s, so the not-ready window is long enough to be sampled for sure
    monkeypatch.setattr(materializer_module, "RETRY_SECONDS", 0.5)
    watch = Watch(node, expected)
    try:
        node.start()
        wait_for(
            lambda: (state := node.readiness())["ready"] and state["restarts"] >= 1,
            timeout=60,
            what="recovery after a restart",
        )
    finally:
        watch.stop()
    assert any(reason in r for r in watch.reasons()), watch.reasons()
    assert watch.stale_while_ready == []
    assert all(not s["ready"] for s in watch.samples if s.get("reason"))
    assert node.store.count() == expected


def test_an_unexpected_decoder_error_restarts_the_loop_visibly(settings, monkeypatch):
    expected = _load(settings)
    node = QueryNode(settings, decoder=FailingDecoder(3))
    try:
        _recovers(node, expected, "read failed: AttributeError", monkeypatch)
    finally:
        node.stop()


def test_an_unexpected_insert_error_restarts_the_loop_visibly(settings, monkeypatch):
    expected = _load(settings)
    FailingInsert.failures = 2
    node = QueryNode(settings, store_factory=FailingInsert)
    try:
        _recovers(node, expected, "write failed: ArrowInvalid", monkeypatch)
    finally:
        node.stop()


def test_a_failing_progress_callback_restarts_the_loop_visibly(settings, monkeypatch):
    expected = _load(settings)
    calls = []

    def on_batch(rows, stored):
        calls.append(rows)
        if len(calls) <= 2:
            raise ValueError("injected progress failure")

    node = QueryNode(settings, on_batch=on_batch)
    try:
        _recovers(node, expected, "on_batch callback failed: ValueError", monkeypatch)
    finally:
        node.stop()


def test_a_permanent_failure_keeps_the_node_not_ready_and_counts_restarts(settings):
    _load(settings, 50)
    node = QueryNode(settings, decoder=FailingDecoder(10**9, RuntimeError))
    node.start()
    try:
        wait_for(lambda: node.readiness()["restarts"] >= 3, timeout=30, what="restarts")
        state = node.readiness()
        assert state["ready"] is False
        assert state["reason"] == "materializer restarting: read failed: RuntimeError"
        assert "127.0.0.1" not in str(state)  # no broker address in the probe
    finally:
        node.stop()


def test_rebuild_gives_up_with_the_error_instead_of_hanging(settings, monkeypatch):
    _load(settings, 50)
    monkeypatch.setattr(
        materializer_module, "EventDecoder", lambda: FailingDecoder(10**9, RuntimeError)
    )
    with pytest.raises(Unavailable, match=r"replay failed \d+ times in a row \(read failed"):
        rebuild(settings)


# -- quarantine ---------------------------------------------------------------------
def _corrupt(made: Made) -> Made:
    """The same header (known schema), a body that is not a valid AuditEvent."""
    assert made.value.startswith(MAGIC)
    return Made(made.event_id, made.key, made.value[:HEADER_LEN] + b"\x02\xff\xff\xff")


def _quarantine(store: LedgerStore) -> list[tuple]:
    return (
        store.cursor()
        .execute('SELECT partition, "offset", stage, reason FROM ledger_quarantine ORDER BY ALL')
        .fetchall()
    )


def test_an_undecodable_record_is_quarantined_once_and_not_retried(settings, tmp_path):
    good = [encoded("acme", seed=i) for i in range(10)]
    bad = _corrupt(encoded("acme", seed=99))
    tombstone = Made("-", b"acme", None)
    produce(settings, [*good[:4], bad, *good[4:7], tombstone, *good[7:]])
    p = partition_of("acme", settings.audit_partitions)
    store = materialize(settings, settings.duckdb_path)
    try:
        assert store.count() == 10
        found = _quarantine(store)
        assert [(q[0], q[1], q[2]) for q in found] == [(p, 4, "decode"), (p, 8, "decode")]
        assert found[0][3].startswith("decode: corrupt") and "no value" in found[1][3]
        assert store.quarantined == 2
        assert store.stored_offsets(settings.audit_topic)[p] == 12
    finally:
        store.close()
    again = materialize(settings, settings.duckdb_path)  # resumes past them: nothing retried
    try:
        assert len(_quarantine(again)) == 2 and again.count() == 10
    finally:
        again.close()


class PoisonRow(LedgerStore):
    """Fault injection: DuckDB genuinely refuses one row (its map repeats a key)."""

    poison_id: str = ""

    def write_batch(self, table, topic, offsets, quarantine=()):
        ids = table.column("event_id").to_pylist()
        if self.poison_id in ids:
            i = ids.index(self.poison_id)
            meta = table.column("metadata").to_pylist()
            meta[i] = [("k", "1"), ("k", "2")]
            column = pa.array(meta, table.schema.field("metadata").type)
            table = table.set_column(table.schema.get_field_index("metadata"), "metadata", column)
        super().write_batch(table, topic, offsets, quarantine)


def test_a_row_duckdb_refuses_is_quarantined_with_the_offset_advance(settings, tmp_path):
    events = [encoded("acme", seed=i) for i in range(40)]
    produce(settings, events)
    PoisonRow.poison_id = events[17].event_id
    store = PoisonRow(settings.duckdb_path)
    m = Materializer(settings, store)
    m.start()
    try:
        assert m.wait_caught_up(timeout=60)
        assert m.status().restarts == 0  # quarantined, not retried
        p = partition_of("acme", settings.audit_partitions)
        assert _quarantine(store) == [(p, 17, "insert", "insert refused: InvalidInputException")]
        assert store.count() == 39
    finally:
        m.stop()
        store.close()


def test_an_event_id_that_is_not_a_canonical_uuid_is_quarantined_not_stored(settings):
    """Ingest only writes canonical UUIDs, but the log may hold another writer's
    records: a row whose id is not one is quarantined (an upper-case UUID too, which
    the ``UUID`` column would take and store in lower case, changing the id), and the
    rows around it are stored."""
    events = [encoded("acme", seed=i) for i in range(12)]
    events[5] = encoded("acme", "EVT-5", seed=5)
    events[8] = encoded("acme", events[8].event_id.upper(), seed=8)
    produce(settings, events)
    p = partition_of("acme", settings.audit_partitions)
    store = materialize(settings, settings.duckdb_path)
    try:
        why = "decode: event_id is not a canonical UUID"
        assert _quarantine(store) == [(p, 5, "decode", why), (p, 8, "decode", why)]
        stored = store.cursor().execute("SELECT event_id::VARCHAR FROM audit_events").fetchall()
        kept = [e.event_id for i, e in enumerate(events) if i not in (5, 8)]
        assert sorted(r[0] for r in stored) == sorted(kept)
        assert store.stored_offsets(settings.audit_topic)[p] == 12
    finally:
        store.close()


# -- unknown writer schemas hold their partition ---------------------------------------
def test_an_unknown_schema_holds_its_partition_until_the_schema_is_deployed(
    settings, tmp_path, monkeypatch
):
    from ledger import log_reader

    monkeypatch.setattr(log_reader, "HOLD_RECHECK_S", 0.1)
    newer = AvroCodec(SchemaRegistry.load(EVOLUTION))
    held, other = (
        "acme",
        next(
            t
            for t in (f"tenant-{i}" for i in range(50))
            if partition_of(t, settings.audit_partitions) != partition_of("acme", 3)
        ),
    )
    before = [encoded(held, seed=i) for i in range(5)]
    v2 = encoded(held, seed=50, codec=newer, version=2, trace_id="trace-1")
    after = [encoded(held, seed=60 + i) for i in range(5)]
    others = [encoded(other, seed=100 + i) for i in range(8)]
    produce(settings, [*before, *others[:4], v2, *after, *others[4:]])

    folder = schema_folder(tmp_path)  # the deployed schemas: AuditEvent v1 only
    decoder = EventDecoder(AvroCodec(SchemaRegistry.load(folder)))
    node = QueryNode(settings, decoder=decoder)
    node.start()
    try:
        p = partition_of(held, settings.audit_partitions)
        fingerprint = newer.registry.version("AuditEvent", 2).fingerprint.hex()
        reason = f"partition {p} held at offset 5: deploy schema {fingerprint}"
        wait_for(lambda: node.readiness().get("reason") == reason, timeout=60, what="hold")
        state = node.readiness()
        assert state["ready"] is False
        assert state["held"] == {str(p): {"offset": 5, "fingerprint": fingerprint}}
        wait_for(lambda: node.store.count() == 13, timeout=30, what="other partition")
        assert node.store.stored_offsets(settings.audit_topic)[p] == 5  # not skipped

        shutil.copy(EVOLUTION / "AuditEvent.v2.avsc", folder)  # deploy the schema
        wait_for(lambda: node.readiness()["ready"], timeout=60, what="resume")
        assert node.store.count() == 19
        assert node.store.quarantined == 0
        row = node.cursor().execute(
            "SELECT kafka_offset FROM audit_events WHERE event_id = ?", [v2.event_id]
        )
        assert row.fetchall() == [(5,)]
    finally:
        node.stop()


def test_rebuild_exits_nonzero_on_a_held_partition(settings):
    newer = AvroCodec(SchemaRegistry.load(EVOLUTION))
    produce(settings, [encoded("acme", seed=1), encoded("acme", seed=2, codec=newer, version=2)])
    result = subprocess.run(
        [sys.executable, "-m", "cli", "ledger", "rebuild", "--yes"],
        cwd=REPO,
        env=node_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "deploy that schema version" in result.stderr


def test_rebuild_reports_tenants_that_break_the_tenant_rule(settings):
    produce(settings, [encoded("acme", seed=1), encoded("bad tenant!", seed=2)])
    report = rebuild(settings)
    assert report.rows == 2
    assert report.bad_tenants == [("bad tenant!", 1)]


# -- stored offsets that do not belong to the log --------------------------------------
def test_offsets_are_checked_against_the_log():
    check_offsets("t", {0: 5, 1: 0}, {0: 0, 1: 0}, {0: 9, 1: 3})
    with pytest.raises(LedgerMismatch, match=r"stored offset 12 of t partition 0 .*0\.\.9"):
        check_offsets("t", {0: 12}, {0: 0}, {0: 9})
    with pytest.raises(LedgerMismatch, match="partition 4 of t, which no longer exists"):
        check_offsets("t", {4: 1}, {0: 0}, {0: 9})
    with pytest.raises(LedgerMismatch, match="velora ledger rebuild"):
        check_offsets("t", {0: 2}, {0: 3}, {0: 9})


def test_offsets_past_the_end_stop_the_node_instead_of_rewinding(settings, tmp_path):
    expected = _load(settings, 30)
    materialize(settings, settings.duckdb_path).close()
    con = duckdb.connect(str(settings.duckdb_path))  # a file from a longer log
    con.execute("UPDATE ledger_offsets SET next_offset = next_offset + 1000")
    con.close()
    result = subprocess.run(
        [sys.executable, "-m", "cli", "node", "--port", "0"],
        cwd=REPO,
        env=node_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "is outside the log" in result.stderr and "velora ledger rebuild" in result.stderr
    store = LedgerStore(settings.duckdb_path)
    try:
        assert store.count() == expected  # nothing replayed on top
    finally:
        store.close()


def test_a_recreated_topic_is_refused(settings, tmp_path):
    _load(settings, 20)
    materialize(settings, settings.duckdb_path).close()
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        admin.delete_topics([settings.audit_topic])
        wait_for(
            lambda: settings.audit_topic not in admin.list_topics(), timeout=60, what="deleted"
        )
    finally:
        admin.close()
    wait_for(lambda: ensure_topics(settings) or True, timeout=60, what="recreated")
    produce(settings, [encoded("acme", seed=i) for i in range(25)])  # offsets look plausible
    assert sum(end_offsets(settings, settings.audit_topic).values()) == 25
    store = LedgerStore(settings.duckdb_path)
    m = Materializer(settings, store)
    m.start()
    try:
        wait_for(lambda: m.status().fatal, timeout=60, what="fatal")
        assert "was recreated" in m.status().fatal
        assert not m.wait_caught_up(timeout=0.1)
        assert store.count() == 20
    finally:
        m.stop()
        store.close()

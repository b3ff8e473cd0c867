"""The copy warmer (ledger/copy_warmer.py): the sorted copies in DuckDB's buffer pool."""

from __future__ import annotations

import pytest

import ledger.sorted_copies as sc
from ledger import copy_warmer
from ledger.copy_keeper import CopyKeeper
from ledger.copy_warmer import Warmth, memory, size_bytes
from ledger.duck import LedgerFile
from ledger.sorted_copies import Run
from ledger.store import LedgerStore
from tests.test_head import Writer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("18.8 GiB", int(18.8 * 2**30)),
        ("500.0 MiB", 500 * 2**20),
        ("976.5 KiB", int(976.5 * 2**10)),
        ("2 GB", 2 * 10**9),
        ("0 bytes", 0),
        ("", None),
        ("lots", None),
        ("5 XB", None),
        ("GiB", None),
    ],
)
def test_sizes_as_duckdb_prints_them(text, expected):
    assert size_bytes(text) == expected


def _store(
    tmp_path, monkeypatch, rows: int, chunk: int = 4
) -> tuple[LedgerStore, Writer, CopyKeeper]:
    """A store of ``rows`` rows written ``chunk`` at a time, the copies stepped after each."""
    monkeypatch.setattr(sc, "RUN_ROWS", 4)
    monkeypatch.setattr(sc, "FANIN", 3)
    monkeypatch.setattr(sc, "TOP_ROWS", 4 * 3 * 3)
    monkeypatch.setattr(sc, "BACKLOG_ROWS", 4 * 3)
    store = LedgerStore(tmp_path / "l.duckdb")
    w, keeper = Writer(store, 11), CopyKeeper(store)
    for _ in range(0, rows, chunk):
        w.write(w.batch(chunk))
        while keeper.step():
            pass
    return store, w, keeper


def test_each_run_is_warmed_once_newest_first_and_merged_runs_are_forgotten(tmp_path, monkeypatch):
    store, w, keeper = _store(tmp_path, monkeypatch, 8)  # two runs of 4
    warmed: list[Run] = []
    real = copy_warmer.warm_run
    monkeypatch.setattr(
        copy_warmer, "warm_run", lambda cur, run: warmed.append(run) or real(cur, run)
    )
    cur = store.cursor()
    warmth = Warmth()
    stored = sc.runs(cur)
    assert len(stored) > 1
    assert warmth.round(cur) == len(stored)
    assert warmed == list(reversed(stored)) and warmth.warm == set(stored)
    assert warmth.round(cur) == 0 and len(warmed) == len(stored)  # nothing new: no reads
    assert warmth.status()["warm_runs"] == len(stored)

    w.write(w.batch(4))  # a third run of 4: the three merge into one
    while keeper.step():
        pass
    after = sc.runs(cur)
    new = [r for r in after if r not in stored]
    assert new and any(r not in after for r in stored)  # some runs were merged away
    del warmed[:]
    assert warmth.round(cur) == len(new)
    assert warmed == list(reversed(new))
    assert warmth.warm == set(after)  # the merged runs are forgotten
    store.close()


def test_a_run_warmed_is_held_in_duckdbs_buffer_pool(tmp_path, monkeypatch):
    store, _, _ = _store(tmp_path, monkeypatch, 3000, chunk=3000)
    store.close()
    reader = LedgerFile(tmp_path / "l.duckdb", create=False)  # a cold buffer pool
    try:
        cur = reader.cursor()
        before, limit = memory(cur)
        assert limit is not None and limit > 0
        assert Warmth().round(cur) == len(sc.runs(cur))
        # at least a block (256 KiB) of each column a page reads over a row group
        assert memory(cur)[0] - before >= 6 * 256 * 1024
    finally:
        reader.close()


def test_no_run_is_warmed_past_the_budget_or_without_a_known_limit(tmp_path, monkeypatch):
    store, _, _ = _store(tmp_path, monkeypatch, 30)
    cur = store.cursor()
    spent = Warmth(share=0.0)  # DuckDB already uses more than nothing
    assert spent.round(cur) == 0
    assert spent.status()["over_budget"] is True and spent.warm == set()
    monkeypatch.setattr(copy_warmer, "memory", lambda cur: (0, None))
    unknown = Warmth()
    assert unknown.round(cur) == 0 and unknown.over_budget
    monkeypatch.undo()
    stopping = Warmth()
    assert stopping.round(cur, go_on=lambda: False) == 0 and not stopping.over_budget
    assert Warmth().round(cur) == len(sc.runs(cur))  # within the budget: all of them
    store.close()


def test_a_node_warms_the_runs_its_copy_keeper_writes(settings, monkeypatch):
    from kafka import KafkaProducer

    from ledger.node import QueryNode
    from tests.factory import EventFactory
    from tests.helpers import wait_for

    monkeypatch.setattr(sc, "FLUSH_S", 0.0)  # a run of whatever came in, at once
    node = QueryNode(settings)
    node.start()
    try:
        wait_for(lambda: node.readiness()["ready"], timeout=60)
        assert node.readiness()["copy_warmer"]["warm_runs"] == 0
        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        factory = EventFactory(templates=20)
        metas = [
            producer.send(settings.audit_topic, key=e.key, value=e.value)
            for e in (factory.make() for _ in range(40))
        ]
        last = [m.get(30) for m in metas][-1]
        producer.close()
        assert node.wait_for_offset(last.partition, last.offset, timeout=30)
        wait_for(lambda: node.readiness()["sorted_copies"]["rows_behind"] == 0, timeout=30)
        wait_for(lambda: node.readiness()["copy_warmer"]["warm_runs"] >= 1, timeout=30)
        status = node.readiness()["copy_warmer"]
        assert status["over_budget"] is False and status["error"] is None
    finally:
        node.stop()
    assert node.copy_warmer is None


def test_a_node_told_not_to_warm_has_no_warmer(settings):
    from ledger.node import QueryNode

    node = QueryNode(settings.with_overrides(warm_copies=False))
    node.start()
    try:
        assert node.copy_warmer is None and "copy_warmer" not in node.readiness()
    finally:
        node.stop()

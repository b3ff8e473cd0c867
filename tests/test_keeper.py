"""The keepers' shared thread (ledger/keeper.py): a failed round is reported and
retried without losing the thread, and no step runs while the writer is busy.

A real DuckDB ledger and a real copy keeper; the only fake is the injected failure.
"""

from __future__ import annotations

import threading

import duckdb

import ledger.keeper as keeper_module
import ledger.sorted_copies as sc
from ledger.copy_keeper import CopyKeeper
from ledger.store import LedgerStore
from tests.helpers import wait_for
from tests.test_head import Writer


def test_a_failed_round_is_reported_and_retried_and_busy_holds_the_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(keeper_module, "RETRY_S", 0.05)
    monkeypatch.setattr(sc, "FLUSH_S", 0)
    store = LedgerStore(tmp_path / "l.duckdb")
    w = Writer(store, 3)
    w.write(w.batch(40))
    failing = threading.Event()
    failing.set()
    rebuild = sc.rebuild

    def flaky(cur, run, replaces):  # the fault: the first rebuilds fail mid-transaction
        rebuild(cur, run, replaces)
        if failing.is_set():
            raise duckdb.IOException("disk full (injected)")

    monkeypatch.setattr(sc, "rebuild", flaky)
    busy = threading.Event()
    keeper = CopyKeeper(store, interval=0.05, busy=busy.is_set)
    keeper.start()
    try:
        wait_for(lambda: keeper.status()["error"] == "IOException", timeout=10, what="the error")
        assert keeper.status()["steps"] == 0 and store.copies.mark == 0  # rolled back
        assert sc.runs(store.cursor()) == []
        busy.set()  # the rebuilds still fail: only a round that takes no step succeeds
        wait_for(lambda: keeper.error is None, timeout=10, what="a round while busy")
        assert keeper.status()["steps"] == 0
        failing.clear()
        busy.clear()
        wait_for(lambda: store.copies.mark == store.copies.last, timeout=10, what="caught up")
        status = keeper.status()
        assert status["steps"] >= 1 and status["rows_behind"] == 0 and status["error"] is None
        assert sc.mismatch(store.cursor()) == []
    finally:
        keeper.stop()
        store.close()
    assert not any(t.name == CopyKeeper.NAME for t in threading.enumerate())

"""Rebuild: a ledger replayed from the log equals the old one, column for column."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ledger.store import LedgerStore
from tests.factory import EventFactory, produce
from tests.helpers import REPO, wait_for
from tests.test_node import NodeProcess, node_env
from tests.test_rollups import assert_rollups_exact

# Every column of every row, in key order, hashed: to_json(row) renders all columns
# (NULLs included) of audit_events, so any difference changes the digest.
CHECKSUM = (
    "SELECT count(*), md5(string_agg(to_json(e)::VARCHAR, chr(10) ORDER BY tenant_id, event_id))"
    " FROM audit_events e"
)


class Digest(tuple):
    """(rows, md5) of a ledger; keeps the rows to explain a mismatch."""

    table: object = None

    def explain(self, other: Digest) -> str:
        a, b = self.table, other.table
        if a.num_rows != b.num_rows:
            return f"{a.num_rows} rows vs {b.num_rows}"
        for name in a.column_names:
            x, y = a.column(name).to_pylist(), b.column(name).to_pylist()
            diff = [i for i in range(len(x)) if x[i] != y[i]]
            if diff:
                i = diff[0]
                return f"{len(diff)} rows differ in {name}, e.g. {x[i]!r} vs {y[i]!r}"
        return "tables are equal"


def checksum(path) -> Digest:
    store = LedgerStore(path)
    try:
        columns = store.cursor().execute("DESCRIBE audit_events").fetchall()
        assert len(columns) >= 22
        digest = Digest(store.cursor().execute(CHECKSUM).fetchall()[0])
        assert assert_rollups_exact(store.cursor()) == digest[0]
        query = "SELECT * FROM audit_events ORDER BY tenant_id, event_id"
        digest.table = store.cursor().sql(query).to_arrow_table()
        return digest
    finally:
        store.close()


def _run_node_until_ready(settings, log_path) -> None:
    node = NodeProcess(settings, log_path)
    try:
        wait_for(lambda: node.get("/readyz").status_code == 200, timeout=120, what="catch-up")
    finally:
        assert node.terminate() == 0, node.tail()


@pytest.fixture
def loaded(settings):
    factory = EventFactory(templates=500)
    events = [factory.make() for _ in range(20_000)]
    assert produce(settings, events + events[::50]) == 20_400  # with re-sent duplicates
    return settings


def test_restarting_on_an_empty_duckdb_rebuilds_the_same_table(loaded, tmp_path):
    settings = loaded
    _run_node_until_ready(settings, tmp_path / "node.log")
    before = checksum(settings.duckdb_path)
    assert before[0] == 20_000

    settings.duckdb_path.unlink()
    _run_node_until_ready(settings, tmp_path / "node.log")
    after = checksum(settings.duckdb_path)
    assert after == before, before.explain(after)
    assert "replaying the audit log into the ledger" in (tmp_path / "node.log").read_text()


def test_velora_ledger_rebuild_replays_into_an_equal_table(loaded, tmp_path):
    settings = loaded
    _run_node_until_ready(settings, tmp_path / "node.log")
    before = checksum(settings.duckdb_path)

    result = subprocess.run(
        [sys.executable, "-m", "cli", "ledger", "rebuild", "--yes"],
        cwd=REPO,
        env=node_env(settings),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rebuilding ledger" in result.stderr  # the tqdm bar, on stderr
    after = checksum(settings.duckdb_path)
    assert after == before, before.explain(after)
    assert settings.duckdb_path.with_name(settings.duckdb_path.name + ".old").exists()


def test_rebuild_refuses_without_yes_when_not_interactive(loaded, tmp_path):
    settings = loaded
    _run_node_until_ready(settings, tmp_path / "node.log")
    result = subprocess.run(
        [sys.executable, "-m", "cli", "ledger", "rebuild"],
        cwd=REPO,
        env=node_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 2
    assert "--yes" in result.stderr
    assert checksum(settings.duckdb_path)[0] == 20_000

"""The query benchmark's node is configured as ``velora node`` is."""

from __future__ import annotations

from bench.query import _child_env
from ledger.duck import LedgerFile


def test_the_benchmark_node_takes_the_duckdb_memory_limit(settings, tmp_path):
    env = _child_env(settings.with_overrides(duckdb_memory_limit_mb=256))
    assert env["VELORA_DUCKDB_MEMORY_LIMIT_MB"] == "256"
    limited = LedgerFile(tmp_path / "limited.duckdb", memory_limit="256MB")
    default = LedgerFile(tmp_path / "default.duckdb")
    try:
        show = "SELECT current_setting('memory_limit')"
        assert limited.connection.execute(show).fetchone() == ("244.1 MiB",)  # 256 MB, in MiB
        assert default.connection.execute(show).fetchone() != ("244.1 MiB",)
    finally:
        limited.close()
        default.close()

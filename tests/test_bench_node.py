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


def test_an_older_revisions_node_gets_only_the_settings_it_knows(settings, tmp_path):
    # bench.ab serves another revision's tree; its Settings refuse unknown variables
    older = tmp_path / "older"
    (older / "velora").mkdir(parents=True)
    (older / "velora" / "settings.py").write_text(
        'ENV_VARS = {"VELORA_PAGE_BODIES": ("page_bodies", _bool)}\n', encoding="utf-8"
    )
    ours = _child_env(settings.with_overrides(page_bodies=True, warm_copies=False))
    assert ours["VELORA_PAGE_BODIES"] == "true" and ours["VELORA_WARM_COPIES"] == "false"
    theirs = _child_env(settings, older)
    assert theirs["VELORA_PAGE_BODIES"] == "false" and "VELORA_WARM_COPIES" not in theirs
    assert theirs["VELORA_DUCKDB_MEMORY_LIMIT_MB"] == ours["VELORA_DUCKDB_MEMORY_LIMIT_MB"]

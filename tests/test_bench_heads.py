"""``python -m bench.heads`` runs end to end on a small ledger and reports each set-up."""

from __future__ import annotations

import json

from bench import heads


def test_the_heads_benchmark_times_each_set_up(tmp_path):
    rows = heads.run(rows=40, batches=2, stored=2_000, directory=tmp_path)
    assert [r.name for r in rows] == [
        "no heads",
        "20 tenants' heads",
        "20 tenants' heads + 80 action heads",
        "... + 120 id heads",
    ]
    assert all(r.value > 0 for r in rows)
    saved = json.loads((tmp_path / "heads.json").read_text())["40 rows"]
    assert {name: (v["action_heads"], v["id_heads"]) for name, v in saved.items()} == {
        "no heads": (0, 0),
        "20 tenants' heads": (0, 0),
        "20 tenants' heads + 80 action heads": (80, 0),
        "... + 120 id heads": (80, 120),
    }
    # the heads' own share is timed where there are heads, and only there
    assert saved["no heads"]["committed_cpu_p50_ms"] == 0.0
    assert saved["20 tenants' heads"]["committed_cpu_p50_ms"] > 0
    assert saved["20 tenants' heads + 80 action heads"]["committed_cpu_p50_ms"] > 0
    assert saved["... + 120 id heads"]["committed_cpu_p50_ms"] > 0

"""The docs' code samples are the files in docs/samples/, and they work against a live system.

The system is real end to end: Kafka, ``velora demo load`` through the ingest
library, the query node's materializer into DuckDB, the control topic for the key,
and the app served by uvicorn. Then the cURL, Python and Node samples run as
subprocesses and must print the first page.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
import pytest

from cli.keys import create_key
from cli.main import main
from ledger.node import QueryNode
from query_api.app import create_app
from tests.api_support import live_server
from tests.helpers import CACHE_DIR, REPO, wait_for
from velora.settings import Settings
from velora.topics import ensure_topics

DOCS = REPO / "docs"
SAMPLES = DOCS / "samples"
DOC_FILES = (
    "quickstart.md",
    "authentication.md",
    "audit-events.md",
    "analytics.md",
    "exports.md",
    "webhooks.md",
)
BLOCK = re.compile(r"<!-- sample: (?P<path>\S+) -->\n```[a-z]*\n(?P<body>.*?)```", re.S)
DEMO_EVENTS = 400


def test_docs_include_the_sample_files_verbatim():
    included: set[str] = set()
    for name in DOC_FILES:
        text = (DOCS / name).read_text(encoding="utf-8")
        blocks = list(BLOCK.finditer(text))
        assert blocks, name
        for m in blocks:
            assert m["body"] == (REPO / m["path"]).read_text(encoding="utf-8"), (name, m["path"])
            included.add(m["path"])
        assert text.count("<!-- sample:") == len(blocks)
    assert included == {f"docs/samples/{p.name}" for p in SAMPLES.iterdir() if p.is_file()}
    quick = (DOCS / "quickstart.md").read_text(encoding="utf-8")
    for sample in ("first_call.sh", "first_call.py", "first_call.mjs"):
        assert f"docs/samples/{sample}" in quick


@pytest.fixture(scope="module")
def system(kafka_bootstrap, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("samples")
    env = {
        "VELORA_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "VELORA_TOPIC_PREFIX": f"s{uuid.uuid4().hex[:12]}",
        "VELORA_AUDIT_PARTITIONS": "3",
        "VELORA_DUCKDB_PATH": str(tmp / "ledger.duckdb"),
        "VELORA_STATE_DIR": str(tmp / "state"),
        "VELORA_CACHE_DIR": str(CACHE_DIR),
    }
    settings = Settings.from_env(env)
    ensure_topics(settings)
    node = QueryNode(settings)
    node.start()
    app = create_app(settings, node)
    try:
        with live_server(app) as url, pytest.MonkeyPatch.context() as mp:
            for name, value in env.items():
                mp.setenv(name, value)
            assert (
                main(
                    [
                        "demo",
                        "load",
                        "--tenant",
                        "acme",
                        "--events",
                        str(DEMO_EVENTS),
                        "--seed",
                        "7",
                    ]
                )
                == 0
            )
            assert main(["demo", "load", "--tenant", "globex", "--events", "40"]) == 0
            issued = create_key(settings, "acme", ("audit:read",), name="samples")
            exporter = create_key(settings, "acme", ("audit:read", "audit:export"), name="exports")
            wait_for(lambda: app.state.control.position > exporter.offset, timeout=10)

            def materialized() -> bool:
                row = (
                    node.cursor()
                    .execute("SELECT count(*) FROM audit_events WHERE source <> 'velora.query_api'")
                    .fetchone()
                )
                return row is not None and row[0] == DEMO_EVENTS + 40

            wait_for(materialized, timeout=60, what="demo events materialized")
            # a window holding every demo event and none of the reads the tests make later
            window = {
                "VELORA_SINCE": (datetime.now(UTC) - timedelta(days=8)).isoformat(),
                "VELORA_UNTIL": datetime.now(UTC).isoformat(),
            }
            demo = {
                r[0]: r[1]
                for r in node.cursor()
                .execute(
                    "SELECT event_id::VARCHAR, action FROM audit_events WHERE tenant_id = 'acme'"
                )
                .fetchall()
            }
            yield url, issued, demo, exporter, window
    finally:
        node.stop()


def _run(cmd: list[str], url: str, token: str, **extra: str) -> str:
    env = {"PATH": os.environ["PATH"], "VELORA_API_KEY": token, "VELORA_BASE_URL": url, **extra}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert token not in done.stdout and token not in done.stderr
    return done.stdout


@pytest.mark.parametrize(
    "cmd",
    [
        ["sh", "docs/samples/first_call.sh"],
        [sys.executable, "docs/samples/first_call.py"],
        ["node", "docs/samples/first_call.mjs"],
    ],
    ids=["curl", "python-httpx", "node-fetch"],
)
def test_first_call_samples_print_the_first_page(system, cmd):
    url, issued, demo, _, _ = system
    page = json.loads(_run(cmd, url, issued.token))
    events = page["events"]
    assert len(events) == 10 and page["page"]["limit"] == 10
    assert page["page"]["next_cursor"]
    keys = [(e["occurred_at"], e["event_id"]) for e in events]
    assert keys == sorted(keys, reverse=True)
    for e in events:
        assert e["tenant_id"] == "acme"
        assert e["occurred_at"].endswith("+00:00")
        # Either a demo event or one of our own audited reads.
        assert e["event_id"] in demo or (
            e["action"] == "audit_log.viewed" and e["actor"]["id"] == issued.record.key_id
        )


def test_paginate_sample_walks_every_page(system):
    url, issued, demo, _, _ = system
    out = _run(
        [sys.executable, "docs/samples/paginate.py"], url, issued.token, VELORA_ACTION="claim.*"
    )
    lines = out.strip().splitlines()
    expected = {i for i, action in demo.items() if action.startswith("claim.")}
    assert lines[-1] == f"{len(expected)} events"
    assert {line.split()[-1] for line in lines[:-1]} == expected
    assert len(expected) > 100  # more than one page of the sample's limit=100


def test_bad_key_makes_the_samples_fail_loudly(system):
    url, _, _, _, _ = system
    bad = "vlk_live_00000000_" + "0" * 32
    for cmd in (
        ["sh", "docs/samples/first_call.sh"],
        [sys.executable, "docs/samples/first_call.py"],
        ["node", "docs/samples/first_call.mjs"],
    ):
        env = {"PATH": os.environ["PATH"], "VELORA_API_KEY": bad, "VELORA_BASE_URL": url}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
        assert done.returncode != 0, cmd
        assert "authentication_error" in done.stdout + done.stderr


def test_analytics_samples_print_the_demo_numbers(system):
    url, issued, demo, _, window = system
    actions = Counter(demo.values())
    summary = json.loads(
        _run(["sh", "docs/samples/analytics_summary.sh"], url, issued.token, **window)
    )
    assert summary["current"]["total"] == DEMO_EVENTS
    assert summary["previous"]["total"] == 0 and summary["change"]["total"]["relative"] is None

    out = _run(
        [sys.executable, "docs/samples/analytics_timeseries.py"], url, issued.token, **window
    )
    lines = out.splitlines()
    assert lines[0] == f"{DEMO_EVENTS} events, 9 day buckets"
    per_action = {
        line.split()[0]: int(line.split()[1]) for line in lines[1:] if " per day: " in line
    }
    assert per_action == dict(actions)
    assert sum(1 for line in lines if line.startswith("actor ")) == 5

    out = _run(["node", "docs/samples/analytics_top.mjs"], url, issued.token, **window)
    lines = out.splitlines()
    assert lines[0] == f"{DEMO_EVENTS} events"
    ranked = sorted(actions.items(), key=lambda kv: (-kv[1], kv[0]))
    assert [tuple(line.split("\t")[:2]) for line in lines[1:]] == [(k, str(n)) for k, n in ranked]


def test_export_samples_write_every_demo_event(system, tmp_path):
    url, _, demo, exporter, window = system
    ndjson = tmp_path / "audit.ndjson"
    out = _run(
        ["sh", "docs/samples/export.sh"], url, exporter.token, VELORA_OUT=str(ndjson), **window
    )
    assert out.strip() == f"{DEMO_EVENTS} events written to {ndjson}"
    events = [json.loads(line) for line in ndjson.read_text().splitlines()]
    assert {e["event_id"] for e in events} == set(demo)
    assert [e["occurred_at"] for e in events] == sorted(e["occurred_at"] for e in events)

    parquet = tmp_path / "audit.parquet"
    out = _run(
        [sys.executable, "docs/samples/export_job.py"], url, exporter.token,
        VELORA_OUT=str(parquet), **window,
    )  # fmt: skip
    assert out.strip() == f"{DEMO_EVENTS} events written to {parquet}"
    table = pq.read_table(parquet)
    assert set(table.column("event_id").to_pylist()) == set(demo)

    out = _run(["node", "docs/samples/export_stream.mjs"], url, exporter.token, **window)
    lines = out.splitlines()
    assert lines[0] == f"{DEMO_EVENTS} events"
    assert dict(line.split("\t") for line in lines[1:]) == {
        k: str(v) for k, v in Counter(demo.values()).items()
    }


def test_export_samples_need_the_export_scope(system):
    url, issued, _, _, window = system
    env = {"PATH": os.environ["PATH"], "VELORA_API_KEY": issued.token, "VELORA_BASE_URL": url,
           **window}  # fmt: skip
    for cmd in (["sh", "docs/samples/export.sh"], ["node", "docs/samples/export_stream.mjs"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
        assert done.returncode != 0, cmd
        assert "permission_denied" in done.stdout + done.stderr

"""The CLI loads only what a command needs: no web server and no DuckDB for operator commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

HEAVY = ("uvicorn", "starlette", "duckdb", "pyarrow", "httpx")

PROBE = f"""
import json, sys
from cli.main import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print(json.dumps({{"code": code, "loaded": sorted(m for m in {HEAVY!r} if m in sys.modules)}}))
"""


def loaded_by(args: list[str], env: dict[str, str] | None = None) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["keys", "--help"],
        ["keys", "list", "--help"],
        ["node", "--help"],
        ["webhooks", "dispatch", "--help"],
        ["webhooks", "listen", "--help"],
        ["tenants", "show", "--help"],
        ["tokenizer", "tokenize", "--help"],
    ],
)
def test_help_loads_no_web_server_and_no_duckdb(args):
    result = loaded_by(args)
    assert result == {"code": 0, "loaded": []}


def test_keys_list_runs_without_web_server_or_duckdb(settings):
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VELORA_")},
        "VELORA_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "VELORA_TOPIC_PREFIX": settings.topic_prefix,
    }
    result = loaded_by(["keys", "list", "--json"], env)
    assert result == {"code": 0, "loaded": []}


def test_every_heavy_module_is_really_detected():
    """The probe is not vacuous: a command that serves does load the web stack."""
    code = f"import query_api.app, sys; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert "starlette" in out.stdout and "duckdb" in out.stdout


@pytest.mark.parametrize(
    ("argv", "env", "variable"),
    [
        (["node", "--host", "0.0.0.0", "--port", "0"], {}, "VELORA_KEY_PEPPER"),
        (
            ["node", "--host", "0.0.0.0", "--port", "0"],
            {"VELORA_KEY_PEPPER": "own-pepper-0123456789"},
            "VELORA_CURSOR_SECRET",
        ),
        (
            ["ingest", "serve", "--host", "0.0.0.0", "--port", "0"],
            {"VELORA_INGEST_TOKENS": "dev-ingest-token-change-me"},
            "VELORA_INGEST_TOKENS",
        ),
    ],
)
def test_services_refuse_published_secrets_on_a_non_loopback_bind(tmp_path, argv, env, variable):
    """Issue 8 finding 8: stopped before binding or touching Kafka, naming the variable."""
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "VELORA_KAFKA_BOOTSTRAP": "127.0.0.1:1",
        "VELORA_STATE_DIR": str(tmp_path),
        **env,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "cli", *argv],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"velora: error: {variable} is a development value")
    assert "non-loopback" in last
    assert "change-me" not in proc.stderr and "Traceback" not in proc.stderr

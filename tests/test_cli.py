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

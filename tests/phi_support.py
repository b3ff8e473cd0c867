"""Support for the PHI end-to-end tests: a broker of their own (its raw log files are
scanned), ``velora`` services as real subprocesses, and PHI strings to look for."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uuid_utils

from ledger.control import ControlState
from tests.helpers import CACHE_DIR, REPO, wait_for
from velora.settings import Settings
from velora.topics import ensure_topics

SECRETS_KEY = "phi-test-secrets-key-0123456789"
INGEST_TOKEN = "phi-test-ingest-token-0123456789"

PHI = {
    "member_id": "MEM-PHI-7733",
    "name": "Zebulon Quixote-Phi",
    "email": "zq.phi@example.org",
    "patient_id": "PAT-PHI-5511",
    "patient_name": "Ottoline Phi-Vantablack",
    "mrn": "MRN-PHI-884422",
}
"""Distinctive PHI strings: none may appear in the log, DuckDB or a log line in server-mode."""


def phi_event(tenant: str, n: int, **overrides: str) -> dict:
    """An HTTP-ingest event naming a member (actor) and a patient (target), with an MRN."""
    values = {**PHI, **overrides}
    return {
        "event_id": str(uuid_utils.uuid7()),
        "tenant_id": tenant,
        "occurred_at": f"2026-11-30T10:00:{n:02d}+00:00",
        "action": "patient.record.viewed",
        "crud": "read",
        "actor": {
            "type": "member",
            "id": values["member_id"],
            "name": values["name"],
            "email": values["email"],
            "ip": "10.0.0.7",
        },
        "targets": [
            {"type": "patient", "id": values["patient_id"], "name": values["patient_name"]},
            {"type": "document", "id": f"DOC-{n}", "name": "discharge summary"},
        ],
        "outcome": {"result": "success"},
        "source": "ehr-service",
        "metadata": {"mrn": values["mrn"], "ward": "4"},
    }


def phi_settings(bootstrap: str, tmp_path: Path) -> Settings:
    """Settings for one test on ``bootstrap`` with the test's secrets key; topics created."""
    s = Settings.from_env(
        {"VELORA_SECRETS_KEY": SECRETS_KEY, "VELORA_INGEST_TOKENS": INGEST_TOKEN},
        kafka_bootstrap=bootstrap,
        topic_prefix=f"t{uuid.uuid4().hex[:12]}",
        audit_partitions=3,
        state_dir=tmp_path / "state",
        duckdb_path=tmp_path / "ledger.duckdb",
        cache_dir=CACHE_DIR,
    )
    ensure_topics(s)
    return s


def service_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a ``velora`` subprocess for these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VELORA_")}
    env.update(
        VELORA_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
        VELORA_TOPIC_PREFIX=settings.topic_prefix,
        VELORA_AUDIT_PARTITIONS=str(settings.audit_partitions),
        VELORA_DUCKDB_PATH=str(settings.duckdb_path),
        VELORA_STATE_DIR=str(settings.state_dir),
        VELORA_SECRETS_KEY=SECRETS_KEY,
        VELORA_INGEST_TOKENS=INGEST_TOKEN,
        VELORA_NODE_PORT="0",
        VELORA_INGEST_PORT="0",
        VELORA_LOG_LEVEL="DEBUG",
    )
    env.update(extra)
    return env


def velora(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    """Run one ``velora`` command to completion."""
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=REPO,
        env=service_env(settings, VELORA_LOG_LEVEL="WARNING"),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


class Service:
    """``velora <args>`` as a subprocess that logs ``listening on http://127.0.0.1:PORT``."""

    def __init__(self, settings: Settings, log_path: Path, *args: str) -> None:
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", *args],
            cwd=REPO,
            env=service_env(settings),
            stdout=self.log,
            stderr=self.log,
        )
        port = wait_for(self._port, timeout=90, what=f"velora {' '.join(args)} to listen")
        self.url = f"http://127.0.0.1:{port}"

    def _port(self) -> int | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"exited with {self.proc.returncode}: {self.output()[-3000:]}")
        found = re.findall(r"listening on http://127\.0\.0\.1:(\d+)", self.output())
        return int(found[-1]) if found else None

    def output(self) -> str:
        return self.log_path.read_bytes().decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def post_events(ingest_url: str, events: list[dict]) -> httpx.Response:
    """POST events to ingest as NDJSON with the test's service token."""
    body = "".join(json.dumps(e) + "\n" for e in events)
    return httpx.post(
        f"{ingest_url}/internal/v1/events",
        content=body,
        headers={
            "Authorization": f"Bearer {INGEST_TOKEN}",
            "Content-Type": "application/x-ndjson",
        },
        timeout=30,
    )


def files_under(*roots: Path) -> Iterator[Path]:
    """Every regular file under ``roots`` (files themselves included)."""
    for root in roots:
        if root.is_file():
            yield root
        elif root.is_dir():
            yield from (p for p in root.rglob("*") if p.is_file())


def leaks(blobs: dict[str, bytes], values: list[str]) -> list[tuple[str, str]]:
    """``(where, value)`` for each value found (UTF-8, case-insensitive) in each blob."""
    found = []
    for where, data in blobs.items():
        lower = data.lower()
        for value in values:
            if value.lower().encode() in lower:
                found.append((where, value))
    return found


@contextmanager
def phi_stack(settings: Settings) -> Iterator[tuple[str, str, ControlState]]:
    """In process: a query node and HTTP ingest (with the PHI transform) on real uvicorn.

    Yields ``(node_url, ingest_url, control)``; ``control`` is the ingest side's
    control state (wait on it to know that ingest has folded a settings change).
    """
    from ingest.http import create_ingest_app
    from ingest.producer import AuditProducer
    from ledger.node import QueryNode
    from phi.policy import PhiDirectory, PhiTransform
    from phi.wrap import KeysetWrapper
    from query_api.app import create_app
    from tests.api_support import live_server

    control = ControlState(settings)
    control.start()
    directory = PhiDirectory(
        control.tenant_settings,
        control.phi_keyset,
        KeysetWrapper(settings.secrets_key),
        control.caught_up,
    )
    producer = AuditProducer(settings, transform=PhiTransform(directory), timeout=15)
    node = QueryNode(settings)
    node.start()
    try:
        with (
            live_server(create_app(settings, node)) as node_url,
            live_server(create_ingest_app(settings, producer)) as ingest_url,
        ):
            yield node_url, ingest_url, control
    finally:
        producer.close()
        node.stop()
        control.stop()


def api_list(node_url: str, api_key: str, **params: str) -> list[dict]:
    """The tenant's test events (up to 100, not the node's read audits); asserts a 200."""
    r = httpx.get(
        f"{node_url}/api/v2/public/audit/events",
        params={"limit": "100", "source": "ehr-service", **params},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()["events"]

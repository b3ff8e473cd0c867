"""``velora kafka fetch|start|status|stop`` end to end, as an operator runs them.

Each test runs the real CLI in a subprocess with its own ``VELORA_STATE_DIR`` and
``VELORA_BROKER_PORT=0``/``VELORA_CONTROLLER_PORT=0``, so brokers of parallel
test runs never collide. A fake ``mvn`` on ``PATH`` (fault injection) proves that
a cached fetch never runs Maven.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from tests.helpers import CACHE_DIR, KAFKA_VERSION


def velora(
    *args: str, env: dict[str, str], timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Run ``velora <args>`` the way an operator would, in a clean VELORA_* environment."""
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def base_env(**velora_vars: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VELORA_")}
    env.update(velora_vars)
    return env


def broker_env(state: Path) -> dict[str, str]:
    return base_env(
        VELORA_STATE_DIR=str(state),
        VELORA_CACHE_DIR=str(CACHE_DIR),
        VELORA_KAFKA_VERSION=KAFKA_VERSION,
        VELORA_BROKER_PORT="0",
        VELORA_CONTROLLER_PORT="0",
        VELORA_BROKER_HEAP_MB="512",
        VELORA_TOPIC_PREFIX=f"cli{uuid.uuid4().hex[:10]}",
    )


def fake_mvn(folder: Path) -> Path:
    """A ``mvn`` that records that it ran and fails; returns the marker path."""
    marker = folder / "mvn-was-called"
    script = folder / "bin" / "mvn"
    script.parent.mkdir(parents=True)
    script.write_text(f"#!/bin/sh\ntouch '{marker}'\nexit 1\n", encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return marker


def status(env: dict[str, str]) -> tuple[int, dict[str, object]]:
    proc = velora("kafka", "status", env=env)
    return proc.returncode, json.loads(proc.stdout)


def process_gone(pid: int) -> bool:
    """True when ``pid`` has exited (a zombie awaiting its reaper counts as gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return True
    return fields[0] == "Z"


@pytest.fixture
def cleanup() -> Iterator[list[dict[str, str]]]:
    """Environments whose broker must be stopped at the end, whatever happened."""
    envs: list[dict[str, str]] = []
    yield envs
    for env in envs:
        velora("kafka", "stop", env=env)


# -- fetch ------------------------------------------------------------------------


def test_fetch_of_a_cached_version_never_runs_maven(tmp_path):
    marker = fake_mvn(tmp_path)
    env = base_env(VELORA_CACHE_DIR=str(CACHE_DIR), VELORA_KAFKA_VERSION=KAFKA_VERSION)
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"
    for _ in range(2):
        proc = velora("kafka", "fetch", env=env)
        assert proc.returncode == 0, proc.stderr
        assert f"kafka {KAFKA_VERSION}: jars already cached in" in proc.stderr
    assert not marker.exists()


def test_first_fetch_populates_the_cache_and_the_second_reuses_it(tmp_path):
    """A fresh cache folder: Maven runs once (from the local Maven repository), then never."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "m2").symlink_to(CACHE_DIR.resolve() / "m2", target_is_directory=True)
    env = base_env(VELORA_CACHE_DIR=str(cache), VELORA_KAFKA_VERSION=KAFKA_VERSION)

    first = velora("kafka", "fetch", env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "fetching broker jars" in first.stderr and "jars fetched in" in first.stderr
    libs = cache / "kafka" / KAFKA_VERSION / "libs"
    assert (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").exists()
    assert (libs / ".complete").read_text().strip() == KAFKA_VERSION
    jars = sorted(p.name for p in libs.glob("*.jar"))
    assert jars == sorted(
        p.name for p in (CACHE_DIR / "kafka" / KAFKA_VERSION / "libs").glob("*.jar")
    )

    marker = fake_mvn(tmp_path)
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"
    second = velora("kafka", "fetch", env=env)
    assert second.returncode == 0, second.stderr
    assert "already cached" in second.stderr
    assert not marker.exists()
    assert sorted(p.name for p in libs.glob("*.jar")) == jars


def test_fetch_without_maven_is_a_clear_error(tmp_path):
    env = base_env(VELORA_CACHE_DIR=str(tmp_path / "empty"), VELORA_KAFKA_VERSION="4.0.1")
    env["PATH"] = str(tmp_path)  # no mvn, no java
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "kafka", "fetch"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "velora: error: Maven (mvn) is not on PATH; it is needed to fetch the Kafka broker"
    )


# -- start / status / stop ---------------------------------------------------------


def test_start_status_stop_restart_on_free_ports(tmp_path, cleanup):
    env = broker_env(tmp_path / "state")
    prefix = env["VELORA_TOPIC_PREFIX"]

    code, before = status(env)
    assert code == 1
    assert before["running"] is False and before["port"] is None and before["jars_cached"] is True

    cleanup.append(env)
    started = velora("kafka", "start", env=env)
    assert started.returncode == 0, started.stderr
    bootstrap = started.stdout.strip()
    host, _, port = bootstrap.rpartition(":")
    assert host == "127.0.0.1" and int(port) > 0
    assert f"kafka {KAFKA_VERSION} ready at {bootstrap}" in started.stderr
    assert f"created topic {prefix}.audit.v1" in started.stderr
    assert f"created topic {prefix}.control.v1" in started.stderr

    code, running = status(env)
    assert code == 0
    assert running["running"] is True and running["bootstrap"] == bootstrap
    assert running["version"] == KAFKA_VERSION
    assert running["port"] == int(port) and running["controller_port"] not in (0, int(port))
    assert running["state_dir"] == str((tmp_path / "state" / "kafka").resolve())

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="test-cli")
    try:
        assert {f"{prefix}.audit.v1", f"{prefix}.control.v1"} <= set(admin.list_topics())
    finally:
        admin.close()

    again = velora("kafka", "start", env=env)
    assert again.returncode == 0
    assert again.stdout.strip() == bootstrap
    assert f"kafka already running at {bootstrap}" in again.stderr
    assert "created topic" not in again.stderr

    pid = int((tmp_path / "state" / "kafka" / "broker.pid").read_text())
    stopped = velora("kafka", "stop", env=env)
    assert stopped.returncode == 0 and "kafka stopped" in stopped.stderr
    assert process_gone(pid)
    assert not (tmp_path / "state" / "kafka" / "broker.pid").exists()
    code, after = status(env)
    assert code == 1 and after["running"] is False and after["port"] == int(port)
    assert "kafka was not running" in velora("kafka", "stop", env=env).stderr

    # A fixed port that contradicts the formatted state is refused before the JVM starts.
    clash = velora("kafka", "start", env={**env, "VELORA_BROKER_PORT": str(int(port) ^ 1)})
    assert clash.returncode == 2
    assert f"was formatted with port={port}" in clash.stderr

    # A restart reuses the ports and the data: the topics exist, the logs need no recovery.
    restarted = velora("kafka", "start", env=env)
    assert restarted.returncode == 0, restarted.stderr
    assert restarted.stdout.strip() == bootstrap
    assert "created topic" not in restarted.stderr
    log = (tmp_path / "state" / "kafka" / "broker.log").read_text(errors="replace")
    assert "since clean shutdown file was found" in log
    assert velora("kafka", "stop", env=env).returncode == 0


def test_two_brokers_on_port_zero_get_different_ports(tmp_path, cleanup):
    envs = [broker_env(tmp_path / name) for name in ("a", "b")]
    cleanup.extend(envs)
    for env in envs:
        proc = velora("kafka", "start", env=env)
        assert proc.returncode == 0, proc.stderr
    states = [status(env)[1] for env in envs]
    assert all(s["running"] for s in states)
    ports = [s[k] for s in states for k in ("port", "controller_port")]
    assert len(set(ports)) == 4
    for env in envs:
        assert velora("kafka", "stop", env=env).returncode == 0
    assert all(status(env)[0] == 1 for env in envs)


def test_a_stale_pid_file_never_stops_another_process(tmp_path):
    """After a crash or reboot the pid may belong to someone else: leave it alone."""
    env = broker_env(tmp_path / "state")
    (tmp_path / "state" / "kafka").mkdir(parents=True)
    with subprocess.Popen(["cat"], stdin=subprocess.PIPE) as bystander:
        try:
            (tmp_path / "state" / "kafka" / "broker.pid").write_text(f"{bystander.pid}\n")
            code, state = status(env)
            assert code == 1 and state["running"] is False
            assert "kafka was not running" in velora("kafka", "stop", env=env).stderr
            assert bystander.poll() is None
        finally:
            bystander.kill()

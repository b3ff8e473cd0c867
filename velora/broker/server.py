"""Run a real single-node Apache Kafka (KRaft, combined broker+controller) on loopback.

State folder layout::

    STATE/broker.json        ports and cluster id chosen at format time (reused on restart)
    STATE/server.properties  the broker's configuration, written on every start
    STATE/data/              KRaft metadata and topic logs (log.dirs)
    STATE/broker.log         everything the JVM printed
    STATE/broker.pid         the JVM's pid while it runs (a stale pid whose
                             /proc/<pid>/cmdline is not this broker is ignored)

Ports set to 0 are chosen free by the OS at format time, so two test runs on one
machine never collide. Stopping sends SIGTERM and waits for a clean shutdown.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from velora.broker.fetch import LOG4J_CONFIG, fetch
from velora.errors import BrokerError


@dataclass(frozen=True)
class BrokerConfig:
    """Where the broker keeps its state and jars, and which ports it listens on."""

    state_dir: Path
    cache_dir: Path
    version: str = "4.0.2"
    port: int = 0
    controller_port: int = 0
    heap_mb: int = 768


def _cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding.

    Like Kafka's own ``Uuid.randomUuid()``, never one that starts with ``-``, which
    command-line parsers would take for an option.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def free_port() -> int:
    """A port that is free on 127.0.0.1 right now (bind port 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalBroker:
    """One local Kafka process, managed through its state folder."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.state_dir = config.state_dir.resolve()
        self._proc: subprocess.Popen[bytes] | None = None

    # -- layout -----------------------------------------------------------------
    @property
    def _meta_path(self) -> Path:
        return self.state_dir / "broker.json"

    @property
    def _pid_path(self) -> Path:
        return self.state_dir / "broker.pid"

    @property
    def log_path(self) -> Path:
        """The broker's log file."""
        return self.state_dir / "broker.log"

    def _meta(self) -> dict[str, object]:
        if self._meta_path.exists():
            return dict(json.loads(self._meta_path.read_text(encoding="utf-8")))
        return {}

    @property
    def port(self) -> int:
        """The client (PLAINTEXT) port, once formatted."""
        meta = self._meta()
        if "port" not in meta:
            raise BrokerError(f"broker state in {self.state_dir} is not formatted yet")
        return int(str(meta["port"]))

    @property
    def controller_port(self) -> int:
        """The KRaft controller port, once formatted."""
        meta = self._meta()
        if "controller_port" not in meta:
            raise BrokerError(f"broker state in {self.state_dir} is not formatted yet")
        return int(str(meta["controller_port"]))

    @property
    def formatted(self) -> bool:
        """True once :meth:`format` has chosen ports and formatted the storage."""
        return self._meta_path.exists()

    @property
    def bootstrap(self) -> str:
        """``host:port`` for clients."""
        return f"127.0.0.1:{self.port}"

    # -- lifecycle --------------------------------------------------------------
    def format(self) -> None:
        """Choose ports and a cluster id, then format KRaft storage (once per state folder)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        meta = self._meta()
        if meta:
            for key, wanted in (
                ("port", self.config.port),
                ("controller_port", self.config.controller_port),
            ):
                if wanted and int(str(meta[key])) != wanted:
                    raise BrokerError(
                        f"{self.state_dir} was formatted with {key}={meta[key]}, not {wanted}; "
                        "use the same ports or a fresh state folder"
                    )
            return
        port = self.config.port or free_port()
        controller_port = self.config.controller_port or free_port()
        while controller_port == port:
            controller_port = free_port()
        cluster_id = _cluster_id()
        meta = {"port": port, "controller_port": controller_port, "cluster_id": cluster_id}
        props = self._write_properties(meta)
        self._java(
            "kafka.tools.StorageTool",
            ["format", "--standalone", f"--cluster-id={cluster_id}", "-c", str(props)],
            what="format KRaft storage",
        )
        self._meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    def start(self, timeout: float = 120.0) -> float:
        """Start the broker and wait until it answers metadata requests.

        Returns the seconds it took. A broker that already runs is left alone.
        """
        if self.running():
            return 0.0
        started = time.monotonic()
        libs = fetch(self.config.cache_dir, self.config.version, quiet=True)
        self.format()
        props = self._write_properties(self._meta())
        log = self.log_path.open("ab")
        cmd = [
            "java",
            f"-Xmx{self.config.heap_mb}m",
            "-Xms256m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            f"-Dkafka.logs.dir={self.state_dir}",
            "-cp",
            f"{libs}/*",
            "kafka.Kafka",
            str(props),
        ]
        self._proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self._pid_path.write_text(f"{self._proc.pid}\n", encoding="utf-8")
        self._wait_ready(started + timeout)
        return time.monotonic() - started

    def stop(self, timeout: float = 60.0) -> bool:
        """SIGTERM the broker and wait for it to exit (SIGKILL after ``timeout``).

        Returns False when no broker was running.
        """
        pid = self._pid()
        if pid is None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self._alive(pid):
            time.sleep(0.1)
        if self._alive(pid):
            print(f"kafka: pid {pid} ignored SIGTERM for {timeout:.0f}s; killing", file=sys.stderr)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed_by = time.monotonic() + 10
            while self._alive(pid):
                if time.monotonic() > killed_by:
                    raise BrokerError(f"kafka pid {pid} survived SIGKILL")
                time.sleep(0.05)
        self._pid_path.unlink(missing_ok=True)
        self._proc = None
        return True

    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._pid() is not None

    def version_from_log(self) -> str | None:
        """The Kafka version the running broker logged at start."""
        if not self.log_path.exists():
            return None
        found = re.findall(r"Kafka version: (\S+)", self.log_path.read_text(errors="replace"))
        return found[-1] if found else None

    # -- internals --------------------------------------------------------------
    def _pid(self) -> int | None:
        if not self._pid_path.exists():
            return None
        try:
            pid = int(self._pid_path.read_text().strip())
        except ValueError:
            return None
        return pid if self._alive(pid) and self._is_ours(pid) else None

    def _is_ours(self, pid: int) -> bool:
        """Guard against a stale pid file whose pid now belongs to another process."""
        if self._proc is not None and self._proc.pid == pid:
            return True  # our own child, possibly not yet exec'ed into java
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            return not Path("/proc/self").exists()  # gone on Linux; no /proc elsewhere
        except OSError:
            return True
        props = str(self.state_dir / "server.properties").encode()
        return b"kafka.Kafka" in cmdline and props in cmdline

    def _alive(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # A zombie child counts as dead (and is reaped here).
        with contextlib.suppress(ChildProcessError):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done == pid:
                return False
        # So does another parent's zombie: after `velora kafka start` exits, the JVM's
        # parent is init, and an init that does not reap would make stop() wait forever.
        with contextlib.suppress(OSError, IndexError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                return False
        return True

    def _write_properties(self, meta: dict[str, object]) -> Path:
        data = self.state_dir / "data"
        port, cport = meta["port"], meta["controller_port"]
        lines = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{cport}",
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(data),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "4",
            # On a restart the new controller still counts the previous incarnation's
            # session as live and rejects the re-registration (DUPLICATE_BROKER_REGISTRATION)
            # until that session expires: 9 s by default, so a restart took ~12 s.
            # A 3 s session with a 0.5 s heartbeat keeps a 6x margin against fencing
            # and brings a restart down to ~5 s.
            "broker.session.timeout.ms": "3000",
            "broker.heartbeat.interval.ms": "500",
        }
        path = self.state_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in lines.items()), encoding="utf-8")
        return path

    def _java(self, main: str, args: list[str], *, what: str) -> None:
        libs = fetch(self.config.cache_dir, self.config.version, quiet=True)
        cmd = [
            "java",
            f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp",
            f"{libs}/*",
            main,
            *args,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BrokerError(
                f"could not {what} (exit {proc.returncode}): {' '.join(cmd)}\n"
                f"{(proc.stdout + proc.stderr)[-3000:]}"
            )

    def _wait_ready(self, deadline: float) -> None:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        from velora import kafka_sockets
        from velora.kafka_clients import build_client

        kafka_sockets.install()
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._pid() is None:
                raise BrokerError(f"kafka exited during start; last log lines:\n{self._tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                admin = build_client(  # closed also when its bootstrap fails
                    KafkaAdminClient,
                    bootstrap_servers=self.bootstrap,
                    request_timeout_ms=5000,
                    client_id="velora-broker-probe",
                )
                try:
                    cluster = admin.describe_cluster()
                finally:
                    admin.close()
                if cluster.get("brokers"):
                    return
            except (OSError, KafkaError, ValueError) as exc:
                last = exc
            time.sleep(0.2)
        self.stop(timeout=10)
        raise BrokerError(f"kafka did not become ready in time ({last}); log tail:\n{self._tail()}")

    def _tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

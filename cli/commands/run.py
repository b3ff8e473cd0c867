"""``velora run``: the whole system on this machine, for development and demos.

Starts (or reuses) the local Kafka broker, creates the topics, runs a query node,
the ingest service and a webhook dispatcher as child processes (with
``VELORA_WEBHOOKS_ALLOW_INSECURE_LOOPBACK=1``, so an endpoint may be
``http://127.0.0.1:<port>``), mints a demo API key, seeds a demo tenant, prints
ready-to-paste curl lines (including how to point a webhook endpoint at
``velora webhooks listen``), and stops everything on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType

from cli.commands.kafka import broker_for
from velora.errors import BrokerError
from velora.settings import Settings

DEMO_TENANT = "demo"
LISTEN_PORT = 9000


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``velora run``."""
    p = sub.add_parser("run", help="run Kafka, a query node, ingest and a seeded demo tenant")
    p.add_argument("--tenant", default=DEMO_TENANT, help="demo tenant id (default: demo)")
    p.add_argument("--events", type=int, default=1000, help="demo events to seed (default 1000)")
    p.add_argument("--no-seed", action="store_true", help="do not mint a key or seed events")
    p.set_defaults(func=_run)


def _velora(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


def _cli_name() -> str:
    """How to type ``velora`` here: the bare name if PATH finds this install, else its path."""
    mine = Path(sys.executable).parent / "velora"
    found = shutil.which("velora")
    if found is not None and Path(found).resolve() == mine.resolve():
        return "velora"
    try:
        return str(mine.relative_to(Path.cwd()))
    except ValueError:
        return str(mine)


def _wait_http(url: str, timeout: float, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise BrokerError(f"{' '.join(map(str, proc.args))} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (loopback URL)
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise BrokerError(f"{url} did not answer 200 within {timeout:.0f}s")


def _dev_token(state_dir: Path) -> str:
    """A service token for local ingest, made once and kept in the state folder."""
    path = state_dir / "dev-ingest-token"
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32) + "\n", encoding="utf-8")
        path.chmod(0o600)
    return path.read_text(encoding="utf-8").strip()


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from velora.topics import ensure_topics

    broker = broker_for(settings)
    started_broker = False
    if broker.running():
        print(f"kafka already running at {broker.bootstrap}", file=sys.stderr)
    else:
        took = broker.start()
        started_broker = True
        print(
            f"kafka {broker.version_from_log()} ready at {broker.bootstrap} in {took:.1f}s",
            file=sys.stderr,
        )
    settings = settings.with_overrides(kafka_bootstrap=broker.bootstrap)
    ensure_topics(settings)

    env = dict(os.environ)
    env["VELORA_KAFKA_BOOTSTRAP"] = broker.bootstrap
    env["VELORA_WEBHOOKS_ALLOW_INSECURE_LOOPBACK"] = "1"
    token = settings.ingest_tokens[0].reveal() if settings.ingest_tokens else None
    if token is None:
        token = _dev_token(settings.state_dir)
        env["VELORA_INGEST_TOKENS"] = token
    node_url = f"http://{settings.node_host}:{settings.node_port}"
    ingest_url = f"http://{settings.ingest_host}:{settings.ingest_port}"
    procs = [
        subprocess.Popen(_velora("node"), env=env),
        subprocess.Popen(_velora("ingest", "serve"), env=env),
        subprocess.Popen(_velora("webhooks", "dispatch"), env=env),
    ]

    def shutdown(signum: int | None = None, frame: FrameType | None = None) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if started_broker:
            broker.stop()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, shutdown)
    try:
        _wait_http(f"{ingest_url}/healthz", 60, procs)
        _wait_http(f"{node_url}/readyz", 300, procs)
        key = None if args.no_seed else _seed(args, env)
        _banner(node_url, ingest_url, key)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        failed = [p for p in procs if p.poll() is not None]
        print(f"velora: {' '.join(map(str, failed[0].args))} exited; stopping", file=sys.stderr)
        shutdown()
    except KeyboardInterrupt:
        shutdown()
    return 0


def _seed(args: argparse.Namespace, env: dict[str, str]) -> str:
    out = subprocess.run(
        _velora(
            "keys",
            "create",
            "--tenant",
            args.tenant,
            "--scopes",
            "audit:read,audit:export,webhooks:write",
            "--name",
            "velora run demo key",
            "--json",
        ),
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    key = str(json.loads(out.strip().splitlines()[-1])["key"])
    if args.events > 0:
        subprocess.run(
            _velora("demo", "load", "--tenant", args.tenant, "--events", str(args.events)),
            env=env,
            check=True,
        )
    return key


def _banner(node_url: str, ingest_url: str, key: str | None) -> None:
    print("\nVelora is running:")
    print(f"  query node  {node_url}   (API docs: {node_url}/api/v2/public/docs)")
    print(f"  portal      {node_url}/portal   (paste the demo key to sign in)")
    print(f"  ingest      {ingest_url}/internal/v1/events")
    if key:
        print(f"\nDemo API key (shown once): {key}\n")
        print("Try it:")
        print(f'  curl -H "Authorization: Bearer {key}" \\')
        print(f'    "{node_url}/api/v2/public/audit/events?limit=10"')
        print("\nWebhooks: create an endpoint (the answer holds its secret, shown once) ...")
        print(f'  curl -X POST -H "Authorization: Bearer {key}" \\')
        print('    -H "Content-Type: application/json" \\')
        print(f'    -d \'{{"url": "http://127.0.0.1:{LISTEN_PORT}/webhooks"}}\' \\')
        print(f'    "{node_url}/api/v2/public/webhooks/endpoints"')
        print("... then receive, verify and print its deliveries:")
        cli = _cli_name()
        print(f"  {cli} webhooks listen --port {LISTEN_PORT} --secret <secret from the answer>")
    print("\nCtrl-C stops everything.", flush=True)

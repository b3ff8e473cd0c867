"""Two dispatchers, one SIGKILLed at random moments during a 20,000-event stream: nothing is lost.

Real processes (``velora webhooks dispatch``), a real broker and a real receiver.
While events are produced at a steady rate, one of the two dispatchers is killed
with SIGKILL every few seconds (chosen at random) and started again. At the end
every event has been delivered at least once; the duplicate ratio is printed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import pytest

from tests.api_support import make_event
from tests.helpers import CACHE_DIR, REPO, wait_for
from tests.webhook_support import Receiver, create_endpoint
from velora.settings import Settings
from velora.topics import ensure_topics

EVENTS = int(os.environ.get("CRASH_EVENTS", "20000"))
RATE = 500  # events per second: a 40 s stream


def dispatcher(env: dict[str, str]) -> subprocess.Popen[bytes]:
    path = os.path.join(env["VELORA_STATE_DIR"], f"dispatcher-{time.monotonic_ns()}.log")
    with open(path, "wb") as log:  # the child writes to its own copy; kept for a failed run
        return subprocess.Popen(
            [sys.executable, "-m", "cli", "webhooks", "dispatch", "--port", "0"],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=log,
        )


def ready(settings: Settings) -> bool:
    """Both dispatchers are members of the group and every partition is assigned."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        group = admin.describe_groups([settings.webhook_group])[settings.webhook_group]
        return group["group_state"] == "Stable" and len(group["members"]) == 2
    except Exception:
        return False
    finally:
        admin.close()


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 20,000 deliveries; minutes on a busy two-core machine
def test_every_event_is_delivered_while_dispatchers_are_killed(kafka_bootstrap, tmp_path):
    prefix = f"k{uuid.uuid4().hex[:12]}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VELORA_")},
        "VELORA_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "VELORA_TOPIC_PREFIX": prefix,
        "VELORA_AUDIT_PARTITIONS": "6",
        "VELORA_STATE_DIR": str(tmp_path),
        "VELORA_CACHE_DIR": str(CACHE_DIR),
        "VELORA_WEBHOOKS_ALLOW_INSECURE_LOOPBACK": "1",
        "VELORA_WEBHOOKS_SESSION_TIMEOUT_MS": "6000",
        "VELORA_WEBHOOKS_RETRY_SCHEDULE": "1,2,2,2,2,2,2",
        "VELORA_LOG_LEVEL": "WARNING",
    }
    settings = Settings.from_env(env)
    ensure_topics(settings)
    rx = Receiver(verify=False).start()  # signatures are the signature tests' subject
    _, secret, _ = create_endpoint(settings, "acme", rx.url)
    rx.secrets.append(secret)
    procs = [dispatcher(env), dispatcher(env)]
    rng = random.Random(7)
    try:
        wait_for(lambda: ready(settings), timeout=120, interval=0.5, what="dispatchers joined")
        events = [make_event("acme", i) for i in range(EVENTS)]
        done = threading.Event()
        kills = []

        def killer() -> None:
            while not done.wait(rng.uniform(2.0, 5.0)):
                i = rng.randrange(2)
                procs[i].send_signal(signal.SIGKILL)
                procs[i].wait(10)
                kills.append(time.monotonic())
                procs[i] = dispatcher(env)

        from ingest.producer import AuditProducer

        producer = AuditProducer(settings)
        thread = threading.Thread(target=killer, daemon=True)
        started = time.monotonic()
        thread.start()
        try:
            futures = []
            for n in range(0, EVENTS, RATE // 10):
                futures += [producer.send(e) for e in events[n : n + RATE // 10]]
                time.sleep(max(0.0, started + (n + RATE // 10) / RATE - time.monotonic()))
            for f in futures:
                f.result(timeout=60)
        finally:
            producer.close()
        time.sleep(3)  # one more kill may land after the stream ends
        done.set()
        thread.join(30)
        wanted = {e.event_id for e in events}
        try:
            wait_for(lambda: rx.ids() >= wanted, timeout=1500, interval=0.5, what="every event")
        except AssertionError:
            missing = [i for i, e in enumerate(events) if e.event_id not in rx.ids()]
            raise AssertionError(
                f"{len(missing)} events never arrived, e.g. {missing[:20]}"
            ) from None
        received = Counter(e["id"] for e in rx.events())
        total = sum(received.values())
        duplicates = total - len(received)
        print(
            f"\n{EVENTS} events, {len(kills)} SIGKILLs: {total} deliveries, "
            f"{duplicates} duplicates (ratio {duplicates / EVENTS:.4f})"
        )
        assert len(kills) >= 3
        assert set(received) == wanted
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        rx.stop()

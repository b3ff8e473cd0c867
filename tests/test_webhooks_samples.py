"""The verification samples of docs/webhooks.md verify real deliveries, and refuse tampered ones.

A real dispatcher delivers to a real receiver; each captured request (raw body and
headers, during a rotation too) is handed to the Python and the Node sample.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.api_support import make_event
from tests.helpers import REPO, wait_for
from tests.webhook_support import (
    Receiver,
    create_endpoint,
    rotate_endpoint,
    running_dispatcher,
    send_events,
)

SAMPLES = [
    [sys.executable, "docs/samples/verify_webhook.py"],
    ["node", "docs/samples/verify_webhook.mjs"],
]


def run(cmd, request_path, secret):
    env = {"PATH": os.environ["PATH"], "VELORA_WEBHOOK_SECRET": secret}
    return subprocess.run(
        [*cmd, str(request_path)], env=env, capture_output=True, text=True, timeout=60, cwd=REPO
    )


@pytest.fixture(scope="module")
def captured(kafka_bootstrap, tmp_path_factory):
    import uuid

    from velora.settings import Settings
    from velora.topics import ensure_topics

    s = Settings.from_env(
        {},
        kafka_bootstrap=kafka_bootstrap,
        topic_prefix=f"v{uuid.uuid4().hex[:12]}",
        audit_partitions=2,
        webhooks_allow_insecure_loopback=True,
        webhooks_batch_max_wait_ms=100,
    )
    ensure_topics(s)
    rx, batch_rx = Receiver().start(), Receiver().start()
    try:
        record, old, _ = create_endpoint(s, "acme", rx.url)
        _, batch_secret, offset = create_endpoint(s, "acme", batch_rx.url, format="ndjson")
        with running_dispatcher(s) as d:
            d.wait_control(offset)
            send_events(s, [make_event("acme", 0)])
            wait_for(lambda: len(rx.received) >= 1 and batch_rx.received, timeout=90)
            _, new, offset = rotate_endpoint(s, record)
            d.wait_control(offset)
            send_events(s, [make_event("acme", 1)])
            wait_for(lambda: len(rx.received) >= 2, timeout=90)
    finally:
        rx.stop()
        batch_rx.stop()
    tmp = tmp_path_factory.mktemp("requests")
    out = {}
    for name, r in (
        ("plain", rx.received[0]),
        ("rotated", rx.received[1]),
        ("batch", batch_rx.received[0]),
    ):
        path = tmp / f"{name}.json"
        path.write_text(json.dumps({"headers": r.headers, "body": r.body.decode()}))
        bad = tmp / f"{name}-tampered.json"
        bad.write_text(
            json.dumps({"headers": r.headers, "body": r.body.decode().replace("acme", "acmf")})
        )
        out[name] = (path, bad, r)
    return out, old, new, batch_secret


@pytest.mark.parametrize("cmd", SAMPLES, ids=["python", "node"])
def test_samples_verify_real_deliveries_and_refuse_tampered_ones(captured, cmd):
    out, old, new, batch_secret = captured
    for name, secrets in (("plain", [old]), ("rotated", [old, new]), ("batch", [batch_secret])):
        path, bad, r = out[name]
        for secret in secrets:
            done = run(cmd, path, secret)
            assert done.returncode == 0, (name, done.stdout, done.stderr)
            ids = [e["id"] for e in r.envelopes]
            assert done.stdout.split() == [
                w for i in ids for w in ("verified", i, r.envelopes[ids.index(i)]["type"])
            ]
            refused = run(cmd, bad, secret)
            assert refused.returncode == 1 and "does not verify" in refused.stdout
    assert run(cmd, out["plain"][0], new).returncode == 1  # the new secret did not sign before

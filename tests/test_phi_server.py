"""Server-mode PHI end to end: tokenized at ingest, plaintext only on the way out.

A broker of this module's own is started so that the raw bytes of its log
segments can be scanned; ``velora node`` and ``velora ingest serve`` run as real
subprocesses (their log output is scanned too), the library path runs in process.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import httpx
import pyarrow.parquet as pq
import pytest
import uuid_utils

from cli.keys import create_key
from ingest.control import ControlWriter
from ingest.producer import AuditProducer
from ledger.control import ControlState
from phi.policy import PhiDirectory, PhiTransform
from phi.tokens import TOKEN_RE, is_token
from phi.wrap import KeysetWrapper
from schemas.events import Actor, AuditEvent, Outcome, Target
from tests.helpers import make_broker, wait_for
from tests.phi_support import (
    PHI,
    Service,
    api_list,
    files_under,
    leaks,
    phi_event,
    phi_settings,
    phi_stack,
    post_events,
    velora,
)
from tests.webhook_support import Receiver, create_endpoint, running_dispatcher

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory):
    state = tmp_path_factory.mktemp("phi-kafka")
    broker = make_broker(state)
    broker.start()
    try:
        yield broker.bootstrap, state
    finally:
        broker.stop()


def library_event(tenant: str) -> AuditEvent:
    now = datetime.now(UTC)
    return AuditEvent(
        event_id=str(uuid_utils.uuid7()),
        tenant_id=tenant,
        occurred_at=now,
        received_at=now,
        action="member.profile.viewed",
        actor=Actor("member", PHI["member_id"], PHI["name"], PHI["email"]),
        targets=(Target("patient", PHI["patient_id"], PHI["patient_name"]),),
        outcome=Outcome("success"),
        source="ehr-service",
        metadata={"mrn": PHI["mrn"]},
    )


def _list(node_url: str, token: str, **params: str) -> list[dict]:
    r = httpx.get(
        f"{node_url}/api/v2/public/audit/events",
        params={"limit": "100", "source": "ehr-service", **params},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return r.json()["events"]


SINCE = "2026-01-01T00:00:00+00:00"
FORMATS = ("json", "ndjson", "splunk_hec")


def _until() -> str:
    return (datetime.now(UTC) + timedelta(hours=1)).isoformat()


def _get(node_url: str, token: str, path: str, **params: str) -> httpx.Response:
    return httpx.get(
        f"{node_url}/api/v2/public{path}",
        params={"since": SINCE, "until": _until(), "source": "ehr-service", **params},
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )


def assert_plain_event(event: dict) -> None:
    """The PHI of an event of ``phi_event``/``library_event`` in plaintext."""
    assert event["actor"]["id"] == PHI["member_id"]
    assert event["actor"]["name"] == PHI["name"]
    assert event["actor"]["email"] == PHI["email"]
    assert event["targets"][0]["id"] == PHI["patient_id"]
    assert event["targets"][0]["name"] == PHI["patient_name"]
    assert event["metadata"]["mrn"] == PHI["mrn"]


def assert_exports_in_plaintext(node_url: str, token: str, events: int) -> None:
    """Streamed NDJSON, CSV and Parquet exports and an export job: PHI in plaintext."""
    plain = {"actor_id": PHI["member_id"]}  # a plain filter value, tokenized by the node
    r = _get(node_url, token, "/audit/export", format="ndjson", **plain)
    assert r.status_code == 200, r.text
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert len(lines) == events
    for event in lines:
        assert_plain_event(event)
    r = _get(node_url, token, "/audit/export", format="csv", **plain)
    assert r.status_code == 200, r.text
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == events
    for row in rows:
        assert (row["actor_id"], row["actor_name"], row["actor_email"]) == (
            PHI["member_id"], PHI["name"], PHI["email"])  # fmt: skip
        target = json.loads(row["targets"])[0]
        assert (target["id"], target["name"]) == (PHI["patient_id"], PHI["patient_name"])
        assert json.loads(row["metadata"])["mrn"] == PHI["mrn"]
    r = _get(node_url, token, "/audit/export", format="parquet", **plain)
    assert r.status_code == 200, r.text
    table = pq.read_table(io.BytesIO(r.content)).to_pylist()
    assert len(table) == events
    for row in table:
        assert_plain_event({**row, "metadata": dict(row["metadata"])})
    job = httpx.post(
        f"{node_url}/api/v2/public/audit/exports",
        params={"since": SINCE, "until": _until(), "source": "ehr-service", "format": "csv"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert job.status_code == 202, job.text
    status_url = f"{node_url}/api/v2/public/audit/exports/{job.json()['id']}"
    auth = {"Authorization": f"Bearer {token}"}

    def finished() -> dict | None:
        status = httpx.get(status_url, headers=auth, timeout=30).json()
        assert status["status"] != "failed", status
        return status if status["status"] == "done" else None

    done = wait_for(finished, timeout=60, what="the export job")
    download = httpx.get(done["download_url"], timeout=60)
    assert download.status_code == 200
    rows = list(csv.DictReader(io.StringIO(download.text)))
    assert [r["actor_email"] for r in rows] == [PHI["email"]] * events
    assert "tok_v1_" not in download.text


def assert_top_in_plaintext(node_url: str, token: str, events: int) -> None:
    """Analytics ``top`` actor and target keys in plaintext, a value counted once."""
    r = _get(node_url, token, "/analytics/top", dimension="actor")
    assert r.status_code == 200, r.text
    assert [(i["key"], i["count"]) for i in r.json()["items"]] == [(PHI["member_id"], events)]
    r = _get(node_url, token, "/analytics/top", dimension="target")
    assert r.status_code == 200, r.text
    items = {i["key"]: i["count"] for i in r.json()["items"]}
    assert items[PHI["patient_id"]] == events
    assert not [k for k in items if k.startswith("tok_v1_")]
    by_actor = _get(node_url, token, "/analytics/timeseries", actor_id=PHI["member_id"])
    assert by_actor.status_code == 200 and by_actor.json()["total"] == events


def test_server_mode_never_stores_or_logs_phi_and_serves_it_in_plaintext(
    own_broker, tmp_path: Path, caplog
) -> None:
    bootstrap, broker_dir = own_broker
    settings = phi_settings(bootstrap, tmp_path)
    caplog.set_level(logging.DEBUG)
    for name in ("kafka", "ingest", "ledger", "phi", "velora"):  # others may have raised them
        caplog.set_level(logging.DEBUG, logger=name)
    for tenant in ("acme", "globex"):
        out = velora(settings, "tenants", "set-phi-mode", tenant, "server", "--metadata-key", "mrn")
        assert out.returncode == 0, out.stderr
    shown = velora(settings, "tenants", "show", "acme")
    assert "PHI mode:          server" in shown.stdout and "mrn" in shown.stdout

    node = Service(settings, tmp_path / "node.log", "node")
    ingest = Service(settings, tmp_path / "ingest.log", "ingest", "serve")
    control = ControlState(settings)
    # webhook deliveries of every format, by a dispatcher in this process (its log is scanned)
    hooks = settings.with_overrides(
        webhooks_allow_insecure_loopback=True, webhooks_batch_max_wait_ms=100
    )
    receivers = {fmt: Receiver().start() for fmt in FORMATS}
    for fmt, rx in receivers.items():
        extra = {"splunk_token": "hec-token-0123456789"} if fmt == "splunk_hec" else {}
        _record, secret, _offset = create_endpoint(hooks, "acme", rx.url, format=fmt, **extra)
        rx.secrets.append(secret)
    dispatcher = running_dispatcher(hooks)
    dispatcher.__enter__()
    try:
        # the library path, composed as `velora ingest serve` composes it
        control.start()
        directory = PhiDirectory(
            control.tenant_settings,
            control.phi_keyset,
            KeysetWrapper(settings.secrets_key),
            control.caught_up,
        )
        with AuditProducer(settings, transform=PhiTransform(directory), timeout=15) as producer:
            results = producer.send_many([library_event("acme")])
            assert [type(r).__name__ for r in results] == ["Accepted"], results
        # the HTTP path (503 until the service's control state has caught up)
        first = wait_for(
            lambda: (r := post_events(ingest.url, [phi_event("acme", 1)])).status_code == 200 and r,
            timeout=60,
            what="ingest to accept",
        )
        assert first.status_code == 200
        assert post_events(ingest.url, [phi_event("globex", 2)]).status_code == 200

        acme_key = create_key(settings, "acme", ("audit:read",)).token
        globex_key = create_key(settings, "globex", ("audit:read",)).token
        events = wait_for(
            lambda: len(e := _list(node.url, acme_key)) >= 2 and e, timeout=90, what="2 events"
        )
        for event in events:  # plaintext out of the API
            assert event["actor"]["id"] == PHI["member_id"]
            assert event["actor"]["name"] == PHI["name"]
            assert event["actor"]["email"] == PHI["email"]
            assert event["targets"][0]["id"] == PHI["patient_id"]
            assert event["targets"][0]["name"] == PHI["patient_name"]
            assert event["metadata"]["mrn"] == PHI["mrn"]
        one = httpx.get(
            f"{node.url}/api/v2/public/audit/events/{events[0]['event_id']}",
            headers={"Authorization": f"Bearer {acme_key}"},
            timeout=30,
        ).json()
        assert one["actor"]["email"] == PHI["email"] and one["metadata"]["mrn"] == PHI["mrn"]
        # filters take plain values
        assert len(_list(node.url, acme_key, actor_id=PHI["member_id"])) == 2
        assert len(_list(node.url, acme_key, target_id=PHI["patient_id"])) == 2
        assert _list(node.url, acme_key, target_id=PHI["member_id"]) == []
        # cross-tenant: globex sees only its own event with the same values
        theirs = _list(node.url, globex_key, actor_id=PHI["member_id"])
        assert [e["tenant_id"] for e in theirs] == ["globex"]

        # rotation: old events still open, new ones use the new key, a filter finds both
        rotated = velora(settings, "tenants", "rotate-phi-key", "acme", "--json")
        assert rotated.returncode == 0, rotated.stderr
        new_kid = json.loads(rotated.stdout)["phi_primary_key_id"]
        wait_for(
            lambda: control.phi_keyset("acme").primary_kid == new_kid,
            timeout=20,
            what="the rotation to be folded",
        )
        with AuditProducer(settings, transform=PhiTransform(directory), timeout=15) as producer:
            results = producer.send_many([library_event("acme")])
            assert [type(r).__name__ for r in results] == ["Accepted"], results
        wait_for(lambda: len(_list(node.url, acme_key)) >= 3, timeout=60, what="3 events")
        found = _list(node.url, acme_key, actor_id=PHI["member_id"])
        assert len(found) == 3 and {e["actor"]["email"] for e in found} == {PHI["email"]}

        # exports and analytics top: plaintext, a plain filter finds events under both keys
        export_key = create_key(settings, "acme", ("audit:read", "audit:export")).token
        assert_exports_in_plaintext(node.url, export_key, 3)
        assert_top_in_plaintext(node.url, export_key, 3)
        # webhook deliveries, json, ndjson and Splunk HEC: plaintext, signatures verify
        ids = {e["event_id"] for e in found}
        for fmt, rx in receivers.items():
            wait_for(lambda rx=rx: rx.ids() >= ids, timeout=120, what=f"{fmt} deliveries")
            assert all(r.stripe_ok and r.standard_ok for r in rx.received), fmt
            delivered = [e for e in rx.events() if e["id"] in ids]
            assert {e["tenant_id"] for e in rx.events()} == {"acme"}
            for envelope in delivered:
                assert_plain_event(envelope["data"])
            assert b"tok_v1_" not in b"".join(r.body for r in rx.received)
    finally:
        dispatcher.__exit__(None, None, None)
        for rx in receivers.values():
            rx.stop()
        control.stop()
        ingest.stop()
        node.stop()

    # the scan: raw broker files, DuckDB file and WAL, both services' logs, in-process logs
    db = settings.duckdb_path
    blobs = {str(p): p.read_bytes() for p in files_under(broker_dir, db, Path(f"{db}.wal"))}
    blobs["node log"] = node.output().encode()
    blobs["ingest log"] = ingest.output().encode()
    # in-process: the library producer and control follower (not this test's own HTTP client,
    # whose request lines carry the plain filter values it sends)
    ours = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    assert len(ours) > 100
    blobs["in-process log"] = "\n".join(f"{r.name} {r.getMessage()}" for r in ours).encode()
    client = [r.getMessage() for r in caplog.records if r.name.startswith("httpx")]
    assert any(PHI["member_id"] in m for m in client)  # the scan would see a leak
    assert any(p.endswith(".log") and "-0" in p for p in blobs), "no log segment was scanned"
    assert sum(len(b) for b in blobs.values()) > 10_000
    assert leaks(blobs, list(PHI.values())) == []
    assert b"ehr-service" in b"".join(v for k, v in blobs.items() if k.endswith(".log"))

    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute(
            "SELECT tenant_id, actor_id, actor_email, targets[1].id, metadata['mrn'], "
            "targets[2].id FROM audit_events WHERE tenant_id IN ('acme', 'globex') "
            "AND source = 'ehr-service' ORDER BY occurred_at"
        ).fetchall()
    assert len(rows) == 4  # acme: library, HTTP, library after rotation; globex: HTTP
    assert sum(1 for r in rows if r[5] is not None) == 2  # the HTTP events' documents
    for _tenant, actor_id, email, patient, mrn, doc in rows:
        assert all(is_token(v) for v in (actor_id, email, patient, mrn))
        assert doc is None or doc.startswith("DOC-")  # a document is not PHI: stored as given
    acme_ids = {r[1] for r in rows if r[0] == "acme"}
    globex_ids = {r[1] for r in rows if r[0] == "globex"}
    assert len(acme_ids) == 2 and not acme_ids & globex_ids  # two keys; tenants differ
    kids = {TOKEN_RE.fullmatch(v).group(1) for v in acme_ids}
    assert len(kids) == 2


def test_nothing_leaks_and_deliveries_wait_while_a_server_keyset_cannot_be_read(
    kafka_bootstrap, tmp_path: Path, caplog
) -> None:
    """Fault injection: the tenant's wrapped keyset on the control topic stops opening.

    Every read answers 503 (no tokens, no PHI), and the webhook delivery of an event
    already in the log is held back and retried (never sent with tokens) until the
    keyset opens again, when it arrives in plaintext.
    """
    settings = phi_settings(kafka_bootstrap, tmp_path).with_overrides(
        webhooks_allow_insecure_loopback=True,
        webhooks_retry_schedule=(0.3, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5),
        webhooks_batch_max_wait_ms=100,
    )
    caplog.set_level(logging.INFO)
    assert velora(settings, "tenants", "set-phi-mode", "acme", "server",
                  "--metadata-key", "mrn").returncode == 0  # fmt: skip
    rx = Receiver().start()
    _record, secret, _ = create_endpoint(settings, "acme", rx.url)
    rx.secrets.append(secret)
    with phi_stack(settings) as (node_url, ingest_url, control):
        key = create_key(settings, "acme", ("audit:read", "audit:export")).token
        wait_for(lambda: post_events(ingest_url, [phi_event("acme", 1)]).status_code == 200,
                 timeout=60, what="ingest to accept")  # fmt: skip
        (event,) = wait_for(lambda: api_list(node_url, key), timeout=60, what="the event")
        assert_plain_event(event)
        good = control.phi_keyset("acme")
        broken = replace(good, wrapped="v1." + "A" * 80, updated_at=datetime.now(UTC))
        with ControlWriter(settings) as writer:
            writer.put_phi_keyset(broken)
        wait_for(lambda: control.phi_keyset("acme") == broken, timeout=20, what="the fold")

        def refused(r: httpx.Response) -> bool:
            body = r.content
            assert b"tok_v1_" not in body and leaks({"b": body}, list(PHI.values())) == []
            return r.status_code == 503 and r.json()["error"]["type"] == "unavailable"

        auth = {"Authorization": f"Bearer {key}"}
        wait_for(lambda: refused(httpx.get(f"{node_url}/api/v2/public/audit/events",
                                           headers=auth, timeout=30)),
                 timeout=30, what="the list to refuse")  # fmt: skip
        one = httpx.get(f"{node_url}/api/v2/public/audit/events/{event['event_id']}",
                        headers=auth, timeout=30)  # fmt: skip
        assert refused(one)
        for fmt in ("ndjson", "csv", "parquet"):
            assert refused(_get(node_url, key, "/audit/export", format=fmt))
        assert refused(_get(node_url, key, "/analytics/top", dimension="actor"))
        assert post_events(ingest_url, [phi_event("acme", 2)]).status_code == 503

        with running_dispatcher(settings) as d:
            counters = d.service.dispatcher.counters
            wait_for(lambda: sum(c["retries_scheduled"] for c in counters.values()) >= 3,
                     timeout=90, what="attempts held back")  # fmt: skip
            assert rx.received == []  # nothing was sent: no tokens where plaintext is due
            with ControlWriter(settings) as writer:
                writer.put_phi_keyset(replace(good, updated_at=datetime.now(UTC)))
            wait_for(lambda: rx.ids() >= {event["event_id"]}, timeout=90, what="the delivery")
        assert all(r.stripe_ok and r.standard_ok for r in rx.received)
        # the reads above are in the trail too (audit_log.viewed), retried beside it:
        # deliveries across a retry come in no set order
        (delivered,) = {e["id"]: e for e in rx.events() if e["id"] == event["event_id"]}.values()
        assert_plain_event(delivered["data"])
        assert all(b"tok_v1_" not in r.body for r in rx.received)
        assert api_list(node_url, key)[0]["actor"]["email"] == PHI["email"]
    rx.stop()
    logged = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records
                       if not r.name.startswith(("httpx", "httpcore")))  # fmt: skip
    assert "PHI keyset of tenant acme" in logged
    assert leaks({"log": logged.encode()}, list(PHI.values())) == []

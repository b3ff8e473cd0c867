"""Server-mode PHI end to end: tokenized at ingest, plaintext only on the way out.

A broker of this module's own is started so that the raw bytes of its log
segments can be scanned; ``velora node`` and ``velora ingest serve`` run as real
subprocesses (their log output is scanned too), the library path runs in process.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import httpx
import pytest
import uuid_utils

from cli.keys import create_key
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
    files_under,
    leaks,
    phi_event,
    phi_settings,
    post_events,
    velora,
)

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
            lambda: (r := post_events(ingest.url, [phi_event("acme", 1)])).status_code == 200
            and r,
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
    finally:
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


"""Sidecar-mode: the tokenizing API proxy and the webhook relay, end to end, failing closed."""

from __future__ import annotations

import csv
import io
import json
import time
from contextlib import contextmanager
from datetime import UTC, datetime

import httpx
import pyarrow.parquet as pq
import pytest

from cli.keys import create_key
from cli.tenants import set_phi_mode
from phi.fields import map_event
from phi.keyset import Keyset
from phi.tokens import Tokenizer, is_token
from schemas.events import AuditEvent
from sidecar.app import create_sidecar_app
from sidecar.rewrite import Rewriter
from tests.api_support import live_server
from tests.helpers import wait_for
from tests.phi_support import (
    PHI,
    api_list,
    files_under,
    leaks,
    phi_event,
    phi_settings,
    phi_stack,
    post_events,
)
from webhooks.envelope import batch_id, body, event_envelope
from webhooks.receiver import receiver_app, verify
from webhooks.secrets import new_signing_secret
from webhooks.signing import signature_headers

VELORA_SECRET = new_signing_secret()
RELAY_SECRET = new_signing_secret()


@contextmanager
def sidecar(tok, upstream: str, siem_url: str | None = None, transport=None):
    app = create_sidecar_app(
        Rewriter(tok, ["mrn"]),
        upstream,
        velora_secret=VELORA_SECRET,
        relay_secret=RELAY_SECRET,
        siem_url=siem_url,
        transport=transport,
    )
    with live_server(app) as url:
        yield url


class Siem:
    """A SIEM receiver (Velora's own reference receiver) holding the relay's local secret."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict, list[dict]]] = []
        self.raw = io.StringIO()
        self.app = receiver_app([RELAY_SECRET], self.raw, self._on)

    def _on(self, headers, envelopes) -> None:
        self.deliveries.append((dict(headers), envelopes))


def tokenized(tok: Tokenizer, event: dict) -> dict:
    return map_event(event, lambda v, d, _p: tok.tokenize(v, d), ["mrn"])


def delivery(events: list[dict]) -> tuple[bytes, dict[str, str]]:
    """A delivery as the dispatcher makes it: ndjson envelopes, both signatures."""
    envelopes, times = [], []
    for e in events:
        record = {**e, "occurred_at": datetime.fromisoformat(e["occurred_at"]),
                  "received_at": datetime.now(UTC)}  # fmt: skip
        envelopes.append(event_envelope(AuditEvent.from_avro(record)))
        times.append(datetime.now(UTC))
    data = body("ndjson", envelopes, times)
    wid = batch_id("we_test", [e["event_id"] for e in events])
    headers = signature_headers([VELORA_SECRET], wid, data, int(time.time()))
    headers["content-type"] = "application/x-ndjson"
    return data, headers


RANGE = {"since": "2026-07-01T00:00:00+00:00", "until": "2027-06-01T00:00:00+00:00",
         "source": "ehr-service"}  # fmt: skip


def exported_through_the_sidecar(side: str, key: str) -> None:
    """Every export format through the sidecar: PHI in plaintext, plain filter values."""
    auth = {"Authorization": f"Bearer {key}"}
    params = {**RANGE, "actor_id": PHI["member_id"]}
    url = f"{side}/api/v2/public/audit/export"
    with httpx.stream("GET", url, params={**params, "format": "ndjson"}, headers=auth,
                      timeout=30) as r:  # fmt: skip
        assert r.status_code == 200 and "content-length" not in r.headers  # streamed
        (event,) = [json.loads(line) for line in r.iter_lines() if line]
    assert event["actor"]["email"] == PHI["email"] and event["metadata"]["mrn"] == PHI["mrn"]
    r = httpx.get(url, params={**params, "format": "csv"}, headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    (row,) = csv.DictReader(io.StringIO(r.text))
    assert (row["actor_id"], row["actor_email"]) == (PHI["member_id"], PHI["email"])
    assert json.loads(row["targets"])[0]["name"] == PHI["patient_name"]
    assert json.loads(row["metadata"]) == {"mrn": PHI["mrn"], "ward": "4"}
    r = httpx.get(url, params={**params, "format": "parquet"}, headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    (row,) = pq.read_table(io.BytesIO(r.content)).to_pylist()
    assert row["actor"]["name"] == PHI["name"] and dict(row["metadata"])["mrn"] == PHI["mrn"]
    job = httpx.post(f"{side}/api/v2/public/audit/exports",
                     params={**params, "format": "ndjson"}, headers=auth, timeout=30)  # fmt: skip
    assert job.status_code == 202, job.text
    assert job.json()["filters"]["actor_id"] == PHI["member_id"]

    def done() -> dict | None:
        status = httpx.get(f"{side}/api/v2/public/audit/exports/{job.json()['id']}",
                           headers=auth, timeout=30).json()  # fmt: skip
        return status if status["status"] == "done" else None

    link = wait_for(done, timeout=60, what="the export job")["download_url"]
    assert link.startswith(side + "/")  # the download comes through the sidecar too
    (line,) = httpx.get(link, timeout=30).text.splitlines()
    assert json.loads(line)["targets"][0]["id"] == PHI["patient_id"]


def test_sidecar_end_to_end_plain_for_the_customer_tokens_for_velora(kafka_bootstrap, tmp_path):
    s = phi_settings(kafka_bootstrap, tmp_path)
    set_phi_mode(s, "acme", "sidecar", ("mrn",))
    keyset = Keyset.generate("acme")
    tok = Tokenizer(keyset)
    siem = Siem()
    with phi_stack(s) as (node_url, ingest_url, control), live_server(siem.app) as siem_url:
        wait_for(lambda: control.tenant_settings("acme") is not None, timeout=20)
        assert post_events(ingest_url, [phi_event("acme", 1)]).status_code == 422  # raw: refused
        first = tokenized(tok, phi_event("acme", 1))
        assert post_events(ingest_url, [first]).status_code == 200
        api_key = create_key(s, "acme", ("audit:read",)).token
        wait_for(lambda: api_list(node_url, api_key), timeout=60, what="the event")
        auth = {"Authorization": f"Bearer {api_key}"}
        with sidecar(tok, node_url, siem_url + "/siem") as side:
            plain = {"actor_id": PHI["member_id"], "source": "ehr-service"}
            r = httpx.get(f"{side}/api/v2/public/audit/events", params=plain, headers=auth)
            assert r.status_code == 200, r.text
            (event,) = r.json()["events"]
            assert event["actor"]["email"] == PHI["email"]
            assert event["targets"][0]["name"] == PHI["patient_name"]
            assert event["metadata"]["mrn"] == PHI["mrn"]
            one = httpx.get(f"{side}/api/v2/public/audit/events/{event['event_id']}",
                            headers=auth, timeout=30).json()  # fmt: skip
            assert one["actor"]["id"] == PHI["member_id"]
            by_patient = {"target_id": PHI["patient_id"], "source": "ehr-service"}
            by_target = httpx.get(
                f"{side}/api/v2/public/audit/events", headers=auth, params=by_patient
            )
            assert [e["event_id"] for e in by_target.json()["events"]] == [event["event_id"]]
            # Velora itself returns tokens
            direct = api_list(node_url, api_key)
            assert is_token(direct[0]["actor"]["email"]) and PHI["email"] not in json.dumps(direct)

            # the relay: Velora's signature checked, plaintext re-signed for the SIEM
            data, headers = delivery([first])
            relayed = httpx.post(f"{side}/webhooks/relay", content=data, headers=headers)
            assert relayed.status_code == 200, relayed.text
            ((siem_headers, envelopes),) = siem.deliveries
            assert envelopes[0]["data"]["actor"]["email"] == PHI["email"]
            assert envelopes[0]["data"]["metadata"]["mrn"] == PHI["mrn"]
            assert siem_headers["webhook-id"] == headers["webhook-id"]
            assert "REFUSED" not in siem.raw.getvalue()
            forged = dict(headers, **{"Velora-Signature": "t=1,v1=00"})
            assert httpx.post(f"{side}/webhooks/relay", content=data,
                              headers=forged).status_code == 401  # fmt: skip
            assert len(siem.deliveries) == 1

            # exports (streamed NDJSON and CSV, Parquet, an export job) and top keys
            export_key = create_key(s, "acme", ("audit:read", "audit:export")).token
            exported_through_the_sidecar(side, export_key)
            top = httpx.get(f"{side}/api/v2/public/analytics/top",
                            params={**RANGE, "dimension": "actor"},
                            headers=auth, timeout=30)  # fmt: skip
            assert top.status_code == 200, top.text
            assert [(i["key"], i["count"]) for i in top.json()["items"]] == [(PHI["member_id"], 1)]
            top = httpx.get(f"{side}/api/v2/public/analytics/top",
                            params={**RANGE, "dimension": "target"},
                            headers=auth, timeout=30)  # fmt: skip
            assert {i["key"] for i in top.json()["items"]} == {PHI["patient_id"], "DOC-1"}

        # rotation: the customer's key; a plain filter finds events under both keys
        rotated = Tokenizer(keyset.rotate())
        second = tokenized(rotated, phi_event("acme", 2))
        assert post_events(ingest_url, [second]).status_code == 200
        wait_for(lambda: len(api_list(node_url, api_key)) == 2, timeout=60, what="2 events")
        with sidecar(rotated, node_url) as side:
            plain = {"actor_id": PHI["member_id"], "source": "ehr-service"}
            both = httpx.get(
                f"{side}/api/v2/public/audit/events", headers=auth, params=plain
            ).json()
            assert len(both["events"]) == 2
            assert {e["actor"]["name"] for e in both["events"]} == {PHI["name"]}
            top = httpx.get(f"{side}/api/v2/public/analytics/top",
                            params={**RANGE, "dimension": "actor"},
                            headers=auth, timeout=30)  # fmt: skip
            # the value's tokens under the two keys are one key through the sidecar
            assert [(i["key"], i["count"]) for i in top.json()["items"]] == [(PHI["member_id"], 2)]
    # the Velora side never held plaintext: raw topic records and the DuckDB file
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(s.audit_topic, bootstrap_servers=s.kafka_bootstrap,
                             auto_offset_reset="earliest", consumer_timeout_ms=3000)  # fmt: skip
    values = b"".join(r.value for r in consumer)
    consumer.close()
    assert values.count(b"ehr-service") >= 2  # the events (and the read audits naming the filter)
    wal = s.duckdb_path.with_name(s.duckdb_path.name + ".wal")
    stored = {str(p): p.read_bytes() for p in files_under(s.duckdb_path, wal)}
    assert leaks({"topic": values, **stored}, list(PHI.values())) == []


class Broken:
    """A tokenizer that fails the way a bad deployment would."""

    def __init__(self, real: Tokenizer, mode: str) -> None:
        self.real, self.mode = real, mode

    def search_tokens(self, value, domain):
        if self.mode == "search":
            raise RuntimeError("keystore unavailable")
        if self.mode == "search-plain":
            return [value]  # would send the plain value to Velora
        return self.real.search_tokens(value, domain)

    def detokenize(self, token, domain, where="token"):
        if self.mode == "open":
            raise OSError("keystore unavailable")
        if self.mode == "open-token":
            return token  # would hand a token where plaintext is due
        return self.real.detokenize(token, domain, where)


@pytest.mark.parametrize("mode", ["search", "search-plain", "open", "open-token", "other-tenant"])
def test_tokenizer_failures_fail_closed_with_502(mode) -> None:
    real = Tokenizer(Keyset.generate("acme"))
    event = tokenized(real, phi_event("acme", 1))
    sent: list[httpx.Request] = []

    def velora(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"events": [event], "page": {"next_cursor": None}})

    tok = Tokenizer(Keyset.generate("other")) if mode == "other-tenant" else Broken(real, mode)
    siem = Siem()
    with (
        live_server(siem.app) as siem_url,
        sidecar(tok, "http://velora.invalid", siem_url, httpx.MockTransport(velora)) as side,
    ):
        r = httpx.get(f"{side}/api/v2/public/audit/events",
                      params={"actor_id": PHI["member_id"]}, timeout=30)  # fmt: skip
        assert r.status_code == 502
        err = r.json()["error"]
        assert err["type"] == "bad_gateway" and err["details"][0]["field"]
        text = r.text
        assert "tok_v1_" not in text and leaks({"body": r.content}, list(PHI.values())) == []
        if mode.startswith("search"):
            assert sent == []  # nothing went to Velora
        if not mode.startswith("search"):
            data, headers = delivery([event])
            relayed = httpx.post(f"{side}/webhooks/relay", content=data, headers=headers)
            assert relayed.status_code == 502 and "tok_v1_" not in relayed.text
            assert siem.deliveries == []


def test_answers_the_sidecar_cannot_place_are_refused() -> None:
    tok = Tokenizer(Keyset.generate("acme"))
    token = tok.tokenize(PHI["member_id"], "member_id")

    def velora(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/top"):  # a dimension the sidecar does not know
            return httpx.Response(200, json={"dimension": "x", "items": [{"key": token}]})
        return httpx.Response(200, text=f"event_id,actor_id\ne1,{token}\n",
                              headers={"content-type": "text/csv"})  # fmt: skip

    with sidecar(tok, "http://velora.invalid", None, httpx.MockTransport(velora)) as side:
        for path in ("/api/v2/public/audit/analytics/top", "/api/v2/public/audit/export"):
            r = httpx.get(side + path, timeout=30)
            assert r.status_code == 502 and token not in r.text
        dead = httpx.post(f"{side}/webhooks/relay", content=b"{}")
        assert dead.status_code == 502  # relay not configured: nothing forwarded


class Chunks(httpx.AsyncByteStream):
    """An upstream body that arrives one record at a time."""

    def __init__(self, parts: list[bytes]) -> None:
        self.parts = parts

    async def __aiter__(self):
        for part in self.parts:
            yield part


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_a_streamed_export_fails_closed_before_and_after_its_first_bytes(fmt) -> None:
    """A token that does not open: 502 if it is in the first record, else the stream is cut
    short, and no token and no later plaintext reach the caller."""
    real = Tokenizer(Keyset.generate("acme"))
    other = Tokenizer(Keyset.generate("other"))
    good = tokenized(real, phi_event("acme", 1))
    bad = tokenized(other, phi_event("acme", 2, email="second@example.org"))

    def lines(events: list[dict]) -> list[bytes]:
        if fmt == "ndjson":
            return [json.dumps(e).encode() + b"\n" for e in events]
        head = b"actor_type,actor_id,actor_name,actor_email,targets,metadata\n"
        return [head] + [
            ",".join('"' + str(v).replace('"', '""') + '"' for v in (
                e["actor"]["type"], e["actor"]["id"], e["actor"]["name"], e["actor"]["email"],
                json.dumps(e["targets"]), json.dumps(e["metadata"]))).encode() + b"\n"
            for e in events
        ]  # fmt: skip

    bodies = {"first": lines([bad, good]), "later": lines([good] * 3 + [bad, good])}
    media = "application/x-ndjson" if fmt == "ndjson" else "text/csv; charset=utf-8"

    def velora(request: httpx.Request) -> httpx.Response:
        which = request.url.params["which"]
        return httpx.Response(200, stream=Chunks(bodies[which]),
                              headers={"content-type": media})  # fmt: skip

    with sidecar(real, "http://velora.invalid", None, httpx.MockTransport(velora)) as side:
        url = f"{side}/api/v2/public/audit/export"
        first = httpx.get(url, params={"which": "first"}, timeout=30)
        assert first.status_code == 502 and "tok_v1_" not in first.text
        received = b""
        with pytest.raises(httpx.HTTPError):
            with httpx.stream("GET", url, params={"which": "later"}, timeout=30) as r:
                assert r.status_code == 200
                for chunk in r.iter_raw():
                    received += chunk
        assert b"tok_v1_" not in received and b"second@example.org" not in received
        assert PHI["email"].encode() in received  # the records before the bad one


def test_the_relay_output_verifies_with_the_local_secret_only() -> None:
    tok = Tokenizer(Keyset.generate("acme"))
    out = Rewriter(tok, ["mrn"]).delivery(delivery([tokenized(tok, phi_event("acme", 3))])[0])
    headers = signature_headers([RELAY_SECRET], "wid", out, int(time.time()))
    assert verify(out, headers, [RELAY_SECRET]) is None
    assert verify(out, headers, [VELORA_SECRET]) is not None
    assert PHI["email"].encode() in out and b"tok_v1_" not in out

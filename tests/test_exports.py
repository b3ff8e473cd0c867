"""Exports: streamed NDJSON/CSV/Parquet and export jobs round-trip to the list API's rows."""

from __future__ import annotations

import csv
import io
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import duckdb
import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from query_api import exports
from query_api.export_jobs import sign
from query_api.exports import CSV_COLUMNS, PARQUET_SCHEMA
from schemas.codec import AvroCodec
from schemas.events import Actor, AuditEvent, Outcome, Target
from tests.api_support import BASE, Api, insert_events, make_event, running_api
from tests.helpers import wait_for

EXPORT = "/api/v2/public/audit/export"
JOBS = "/api/v2/public/audit/exports"
EVENTS = "/api/v2/public/audit/events"
WINDOW = {"since": "2025-03-01T00:00:00Z", "until": "2025-03-02T00:00:00Z"}


def _odd(i: int) -> AuditEvent:
    """Events with every optional field set or null, several targets, metadata, micros."""
    at = BASE + timedelta(seconds=i // 2, microseconds=(i * 7919) % 1_000_000 if i % 3 else 0)
    return AuditEvent(
        event_id=f"00000000-0000-7000-8000-{i:012d}",
        tenant_id="acme",
        occurred_at=at,
        received_at=at + timedelta(microseconds=1),
        action=("claim.viewed", "member.exported", "claim.updated")[i % 3],
        crud="read",
        category=None if i % 2 else "claims",
        actor=Actor(
            type="user",
            id=f"usr_{i % 4}",
            name=None if i % 5 else 'Zoë "Q" Åström, MD',
            email="z@example.test" if i % 2 else None,
            ip="2001:db8::1" if i % 3 else None,
            user_agent="Mozilla/5.0, (X11)\nLinux" if i % 7 == 0 else None,
        ),
        targets=tuple(
            Target("claim", f"CLM-{(i + k) % 9}", "n,1" if k else None) for k in range(i % 3)
        ),
        outcome=Outcome("failure" if i % 4 == 0 else "success", "policy" if i % 4 == 0 else None),
        request_id=None if i % 2 else f"req-{i}",
        source="claims-service",
        metadata={"k": "v,1", "quote": '"'} if i % 2 else {},
    )


@pytest.fixture
def api(settings):
    with running_api(settings) as api:
        insert_events(api.reader, [_odd(i) for i in range(120)])
        insert_events(api.reader, [make_event("globex", i) for i in range(20)], start_offset=500)
        yield api


def _list_api(api: Api, token: str, params: dict) -> list[dict]:
    """Every page of the list API, oldest first (as an export orders them)."""
    got: list[dict] = []
    query = {**params, "limit": 1000}
    while True:
        body = api.get(EVENTS, token, params=query).json()
        got.extend(body["events"])
        if body["page"]["next_cursor"] is None:
            return got[::-1]
        query["cursor"] = body["page"]["next_cursor"]


def _flat(e: dict) -> dict:
    """The documented CSV row of an event (as Python's csv reads it: text, '' for null)."""
    row = {
        "event_id": e["event_id"],
        "tenant_id": e["tenant_id"],
        "occurred_at": e["occurred_at"],
        "received_at": e["received_at"],
        "action": e["action"],
        "crud": e["crud"],
        "category": e["category"],
        **{f"actor_{k}": v for k, v in e["actor"].items()},
        "targets": json.dumps(e["targets"], separators=(",", ":")),
        "outcome_result": e["outcome"]["result"],
        "outcome_reason": e["outcome"]["reason"],
        "request_id": e["request_id"],
        "source": e["source"],
        "metadata": json.dumps(e["metadata"], separators=(",", ":")),
        "schema_version": str(e["schema_version"]),
    }
    return {k: "" if v is None else v for k, v in row.items()}


def _from_parquet(r: dict) -> dict:
    """A Parquet row in the list API's JSON shape."""
    return {
        **r,
        "occurred_at": r["occurred_at"].isoformat(),
        "received_at": r["received_at"].isoformat(),
        "metadata": dict(r["metadata"]),
    }


FILTERS = [{}, {"action": "claim.*"}, {"actor_id": "usr_1"}, {"target_id": "CLM-4"},
           {"outcome": "failure", "since": "2025-03-01T12:00:20Z"}]  # fmt: skip


@pytest.mark.parametrize("small_slices", [False, True], ids=["one-slice", "many-slices"])
def test_each_format_round_trips_to_the_list_api_rows(api: Api, monkeypatch, small_slices):
    if small_slices:
        monkeypatch.setattr(exports, "SLICE_EVENTS", 7)
    key = api.issue("acme", ("audit:read", "audit:export"))
    for filters in FILTERS:
        params = {**WINDOW, **filters}
        listed = _list_api(api, key.token, params)
        assert listed, filters
        ndjson = api.get(EXPORT, key.token, params={**params, "format": "ndjson"})
        assert ndjson.status_code == 200, ndjson.text
        assert ndjson.headers["content-type"] == "application/x-ndjson"
        lines = ndjson.text.splitlines()
        assert [json.loads(line) for line in lines] == listed
        assert ndjson.text.endswith("\n")

        got_csv = api.get(EXPORT, key.token, params={**params, "format": "csv"})
        assert got_csv.headers["content-type"] == "text/csv; charset=utf-8"
        reader = csv.DictReader(io.StringIO(got_csv.text, newline=""))
        assert reader.fieldnames == [name for name, _ in CSV_COLUMNS]
        assert list(reader) == [_flat(e) for e in listed]

        got_pq = api.get(EXPORT, key.token, params={**params, "format": "parquet"})
        table = pq.read_table(io.BytesIO(got_pq.content))
        assert table.schema.equals(PARQUET_SCHEMA)
        assert table.schema.field("occurred_at").type == pa.timestamp("us", tz="UTC")
        assert [_from_parquet(r) for r in table.to_pylist()] == listed


def test_order_is_stable_oldest_first_then_event_id(api: Api):
    key = api.issue("acme", ("audit:export",))
    events = [json.loads(x) for x in api.get(EXPORT, key.token, params=WINDOW).text.splitlines()]
    keys = [(datetime.fromisoformat(e["occurred_at"]), e["event_id"]) for e in events]
    assert keys == sorted(keys) and len(keys) == 120
    assert {e["tenant_id"] for e in events} == {"acme"}


def test_filename_and_empty_exports(api: Api):
    key = api.issue("acme", ("audit:export",))
    empty = {"since": "2024-01-01T00:00:00Z", "until": "2024-01-02T00:00:00Z"}
    for fmt, ext in (("ndjson", "ndjson"), ("csv", "csv"), ("parquet", "parquet")):
        resp = api.get(EXPORT, key.token, params={**empty, "format": fmt})
        assert resp.status_code == 200
        assert resp.headers["content-disposition"] == (
            f'attachment; filename="velora-audit-acme-20240101T000000Z-20240102T000000Z.{ext}"'
        )
        if fmt == "ndjson":
            assert resp.content == b""
        elif fmt == "csv":
            assert next(csv.reader(io.StringIO(resp.text))) == [n for n, _ in CSV_COLUMNS]
        else:
            table = pq.read_table(io.BytesIO(resp.content))
            assert table.num_rows == 0 and table.schema.equals(PARQUET_SCHEMA)


def test_scope_and_bad_input(api: Api):
    reader = api.issue("acme", ("audit:read",))
    for call in (
        lambda: api.get(EXPORT, reader.token, params=WINDOW),
        lambda: api.client.post(
            JOBS, params=WINDOW, headers={"Authorization": f"Bearer {reader.token}"}
        ),
        lambda: api.get(f"{JOBS}/exp_{'0' * 32}", reader.token),
    ):
        resp = call()
        assert resp.status_code == 403
        assert resp.json()["error"]["details"] == [
            {"field": "scope", "reason": "requires audit:export"}
        ]
    key = api.issue("acme", ("audit:export",))
    for params, field in (
        ({**WINDOW, "format": "xlsx"}, "format"),
        ({"since": WINDOW["since"]}, "until"),
        ({"since": WINDOW["until"], "until": WINDOW["since"]}, "until"),
        ({"since": "2020-01-01T00:00:00Z", "until": WINDOW["until"]}, "until"),
        ({**WINDOW, "limit": "5"}, "limit"),
    ):
        for resp in (
            api.get(EXPORT, key.token, params=params),
            api.client.post(JOBS, params=params, headers={"Authorization": f"Bearer {key.token}"}),
        ):
            assert resp.status_code == 422, resp.text
            assert resp.json()["error"]["details"][0]["field"] == field


def _wait_done(api: Api, token: str, job_id: str) -> dict:
    def done():
        body = api.get(f"{JOBS}/{job_id}", token).json()
        return body if body["status"] in ("done", "failed") else None

    return wait_for(done, timeout=30, what="export job")


def test_export_job_lifecycle_signed_download_and_tenancy(api: Api):
    key = api.issue("acme", ("audit:read", "audit:export"))
    resp = api.client.post(
        JOBS,
        params={**WINDOW, "format": "csv", "action": "claim.*"},
        headers={"Authorization": f"Bearer {key.token}"},
    )
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["id"].startswith("exp_") and job["status"] in ("queued", "running", "done")
    assert resp.headers["location"] == f"{JOBS}/{job['id']}"
    body = _wait_done(api, key.token, job["id"])
    listed = _list_api(api, key.token, {**WINDOW, "action": "claim.*"})
    assert body["status"] == "done" and body["rows"] == len(listed) == 80
    assert body["filters"] == {"action": "claim.*"} and body["format"] == "csv"
    url = body["download_url"]
    assert url.startswith(api.base_url) and datetime.fromisoformat(
        body["expires_at"]
    ) > datetime.now(UTC)

    got = httpx.get(url)  # no Authorization header: the signature is the credential
    assert got.status_code == 200
    assert list(csv.DictReader(io.StringIO(got.text, newline=""))) == [_flat(e) for e in listed]
    assert "velora-audit-acme-" in got.headers["content-disposition"]

    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    base = f"{api.base_url}{parts.path}"
    tampered = {
        **query,
        "signature": query["signature"][:-2] + ("AA" if query["signature"][-2:] != "AA" else "BB"),
    }
    past = int(time.time()) - 1
    expired = {
        "expires": past,
        "signature": sign(api.settings.cursor_secret, "acme", job["id"], past),
    }
    later = {**query, "expires": str(int(query["expires"]) + 3600)}
    for params in (tampered, expired, later, {}):
        bad = httpx.get(base, params=params)
        assert bad.status_code == 404, params
        assert bad.json()["error"]["type"] == "not_found"

    other = api.issue("globex", ("audit:export",))
    assert api.get(f"{JOBS}/{job['id']}", other.token).status_code == 404
    assert api.get(f"{JOBS}/exp_{'0' * 32}", key.token).status_code == 404


def test_parquet_and_ndjson_jobs_match_their_streams(api: Api):
    key = api.issue("acme", ("audit:export",))
    for fmt in ("ndjson", "parquet"):
        created = api.client.post(
            JOBS, params={**WINDOW, "format": fmt}, headers={"Authorization": f"Bearer {key.token}"}
        ).json()
        body = _wait_done(api, key.token, created["id"])
        assert body["rows"] == 120
        streamed = api.get(EXPORT, key.token, params={**WINDOW, "format": fmt}).content
        downloaded = httpx.get(body["download_url"]).content
        if fmt == "ndjson":
            assert downloaded == streamed
        else:
            assert pq.read_table(io.BytesIO(downloaded)).equals(pq.read_table(io.BytesIO(streamed)))


def test_every_export_is_recorded_in_the_trail(api: Api):
    settings = api.settings
    key = api.issue("acme", ("audit:export",))
    assert (
        api.get(
            EXPORT, key.token, params={**WINDOW, "action": "claim.*", "format": "csv"}
        ).status_code
        == 200
    )
    job = api.client.post(
        JOBS,
        params={**WINDOW, "actor_id": "usr_2"},
        headers={"Authorization": f"Bearer {key.token}"},
    ).json()
    _wait_done(api, key.token, job["id"])
    codec = AvroCodec()
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    consumer.assign(
        [TopicPartition(settings.audit_topic, p) for p in range(settings.audit_partitions)]
    )
    found: list[dict] = []

    def poll() -> bool:
        for records in consumer.poll(timeout_ms=500).values():
            found.extend(codec.decode(r.value)[1] for r in records)
        return sum(1 for r in found if r["action"] == "audit_log.exported") >= 2

    try:
        wait_for(poll, timeout=30, what="audit_log.exported events")
    finally:
        consumer.close()
    exported = {r["metadata"]["mode"]: r for r in found if r["action"] == "audit_log.exported"}
    stream, by_job = exported["stream"], exported["job"]
    for rec in (stream, by_job):
        assert rec["tenant_id"] == "acme"
        assert rec["actor"]["type"] == "api_key" and rec["actor"]["id"] == key.record.key_id
        assert rec["outcome"]["result"] == "success" and rec["metadata"]["complete"] == "true"
        assert rec["metadata"]["since"] == "2025-03-01T00:00:00+00:00"
    assert stream["metadata"]["action"] == "claim.*" and stream["metadata"]["rows"] == "80"
    assert stream["metadata"]["format"] == "csv"
    assert by_job["metadata"]["actor_id"] == "usr_2" and by_job["metadata"]["rows"] == "30"
    assert by_job["targets"][0] == {"type": "audit_export", "id": job["id"], "name": None}
    assert key.token not in json.dumps(found, default=str)


def test_a_slice_out_of_log_order_is_sorted_by_time_then_event_id():
    table = pa.table(
        {"_ts": [5, 3, 3, 9, 1], "_id": ["e", "d", "b", "a", "z"], "v": [0, 1, 2, 3, 4]}
    )
    assert exports._in_order(table).column("v").to_pylist() == [4, 2, 1, 0, 3]
    ordered = pa.table({"_ts": [1, 2, 3], "_id": ["c", "b", "a"], "v": [0, 1, 2]})
    assert exports._in_order(ordered) is ordered  # already in order: no copy


def test_rows_stored_in_time_order_stream_in_one_query_and_round_trip(settings, monkeypatch):
    """Rows stored in time order (the usual case) skip the slices: one streamed query,
    whose answer still equals the list API's rows in every format; a row stored out of
    time order sends the export back to the slices, sorted."""
    with running_api(settings) as api:
        insert_events(api.reader, [_odd(2 * i + 1) for i in range(60)])  # times rise
        key = api.issue("acme", ("audit:read", "audit:export"))
        sliced = []
        real_slices = exports._slices
        monkeypatch.setattr(exports, "_slices", lambda *a: sliced.append(1) or real_slices(*a))
        monkeypatch.setattr(exports, "TEXT_ROWS", 7)  # many chunks
        monkeypatch.setattr(exports, "BATCH_ROWS", 11)  # many row groups
        for filters in ({}, {"action": "claim.*"}, {"actor_id": "usr_1"}):
            params = {**WINDOW, **filters}
            listed = _list_api(api, key.token, params)
            assert len(listed) > 5, filters
            ndjson = api.get(EXPORT, key.token, params={**params, "format": "ndjson"})
            assert [json.loads(line) for line in ndjson.text.splitlines()] == listed
            got_csv = api.get(EXPORT, key.token, params={**params, "format": "csv"})
            rows = list(csv.DictReader(io.StringIO(got_csv.text, newline="")))
            assert rows == [_flat(e) for e in listed]
            got_pq = pq.ParquetFile(io.BytesIO(api.get(
                EXPORT, key.token, params={**params, "format": "parquet"}).content))  # fmt: skip
            groups = [got_pq.metadata.row_group(i).num_rows
                      for i in range(got_pq.metadata.num_row_groups)]  # fmt: skip
            assert len(groups) > 1 and max(groups) <= 11
            assert [_from_parquet(r) for r in got_pq.read().to_pylist()] == listed
        assert sliced == []
        insert_events(api.reader, [_odd(0)], start_offset=1000)  # the oldest, stored last
        listed = _list_api(api, key.token, WINDOW)
        ndjson = api.get(EXPORT, key.token, params={**WINDOW, "format": "ndjson"})
        assert [json.loads(line) for line in ndjson.text.splitlines()] == listed
        assert listed[0]["event_id"] == "00000000-0000-7000-8000-000000000000" and sliced == [1]


def test_the_order_check_accepts_only_strictly_rising_stored_times(monkeypatch):
    con = duckdb.connect()
    con.execute("CREATE TABLE audit_events (tenant_id VARCHAR, occurred_at TIMESTAMPTZ)")
    monkeypatch.setattr(exports, "CHECK_ROWS", 2)  # the check crosses batch edges
    stop = threading.Event()

    def check(*seconds: int) -> bool:
        con.execute("DELETE FROM audit_events")
        for s in seconds:
            con.execute("INSERT INTO audit_events VALUES ('t', to_timestamp(?))", [s])
        con.execute("INSERT INTO audit_events VALUES ('other', to_timestamp(0))")
        return exports._stored_in_order(con, "tenant_id = ?", ["t"], stop)

    assert check() and check(5) and check(1, 2, 3, 4, 9)
    assert not check(1, 2, 3, 2, 9)  # a late row, in the second batch
    assert not check(1, 2, 2, 4)  # equal times: their order is the event ids'
    assert not check(1, 3, 2)


def test_a_client_that_leaves_mid_stream_ends_the_export_and_frees_its_slot(settings, monkeypatch):
    """An export streams (its first bytes leave while it is still read), and stops at the
    next chunk when the client goes: the reader thread ends, the node's single export
    slot is free again and the next export is whole."""
    monkeypatch.setattr(exports, "TEXT_ROWS", 5)

    def exporter_gone() -> bool:
        return not any(t.name == "velora-export" for t in threading.enumerate())

    with running_api(settings.with_overrides(export_max_streams=1)) as api:
        insert_events(api.reader, [make_event("acme", i) for i in range(400)])
        key = api.issue("acme", ("audit:export",))
        headers = {"Authorization": f"Bearer {key.token}"}
        with httpx.stream("GET", f"{api.base_url}{EXPORT}", params=WINDOW, headers=headers) as resp:
            assert resp.status_code == 200
            first = next(resp.iter_raw())
            assert first.count(b"\n") < 400
            # streamed: the first bytes left while the export was still being read (the
            # read's audit record is confirmed before them, not after the whole body)
            assert not exporter_gone()
        # the connection is closed with most of the export unsent

        wait_for(exporter_gone, timeout=30, what="the export thread to end")
        answers: list[httpx.Response] = []

        def slot_free() -> bool:
            answers.append(api.get(EXPORT, key.token, params=WINDOW))
            return answers[-1].status_code != 429

        wait_for(slot_free, timeout=30, what="the export slot to be released")
        assert answers[-1].status_code == 200 and answers[-1].text.count("\n") == 400

"""Read auditing fails closed by default (issue 8 finding 11, issue 14 finding 4).

``VELORA_READ_AUDIT=required``: a read is answered only once Kafka acknowledged its
``audit_log.viewed`` record, else 503 with ``Retry-After``; ``best_effort`` answers
regardless. Tested with a dedicated broker that is really stopped, and with a sink
that fails (fault injection).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from cli.keys import create_key
from ledger.control import ControlState
from ledger.duck import LedgerFile
from query_api.app import create_app
from tests.api_support import audit_sink, audit_trail, insert_events, live_server, make_event
from tests.helpers import make_broker, thread_stacks, wait_for
from velora.settings import Settings
from velora.topics import ensure_topics

EVENTS = "/api/v2/public/audit/events"


class FailingSink:
    """Fault injection: a sink whose sends fail, wrapping the real producer's close."""

    def __init__(self, real) -> None:
        self.real = real

    def send(self, event):
        raise RuntimeError("injected: the audit record cannot be written")

    def close(self) -> None:
        self.real.close()


@pytest.mark.parametrize(("mode", "expected"), [("required", 503), ("best_effort", 200)])
def test_a_read_whose_record_cannot_be_written_is_refused_in_required_mode(
    settings, tmp_path, mode, expected
):
    configured = settings.with_overrides(read_audit=mode)
    key = create_key(settings, "acme", ("audit:read",))
    reader = LedgerFile(tmp_path / "ledger.duckdb")
    insert_events(reader, [make_event("acme", i) for i in range(3)])
    control = ControlState(configured)
    assert control.start()
    app = create_app(
        configured, reader, control=control, audit_sink=FailingSink(audit_sink(configured))
    )
    try:
        with live_server(app) as url, httpx.Client(base_url=url) as client:
            resp = client.get(EVENTS, headers={"Authorization": f"Bearer {key.token}"})
            assert resp.status_code == expected, resp.text
            if expected == 503:
                assert int(resp.headers["Retry-After"]) >= 1
                assert resp.json()["error"]["type"] == "unavailable"
                assert "audit" in resp.json()["error"]["message"]
                assert "events" not in resp.json()
                assert app.state.auditor.stats.refused_reads == 1
    finally:
        control.stop()
        reader.close()


def test_required_reads_are_on_the_topic_before_they_are_answered(settings):
    """In required mode the record is acknowledged before the answer: no waiting needed."""
    from tests.api_support import running_api

    with running_api(settings) as api:
        insert_events(api.reader, [make_event("acme", i) for i in range(3)])
        key = api.issue("acme", ("audit:read",))
        assert settings.read_audit == "required"
        resp = api.get(EVENTS, key.token)
        assert resp.status_code == 200
        records = audit_trail(settings, "audit_log.viewed", 1, timeout=0.1)
        assert records[0]["actor"]["id"] == key.record.key_id
        assert records[0]["metadata"]["status"] == "200"


class SignallingSink:
    """The real producer, noting when a record was handed to it (for ordering only)."""

    def __init__(self, real) -> None:
        self.real = real
        self.sent = threading.Event()

    def bind(self, loop) -> None:
        self.real.bind(loop)

    async def deliver(self, event):
        acked = asyncio.ensure_future(self.real.deliver(event))
        await asyncio.sleep(0)  # the record is on its way before the query is let go
        self.sent.set()
        return await acked

    def send(self, event):
        future = self.real.send(event)
        self.sent.set()
        return future

    def close(self) -> None:
        self.real.close()


def test_a_list_read_sends_its_record_while_its_query_runs(settings, monkeypatch):
    """The list route sends its record ahead: the page's query still runs when the record
    is handed to Kafka (it waits for that), and the answer waits for both."""
    from query_api import queries
    from tests.api_support import running_api

    sink = SignallingSink(audit_sink(settings))
    seen: list[bool] = []
    list_events = queries.list_events

    def query_that_waits_for_the_record(*args, **kwargs):
        seen.append(sink.sent.wait(10.0))
        return list_events(*args, **kwargs)

    monkeypatch.setattr(queries, "list_events", query_that_waits_for_the_record)
    with running_api(settings, sink=sink) as api:
        insert_events(api.reader, [make_event("acme", i) for i in range(3)])
        key = api.issue("acme", ("audit:read",))
        resp = api.get(EVENTS, key.token, params={"limit": 2})
        assert resp.status_code == 200, resp.text
        assert len(resp.json()["events"]) == 2
        assert seen == [True]  # the record went out before the query finished
        assert api.app.state.auditor.stats.acked == 1
    (record,) = audit_trail(settings, "audit_log.viewed", 1, timeout=0.1)
    assert record["metadata"]["status"] == "200" and record["metadata"]["limit"] == "2"


def test_a_read_that_fails_after_its_record_went_ahead_is_recorded_as_it_ended(
    settings, monkeypatch
):
    """The record sent ahead says 200; the query then fails: the 500 the caller sees is
    recorded too, before the answer leaves."""
    from query_api import queries
    from tests.api_support import running_api

    def broken(*args, **kwargs):
        raise RuntimeError("injected: the page's query fails")

    monkeypatch.setattr(queries, "list_events", broken)
    with running_api(settings) as api:
        insert_events(api.reader, [make_event("acme", 0)])
        key = api.issue("acme", ("audit:read",))
        resp = api.get(EVENTS, key.token)
        assert resp.status_code == 500
        assert "events" not in resp.json()
        assert api.app.state.auditor.stats.acked == 2
        records = audit_trail(settings, "audit_log.viewed", 2, timeout=0.1)
    by_status = {r["metadata"]["status"]: r for r in records}
    assert set(by_status) == {"200", "500"}
    assert by_status["500"]["outcome"] == {"result": "failure", "reason": "HTTP 500"}
    assert by_status["200"]["metadata"]["path"] == by_status["500"]["metadata"]["path"]


def test_a_key_name_that_ingest_would_refuse_is_recorded_scrubbed(settings):
    """Keys named before names were validated (newline, 300 characters) are still audited."""
    from dataclasses import replace

    from ingest.control import ControlWriter
    from tests.api_support import running_api

    with running_api(settings) as api:
        insert_events(api.reader, [make_event("acme", 0)])
        key = api.issue("acme")
        legacy = replace(key.record, name="line\nbreak" + "x" * 300)
        with ControlWriter(settings) as writer:
            api.await_control(writer.put_api_key(legacy))
        assert api.get(EVENTS, key.token).status_code == 200
    (record,) = audit_trail(settings, "audit_log.viewed", 1)
    assert record["actor"]["name"].startswith("line\ufffdbreak")
    assert len(record["actor"]["name"]) == 256


@pytest.mark.slow
def test_with_the_broker_stopped_reads_answer_503_required_and_200_best_effort(tmp_path: Path):
    broker = make_broker(tmp_path / "kafka")
    broker.start()
    try:
        settings = Settings.from_env(
            {},
            kafka_bootstrap=broker.bootstrap,
            topic_prefix=f"ra{uuid.uuid4().hex[:8]}",
            audit_partitions=3,
            state_dir=tmp_path / "state",
            control_max_staleness_s=3600,  # this test is about the audit, not key freshness
        )
        ensure_topics(settings)
        key = create_key(settings, "acme", ("audit:read",))
        auth = {"Authorization": f"Bearer {key.token}"}
        with ExitStack() as stack:
            clients = {}
            for mode in ("required", "best_effort"):
                configured = settings.with_overrides(read_audit=mode)
                reader = LedgerFile(tmp_path / f"{mode}.duckdb")
                stack.callback(reader.close)
                insert_events(reader, [make_event("acme", i) for i in range(5)])
                control = ControlState(configured)
                assert control.start()
                stack.callback(control.stop)
                app = create_app(configured, reader, control=control)  # the node's own sink
                url = stack.enter_context(live_server(app))
                clients[mode] = stack.enter_context(httpx.Client(base_url=url, timeout=30))
            for client in clients.values():
                assert client.get(EVENTS, headers=auth).status_code == 200

            assert broker.stop()
            try:
                refused = clients["required"].get(EVENTS, headers=auth)
            except httpx.TimeoutException as exc:  # a 503 is due after 5 s: show what hangs
                raise AssertionError(f"no answer within 30 s:\n{thread_stacks()}") from exc
            assert refused.status_code == 503, refused.text
            assert int(refused.headers["Retry-After"]) >= 1
            assert refused.json()["error"]["type"] == "unavailable"
            served = clients["best_effort"].get(EVENTS, headers=auth)
            assert served.status_code == 200 and len(served.json()["events"]) == 5

            broker.start()
            wait_for(
                lambda: clients["required"].get(EVENTS, headers=auth).status_code == 200,
                timeout=120,
                interval=1.0,
                what="required reads served again once Kafka is back",
            )
    finally:
        broker.stop()

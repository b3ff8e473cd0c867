"""The internal HTTP ingest service against a real broker: per-item results, limits, auth,
hostile input (none of which may ever produce a 5xx), and Kafka outages."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from cli.main import build_parser
from ingest import AuditProducer
from ingest.body import MAX_BODY_BYTES
from ingest.http import EVENTS_PATH, create_ingest_app
from tests.helpers import wait_for
from tests.test_producer import raw_event, read_topic, total
from velora.broker import free_port
from velora.errors import ConfigError
from velora.settings import Secret, Settings

TOKEN = "svc-token-0123456789abcdef"
OTHER_TOKEN = "svc-token-fedcba9876543210"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON_HEADERS = {**AUTH, "Content-Type": "application/json"}
NDJSON_HEADERS = {**AUTH, "Content-Type": "application/x-ndjson"}


@pytest.fixture
def ingest_settings(settings: Settings) -> Settings:
    return settings.with_overrides(ingest_tokens=(Secret(TOKEN), Secret(OTHER_TOKEN)))


@contextmanager
def serve(app: Starlette) -> Iterator[httpx.Client]:
    """A real uvicorn on 127.0.0.1:<port 0> in a thread, and a client for it."""
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", proxy_headers=False
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=30, what="uvicorn start")
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        with httpx.Client(base_url=f"http://{host}:{port}", timeout=60) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture
def client(ingest_settings: Settings) -> Iterator[httpx.Client]:
    with AuditProducer(ingest_settings, timeout=10.0) as producer:
        with serve(create_ingest_app(ingest_settings, producer)) as c:
            yield c


def post(
    client: httpx.Client, events: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    return client.post(EVENTS_PATH, content=json.dumps(events), headers=headers or JSON_HEADERS)


def error_fields(response: httpx.Response) -> list[tuple[int | None, str]]:
    return [(d.get("index"), d["field"]) for d in response.json()["error"]["details"]]


def test_a_batch_answers_per_item_and_only_accepted_items_reach_the_topic(
    client: httpx.Client, ingest_settings: Settings
) -> None:
    given = str(uuid.uuid4())
    r = post(client, [raw_event(0), raw_event(1, action="Nope"), raw_event(2, event_id=given)])
    assert r.status_code == 200
    body = r.json()
    assert (body["accepted"], body["rejected"]) == (2, 1)
    items = body["items"]
    assert [i["index"] for i in items] == [0, 1, 2]
    assert [i["status"] for i in items] == ["accepted", "rejected", "accepted"]
    assert items[1]["errors"][0]["field"] == "action"
    assert items[2]["event_id"] == given
    assert uuid.UUID(items[0]["event_id"]).version == 7
    ids = {rec["event_id"] for *_, rec in read_topic(ingest_settings)}
    assert ids == {items[0]["event_id"], given}


def test_ndjson_bodies(client: httpx.Client, ingest_settings: Settings) -> None:
    lines = [json.dumps(raw_event(i)) for i in range(3)]
    body = "\n" + lines[0] + "\r\n\n" + lines[1] + "\n" + lines[2]  # blank lines and CRLF are fine
    r = client.post(EVENTS_PATH, content=body.encode(), headers=NDJSON_HEADERS)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 3
    assert total(ingest_settings) == 3


def test_every_item_rejected_is_a_422_naming_index_and_field(
    client: httpx.Client, ingest_settings: Settings
) -> None:
    r = post(client, [raw_event(0, action="X"), raw_event(1, tenant_id="a b"), "text"])
    assert r.status_code == 422
    assert r.json()["error"]["type"] == "validation_error"
    assert error_fields(r) == [(0, "action"), (1, "tenant_id"), (2, "event")]
    assert total(ingest_settings) == 0


def test_resending_an_event_id_keeps_it(client: httpx.Client, ingest_settings: Settings) -> None:
    ev = raw_event(0, event_id=str(uuid.uuid4()))
    first, second = post(client, [ev]), post(client, [ev])
    assert first.json()["items"][0]["event_id"] == second.json()["items"][0]["event_id"]
    records = read_topic(ingest_settings)
    assert {rec["event_id"] for *_, rec in records} == {ev["event_id"]}  # ledger dedups on it


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "application/json"},
        {"Content-Type": "application/json", "Authorization": "Bearer wrong-token-0123456789"},
        {"Content-Type": "application/json", "Authorization": f"Basic {TOKEN}"},
        {"Content-Type": "application/json", "Authorization": "Bearer"},
        {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}x"},
        {"Content-Type": "application/json", "Authorization": "Bearer ťøķęñ-ünïcødé".encode()},
    ],
)
def test_missing_or_wrong_token_is_401(
    client: httpx.Client, ingest_settings: Settings, headers: dict[str, Any]
) -> None:
    r = client.post(EVENTS_PATH, content=json.dumps([raw_event(0)]), headers=headers)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert r.json()["error"]["type"] == "authentication_error"
    assert TOKEN not in r.text
    assert total(ingest_settings) == 0


def test_every_configured_token_is_accepted(client: httpx.Client) -> None:
    headers = {"Authorization": f"bearer {OTHER_TOKEN}", "Content-Type": "application/json"}
    assert post(client, [raw_event(0)], headers=headers).status_code == 200


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/xml",
        "application/json; charset=latin-1",
        "multipart/form-data",
    ],
)
def test_other_content_types_are_415(client: httpx.Client, content_type: str | None) -> None:
    headers = dict(AUTH)
    if content_type:
        headers["Content-Type"] = content_type
    r = client.post(EVENTS_PATH, content=json.dumps([raw_event(0)]), headers=headers)
    assert r.status_code == 415
    assert r.json()["error"]["type"] == "unsupported_media_type"


def test_json_with_a_utf8_charset_is_accepted(client: httpx.Client) -> None:
    headers = {**AUTH, "Content-Type": "Application/JSON; charset=UTF-8"}
    assert post(client, [raw_event(0)], headers=headers).status_code == 200


@pytest.mark.parametrize(
    ("body", "headers", "where", "reason_part"),
    [
        (b'[{"tenant_id": "a",]', JSON_HEADERS, "body", "line 1 column 20"),
        (b'[\n{"a": 1}\n{"b": 2}]', JSON_HEADERS, "body", "line 3 column 1"),
        (b"\xff\xfe[]", JSON_HEADERS, "body", "UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, JSON_HEADERS, "body", "nested too deeply"),
        (b"[" + b"9" * 5000 + b"]", JSON_HEADERS, "body", "number too large"),
        (b'{"tenant_id": "a"}', JSON_HEADERS, "body", "JSON array"),
        (b'"events"', JSON_HEADERS, "body", "JSON array"),
        (b'{"a": 1}\n{"b": \n{"c": 3}', NDJSON_HEADERS, "line 2", "column 7"),
        (b'{"a": 1}\n\n\n[[[' + b"[" * 100_000, NDJSON_HEADERS, "line 4", "JSON"),
    ],
)
def test_malformed_bodies_are_422_naming_where(
    client: httpx.Client, body: bytes, headers: dict[str, str], where: str, reason_part: str
) -> None:
    r = client.post(EVENTS_PATH, content=body, headers=headers)
    assert r.status_code == 422, r.text
    (detail,) = r.json()["error"]["details"]
    assert detail["field"] == where
    assert reason_part in detail["reason"]


@pytest.mark.parametrize(
    ("body", "headers"),
    [(b"", JSON_HEADERS), (b"[]", JSON_HEADERS), (b"", NDJSON_HEADERS), (b"\n \n", NDJSON_HEADERS)],
)
def test_empty_bodies_are_422(client: httpx.Client, body: bytes, headers: dict[str, str]) -> None:
    r = client.post(EVENTS_PATH, content=body, headers=headers)
    assert r.status_code == 422
    assert "no events" in r.json()["error"]["message"] or r.json()["error"]["details"]


def test_a_body_over_5_mib_is_413_by_content_length(client: httpx.Client) -> None:
    body = b"[" + b" " * MAX_BODY_BYTES + b"]"
    r = client.post(EVENTS_PATH, content=body, headers=JSON_HEADERS)
    assert r.status_code == 413
    assert r.json()["error"]["type"] == "payload_too_large"


def test_a_streamed_body_is_cut_off_at_5_mib(
    client: httpx.Client, ingest_settings: Settings
) -> None:
    sent = 0

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        nonlocal sent
        yield b"["
        for _ in range(100):  # up to 10 MiB offered
            sent += 100 * 1024
            yield json.dumps(raw_event(0)).encode() + b"," + b" " * (100 * 1024)
        yield b"{}]"

    r = client.post(EVENTS_PATH, content=chunks(), headers=JSON_HEADERS)
    assert r.status_code == 413
    assert sent < 10 * 1024 * 1024  # the server stopped reading before the end
    assert total(ingest_settings) == 0


@pytest.mark.parametrize("fmt", ["json", "ndjson"])
def test_more_than_1000_events_is_413_and_1000_is_fine(
    client: httpx.Client, ingest_settings: Settings, fmt: str
) -> None:
    def send(n: int) -> httpx.Response:
        events = [raw_event(i) for i in range(n)]
        if fmt == "json":
            return post(client, events)
        body = "\n".join(json.dumps(e) for e in events).encode()
        return client.post(EVENTS_PATH, content=body, headers=NDJSON_HEADERS)

    too_many = send(1001)
    assert too_many.status_code == 413
    assert "1000" in too_many.json()["error"]["message"]
    assert total(ingest_settings) == 0
    ok = send(1000)
    assert ok.status_code == 200
    assert ok.json()["accepted"] == 1000
    assert total(ingest_settings) == 1000


def _rules() -> list[tuple[dict[str, Any], str]]:
    """One broken event per validation rule, with the field the rejection must name."""
    future = (datetime.now(UTC) + timedelta(hours=25)).isoformat()
    actor = {"type": "user", "id": "u-1"}
    return [
        (raw_event(0, occurred_at="2025-01-01T10:00:00"), "occurred_at"),
        (raw_event(0, occurred_at=future), "occurred_at"),
        (raw_event(0, received_at="soon"), "received_at"),
        (raw_event(0, action="Claim.Viewed"), "action"),
        (raw_event(0, action=None), "action"),
        (raw_event(0, tenant_id="tenant/../x"), "tenant_id"),
        (raw_event(0, event_id="ABC"), "event_id"),
        (raw_event(0, crud="view"), "crud"),
        (raw_event(0, outcome={"result": "maybe"}), "outcome.result"),
        (raw_event(0, actor={**actor, "ip": "300.1.1.1"}), "actor.ip"),
        (raw_event(0, actor={**actor, "id": "x" * 257}), "actor.id"),
        (raw_event(0, actor={**actor, "id": "u\u202e1"}), "actor.id"),
        (raw_event(0, actor={**actor, "user_agent": "ua\x00"}), "actor.user_agent"),
        (raw_event(0, metadata={f"k{i}": "v" for i in range(51)}), "metadata"),
        (raw_event(0, metadata={"k" * 41: "v"}), "metadata." + "k" * 37 + "..."),
        (raw_event(0, metadata={"k": "v" * 501}), "metadata.k"),
        (raw_event(0, metadata={"k": 1}), "metadata.k"),
        (raw_event(0, source=None), "source"),
        (raw_event(0, unexpected=True), "unexpected"),
        (raw_event(0, targets=[{"type": "t"}]), "targets[0].id"),
        (
            raw_event(
                0,
                metadata={f"k{i}": "v" * 500 for i in range(50)},
                targets=[{"type": "t", "id": "i" * 256, "name": "n" * 256}] * 40,
            ),
            "event",
        ),
    ]


def test_each_validation_rule_is_a_per_item_rejection_naming_the_field(
    client: httpx.Client, ingest_settings: Settings
) -> None:
    rules = _rules()
    r = post(client, [raw_event(99)] + [ev for ev, _ in rules])
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert items[0]["status"] == "accepted"
    for (_, field), item in zip(rules, items[1:], strict=True):
        assert item["status"] == "rejected"
        assert field in [e["field"] for e in item["errors"]], (field, item)
    assert total(ingest_settings) == 1


TORTURE = [
    "\u200f\u202eRTL override\u202c",
    "👩🏽‍⚕️🧾🏥",
    "zero\u200bwidth\u2060joiner\ufeff",
    "e" + "\u0301" * 200,
    "NUL\u0000inside",
    "bell\u0007esc\u001b[2J",
    "line\u2028separator",
    "x" * 100_000,
    "",
    " ",
    "\\ud800",
    "\U0001d573\U0001d58a\U0001d591\U0001d591\U0001d594",  # mathematical fraktur
    "null",
    "<script>alert(1)</script>",
    "'; DROP TABLE audit_events; --",
]
TORTURE_PATHS = [
    ("tenant_id",),
    ("action",),
    ("source",),
    ("actor", "id"),
    ("actor", "name"),
    ("actor", "ip"),
    ("outcome", "reason"),
    ("metadata", "note"),
    ("targets", 0, "name"),
]


def _torture_body() -> tuple[bytes, list[tuple[str, tuple[Any, ...], str]]]:
    """A JSON array of events, each with one hostile string in one field.

    Lone surrogates are written as raw JSON escapes (``"\\ud800"``), which the
    stdlib parser turns into unencodable strings.
    """
    parts, cases = [], []
    for value in TORTURE:
        for path in TORTURE_PATHS:
            ev = raw_event(len(cases), event_id=str(uuid.uuid4()))
            node: Any = ev
            for key in path[:-1]:
                node = node[key]
            marker = f"@@{len(cases)}@@"
            node[path[-1]] = marker
            text = json.dumps(ev).replace(f'"{marker}"', _json_string(value))
            parts.append(text)
            cases.append((ev["event_id"], path, value))
    return ("[" + ",".join(parts) + "]").encode(), cases


def _json_string(value: str) -> str:
    if value == "\\ud800":
        return '"lone \\ud800 surrogate \\udfff"'
    return json.dumps(value, ensure_ascii=False)


def test_hostile_unicode_never_5xx_and_rejects_never_reach_the_topic(
    client: httpx.Client, ingest_settings: Settings
) -> None:
    body, cases = _torture_body()
    assert len(cases) <= 1000
    r = client.post(EVENTS_PATH, content=body, headers=JSON_HEADERS)
    assert r.status_code == 200, r.text[:500]
    items = r.json()["items"]
    assert len(items) == len(cases)
    accepted = {i["event_id"] for i in items if i["status"] == "accepted"}
    for item, (_, _, value) in zip(items, cases, strict=True):
        if item["status"] == "rejected":
            assert item["errors"], item
            assert all(e["field"] and e["reason"] for e in item["errors"])
            assert value not in json.dumps(item) or value in ("", " ", "null")
    # Obvious cases: free text keeps emoji and RTL marks, no field keeps NUL or surrogates.
    outcome = {
        (path, value): item["status"] for item, (_, path, value) in zip(items, cases, strict=True)
    }
    assert outcome[(("actor", "name"), "👩🏽‍⚕️🧾🏥")] == "accepted"
    assert outcome[(("outcome", "reason"), "\u200f\u202eRTL override\u202c")] == "accepted"
    assert outcome[(("actor", "id"), "\u200f\u202eRTL override\u202c")] == "rejected"
    for path in TORTURE_PATHS:
        assert outcome[(path, "NUL\u0000inside")] == "rejected"
        assert outcome[(path, "\\ud800")] == "rejected"
        assert outcome[(path, "x" * 100_000)] == "rejected"
    records = read_topic(ingest_settings)
    assert {rec["event_id"] for *_, rec in records} == accepted
    by_id = {rec["event_id"]: rec for *_, rec in records}
    for event_id, path, value in cases:
        if event_id in accepted:
            node: Any = by_id[event_id]
            for key in path:
                node = node[key]
            assert node == value  # stored exactly as sent


@pytest.mark.parametrize("item", [None, 1, "event", [], True])
def test_non_object_items_are_rejected_per_item(client: httpx.Client, item: Any) -> None:
    r = post(client, [raw_event(0), item])
    assert r.status_code == 200
    assert r.json()["items"][1] == {
        "index": 1,
        "status": "rejected",
        "errors": [{"field": "event", "reason": "must be an object"}],
    }


def test_kafka_unreachable_is_503_with_retry_after_and_nothing_acknowledged(
    ingest_settings: Settings,
) -> None:
    closed = ingest_settings.with_overrides(kafka_bootstrap=f"127.0.0.1:{free_port()}")
    with AuditProducer(closed, timeout=1.0) as producer:
        with serve(create_ingest_app(closed, producer)) as c:
            r = post(c, [raw_event(0), raw_event(1)])
            assert r.status_code == 503
            assert int(r.headers["Retry-After"]) >= 1
            error = r.json()["error"]
            assert error["type"] == "unavailable"
            assert "items" not in r.json() and "accepted" not in r.json()
            # Validation still answers per item while Kafka is down.
            only_bad = post(c, [raw_event(0, action="X")])
            assert only_bad.status_code == 422


def test_unknown_routes_and_methods_use_the_error_shape(client: httpx.Client) -> None:
    r = client.get("/internal/v1/nope", headers=AUTH)
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "not_found"
    r = client.get(EVENTS_PATH, headers=AUTH)
    assert r.status_code == 405
    assert r.json()["error"]["type"] == "method_not_allowed"
    assert client.get("/healthz").json() == {"status": "ok"}


def test_serve_refuses_to_start_without_service_tokens() -> None:
    args = build_parser().parse_args(["ingest", "serve", "--port", "0"])
    with pytest.raises(ConfigError) as info:
        args.func(args, Settings.from_env({}))
    assert "VELORA_INGEST_TOKENS" in info.value.message


def test_velora_ingest_serve_runs_the_real_server(ingest_settings: Settings) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("VELORA_")},
        "VELORA_KAFKA_BOOTSTRAP": ingest_settings.kafka_bootstrap,
        "VELORA_TOPIC_PREFIX": ingest_settings.topic_prefix,
        "VELORA_INGEST_TOKENS": f"{TOKEN},{OTHER_TOKEN}",
        "VELORA_INGEST_PORT": "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "ingest", "serve"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        seen: list[str] = []

        def port() -> int | None:
            line = proc.stderr.readline()  # type: ignore[union-attr]
            seen.append(line)
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            return int(m.group(1)) if m else (None if proc.poll() is None else -1)

        bound = wait_for(port, timeout=60, what="ingest to report its port")
        assert bound > 0, "".join(seen)
        url = f"http://127.0.0.1:{bound}{EVENTS_PATH}"
        r = httpx.post(url, content=json.dumps([raw_event(0)]), headers=JSON_HEADERS, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["accepted"] == 1
        assert total(ingest_settings) == 1
    finally:
        proc.terminate()  # uvicorn shuts down gracefully, then re-raises SIGTERM
        rest = proc.communicate(timeout=30)[1]
    assert "Application shutdown complete" in rest


@pytest.mark.parametrize(
    ("body", "headers", "index", "field", "where"),
    [
        (b'[{"a": 1}, {"action": "x", "action": "y"}]', JSON_HEADERS, 1, "action", "event 1"),
        (b'[{"actor": {"id": "a", "id": "b"}}]', JSON_HEADERS, 0, "actor.id", "event 0"),
        (b'[{"targets": [{}, {"type": 1, "type": 2}]}]', JSON_HEADERS, 0, "targets[1].type", ""),
        (b'{"a": 1, "a": 2}', JSON_HEADERS, None, "a", ""),
        (b'{"a": 1}\n\n{"m": {"k": 1, "k": 1}}\n', NDJSON_HEADERS, 1, "m.k", "line 3"),
    ],
)
def test_a_repeated_json_key_is_422_naming_the_event_and_the_key(
    client: httpx.Client,
    ingest_settings: Settings,
    body: bytes,
    headers: dict[str, str],
    index: int | None,
    field: str,
    where: str,
) -> None:
    r = client.post(EVENTS_PATH, content=body, headers=headers)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    (detail,) = error["details"]
    assert (detail.get("index"), detail["field"]) == (index, field)
    assert "duplicate key" in detail["reason"]
    assert where in error["message"]
    assert total(ingest_settings) == 0


def test_a_repeated_key_refuses_the_whole_batch(client: httpx.Client, ingest_settings) -> None:
    """Which of two values was meant is unknown: nothing of the batch is written."""
    good = json.dumps(raw_event(0))
    bad = json.dumps(raw_event(1)).replace('"action":', '"action": "a.b", "action":', 1)
    r = client.post(EVENTS_PATH, content=f"[{good}, {bad}]".encode(), headers=JSON_HEADERS)
    assert r.status_code == 422
    assert total(ingest_settings) == 0


@pytest.mark.parametrize(
    "stamp",
    [
        "2025-W05-5T12:00:00Z",  # ISO week date
        "2025-031T12:00:00Z",  # ordinal date
        "20250131T120000Z",  # basic format
        "2025-01-31",  # date only
        "2025-01-31 12:00:00Z",  # space separator
        "2025-01-31T12:00Z",  # no seconds
        "2025-01-31T12:00:00+0100",  # offset without colon
    ],
)
def test_timestamps_that_are_not_rfc_3339_are_422(
    client: httpx.Client, ingest_settings: Settings, stamp: str
) -> None:
    r = post(client, [raw_event(0, occurred_at=stamp)])
    assert r.status_code == 422, r.text
    assert error_fields(r) == [(0, "occurred_at")]
    assert "RFC 3339" in r.json()["error"]["details"][0]["reason"]
    assert total(ingest_settings) == 0


@contextmanager
def limited(app: Starlette, settings: Settings) -> Iterator[int]:
    """``app`` served as ``velora ingest serve`` serves it (velora.http_server); its port."""
    from velora.http_server import listen, make_server

    sock = listen("127.0.0.1", 0, 128)
    server = make_server(app, settings)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=30, what="server start")
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def _upload_head(length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST {EVENTS_PATH} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n"
    ).encode()


def _answer(conn: socket.socket) -> tuple[int, dict[str, str], dict[str, Any]]:
    conn.settimeout(20)
    raw = b""
    while True:
        data = conn.recv(65536)
        if not data:
            break
        raw += data
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


def test_uploads_past_the_memory_budget_get_503_before_their_body_is_read(
    ingest_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Budget 8 MiB: one stalled upload holds 5 MiB; the next that declares 5 MiB is
    refused at once, with Retry-After and Connection: close, without sending its body;
    a small one still passes; once the stalled one is gone the budget is whole again."""
    settings = ingest_settings.with_overrides(ingest_memory_budget_mb=8)
    mib = 1024 * 1024
    with AuditProducer(settings, timeout=10.0) as producer:
        app = create_ingest_app(settings, producer)
        budget = app.state.body_budget
        with limited(app, settings) as port:
            stalled = socket.create_connection(("127.0.0.1", port))
            stalled.sendall(_upload_head(5 * mib) + b"[" + b" " * mib)  # then nothing
            wait_for(lambda: budget.in_use == 5 * mib, timeout=10, what="the claim")

            second = socket.create_connection(("127.0.0.1", port))
            second.sendall(_upload_head(5 * mib))  # the head only
            status, headers, body = _answer(second)
            second.close()
            assert status == 503 and body["error"]["type"] == "unavailable"
            assert headers["retry-after"] == "1" and headers["connection"] == "close"
            assert body["error"]["details"][0]["field"] == "body"

            chunked = socket.create_connection(("127.0.0.1", port))
            chunked.sendall(_upload_head(None))
            piece = b" " * (512 * 1024)
            try:
                for _ in range(8):  # 4 MiB offered, chunk by chunk; 3 MiB are left
                    chunked.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass
            status, headers, _ = _answer(chunked)
            chunked.close()
            assert status == 503 and headers["connection"] == "close"

            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                assert post(client, [raw_event(0)]).status_code == 200  # small ones fit
                stalled.close()
                wait_for(lambda: budget.in_use == 0, timeout=10, what="the budget back")
                padded = json.dumps([raw_event(1)]).encode() + b" " * (5 * mib - 4096)
                r = client.post(EVENTS_PATH, content=padded, headers=JSON_HEADERS)
                assert r.status_code == 200, r.text
            assert budget.in_use == 0
            assert budget.refused == 2
    assert total(ingest_settings) == 2
    # back-pressure, not a fault: no ERROR line, one (throttled) warning for both refusals
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len([r for r in caplog.records if "budget" in r.getMessage()]) == 1


# -- reserved names and restricted tokens (issue 8 finding 10) -------------------------

RESTRICTED = "svc-token-restricted-0123"


def test_reserved_actions_and_sources_are_refused_with_422_naming_the_field(client):
    forged_read = raw_event(1, action="audit_log.viewed", source="velora.query_api")
    resp = post(client, [forged_read])
    assert resp.status_code == 422
    assert sorted(error_fields(resp)) == [(0, "action"), (0, "source")]
    reasons = {d["field"]: d["reason"] for d in resp.json()["error"]["details"]}
    assert "reserved" in reasons["action"] and "reserved" in reasons["source"]
    mixed = post(client, [raw_event(2), raw_event(3, action="audit_log.auth_failed")])
    assert mixed.status_code == 200
    assert [i["status"] for i in mixed.json()["items"]] == ["accepted", "rejected"]
    assert mixed.json()["items"][1]["errors"][0]["field"] == "action"


def test_a_token_restricted_to_sources_cannot_write_others(settings):
    restricted = settings.with_overrides(
        ingest_tokens=Settings.from_env(
            {"VELORA_INGEST_TOKENS": f"{TOKEN},{RESTRICTED}=billing|claims-api"}
        ).ingest_tokens
    )
    headers = {"Authorization": f"Bearer {RESTRICTED}", "Content-Type": "application/json"}
    with AuditProducer(restricted, timeout=10.0) as producer:
        with serve(create_ingest_app(restricted, producer)) as c:
            resp = post(
                c,
                [raw_event(1, source="claims-api"), raw_event(2, source="pharmacy")],
                headers,
            )
            assert resp.status_code == 200
            items = resp.json()["items"]
            assert [i["status"] for i in items] == ["accepted", "rejected"]
            assert items[1]["errors"] == [
                {"field": "source", "reason": "not a source this service token may write"}
            ]
            only_bad = post(c, [raw_event(3, source="pharmacy")], headers)
            assert only_bad.status_code == 422 and error_fields(only_bad) == [(0, "source")]
            # The unrestricted token writes any non-reserved source.
            assert post(c, [raw_event(4, source="pharmacy")]).status_code == 200
    sources = sorted(r["source"] for _p, _o, _k, r in read_topic(restricted))
    assert sources == ["claims-api", "pharmacy"]

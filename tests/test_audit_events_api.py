"""GET /api/v2/public/audit/events and /{event_id}: shape, order, paging, filters, read audit."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from schemas.codec import AvroCodec
from schemas.events import Target
from tests.api_support import BASE, Api, insert_events, make_event, running_api
from tests.helpers import wait_for

EVENTS = "/api/v2/public/audit/events"


@pytest.fixture
def api(settings):
    with running_api(settings) as api:
        yield api


def _all_pages(api: Api, token: str, params: dict) -> list[dict]:
    got: list[dict] = []
    resp = api.get(EVENTS, token, params=params)
    while True:
        assert resp.status_code == 200, resp.text
        body = resp.json()
        got.extend(body["events"])
        if body["page"]["next_cursor"] is None:
            assert "Link" not in resp.headers
            return got
        link = httpx.Response(200, headers={"Link": resp.headers["Link"]}).links["next"]["url"]
        resp = api.get(link, token)


def test_page_shape_order_and_timestamps(api: Api):
    events = [make_event("acme", i) for i in range(7)]
    insert_events(api.reader, events)
    key = api.issue("acme")
    resp = api.get(EVENTS, key.token, params={"limit": 3})
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"events", "page"}
    assert body["page"]["limit"] == 3 and body["page"]["next_cursor"]
    assert [e["event_id"] for e in body["events"]] == [e.event_id for e in events[::-1][:3]]
    first = body["events"][0]
    src = events[6]
    assert first == {
        "event_id": src.event_id,
        "tenant_id": "acme",
        "occurred_at": src.occurred_at.isoformat(),
        "received_at": src.received_at.isoformat(),
        "action": "claim.viewed",
        "crud": "read",
        "category": "claims",
        "actor": {
            "type": "user",
            "id": src.actor.id,
            "name": "Dana",
            "email": None,
            "ip": "10.0.0.1",
            "user_agent": None,
        },
        "targets": [{"type": "claim", "id": "CLM-6", "name": None}],
        "outcome": {"result": "success", "reason": None},
        "request_id": "req-6",
        "source": "claims-service",
        "metadata": {"i": "6"},
        "schema_version": 1,
    }
    assert first["occurred_at"].endswith("+00:00")
    assert resp.headers["Link"].endswith('>; rel="next"')
    assert "limit=3" in resp.headers["Link"]
    # Default limit is 50.
    assert api.get(EVENTS, key.token).json()["page"]["limit"] == 50
    one = api.get(f"{EVENTS}/{src.event_id}", key.token)
    assert one.status_code == 200 and one.json() == first
    extra = api.get(f"{EVENTS}/{src.event_id}", key.token, params={"limit": 5})
    assert extra.status_code == 422 and extra.json()["error"]["details"][0]["field"] == "limit"


def test_paging_visits_every_event_once_in_order(api: Api):
    # Same occurred_at for many events: the event_id breaks ties.
    events = [
        make_event("acme", i, occurred_at=BASE + timedelta(seconds=i // 4)) for i in range(103)
    ]
    insert_events(api.reader, events)
    insert_events(api.reader, [make_event("other", i) for i in range(20)], start_offset=1000)
    key = api.issue("acme")
    got = _all_pages(api, key.token, {"limit": 10})
    expected = sorted(events, key=lambda e: (e.occurred_at, e.event_id), reverse=True)
    assert [e["event_id"] for e in got] == [e.event_id for e in expected]


def test_paging_while_new_events_arrive_neither_skips_nor_repeats(api: Api):
    old = [make_event("acme", i) for i in range(30)]
    insert_events(api.reader, old)
    key = api.issue("acme")
    resp = api.get(EVENTS, key.token, params={"limit": 10})
    seen = [e["event_id"] for e in resp.json()["events"]]
    cursor = resp.json()["page"]["next_cursor"]
    newer = [make_event("acme", 1000 + i) for i in range(15)]
    insert_events(api.reader, newer, start_offset=100)
    while cursor:
        body = api.get(EVENTS, key.token, params={"limit": 10, "cursor": cursor}).json()
        seen.extend(e["event_id"] for e in body["events"])
        cursor = body["page"]["next_cursor"]
    assert len(seen) == len(set(seen)) == 30
    assert set(seen) == {e.event_id for e in old}
    fresh = api.get(EVENTS, key.token, params={"limit": 15}).json()["events"]
    assert {e["event_id"] for e in fresh} == {e.event_id for e in newer}


def test_filters(api: Api):
    t = Target("member", "M-1", "Ann")
    events = [
        make_event("acme", 0, action="claim.viewed", actor_id="u1"),
        make_event("acme", 1, action="claim.updated", actor_id="u2", outcome="failure"),
        make_event("acme", 2, action="member.viewed", actor_id="u1", target=t),
        make_event("acme", 3, action="claims.viewed", actor_type="service", source="batch"),
        make_event("acme", 4, action="claim", actor_id="u3", outcome="denied"),
    ]
    insert_events(api.reader, events)
    key = api.issue("acme")

    def ids(**params):
        resp = api.get(EVENTS, key.token, params=params)
        assert resp.status_code == 200, resp.text
        return {int(e["metadata"]["i"]) for e in resp.json()["events"]}

    assert ids() == {0, 1, 2, 3, 4}
    assert ids(action="claim.viewed") == {0}
    assert ids(action="claim.*") == {0, 1}  # not "claims.viewed", not "claim"
    assert ids(actor_id="u1") == {0, 2}
    assert ids(actor_type="service") == {3}
    assert ids(target_id="M-1") == {2}
    assert ids(target_type="member") == {2}
    assert ids(target_type="member", target_id="CLM-1") == set()  # must be the same target
    assert ids(target_type="claim", target_id="CLM-1") == {1}
    assert ids(outcome="failure") == {1}
    assert ids(source="batch") == {3}
    assert ids(actor_id="u1", action="member.*") == {2}
    at = BASE + timedelta(seconds=2)
    assert ids(since=at.isoformat()) == {2, 3, 4}  # inclusive
    assert ids(until=at.isoformat()) == {0, 1}  # exclusive
    assert ids(since=at.isoformat().replace("+00:00", "Z")) == {2, 3, 4}
    plus_two = (at + timedelta(hours=2)).isoformat().replace("+00:00", "+02:00")
    assert ids(since=plus_two, until=(at + timedelta(seconds=2)).isoformat()) == {2, 3}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "2025-03-01T12:00:00"}, "since"),
        ({"until": "2025-03-01"}, "until"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2025-W09-6T12:00:00Z"}, "since"),  # ISO week date
        ({"since": "20250301T120000Z"}, "since"),  # basic format
        ({"until": "2025-03-01 12:00:00Z"}, "until"),  # space separator
        ({"until": "2025-03-01T12:00:00+01"}, "until"),  # hour-only offset
        ({"since": " 2025-03-01T12:00:00Z"}, "since"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"outcome": "maybe"}, "outcome"),
        ({"action": "*"}, "action"),
        ({"action": "claim*"}, "action"),
        ({"colour": "blue"}, "colour"),
        ({"cursor": "not-a-cursor"}, "cursor"),
    ],
)
def test_invalid_parameters_are_422(api: Api, params, field):
    key = api.issue("acme")
    resp = api.get(EVENTS, key.token, params=params)
    assert resp.status_code == 422, resp.text
    err = resp.json()["error"]
    assert err["type"] == "validation_error"
    assert err["details"][0]["field"] == field


def test_repeated_parameter_is_422(api: Api):
    key = api.issue("acme")
    resp = api.get(f"{EVENTS}?action=a&action=b", key.token)
    assert resp.status_code == 422
    assert resp.json()["error"]["details"][0] == {
        "field": "action",
        "reason": "given more than once",
    }


def test_reads_are_audited_in_the_tenants_trail(settings):
    with running_api(settings) as api:
        insert_events(api.reader, [make_event("acme", i) for i in range(3)])
        key = api.issue("acme")
        assert api.get(EVENTS, key.token, params={"action": "claim.*"}).status_code == 200
        assert api.get(f"{EVENTS}/nope", key.token).status_code == 404
    # The lifespan has flushed the producer; both reads are on the audit topic.
    codec = AvroCodec()
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    tps = [TopicPartition(settings.audit_topic, p) for p in range(settings.audit_partitions)]
    consumer.assign(tps)
    found: list[dict] = []

    def poll() -> bool:
        for records in consumer.poll(timeout_ms=500).values():
            found.extend(codec.decode(r.value)[1] for r in records)
        return len(found) >= 2

    try:
        wait_for(poll, timeout=20, what="read audit events")
    finally:
        consumer.close()
    by_target = {r["targets"][0]["type"]: r for r in found}
    listing, single = by_target["audit_log"], by_target["audit_event"]
    for rec in (listing, single):
        assert rec["tenant_id"] == "acme"
        assert rec["action"] == "audit_log.viewed"
        assert rec["actor"]["type"] == "api_key"
        assert rec["actor"]["id"] == key.record.key_id
        assert key.token not in repr(rec)
    assert listing["outcome"]["result"] == "success"
    assert listing["metadata"]["action"] == "claim.*"
    assert single["outcome"]["result"] == "failure"
    assert single["metadata"]["status"] == "404"


@pytest.mark.parametrize("hinted", [False, True], ids=["no hints", "window hints"])
def test_window_probes_answer_exactly_like_a_full_scan(tmp_path, hinted: bool):
    """The widening occurred_at windows are an optimisation only: same rows as a full scan,
    also when every probe starts at a hint left by the queries before it (any shape)."""
    from datetime import UTC, datetime

    from ledger.duck import LedgerFile
    from query_api import queries
    from query_api.cursor import Position
    from query_api.filters import Filters

    reader = LedgerFile(tmp_path / "w.duckdb")
    now = datetime(2025, 6, 1, tzinfo=UTC)
    events = []
    for i in range(600):  # two years, sparse and dense tenants, some late arrivals
        tenant = "dense" if i % 5 else "sparse"
        at = now - timedelta(hours=(600 - i) * 29)
        if i % 97 == 0:
            at -= timedelta(days=300)  # a late event with an old occurred_at
        events.append(make_event(tenant, i, occurred_at=at, actor_id=f"u{i % 7}"))
    insert_events(reader, events)
    cur = reader.cursor()
    hints = queries.WindowHints() if hinted else None
    try:
        for tenant in ("dense", "sparse", "nobody"):
            for f in (
                Filters(),
                Filters(actor_id="u3"),
                Filters(actor_id="nobody"),  # no window fills: every probe comes back short
                Filters(action_prefix="claim."),
                Filters(since=now - timedelta(days=40)),
                Filters(until=now - timedelta(days=9)),
            ):
                for after in (
                    None,
                    Position(int((now - timedelta(days=200)).timestamp() * 1e6), "z"),
                ):
                    got = queries.list_events(cur, tenant, f, after, 21, now=now, hints=hints)
                    rendered = queries.list_events_json(
                        cur, tenant, f, after, 21, now=now, hints=hints
                    )
                    assert [(r[1], r[2]) for r in rendered] == [
                        (r["occurred_us"], r["event_id"]) for r in got
                    ]
                    mine = [
                        e
                        for e in events
                        if e.tenant_id == tenant
                        and (f.actor_id is None or e.actor.id == f.actor_id)
                        and (f.since is None or e.occurred_at >= f.since)
                        and (f.until is None or e.occurred_at < f.until)
                        and (
                            after is None
                            or (e.occurred_at.timestamp() * 1e6, e.event_id)
                            < (after.occurred_us, after.event_id)
                        )
                    ]
                    mine.sort(key=lambda e: (e.occurred_at, e.event_id), reverse=True)
                    assert [r["event_id"] for r in got] == [e.event_id for e in mine[:21]], (
                        tenant,
                        f,
                        after,
                    )
    finally:
        reader.close()


def _next_link(api: Api, token: str, host: str | None = None) -> str:
    headers = {"Host": host} if host is not None else {}
    resp = api.get(EVENTS, token, params={"limit": 1}, headers=headers)
    assert resp.status_code == 200, resp.text
    link = resp.headers["Link"]
    assert link.startswith("<") and link.endswith('>; rel="next"')
    return link[1 : link.index(">")]


@pytest.mark.parametrize(
    "host",
    [
        "a" * 10_000,
        "evil.example.com/phish?x=",
        "evil.example.com:99999",
        "<script>alert(1)</script>",
        "user@evil.example.com",
    ],
)
def test_the_next_link_never_echoes_an_invalid_host(api: Api, host: str):
    insert_events(api.reader, [make_event("acme", i) for i in range(3)])
    key = api.issue("acme")
    url = _next_link(api, key.token, host)
    assert url.startswith(f"{api.base_url}{EVENTS}?limit=1&cursor=")  # the bind address
    assert "evil" not in url and "aaaa" not in url and "script" not in url


def test_the_next_link_uses_a_valid_host_normalised(api: Api):
    insert_events(api.reader, [make_event("acme", i) for i in range(3)])
    key = api.issue("acme")
    assert _next_link(api, key.token, "API.Example.com:8443").startswith(
        f"http://api.example.com:8443{EVENTS}?limit=1&cursor="
    )


def test_the_next_link_uses_the_configured_public_base_url(settings):
    configured = settings.with_overrides(public_base_url="https://api.velora.health")
    with running_api(configured) as api:
        insert_events(api.reader, [make_event("acme", i) for i in range(3)])
        key = api.issue("acme")
        for host in (None, "other.example.com", "a" * 10_000):
            url = _next_link(api, key.token, host)
            assert url.startswith(f"https://api.velora.health{EVENTS}?limit=1&cursor=")
            resp = api.get(url.removeprefix("https://api.velora.health"), key.token)
            assert resp.status_code == 200


class _CountingCursor:
    """The real DuckDB cursor, counting the statements it runs."""

    def __init__(self, cur):
        self.cur = cur
        self.statements = 0
        self.pages = 0  # statements that read a page (ORDER BY ... LIMIT)

    def execute(self, sql, params):
        self.statements += 1
        self.pages += "LIMIT" in sql
        return self.cur.execute(sql, params)


def test_window_hints_answer_a_sparse_tenant_in_one_probe(tmp_path):
    """A sparse tenant's first page takes several window probes; with the node's hints,
    the next pages of that shape start at the window that answered: one query each."""
    from datetime import UTC, datetime

    from ledger.duck import LedgerFile
    from query_api import queries
    from query_api.filters import Filters

    reader = LedgerFile(tmp_path / "h.duckdb")
    now = datetime(2025, 6, 1, tzinfo=UTC)
    events = [
        make_event("sparse", i, occurred_at=now - timedelta(hours=6 * i), actor_id=f"u{i % 2}")
        for i in range(200)
    ]
    insert_events(reader, events)
    newest = sorted(events, key=lambda e: (e.occurred_at, e.event_id), reverse=True)
    try:
        cur = _CountingCursor(reader.cursor())
        hints = queries.WindowHints()
        first = queries.list_events(cur, "sparse", Filters(), None, 21, now=now, hints=hints)
        assert cur.statements >= 3  # 15 min, 4 h, then wide enough
        assert [r["event_id"] for r in first] == [e.event_id for e in newest[:21]]
        for k in range(5):
            cur.statements = 0
            later = now + timedelta(minutes=k)
            again = queries.list_events(cur, "sparse", Filters(), None, 21, now=later, hints=hints)
            assert cur.statements == 1
            assert again == first
        # another shape (an actor filter) learns its own window
        cur.statements = 0
        queries.list_events(cur, "sparse", Filters(actor_id="u1"), None, 21, now=now, hints=hints)
        assert cur.statements >= 2
    finally:
        reader.close()


def test_a_rare_filter_stops_probing_at_the_window_that_holds_every_stored_row(tmp_path):
    """A filter no window fills used to end with one more query over the whole history
    after a window that already held all of it; the probing now stops at that window."""
    from datetime import UTC, datetime

    from ledger.duck import LedgerFile
    from query_api import queries
    from query_api.filters import Filters

    reader = LedgerFile(tmp_path / "r.duckdb")
    now = datetime(2025, 6, 1, tzinfo=UTC)
    events = [  # 30 days; "rare" acts three times
        make_event(
            "t", i, occurred_at=now - timedelta(hours=i), actor_id="rare" if i % 200 == 7 else "u"
        )
        for i in range(720)
    ]
    insert_events(reader, events)
    wanted = sorted(
        (e for e in events if e.actor.id == "rare"),
        key=lambda e: (e.occurred_at, e.event_id),
        reverse=True,
    )
    try:
        cur = _CountingCursor(reader.cursor())
        got = queries.list_events(cur, "t", Filters(actor_id="rare"), None, 21, now=now)
        assert [r["event_id"] for r in got] == [e.event_id for e in wanted]
        assert len(wanted) == 4
        # 15 min, 4 h, 2.7 days, then 43 days (holds all 30): four probes, one look at
        # the oldest time; before, a fifth scan of everything without a bound. (The two
        # other statements set and reset late materialization for a scattered filter.)
        assert cur.pages == 4 and cur.statements == 4 + 1 + 2
        setting = "SELECT current_setting('late_materialization_max_rows')"
        assert cur.cur.execute(setting).fetchone()[0] == 50  # reset: the cursor is shared
    finally:
        reader.close()


def test_orjson_renders_the_same_bytes_as_starlette():
    """query_api.responses.JsonResponse is a faster renderer, not another format."""
    from starlette.responses import JSONResponse

    from query_api.responses import JsonResponse
    from query_api.serialize import event_json

    row = {
        "event_id": "0190-ä", "tenant_id": "t", "occurred_us": 1_700_000_000_123_456,
        "received_us": 1_700_000_000_000_000, "action": "claim.viewed", "crud": "read",
        "category": None, "actor_type": "user", "actor_id": 'a"\\/b', "actor_name": "Zoë 😀",
        "actor_email": None, "actor_ip": "::1", "actor_user_agent": "x\ty\n\u0001\u2028",
        "targets": [{"type": "claim", "id": "<&>", "name": None}], "outcome_result": "success",
        "outcome_reason": None, "request_id": None, "source": "s",
        "metadata": {"k": "v", "é": ""}, "schema_version": 1,
    }  # fmt: skip
    body = {"events": [event_json(row)] * 3, "page": {"next_cursor": None, "limit": 50}}
    assert JsonResponse(body).body == JSONResponse(body).body
    assert JsonResponse({"events": []}).body == b'{"events":[]}'

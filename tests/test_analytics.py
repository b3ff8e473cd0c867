"""Analytics endpoints: every number equals an independent recount in plain Python.

The events go the real way: encoded with the codec, produced to the real broker,
materialized by a :class:`~ledger.node.QueryNode` (which writes the rows and the
rollups in one transaction each), and read through the app on a live uvicorn.
The recount uses only the list of events this module made.
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from kafka import KafkaProducer

from ledger.node import QueryNode
from query_api import analytics, analytics_summary
from query_api.app import create_app
from query_api.filters import Filters
from schemas.codec import AvroCodec
from schemas.events import Actor, AuditEvent, Outcome, Target
from tests.api_support import audit_sink, insert_events, live_server, make_event, running_api
from tests.helpers import CACHE_DIR, wait_for
from velora.settings import Settings
from velora.topics import ensure_topics

BASE = "/api/v2/public/analytics"
DAY0 = datetime(2025, 6, 9, tzinfo=UTC)  # the data spans June 9 to June 12, 2025
ACTIONS = ("claim.viewed", "claim.updated", "member.viewed", "member.exported", "user.login")
SOURCES = ("claims-service", "member-portal", "reporting")
OUTCOMES = ("success", "success", "success", "failure", "denied")
MIDNIGHT = datetime(2025, 6, 11, tzinfo=UTC)
MANY_SOURCES = {"since": "2025-06-15T10:00:00+00:00", "until": "2025-06-15T11:00:00+00:00"}


def _event(tenant: str, at: datetime, rng: random.Random, **over) -> AuditEvent:
    actor = over.pop("actor", None) or f"usr_{rng.randrange(12):02d}"
    n_targets = rng.choice((0, 1, 1, 2))
    targets = tuple(Target("claim", f"CLM-{rng.randrange(15)}") for _ in range(n_targets))
    outcome = over.pop("outcome", rng.choice(OUTCOMES))
    return AuditEvent(
        event_id=str(uuid.uuid4()),
        tenant_id=tenant,
        occurred_at=at,
        received_at=at,
        action=over.pop("action", rng.choice(ACTIONS)),
        crud="read",
        category=None,
        actor=Actor(
            type=over.pop("actor_type", rng.choice(("user", "user", "service"))),
            id=actor,
            ip=rng.choice((None, "10.0.0.1", "10.0.0.2", "2001:db8::7")),
        ),
        targets=over.pop("targets", targets),
        outcome=Outcome(outcome, None),
        source=over.pop("source", rng.choice(SOURCES)),
        metadata={},
    )


def make_events() -> list[AuditEvent]:
    rng = random.Random(11)
    events = []
    for _ in range(2500):
        at = DAY0 + timedelta(microseconds=rng.randrange(3 * 86_400 * 1_000_000))
        events.append(_event("acme", at, rng))
    # around midnight UTC, to the microsecond
    for us in (-1, 0, 1, -60_000_000, 59_999_999):
        events.append(_event("acme", MIDNIGHT + timedelta(microseconds=us), rng))
    # ties: two actors and two targets with exactly the same number of events
    for i in range(9):
        at = DAY0 + timedelta(days=1, hours=3, minutes=i)
        events.append(_event("acme", at, rng, actor="tie-b", targets=(Target("x", "T-b"),)))
        events.append(_event("acme", at, rng, actor="tie-a", targets=(Target("x", "T-a"),)))
    # 25 sources in one hour, source k with k + 1 events
    for k in range(25):
        for i in range(k + 1):
            at = datetime(2025, 6, 15, 10, i, 30, tzinfo=UTC)
            events.append(_event("acme", at, rng, source=f"svc-{k:02d}"))
    # another tenant in the same hours, never counted for acme
    events += [_event("globex", DAY0 + timedelta(minutes=7 * i), rng) for i in range(300)]
    return events


EVENTS = make_events()
ACME = [e for e in EVENTS if e.tenant_id == "acme"]


@pytest.fixture(scope="module")
def live(kafka_bootstrap, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("analytics")
    settings = Settings.from_env(
        {},
        kafka_bootstrap=kafka_bootstrap,
        topic_prefix=f"an{uuid.uuid4().hex[:12]}",
        audit_partitions=3,
        state_dir=tmp / "state",
        duckdb_path=tmp / "ledger.duckdb",
        cache_dir=CACHE_DIR,
        rate_limit_burst=100_000,
        rate_limit_per_second=100_000.0,
    )
    ensure_topics(settings)
    codec = AvroCodec()
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=5)
    for e in EVENTS:
        value = codec.encode("AuditEvent", e.to_avro())
        producer.send(settings.audit_topic, key=e.tenant_id.encode(), value=value)
    producer.flush()
    producer.close()
    node = QueryNode(settings.with_overrides(materializer_max_batch=333))
    node.start()
    app = create_app(settings, node, audit_sink=audit_sink(settings))
    try:
        with live_server(app) as url:
            wait_for(lambda: node.readiness()["ready"], timeout=120, what="materialized")
            from cli.keys import create_key

            key = create_key(settings, "acme", ("audit:read",), name="analytics")
            wait_for(lambda: app.state.control.position > key.offset, timeout=20)
            import httpx

            with httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {key.token}"}, timeout=30
            ) as client:
                yield client, node
    finally:
        node.stop()


# -- the recount --------------------------------------------------------------------


def matches(e: AuditEvent, p: dict) -> bool:
    since = datetime.fromisoformat(p["since"])
    until = datetime.fromisoformat(p["until"])
    if not since <= e.occurred_at < until:
        return False
    action = p.get("action")
    if action is not None:
        if action.endswith(".*"):
            if not e.action.startswith(action[:-1]):
                return False
        elif e.action != action:
            return False
    if "actor_id" in p and e.actor.id != p["actor_id"]:
        return False
    if "actor_type" in p and e.actor.type != p["actor_type"]:
        return False
    if "target_id" in p and all(t.id != p["target_id"] for t in e.targets):
        return False
    if "outcome" in p and e.outcome.result != p["outcome"]:
        return False
    return not ("source" in p and e.source != p["source"])


STEP = {"minute": 60, "hour": 3600, "day": 86400}


def floor(at: datetime, interval: str) -> datetime:
    seconds = int(at.timestamp()) // STEP[interval] * STEP[interval]
    return datetime.fromtimestamp(seconds, UTC)


def expected_buckets(p: dict, interval: str) -> list[datetime]:
    since = datetime.fromisoformat(p["since"])
    until = datetime.fromisoformat(p["until"])
    at, out = floor(since, interval), []
    while at < until:
        out.append(at)
        at += timedelta(seconds=STEP[interval])
    return out


def group_key(e: AuditEvent, group: str) -> str:
    return {
        "action": e.action,
        "outcome": e.outcome.result,
        "actor_type": e.actor.type,
        "source": e.source,
    }[group]


def recount_timeseries(p: dict, interval: str, group_by: str | None) -> dict:
    buckets = expected_buckets(p, interval)
    index = {b: i for i, b in enumerate(buckets)}
    chosen = [e for e in ACME if matches(e, p)]
    counts = [0] * len(buckets)
    per: dict[str, list[int]] = {}
    for e in chosen:
        i = index[floor(e.occurred_at, interval)]
        counts[i] += 1
        if group_by:
            per.setdefault(group_key(e, group_by), [0] * len(buckets))[i] += 1
    out = {"buckets": [b.isoformat() for b in buckets], "counts": counts, "total": len(chosen)}
    if group_by:
        ranked = sorted(per.items(), key=lambda kv: (-sum(kv[1]), kv[0]))
        out["series"] = [{"key": k, "total": sum(c), "counts": c} for k, c in ranked[:20]]
        rest = ranked[20:]
        out["other"] = (
            {
                "keys": len(rest),
                "total": sum(sum(c) for _, c in rest),
                "counts": [sum(c[i] for _, c in rest) for i in range(len(buckets))],
            }
            if rest
            else None
        )
    return out


def recount_top(p: dict, dimension: str, limit: int) -> dict:
    chosen = [e for e in ACME if matches(e, p)]
    counter: Counter[str] = Counter()
    for e in chosen:
        if dimension == "actor":
            counter[e.actor.id] += 1
        elif dimension == "action":
            counter[e.action] += 1
        elif dimension == "source_ip":
            if e.actor.ip is not None:
                counter[e.actor.ip] += 1
        else:
            for target_id in {t.id for t in e.targets}:
                counter[target_id] += 1
    ranked = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    total = len(chosen)
    return {
        "total": total,
        "items": [{"key": k, "count": n, "share": n / total} for k, n in ranked],
    }


def recount_figures(p: dict, interval: str) -> dict:
    chosen = [e for e in ACME if matches(e, p)]
    failures = sum(1 for e in chosen if e.outcome.result in ("failure", "denied"))
    per_bucket = Counter(floor(e.occurred_at, interval) for e in chosen)
    busiest = min(per_bucket.items(), key=lambda kv: (-kv[1], kv[0]), default=None)
    return {
        "since": p["since"],
        "until": p["until"],
        "total": len(chosen),
        "distinct_actors": len({e.actor.id for e in chosen}),
        "distinct_targets": len({t.id for e in chosen for t in e.targets}),
        "failures": failures,
        "failure_rate": failures / len(chosen) if chosen else None,
        "busiest_bucket": None
        if busiest is None
        else {"start": busiest[0].isoformat(), "count": busiest[1]},
    }


# -- the cases ----------------------------------------------------------------------

ALIGNED = {"since": "2025-06-09T00:00:00+00:00", "until": "2025-06-12T00:00:00+00:00"}
RAGGED = {"since": "2025-06-09T22:17:42.5+00:00", "until": "2025-06-11T01:02:03.25+00:00"}
AROUND_MIDNIGHT = {
    "since": "2025-06-10T23:58:30+00:00",
    "until": "2025-06-11T00:01:00.000001+00:00",
}
FILTERS = [
    {},
    {"action": "claim.*"},
    {"action": "member.viewed", "outcome": "failure"},
    {"source": "reporting", "actor_type": "service"},
    {"actor_id": "usr_03"},  # the actor and target tables for whole days, not the rollups
    {"actor_id": "usr_05", "action": "claim.*"},
    {"target_id": "CLM-4", "action": "claim.*"},
]


def _iso(p: dict) -> dict:
    return {
        k: datetime.fromisoformat(v).isoformat() for k, v in p.items() if k in ("since", "until")
    }


@pytest.mark.parametrize(
    "window", [ALIGNED, RAGGED, AROUND_MIDNIGHT], ids=["aligned", "ragged", "midnight"]
)
@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: ",".join(f) or "none")
def test_timeseries_equals_a_recount(live, window, filters):
    client, _ = live
    for interval in ("minute", "hour", "day"):
        if interval == "minute" and window is ALIGNED:
            continue  # 4320 buckets: covered by the other windows
        for group_by in (None, "action", "outcome", "actor_type", "source"):
            params = {**window, **filters, "interval": interval}
            if group_by:
                params["group_by"] = group_by
            resp = client.get(f"{BASE}/timeseries", params=params)
            assert resp.status_code == 200, resp.text
            body = resp.json()
            want = recount_timeseries({**window, **filters}, interval, group_by)
            assert body["buckets"] == want["buckets"]
            assert body["counts"] == want["counts"], (interval, group_by)
            assert body["total"] == want["total"]
            assert {**body, **_iso(window)} == body  # since/until echoed as +00:00
            if group_by:
                assert body["series"] == want["series"]
                assert body["other"] == want["other"]


def test_midnight_edges_to_the_microsecond(live):
    client, _ = live
    body = client.get(f"{BASE}/timeseries", params={**AROUND_MIDNIGHT, "interval": "day"}).json()
    assert body["buckets"] == ["2025-06-10T00:00:00+00:00", "2025-06-11T00:00:00+00:00"]
    before = [e for e in ACME if matches(e, AROUND_MIDNIGHT) and e.occurred_at < MIDNIGHT]
    assert body["counts"][0] == len(before) >= 2  # 23:59:00 and 23:59:59.999999
    minute = client.get(
        f"{BASE}/timeseries", params={**AROUND_MIDNIGHT, "interval": "minute"}
    ).json()
    assert minute["buckets"][0] == "2025-06-10T23:58:00+00:00"  # aligned before `since`
    assert minute["buckets"][-1] == "2025-06-11T00:01:00+00:00"  # holds only 00:01:00.000000
    assert len(minute["buckets"]) == 4


def test_empty_buckets_are_zero_and_the_whole_range_is_covered(live):
    client, _ = live
    params = {"since": "2025-06-20T00:00:00Z", "until": "2025-06-21T00:00:00Z", "interval": "hour"}
    body = client.get(f"{BASE}/timeseries", params=params).json()
    assert len(body["buckets"]) == 24 and body["counts"] == [0] * 24 and body["total"] == 0
    body = client.get(f"{BASE}/timeseries", params={**params, "group_by": "action"}).json()
    assert body["series"] == [] and body["other"] is None


@pytest.mark.parametrize(
    ("since", "until", "interval", "buckets"),
    [
        ("2025-06-10T00:00:00Z", "2025-06-10T06:00:00Z", "minute", 360),
        ("2025-06-10T00:00:00Z", "2025-06-10T08:20:00Z", "minute", 500),
        ("2025-06-10T00:00:00Z", "2025-06-10T08:20:01Z", "hour", 9),
        ("2025-06-01T00:00:00Z", "2025-06-21T00:00:00Z", "hour", 480),
        ("2025-05-13T00:00:00Z", "2025-06-12T00:00:00Z", "day", 30),
        ("2024-05-08T00:00:00Z", "2025-06-12T00:00:00Z", "day", 400),
    ],
)
def test_auto_picks_the_finest_interval_with_at_most_500_buckets(
    live, since, until, interval, buckets
):
    client, _ = live
    for extra in ({}, {"interval": "auto"}):
        body = client.get(
            f"{BASE}/timeseries", params={"since": since, "until": until, **extra}
        ).json()
        assert body["interval"] == interval and len(body["buckets"]) == buckets
    want = recount_timeseries({"since": since, "until": until}, interval, None)
    assert body["counts"] == want["counts"]


def test_more_than_20_groups_give_20_series_and_other(live):
    """Grouped by source over an hour with 25 sources (from the rollups), recounted."""
    client, _ = live
    body = client.get(
        f"{BASE}/timeseries", params={**MANY_SOURCES, "group_by": "source", "interval": "minute"}
    ).json()
    want = recount_timeseries(MANY_SOURCES, "minute", "source")
    assert len(body["series"]) == 20 and body["other"]["keys"] == 5
    assert body["series"] == want["series"] and body["other"] == want["other"]
    assert body["series"][0]["key"] == "svc-24" and body["other"]["total"] == 1 + 2 + 3 + 4 + 5


@pytest.mark.parametrize("dimension", ["actor", "action", "target", "source_ip"])
@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: ",".join(f) or "none")
def test_top_equals_a_recount_with_documented_tie_break(live, dimension, filters):
    client, _ = live
    for window in (ALIGNED, RAGGED):
        for limit in (1, 5, 100):
            params = {**window, **filters, "dimension": dimension, "limit": limit}
            resp = client.get(f"{BASE}/top", params=params)
            assert resp.status_code == 200, resp.text
            body = resp.json()
            want = recount_top({**window, **filters}, dimension, limit)
            assert body["total"] == want["total"]
            assert body["items"] == want["items"], (window, limit)
            assert body["dimension"] == dimension and body["limit"] == limit


def test_ties_are_broken_by_key_ascending(live):
    client, _ = live
    window = {"since": "2025-06-10T03:00:00Z", "until": "2025-06-10T03:09:00Z"}
    actors = client.get(f"{BASE}/top", params={**window, "dimension": "actor"}).json()
    assert [i["key"] for i in actors["items"][:2]] == ["tie-a", "tie-b"]
    assert actors["items"][0]["count"] == actors["items"][1]["count"] == 9
    targets = client.get(f"{BASE}/top", params={**window, "dimension": "target"}).json()
    assert [i["key"] for i in targets["items"][:2]] == ["T-a", "T-b"]


@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: ",".join(f) or "none")
def test_summary_equals_a_recount_with_the_previous_period(live, filters):
    client, _ = live
    for window, interval in ((ALIGNED, "day"), (RAGGED, "hour"), (RAGGED, "minute")):
        params = {**window, **filters, "interval": interval}
        resp = client.get(f"{BASE}/summary", params=params)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        since = datetime.fromisoformat(window["since"])
        until = datetime.fromisoformat(window["until"])
        prev = {"since": (since - (until - since)).isoformat(), "until": since.isoformat()}
        now = recount_figures({**_iso(window), **filters}, interval)
        before = recount_figures({**prev, **filters}, interval)
        assert body["current"] == now
        assert body["previous"] == before
        assert body["interval"] == interval
        for name in ("total", "distinct_actors", "distinct_targets", "failures"):
            change = body["change"][name]
            assert change["absolute"] == now[name] - before[name]
            assert change["relative"] == (
                (now[name] - before[name]) / before[name] if before[name] else None
            )
    assert body["previous"]["total"] > 0  # RAGGED's previous period holds events


BAD = [
    ({"until": "2025-06-12T00:00:00Z"}, "since"),
    ({"since": "2025-06-12T00:00:00Z"}, "until"),
    ({"since": "2025-06-12T00:00:00Z", "until": "2025-06-12T00:00:00Z"}, "until"),
    ({"since": "2025-06-12T00:00:00Z", "until": "2025-06-11T00:00:00Z"}, "until"),
    ({"since": "2024-01-01T00:00:00Z", "until": "2025-06-12T00:00:00Z"}, "until"),
    ({"since": "2025-06-12", "until": "2025-06-13T00:00:00Z"}, "since"),
    ({"since": "2025-06-12T00:00:00", "until": "2025-06-13T00:00:00Z"}, "since"),
    ({"since": "yesterday", "until": "2025-06-13T00:00:00Z"}, "since"),
    ({**ALIGNED, "cursor": "abc"}, "cursor"),
    ({**ALIGNED, "outcome": "meh"}, "outcome"),
    ({**ALIGNED, "bogus": "1"}, "bogus"),
]


@pytest.mark.parametrize("route", ["timeseries", "top", "summary"])
@pytest.mark.parametrize(("params", "field"), BAD)
def test_bad_ranges_and_parameters_answer_422_in_the_error_shape(live, route, params, field):
    client, _ = live
    if route == "top":
        params = {**params, "dimension": "actor"}
    resp = client.get(f"{BASE}/{route}", params=params)
    assert resp.status_code == 422, resp.text
    error = resp.json()["error"]
    assert error["type"] == "validation_error"
    assert field in [d["field"] for d in error["details"]], error


@pytest.mark.parametrize(
    ("route", "params", "field"),
    [
        ("timeseries", {"interval": "week"}, "interval"),
        ("timeseries", {"interval": "minute"}, "interval"),  # over 5000 buckets (window below)
        ("timeseries", {"group_by": "actor_id"}, "group_by"),
        ("top", {}, "dimension"),
        ("top", {"dimension": "tenant"}, "dimension"),
        ("top", {"dimension": "actor", "limit": "0"}, "limit"),
        ("top", {"dimension": "actor", "limit": "101"}, "limit"),
        ("top", {"dimension": "actor", "limit": "ten"}, "limit"),
        ("summary", {"interval": "fortnight"}, "interval"),
        ("timeseries", {"interval": "hour", "interval ": "x"}, "interval "),
    ],
)
def test_unknown_dimensions_intervals_and_limits_answer_422(live, route, params, field):
    client, _ = live
    window = ALIGNED
    if params.get("interval") == "minute":
        window = {"since": "2025-06-01T00:00:00Z", "until": "2025-06-05T00:00:01Z"}  # 5761 buckets
    resp = client.get(f"{BASE}/{route}", params={**window, **params})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["details"][0]["field"] == field


def test_scope_and_tenant_come_from_the_key(settings):
    with running_api(settings) as api:
        insert_events(api.reader, [make_event("acme", i) for i in range(5)])
        insert_events(api.reader, [make_event("globex", i) for i in range(3)], start_offset=10)
        export_only = api.issue("acme", ("audit:export",))
        resp = api.get(f"{BASE}/summary", export_only.token, params=ALIGNED)
        assert resp.status_code == 403
        assert resp.json()["error"]["details"] == [
            {"field": "scope", "reason": "requires audit:read"}
        ]
        assert api.get(f"{BASE}/summary", None, params=ALIGNED).status_code == 401
        globex = api.issue("globex")
        window = {"since": "2025-03-01T00:00:00Z", "until": "2025-03-02T00:00:00Z"}
        body = api.get(f"{BASE}/summary", globex.token, params=window).json()
        assert body["current"]["total"] == 3


def test_rollup_served_answers_read_the_rollups(settings):
    """Proof the rollups are read: a delta planted in them shows where (and only where)
    the request can be served from them."""
    with running_api(settings) as api:
        insert_events(api.reader, [make_event("acme", i) for i in range(30)])
        key = api.issue("acme")
        window = {"since": "2025-03-01T00:00:00Z", "until": "2025-03-02T00:00:00Z"}

        def total(**extra):
            # daily buckets: a summary counts at the grain of its buckets (auto: hours here)
            params = {**window, "interval": "day", **extra}
            body = api.get(f"{BASE}/summary", key.token, params=params).json()
            return body["current"]["total"]

        assert total() == total(action="claim.viewed") == total(actor_id="user-1") + 20
        cur = api.reader.connection.cursor()
        cur.execute(
            "INSERT INTO audit_rollup_hour VALUES ('acme', '2025-03-01 12:00:00+00', "
            "'claim.viewed', 'success', 'claims-service', 'user', 1000)"
        )
        cur.execute(
            "INSERT INTO audit_rollup_day VALUES ('acme', '2025-03-01 00:00:00+00', "
            "'claim.viewed', 'success', 'claims-service', 'user', 200)"
        )
        cur.close()
        assert total() == total(action="claim.viewed") == 230  # a whole day: the day rollup
        assert total(actor_id="user-1") == 10  # served by the rows
        hours = {"since": "2025-03-01T00:00:00Z", "until": "2025-03-01T23:00:00Z"}
        assert total(**hours) == 1030  # whole hours, not a whole day: the hour rollup


@pytest.mark.parametrize("bucket", [None, "minute", "hour", "day"])
def test_the_plan_covers_the_range_with_the_coarsest_aligned_pieces(bucket):
    """Pieces are contiguous, rollup pieces aligned to their grain and never coarser than
    a bucket; days are read from the day rollup only for daily buckets or none."""
    step = {"minute": 60, "hour": 3600, "day": 86400}
    since = datetime(2025, 2, 27, 22, 58, 30, 5, tzinfo=UTC)
    until = datetime(2025, 3, 3, 1, 2, 3, tzinfo=UTC)
    pieces = analytics.plan(since, until, step[bucket] * 10**6 if bucket else None, True)
    assert pieces[0].lo == since and pieces[-1].hi == until
    assert all(a.hi == b.lo and a.lo < a.hi for a, b in itertools.pairwise(pieces))
    for p in pieces:
        if p.source != "rows":
            assert p.lo.timestamp() % step[p.source] == p.hi.timestamp() % step[p.source] == 0
    sources = [p.source for p in pieces]
    expected = {
        None: ["rows", "minute", "hour", "day", "hour", "minute", "rows"],
        "day": ["rows", "minute", "hour", "day", "hour", "minute", "rows"],
        "hour": ["rows", "minute", "hour", "minute", "rows"],
        "minute": ["rows", "minute", "rows"],
    }
    assert sources == expected[bucket]
    assert analytics.plan(since, until, None, False) == [analytics.Piece("rows", since, until)]


def test_top_actors_and_distinct_actors_read_the_actor_table(settings):
    """Proof the actor table is read: a delta planted in it for a whole day shows in
    ``top`` by actor and in the distinct actors, only where the filters allow it."""
    with running_api(settings) as api:
        insert_events(api.reader, [make_event("acme", i) for i in range(30)])
        key = api.issue("acme")
        day = {"since": "2025-03-01T00:00:00Z", "until": "2025-03-02T00:00:00Z"}
        ragged = {"since": "2025-03-01T00:00:00Z", "until": "2025-03-01T23:00:00Z"}

        def top(**params):
            body = api.get(f"{BASE}/top", key.token, params={"dimension": "actor", **params})
            assert body.status_code == 200, body.text
            return [(i["key"], i["count"]) for i in body.json()["items"]]

        def actors(**params):
            body = api.get(f"{BASE}/summary", key.token, params=params).json()
            return body["current"]["distinct_actors"]

        want = [("user-0", 10), ("user-1", 10), ("user-2", 10)]
        assert top(**day) == top(**ragged) == want and actors(**day) == 3
        cur = api.reader.connection.cursor()
        cur.execute(
            "INSERT INTO audit_actor_day VALUES "
            "('acme', '2025-03-01 00:00:00+00', 'ghost', 'claim.viewed', 500, 0)"
        )
        cur.close()
        assert top(**day) == [("ghost", 500), *want]  # a whole day: the actor table
        assert top(**day, action="claim.*") == [("ghost", 500), *want]
        assert top(**day, actor_id="ghost") == [("ghost", 500)]
        assert actors(**day) == actors(**day, action="claim.viewed") == 4
        assert top(**ragged) == want and actors(**ragged) == 3  # no whole day: the rows
        assert top(**day, outcome="success") == want  # a filter it lacks: the rows
        assert actors(**day, source="claims-service") == 3


def test_targets_and_actor_filtered_figures_read_the_per_day_tables(settings):
    """Proof the target table serves distinct targets and ``top`` by target, and the
    actor table an ``actor_id``-filtered summary's totals and failures: deltas planted
    for a whole day show, only where the filters allow them."""
    with running_api(settings) as api:
        insert_events(api.reader, [make_event("acme", i) for i in range(30)])
        key = api.issue("acme")
        day = {"since": "2025-03-01T00:00:00Z", "until": "2025-03-02T00:00:00Z"}

        def summary(**params):
            body = api.get(f"{BASE}/summary", key.token, params={**day, **params})
            assert body.status_code == 200, body.text
            return body.json()["current"]

        def top(**params):
            body = api.get(
                f"{BASE}/top", key.token, params={**day, "dimension": "target", **params}
            )
            assert body.status_code == 200, body.text
            return [(i["key"], i["count"]) for i in body.json()["items"][:2]]

        before = summary(actor_id="user-1", interval="day")
        assert (before["total"], before["failures"], before["distinct_targets"]) == (10, 0, 10)
        assert top() == [("CLM-0", 1), ("CLM-1", 1)]
        cur = api.reader.connection.cursor()
        cur.execute(
            "INSERT INTO audit_actor_target_day VALUES "
            "('acme', '2025-03-01 00:00:00+00', 'user-1', 'claim.viewed', 'ghost', 7)"
        )
        cur.execute(
            "INSERT INTO audit_actor_day VALUES "
            "('acme', '2025-03-01 00:00:00+00', 'user-1', 'claim.viewed', 5, 4)"
        )
        cur.close()
        assert top() == top(action="claim.*") == [("ghost", 7), ("CLM-0", 1)]
        assert top(actor_id="user-1")[0] == ("ghost", 7)
        assert top(actor_id="user-2")[0] != ("ghost", 7)
        assert top(outcome="success")[0] == ("CLM-0", 1)  # a filter it lacks: the rows
        assert summary(outcome="success")["distinct_targets"] == 30  # the rows
        assert summary()["distinct_targets"] == 30  # the target sets (next test), not this table
        now = summary(actor_id="user-1", interval="day")
        assert (now["total"], now["failures"], now["distinct_targets"]) == (15, 4, 11)
        assert now["busiest_bucket"] == {"start": "2025-03-01T00:00:00+00:00", "count": 15}
        assert summary(actor_id="user-1", interval="hour")["total"] == 10  # hours: the rows
        assert summary(actor_id="user-1", interval="day", source="claims-service")["failures"] == 0


def test_distinct_targets_without_other_filters_are_a_union_of_the_target_sets(settings):
    """Proof the target sets serve a summary's distinct targets: whole days from the day
    sets, whole hours from the hour sets, the edges from the rows; a planted number shows
    only where the range and filters read the sets."""
    from pyroaring import BitMap

    with running_api(settings) as api:
        insert_events(api.reader, [make_event("acme", i) for i in range(30)])  # 12:00:00-29
        key = api.issue("acme")

        def distinct(since: str, until: str, **params) -> int:
            body = api.get(
                f"{BASE}/summary", key.token, params={"since": since, "until": until, **params}
            )
            assert body.status_code == 200, body.text
            return body.json()["current"]["distinct_targets"]

        day = ("2025-03-01T00:00:00Z", "2025-03-02T00:00:00Z")
        hours = ("2025-03-01T11:59:30Z", "2025-03-01T13:00:10Z")  # edges, the 12:00 hour
        seconds = ("2025-03-01T12:00:10Z", "2025-03-01T12:00:20Z")  # rows only
        assert distinct(*day) == distinct(*hours) == 30 and distinct(*seconds) == 10
        cur = api.reader.connection.cursor()
        ghost = BitMap([10_000]).serialize()
        for grain, bucket in (
            ("day", "2025-03-01 00:00:00+00"),
            ("hour", "2025-03-01 12:00:00+00"),
        ):
            cur.execute(
                "INSERT INTO audit_target_sets VALUES ('acme', ?, ?, 'claim.viewed', ?)",
                [grain, bucket, ghost],
            )
        cur.close()
        assert distinct(*day) == distinct(*hours) == 31
        assert distinct(*day, action="claim.viewed") == distinct(*day, action="claim.*") == 31
        assert distinct(*day, action="claim.exported") == 0
        assert distinct(*seconds) == 10  # no whole hour: the rows
        assert distinct(*day, outcome="success") == distinct(*day, actor_id="user-1") + 20 == 30


def test_a_widened_actor_filter_matches_every_stored_value_in_the_per_day_tables(settings):
    """A PHI mode widens ``actor_id`` to several stored values (tokens); the actor and
    target tables match any of them, as the rows do."""
    with running_api(settings) as api:
        insert_events(api.reader, [make_event("acme", i) for i in range(30)])
        since, until = datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 3, 2, tzinfo=UTC)
        widened = Filters(since=since, until=until, actor_id="user-1,user-2",
                          actor_ids=("user-1", "user-2"))  # fmt: skip
        cur = api.reader.connection.cursor()
        try:
            for rollups in (True, False):
                top = analytics.top(cur, "acme", widened, "actor", 10, rollups)
                assert [(i["key"], i["count"]) for i in top["items"]] == [
                    ("user-1", 10), ("user-2", 10)], rollups  # fmt: skip
                body = analytics_summary.summary(cur, "acme", widened, "day", rollups)
                assert body["current"]["total"] == 20, rollups
                assert body["current"]["distinct_actors"] == 2, rollups
                assert body["current"]["distinct_targets"] == 20, rollups
        finally:
            cur.close()

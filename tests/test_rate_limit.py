"""Per-key token buckets: 429 with Retry-After, RateLimit-* headers on every answer."""

from __future__ import annotations

import pytest

from query_api.ratelimit import BucketMap
from tests.api_support import Api, running_api

EVENTS = "/api/v2/public/audit/events"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_arithmetic():
    clock = Clock()
    buckets = BucketMap(capacity=3, rate=0.5, clock=clock)
    first = buckets.take("k")
    assert (first.allowed, first.limit, first.remaining, first.reset_s) == (True, 3, 2, 2)
    buckets.take("k")
    third = buckets.take("k")
    assert third.allowed and third.remaining == 0 and third.reset_s == 6
    refused = buckets.take("k")
    assert not refused.allowed
    assert refused.retry_after_s == 2  # one token takes 2 s at 0.5/s
    assert refused.headers()["Retry-After"] == "2"
    assert buckets.take("other").allowed  # buckets are per key
    clock.now += 2
    assert buckets.take("k").allowed
    clock.now += 100
    assert buckets.peek("k").remaining == 3  # never above capacity


def test_bucket_map_is_bounded():
    buckets = BucketMap(capacity=1, rate=1, clock=Clock(), max_buckets=10)
    for i in range(100):
        buckets.take(f"k{i}")
    assert len(buckets._buckets) == 10


@pytest.fixture
def api(settings):
    limited = settings.with_overrides(rate_limit_burst=3, rate_limit_per_second=0.05)
    with running_api(limited) as api:
        yield api


def test_key_is_limited_with_headers_on_every_answer(api: Api):
    key, other = api.issue("acme"), api.issue("acme")
    remaining = []
    for _ in range(3):
        resp = api.get(EVENTS, key.token)
        assert resp.status_code == 200
        assert resp.headers["RateLimit-Limit"] == "3"
        assert int(resp.headers["RateLimit-Reset"]) >= 1
        remaining.append(int(resp.headers["RateLimit-Remaining"]))
    assert remaining == [2, 1, 0]
    refused = api.get(EVENTS, key.token)
    assert refused.status_code == 429
    assert refused.json()["error"]["type"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 20
    assert refused.headers["RateLimit-Remaining"] == "0"
    # Another key of the same tenant has its own bucket; errors carry the headers too.
    resp = api.get(EVENTS, other.token, params={"limit": "0"})
    assert resp.status_code == 422
    assert resp.headers["RateLimit-Remaining"] == "2"
    unauth = api.client.get(EVENTS)
    assert unauth.status_code == 401 and "RateLimit-Limit" in unauth.headers

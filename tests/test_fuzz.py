"""Property-based fuzzing of the public API's parsers: any input is a value or a 4xx.

- :func:`query_api.cursor.decode` on any text, and on any JSON payload signed with
  the secret (what a leaked secret allows): a :class:`Position` or a
  :class:`ValidationError`, never another exception.
- :func:`query_api.filters.parse_list_query` (and through it ``parse_time``) on
  any query items: a :class:`ListQuery` or a :class:`ValidationError`.
- The live app (real uvicorn, real DuckDB, real control topic): any query string
  on the list and single-event routes answers 200 or 4xx, never 5xx.
"""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from query_api import cursor
from query_api.filters import PARAMETERS, Filters, ListQuery, parse_list_query
from tests.api_support import insert_events, make_event, running_api
from velora.errors import ValidationError
from velora.settings import Secret

SECRET = Secret("cursor-secret-for-fuzzing")
FP = Filters().fingerprint()
EVENTS = "/api/v2/public/audit/events"

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)
payloads = st.one_of(
    json_values,
    st.fixed_dictionaries({"v": json_values, "o": json_values, "e": json_values}),
    st.fixed_dictionaries(
        {
            "v": st.sampled_from([1, True, 1.0, "1", 2]),
            "o": st.one_of(st.integers(), st.floats(), st.booleans(), st.text(max_size=5)),
            "e": st.one_of(st.text(max_size=200), st.integers(), st.none()),
        }
    ),
)


def _signed(payload: object) -> str:
    raw = json.dumps(payload, separators=(",", ":"), allow_nan=True).encode()
    return cursor._b64(raw) + "." + cursor._b64(cursor._tag(SECRET, "acme", FP, raw))


def _value_or_422(fn, *args):
    try:
        return fn(*args)
    except ValidationError as exc:
        assert exc.details, "a 422 names what was wrong"
        return None


@hsettings(max_examples=400, deadline=None)
@given(st.text(max_size=200))
def test_cursor_decode_of_any_text_is_a_position_or_422(text):
    result = _value_or_422(cursor.decode, SECRET, "acme", FP, text)
    assert result is None or isinstance(result, cursor.Position)


@hsettings(max_examples=400, deadline=None)
@given(payloads)
def test_cursor_decode_of_any_signed_payload_is_a_position_or_422(payload):
    result = _value_or_422(cursor.decode, SECRET, "acme", FP, _signed(payload))
    if result is not None:
        assert 0 <= result.occurred_us <= cursor.MAX_OCCURRED_US
        assert isinstance(result.event_id, str) and 0 < len(result.event_id) <= 128


timestamps = st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat()),
    st.from_regex(
        r"[0-9]{1,6}-[0-9W]{1,3}-[0-9]{1,2}([Tt ][0-9:.,]{1,20})?([Zz]|[+-][0-9:]{1,6})?"
    ),
    st.text(max_size=40),
)
names = st.one_of(st.sampled_from(PARAMETERS), st.text(max_size=12))
values = st.one_of(
    st.text(max_size=300),
    timestamps,
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.sampled_from(["claim.*", ".*", "*", "success", "1000", "1001", "0", "٣", "²"]),
)
items = st.lists(st.tuples(names, values), max_size=6)


@hsettings(max_examples=600, deadline=None)
@given(items)
def test_filter_parsing_of_any_items_is_a_query_or_422(query_items):
    result = _value_or_422(parse_list_query, query_items)
    if result is not None:
        assert isinstance(result, ListQuery)
        assert 1 <= result.limit <= 1000
        result.filters.fingerprint()  # every parsed query can be bound to a cursor


@hsettings(max_examples=300, deadline=None)
@given(st.sampled_from(["since", "until"]), timestamps)
def test_time_filters_are_aware_utc_or_422(name, value):
    result = _value_or_422(parse_list_query, [(name, value)])
    if result is not None:
        parsed = getattr(result.filters, name)
        assert parsed.utcoffset().total_seconds() == 0


raw_queries = st.one_of(
    st.text(max_size=120),
    items.map(lambda xs: "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in xs)),
)


@pytest.fixture
def fuzz_api(settings):
    roomy = settings.with_overrides(rate_limit_burst=100_000, rate_limit_per_second=100_000.0)
    with running_api(roomy) as api:
        insert_events(api.reader, [make_event("acme", i) for i in range(30)])
        yield api, api.issue("acme")


def test_the_live_app_answers_any_query_string_with_200_or_4xx(fuzz_api):
    api, key = fuzz_api
    auth = {"Authorization": f"Bearer {key.token}"}
    seen: set[int] = set()

    @hsettings(
        max_examples=250,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(raw_queries, st.sampled_from([EVENTS, f"{EVENTS}/some-id", f"{EVENTS}/%00"]))
    def check(raw, path):
        query = quote(raw, safe="=&%+;,/:@*.-_~")
        resp = api.client.get(f"{path}?{query}", headers=auth)
        seen.add(resp.status_code)
        assert resp.status_code < 500, (raw, resp.text)
        if resp.status_code >= 400:
            assert set(resp.json()["error"]) == {"type", "message", "details"}

    check()
    assert 200 in seen and seen & {400, 404, 422}

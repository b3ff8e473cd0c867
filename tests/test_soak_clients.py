"""The soak bench's client parts: cheap batch bodies that are still valid, distinct and ordered."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime

from bench.soak_clients import BATCH, SOURCE, Batches, order_problem
from ingest.body import JSON, parse_events
from ingest.validation import validate_event


def test_a_batch_body_is_valid_ingest_input_with_fresh_ids_and_rising_times():
    batches = Batches(["soak-00", "soak-01"], seed=3)
    first, first_ids = batches.next()
    second, second_ids = batches.next()
    events = json.loads(first) + json.loads(second)
    assert len(events) == 2 * BATCH
    assert [(e["tenant_id"], e["event_id"]) for e in events] == first_ids + second_ids
    assert len({e["event_id"] for e in events}) == 2 * BATCH
    assert {e["source"] for e in events} == {SOURCE}
    times = [datetime.fromisoformat(e["occurred_at"]) for e in events]
    assert all(a < b for a, b in itertools.pairwise(times))
    assert events[0]["tenant_id"] == "soak-00" and events[1]["tenant_id"] == "soak-01"
    now = datetime.now(UTC)
    for item in parse_events(first, JSON):  # ingest's own rules take the body as it is
        validate_event(item, now)


def test_order_problem_finds_repeats_and_breaks_of_newest_first():
    newest_first = [
        ("2026-12-02T10:00:02+00:00", "b", SOURCE),
        ("2026-12-02T10:00:01+00:00", "a", SOURCE),
    ]
    assert order_problem(newest_first) is None
    assert order_problem(newest_first[::-1]) == "order broken at b"
    assert order_problem(newest_first + newest_first[:1]) == "1 events repeated"

"""velora.logs.Throttled: a flood of refusals makes one log line per interval, not one each."""

from __future__ import annotations

import logging

from velora.logs import Throttled


def test_a_flood_makes_one_line_per_interval_and_counts_the_rest(caplog, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("velora.logs.time.monotonic", lambda: now[0])
    say = Throttled(logging.getLogger("t"), logging.WARNING, every_s=10.0)
    with caplog.at_level(logging.INFO, logger="t"):
        for _ in range(500):
            say("refused %s", "x")
        now[0] += 10.0
        say("refused %s", "y")
        now[0] += 10.0
        say("refused %s", "z")
    assert [r.getMessage() for r in caplog.records] == [
        "refused x",
        "refused y (and 499 more since the last such line)",
        "refused z",
    ]
    assert {r.levelno for r in caplog.records} == {logging.WARNING}

"""``python -m bench``'s arguments: the query suite's sizes."""

from __future__ import annotations

import pytest

from bench.__main__ import build_parser


def test_query_events_takes_one_or_more_sizes():
    assert build_parser().parse_args(["query"]).query_events is None  # the suite's default
    args = build_parser().parse_args(["query", "--query-events", "10000000"])
    assert args.query_events == (10_000_000,)
    args = build_parser().parse_args(["--query-events", "1000,20000", "query"])
    assert args.query_events == (1000, 20_000)


@pytest.mark.parametrize("raw", ["", "ten", "1000,", "0", "-5", "1e6"])
def test_query_events_refuses_what_is_not_a_count(raw, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["query", "--query-events", raw])
    assert exc.value.code == 2
    assert "--query-events" in capsys.readouterr().err

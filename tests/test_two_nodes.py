"""Two query nodes built from the same log serve identical answers, and a page cursor
from one node is good on the other: nodes behind a load balancer are interchangeable.

Node A starts early and materializes the log in many small batches while events
arrive; node B starts later and catches up in large ones. Both are real
``QueryNode`` processes' worth of parts (materializer, DuckDB file, control
follower, read audit to Kafka) behind real uvicorn servers.
"""

from __future__ import annotations

from contextlib import ExitStack
from datetime import UTC, datetime, timedelta

import httpx

from cli.keys import create_key
from ledger.node import QueryNode
from query_api.app import create_app
from tests.api_support import audit_sink, live_server
from tests.factory import EventFactory, produce
from tests.helpers import wait_for

EVENTS = "/api/v2/public/audit/events"


def _rows(node: QueryNode) -> int:
    return node.cursor().execute("SELECT count(*) FROM audit_events").fetchone()[0]


def _walk(urls: list[str], token: str, params: dict[str, str]) -> list[dict]:
    """Every page, asking the nodes in turn (page 1 from the first, page 2 from the next...)."""
    events: list[dict] = []
    cursor = None
    for turn in range(1000):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        r = httpx.get(f"{urls[turn % len(urls)]}{EVENTS}", params=query,
                      headers={"Authorization": f"Bearer {token}"}, timeout=30)  # fmt: skip
        assert r.status_code == 200, r.text
        events += r.json()["events"]
        cursor = r.json()["page"]["next_cursor"]
        if cursor is None:
            return events
    raise AssertionError("paging did not end")


def test_two_nodes_from_one_log_serve_identical_answers(settings, tmp_path):
    factory = EventFactory(templates=300)  # 20 tenants; many events share an occurred_at
    produce(settings, [factory.make() for _ in range(2000)])
    nodes = {
        name: QueryNode(settings.with_overrides(
            duckdb_path=tmp_path / f"{name}.duckdb", state_dir=tmp_path / name))
        for name in ("a", "b")
    }  # fmt: skip
    keys = {t: create_key(settings, t, ("audit:read",), name="lb").token
            for t in ("tenant-00", "tenant-07")}  # fmt: skip
    with ExitStack() as stack:
        nodes["a"].start()
        stack.callback(nodes["a"].stop)
        produce(settings, [factory.make() for _ in range(1500)])
        wait_for(lambda: _rows(nodes["a"]) > 0, timeout=60, what="node a materializing")
        nodes["b"].start()
        stack.callback(nodes["b"].stop)
        produce(settings, [factory.make() for _ in range(500)])
        for node in nodes.values():
            wait_for(lambda n=node: _rows(n) >= 4000, timeout=120, what="both nodes caught up")
        urls = []
        for node in nodes.values():
            app = create_app(node.settings, node, audit_sink=audit_sink(settings))
            urls.append(stack.enter_context(live_server(app)))
        for url in urls:  # each node's control follower knows the keys
            wait_for(lambda u=url: httpx.get(f"{u}{EVENTS}", headers={
                "Authorization": f"Bearer {keys['tenant-00']}"}, timeout=10).status_code == 200,
                timeout=60, what="keys known")  # fmt: skip

        # the reads themselves are audited into the trail as they happen, so compare
        # the events that were in the log before the first read
        until = (datetime.now(UTC) - timedelta(days=1)).isoformat()
        for tenant, token in keys.items():
            for params in ({"until": until, "limit": "23"},
                           {"until": until, "limit": "7", "action": "claim.*"}):  # fmt: skip
                a_only = _walk(urls[:1], token, params)
                b_only = _walk(urls[1:], token, params)
                alternating = _walk(urls, token, params)
                if "action" in params:
                    assert 0 < len(a_only) < 200
                    assert all(e["action"].startswith("claim.") for e in a_only)
                else:
                    assert len(a_only) == 200, tenant  # 4000 events over 20 tenants
                assert a_only == b_only == alternating, (tenant, params)
                assert len({e["event_id"] for e in a_only}) == len(a_only)
            one = a_only[3]["event_id"]
            got = [httpx.get(f"{u}{EVENTS}/{one}", headers={"Authorization": f"Bearer {token}"},
                             timeout=10).json() for u in urls]  # fmt: skip
            assert got[0] == got[1] == a_only[3]

"""The portal in a real browser: Debian's chromium, driven by Playwright, against a live node.

The events are produced to the real broker and materialized by a QueryNode; the
page signs in with a real key, picks a custom range that holds the seeded events
(and not the reads the page itself causes, which are audited "now"), and must show
the numbers a plain-Python recount of the seeded events gives: the tiles, the
chart's data table, the top tables and the newest events with "load more". It
loads nothing from outside the node, works at 1280x800 and on a narrow screen,
and leaves screenshots in ``var/test-artifacts/``.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kafka import KafkaProducer
from playwright.sync_api import sync_playwright

from cli.keys import create_key
from ledger.node import QueryNode
from query_api.app import create_app
from query_api.portal_routes import UPLOT
from schemas.codec import AvroCodec
from schemas.events import Actor, AuditEvent, Outcome, Target
from tests.api_support import audit_sink, live_server
from tests.helpers import REPO, wait_for

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "var" / "test-artifacts"
ACTIONS = ("claim.viewed", "claim.updated", "member.viewed", "member.exported", "user.login")


def _seed(now: datetime) -> tuple[datetime, datetime, list[AuditEvent]]:
    hour = now.replace(minute=0, second=0, microsecond=0)
    since, until = hour - timedelta(hours=20), hour - timedelta(hours=2)
    rng = random.Random(3)
    events = []
    span = int((until - since).total_seconds())
    for i in range(700):
        # most inside the window, some in the previous period, a few after it
        at = since + timedelta(seconds=rng.randrange(-span, span + 3600))
        actor = rng.choice(("usr_dana", "usr_sam", "usr_priya", "usr_lee", "svc_claims"))
        events.append(
            AuditEvent(
                event_id=str(uuid.uuid4()),
                tenant_id="acme",
                occurred_at=at,
                received_at=at,
                action=ACTIONS[min(4, int(rng.expovariate(0.9)))],
                actor=Actor("service" if actor.startswith("svc") else "user", actor),
                outcome=Outcome(rng.choice(("success",) * 8 + ("failure", "denied"))),
                source=rng.choice(("claims-service", "member-portal")),
                targets=tuple(Target("claim", f"CLM-{rng.randrange(60)}") for _ in range(i % 3)),
            )
        )
    return since, until, events


@pytest.fixture
def portal(settings, tmp_path):
    since, until, events = _seed(datetime.now(UTC))
    codec = AvroCodec()
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    for e in events:
        producer.send(
            settings.audit_topic, key=b"acme", value=codec.encode("AuditEvent", e.to_avro())
        )
    producer.flush()
    producer.close()
    node = QueryNode(settings)
    node.start()
    app = create_app(settings, node, audit_sink=audit_sink(settings))
    try:
        with live_server(app) as url:
            wait_for(lambda: node.readiness()["ready"], timeout=120, what="materialized")
            key = create_key(settings, "acme", ("audit:read",), name="portal")
            wait_for(lambda: app.state.control.position > key.offset, timeout=20)
            yield (
                url,
                key.token,
                since,
                until,
                [e for e in events if since <= e.occurred_at < until],
            )
    finally:
        node.stop()


def _texts(page, selector: str) -> list[str]:
    return page.eval_on_selector_all(
        selector, "els => els.map(e => e.dataset.value ?? e.textContent)"
    )


def test_portal_shows_the_seeded_numbers_and_leaves_screenshots(portal):
    url, token, since, until, inside = portal
    assert UPLOT.directory(REPO / ".cache").joinpath("uPlot.iife.min.js").exists(), (
        "run `make portal-fetch` (make test does)"
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("request", lambda r: requests.append(r.url))
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{url}/portal")
            page.fill("#api-key", token)
            page.click("#sign-in button[type=submit]")
            page.wait_for_selector("body[data-loaded=true]", timeout=30_000)
            storage = page.evaluate(
                "() => [sessionStorage.getItem('velora.apiKey'), localStorage.length, "
                "document.cookie]"
            )
            assert storage == [token, 0, ""]

            page.check("input[name=range][value=custom]")
            page.fill("#since", since.strftime("%Y-%m-%dT%H:%M"))
            page.fill("#until", until.strftime("%Y-%m-%dT%H:%M"))
            page.click("#controls button[type=submit]")
            page.wait_for_selector("body[data-loaded=true]", timeout=30_000)
            page.wait_for_function(
                "n => document.querySelector('#tile-total dd')?.dataset.value === String(n)",
                arg=len(inside),
                timeout=30_000,
            )

            # tiles
            failures = sum(1 for e in inside if e.outcome.result in ("failure", "denied"))
            hours = Counter(
                e.occurred_at.replace(minute=0, second=0, microsecond=0) for e in inside
            )
            busiest = min(hours.items(), key=lambda kv: (-kv[1], kv[0]))
            tiles = dict(zip(
                ["total", "actors", "targets", "failure-rate", "busiest"],
                _texts(page, "#tiles dd"), strict=True,
            ))  # fmt: skip
            assert int(tiles["total"]) == len(inside)
            assert int(tiles["actors"]) == len({e.actor.id for e in inside})
            assert int(tiles["targets"]) == len({t.id for e in inside for t in e.targets})
            assert float(tiles["failure-rate"]) == pytest.approx(failures / len(inside))
            assert int(tiles["busiest"]) == busiest[1]
            assert f"{100 * failures / len(inside):.1f}%" in page.inner_text("#tile-failure-rate")

            # the chart and its data table: 18 hourly buckets, a column per action
            assert page.locator("#chart canvas").count() >= 1
            header = page.eval_on_selector_all(
                "#chart-table thead th", "ths => ths.map(t => t.textContent)"
            )
            by_action = Counter(e.action for e in inside)
            ranked = sorted(by_action, key=lambda a: (-by_action[a], a))
            assert header == ["Bucket (UTC)", "Total", *ranked]
            rows = page.eval_on_selector_all(
                "#chart-table tbody tr",
                "trs => trs.map(tr => [tr.dataset.bucket, ...[...tr.querySelectorAll('td')]"
                ".map(td => Number(td.dataset.value))])",
            )
            expected = []
            for h in range(18):
                start = since + timedelta(hours=h)
                chosen = [e for e in inside if start <= e.occurred_at < start + timedelta(hours=1)]
                per = Counter(e.action for e in chosen)
                expected.append([start.isoformat(), len(chosen), *(per[a] for a in ranked)])
            assert rows == expected
            assert str(len(inside)) in page.inner_text("#chart-desc").replace(",", "")

            # top tables (count descending, then key)
            actors = Counter(e.actor.id for e in inside)
            want_actors = sorted(actors.items(), key=lambda kv: (-kv[1], kv[0]))
            got_actors = page.eval_on_selector_all(
                "#top-actors tbody tr",
                "trs => trs.map(tr => [tr.dataset.key, Number(tr.cells[1].dataset.value)])",
            )
            assert [tuple(r) for r in got_actors] == want_actors
            got_actions = page.eval_on_selector_all(
                "#top-actions tbody tr",
                "trs => trs.map(tr => [tr.dataset.key, Number(tr.cells[1].dataset.value)])",
            )
            assert [tuple(r) for r in got_actions] == sorted(
                by_action.items(), key=lambda kv: (-kv[1], kv[0])
            )

            # newest events, then "load more" through the cursor
            newest = [
                e.event_id
                for e in sorted(inside, key=lambda e: (e.occurred_at, e.event_id), reverse=True)
            ]
            ids = page.eval_on_selector_all(
                "#events tbody tr", "trs => trs.map(tr => tr.dataset.eventId)"
            )
            assert ids == newest[:25]
            page.click("#more")
            page.wait_for_function(
                "() => document.querySelectorAll('#events tbody tr').length === 50"
            )
            ids = page.eval_on_selector_all(
                "#events tbody tr", "trs => trs.map(tr => tr.dataset.eventId)"
            )
            assert ids == newest[:50]

            page.evaluate("() => window.scrollTo(0, 0)")
            page.screenshot(path=str(ARTIFACTS / "portal.png"), full_page=False)
            page.screenshot(path=str(ARTIFACTS / "portal-full.png"), full_page=True)
            assert errors == []

            # a narrow screen: nothing wider than the viewport, everything still there
            narrow = browser.new_page(viewport={"width": 390, "height": 844})
            narrow.on("request", lambda r: requests.append(r.url))
            narrow.goto(f"{url}/portal")
            narrow.fill("#api-key", token)
            narrow.click("#sign-in button[type=submit]")
            narrow.wait_for_selector("body[data-loaded=true]", timeout=30_000)
            width = narrow.evaluate(
                "() => [document.documentElement.scrollWidth, window.innerWidth]"
            )
            assert width[0] <= width[1], width
            for selector in ("#tiles", "#chart canvas", "#top-actors", "#events", "#controls"):
                assert narrow.locator(selector).first.is_visible(), selector
            narrow.screenshot(path=str(ARTIFACTS / "portal-narrow.png"), full_page=True)
        finally:
            browser.close()
    assert requests and all(r.startswith(url) for r in requests), {
        r for r in requests if not r.startswith(url)
    }
    assert Path(ARTIFACTS / "portal.png").stat().st_size > 10_000


def test_the_page_and_its_files_are_served_without_a_key_and_without_a_cdn(settings):
    from tests.api_support import running_api

    with running_api(settings) as api:
        page = api.client.get("/portal")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "http://" not in page.text and "https://" not in page.text
        for path in (
            "/portal/static/app.js",
            "/portal/static/app.css",
            "/portal/vendor/uPlot.iife.min.js",
            "/portal/vendor/uPlot.min.css",
        ):
            resp = api.client.get(path)
            assert resp.status_code == 200, path
            assert "https://" not in resp.text.replace("https://github.com/leeoniya/uPlot", "")
        assert api.client.get("/portal/static/../app.py").status_code == 404
        assert api.client.get("/portal/vendor/package.json").status_code == 404
        js = api.client.get("/portal/static/app.js").text
        assert "sessionStorage" in js and "localStorage" not in js


def test_make_run_prints_the_portal_url(capsys):
    from cli.commands.run import _banner

    _banner("http://127.0.0.1:8080", "http://127.0.0.1:8081", "vlk_live_0123abcd_" + "0" * 32)
    out = capsys.readouterr().out
    assert "portal      http://127.0.0.1:8080/portal" in out
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "| portal | http://127.0.0.1:8080/portal" in readme

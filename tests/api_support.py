"""Support for the public-API tests: events in a real DuckDB, keys on the real control
topic, an app with its control state caught up, and a real uvicorn server on port 0."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import uuid_utils
import uvicorn
from starlette.applications import Starlette

from cli.keys import IssuedKey, create_key
from ledger.control import ControlState
from ledger.duck import LedgerFile
from ledger.rollups import add_sql
from ledger.tables import ledger_key
from query_api.app import create_app
from schemas.events import Actor, AuditEvent, Outcome, Target
from tests.helpers import wait_for
from velora.settings import Settings

BASE = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
INSERT = """
INSERT INTO audit_events VALUES (
    ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,
    map(?::VARCHAR[], ?::VARCHAR[]), ?, ?, ?, ?
)
"""


def make_event(
    tenant_id: str,
    i: int,
    *,
    occurred_at: datetime | None = None,
    action: str = "claim.viewed",
    actor_id: str | None = None,
    actor_type: str = "user",
    target: Target | None = None,
    outcome: str = "success",
    source: str = "claims-service",
) -> AuditEvent:
    """A realistic event; ``i`` spaces events one second apart from :data:`BASE`."""
    at = occurred_at or BASE + timedelta(seconds=i)
    return AuditEvent(
        event_id=str(uuid_utils.uuid7()),
        tenant_id=tenant_id,
        occurred_at=at,
        received_at=at + timedelta(milliseconds=5),
        action=action,
        crud="read",
        category="claims",
        actor=Actor(type=actor_type, id=actor_id or f"user-{i % 3}", name="Dana", ip="10.0.0.1"),
        targets=(target or Target("claim", f"CLM-{i}", None),),
        outcome=Outcome(outcome, None if outcome == "success" else "nope"),
        request_id=f"req-{i}",
        source=source,
        metadata={"i": str(i)},
    )


def insert_events(reader: LedgerFile, events: Iterable[AuditEvent], start_offset: int = 0) -> None:
    """Insert events as the materializer would (one row each, log order, ``seq`` numbered,
    rollups counted)."""
    rows = []
    for n, e in enumerate(events):
        a = e.actor
        rows.append([
            ledger_key(e.tenant_id, e.event_id), e.event_id, e.tenant_id,
            e.occurred_at, e.received_at, e.action, e.crud, e.category,
            a.type, a.id, a.name, a.email, a.ip, a.user_agent,
            [{"type": t.type, "id": t.id, "name": t.name} for t in e.targets],
            e.outcome.result, e.outcome.reason, e.request_id, e.source,
            list(e.metadata), list(e.metadata.values()), e.schema_version, 0, start_offset + n,
            n,
        ])  # fmt: skip
    cur = reader.connection.cursor()
    try:
        cur.execute("CREATE TEMP TABLE _new AS SELECT * FROM audit_events LIMIT 0")
        cur.executemany(INSERT.replace("audit_events", "_new"), rows)
        # seq goes on from the stored rows', as the writer numbers them
        cur.execute(
            "BEGIN TRANSACTION; INSERT INTO audit_events SELECT * REPLACE ("
            "(SELECT coalesce(max(seq), 0) FROM audit_events) + seq + 1 AS seq) FROM _new; "
            f"{add_sql('SELECT * FROM _new')}; COMMIT; DROP TABLE _new"
        )
        reader.copies.last = cur.execute("SELECT max(seq) FROM audit_events").fetchall()[0][0]
    finally:
        cur.close()


def audit_sink(settings: Settings):
    """The read-audit producer the node makes: ingest's LoopAuditProducer in system mode."""
    from ingest.loop_producer import LoopAuditProducer

    return LoopAuditProducer(settings, system=True, timeout=5.0, client_id="velora-read-audit")


@dataclass
class Api:
    """A running app (real uvicorn, lifespan included) over a real DuckDB file."""

    settings: Settings
    reader: LedgerFile
    control: ControlState
    app: Starlette
    client: httpx.Client
    base_url: str

    def issue(self, tenant: str, scopes: tuple[str, ...] = ("audit:read",)) -> IssuedKey:
        """Mint a key on the control topic and wait until this app knows it."""
        issued = create_key(self.settings, tenant, scopes, name=f"{tenant} test key")
        self.await_control(issued.offset)
        return issued

    def await_control(self, offset: int) -> None:
        """Wait until the app's control state has folded ``offset``."""
        wait_for(lambda: self.control.position > offset, timeout=10, what="control offset")

    def get(self, path: str, token: str | None = None, **kwargs):
        headers = dict(kwargs.pop("headers", {}) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.client.get(path, headers=headers, **kwargs)


@contextmanager
def running_api(settings: Settings, db_path: Path | None = None, sink=None) -> Iterator[Api]:
    """The full app over a DuckDB file, its control follower started by the lifespan."""
    reader = LedgerFile(db_path or settings.duckdb_path)
    control = ControlState(settings)
    control.start()
    app = create_app(settings, reader, control=control, audit_sink=sink or audit_sink(settings))
    try:
        with live_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
            yield Api(settings, reader, control, app, client, url)
    finally:
        control.stop()
        reader.close()


def free_port() -> int:
    """A port the OS chose (bind to 0), for a server started right after."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def live_server(app: Starlette) -> Iterator[str]:
    """Serve ``app`` with a real uvicorn on 127.0.0.1:<port 0>; yields its base URL."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="on",
        proxy_headers=False,  # as every Velora server: forwarded headers only via the app
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=30, what="uvicorn start")
        sock = server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def audit_trail(settings: Settings, action: str, count: int, timeout: float = 20.0) -> list[dict]:
    """Wait until the audit topic holds at least ``count`` records of ``action``; return them."""
    from tests.test_producer import read_topic

    def found() -> list[dict]:
        records = [r for _p, _o, _k, r in read_topic(settings) if r["action"] == action]
        return records if len(records) >= count else []

    return wait_for(found, timeout=timeout, interval=0.5, what=f"{count} {action} records")

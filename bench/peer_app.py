"""The query benchmark's peer: the audit list on PostgreSQL behind a minimal async app.

What a typical team would build instead of the query node: Starlette and asyncpg
(a pool, asyncpg's per-connection prepared-statement cache) on one uvicorn worker
with uvicorn's defaults, Bearer keys looked up in a dict, the same route
``GET /api/v2/public/audit/events`` and the same answer shape
(``{"events": [...], "page": {"next_cursor", "limit"}}`` plus a ``Link`` header),
so the same client drives both and :func:`bench.query.check_identical` can compare
the events they return. It takes the parameters the benchmark's scenarios use:
``limit``, ``until``, ``cursor``, ``action`` (exact, or a prefix ending in ``.*``),
``actor_id`` and ``target_id`` (``targets @> [{"id": ...}]``, through a GIN index);
anything else is a 400. It does not audit reads (the node does,
and waits for each read-audit record's Kafka acknowledgement before answering).
Its cursor is unsigned (``occurred_us:event_id`` in base64): bench-only code.
"""

from __future__ import annotations

import base64
import json
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from schemas.times import from_micros, micros

ROUTE = "/api/v2/public/audit/events"
_COLUMNS = (
    "event_id, tenant_id, occurred_at, received_at, action, crud, category, actor_type, "
    "actor_id, actor_name, actor_email, actor_ip, actor_user_agent, targets, outcome_result, "
    "outcome_reason, request_id, source, metadata, schema_version"
)
_KNOWN = {"limit", "until", "cursor", "action", "actor_id", "target_id"}


def _error(status: int, kind: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"type": kind, "message": message, "details": []}}, status)


def _event(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "event_id": str(r["event_id"]),
        "tenant_id": r["tenant_id"],
        "occurred_at": r["occurred_at"].isoformat(),
        "received_at": r["received_at"].isoformat(),
        "action": r["action"],
        "crud": r["crud"],
        "category": r["category"],
        "actor": {
            "type": r["actor_type"],
            "id": r["actor_id"],
            "name": r["actor_name"],
            "email": r["actor_email"],
            "ip": r["actor_ip"],
            "user_agent": r["actor_user_agent"],
        },
        "targets": [{"type": t["type"], "id": t["id"], "name": t["name"]} for t in r["targets"]],
        "outcome": {"result": r["outcome_result"], "reason": r["outcome_reason"]},
        "request_id": r["request_id"],
        "source": r["source"],
        "metadata": r["metadata"],
        "schema_version": r["schema_version"],
    }


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


def peer_app(dsn: str, tokens: dict[str, str]) -> Starlette:
    """The peer app over ``dsn``; ``tokens`` maps a Bearer token to its tenant."""
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state["pool"] = await asyncpg.create_pool(
            dsn, min_size=4, max_size=8, init=_init_connection
        )
        try:
            yield
        finally:
            await state["pool"].close()

    async def list_events(request: Request) -> JSONResponse:
        auth = request.headers.get("authorization", "")
        tenant = tokens.get(auth[7:]) if auth.startswith("Bearer ") else None
        if tenant is None:
            return _error(401, "authentication_error", "a valid API key is required")
        q = request.query_params
        unknown = set(q.keys()) - _KNOWN
        if unknown:
            return _error(400, "validation_error", f"unknown parameter {sorted(unknown)[0]!r}")
        try:
            limit = int(q.get("limit", "50"))
            where, params = ["tenant_id = $1"], [tenant]
            if "action" in q:
                action = q["action"]
                if action.endswith(".*"):
                    where.append(f"action LIKE ${len(params) + 1}")
                    prefix = action[:-1].replace("\\", "\\\\").replace("%", "\\%")
                    params.append(prefix.replace("_", "\\_") + "%")
                else:
                    where.append(f"action = ${len(params) + 1}")
                    params.append(action)
            if "actor_id" in q:
                where.append(f"actor_id = ${len(params) + 1}")
                params.append(q["actor_id"])
            if "target_id" in q:
                where.append(f"targets @> ${len(params) + 1}::jsonb")
                params.append([{"id": q["target_id"]}])  # the jsonb codec encodes it
            if "until" in q:
                where.append(f"occurred_at < ${len(params) + 1}")
                params.append(datetime.fromisoformat(q["until"]))
            if "cursor" in q:
                us, event_id = base64.urlsafe_b64decode(q["cursor"]).decode().split(":", 1)
                n = len(params)
                where.append(f"(occurred_at, event_id) < (${n + 1}, ${n + 2})")
                params += [from_micros(int(us)), uuid.UUID(event_id)]
        except ValueError:
            return _error(400, "validation_error", "bad query parameter")
        if not 1 <= limit <= 1000:
            return _error(400, "validation_error", "limit must be from 1 to 1000")
        sql = (
            f"SELECT {_COLUMNS} FROM audit_events WHERE {' AND '.join(where)} "
            f"ORDER BY occurred_at DESC, event_id DESC LIMIT {limit + 1}"
        )
        rows = await state["pool"].fetch(sql, *params)
        page, more = rows[:limit], len(rows) > limit
        next_cursor, headers = None, {}
        if more:
            last = page[-1]
            raw = f"{micros(last['occurred_at'])}:{last['event_id']}"
            next_cursor = base64.urlsafe_b64encode(raw.encode()).decode()
            items = [(k, v) for k, v in q.multi_items() if k != "cursor"]
            link = f"{request.base_url}{ROUTE[1:]}?{urlencode([*items, ('cursor', next_cursor)])}"
            headers["Link"] = f'<{link}>; rel="next"'
        body = {
            "events": [_event(r) for r in page],
            "page": {"next_cursor": next_cursor, "limit": limit},
        }
        return JSONResponse(body, headers=headers)

    async def readyz(request: Request) -> JSONResponse:
        await state["pool"].fetchval("SELECT 1")
        return JSONResponse({"ready": True})

    return Starlette(
        routes=[Route(ROUTE, list_events, methods=["GET"]), Route("/readyz", readyz)],
        lifespan=lifespan,
    )


def serve_main() -> None:
    """Child process: ``argv[1]`` the DSN, one stdin line a JSON token -> tenant map; prints
    the port, then serves on one uvicorn worker with uvicorn's defaults."""
    import socket

    import uvicorn

    app = peer_app(sys.argv[1], json.loads(sys.stdin.readline()))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, backlog=2048)
    uvicorn.Server(config).run(sockets=[sock])

"""Routes: ``GET /api/v2/public/audit/events`` and ``GET .../audit/events/{event_id}``.

Both need the ``audit:read`` scope; the tenant is always the key's. A list answer
is ``{"events": [...], "page": {"next_cursor", "limit"}}``, newest first by
``(occurred_at, event_id)``, with ``Link: <next page URL>; rel="next"`` when there
is a next page (its base from :mod:`query_api.links`: configured, or a validated
``Host``, never the raw header). An event of another tenant, or no event, is a 404.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar
from urllib.parse import urlencode

import duckdb
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ledger.head import Scope, TenantHeads
from ledger.head_rows import HeadRow
from ledger.page_bodies import PageBodies
from ledger.sorted_copies import CopyMarks, ReadMark
from query_api import body_pages, cursor, head_pages, queries, read_audit, sorted_pages
from query_api.auth import require_scope
from query_api.db import LedgerReader
from query_api.filters import Filters, as_mapping, parse_list_query, query_items, with_phi
from query_api.links import page_url
from query_api.responses import JsonBytesResponse, JsonResponse
from query_api.serialize import SQL_PAGE_MIN, event_json, page_json, tenant_phi
from schemas.events import Target
from schemas.limits import MAX_EVENT_ID
from schemas.rules import clip
from velora.errors import ErrorDetail, NotFound, Unavailable, ValidationError
from velora.settings import Settings

READ_SCOPE = "audit:read"
T = TypeVar("T")


def ledger_reader(request: Request) -> LedgerReader:
    """The ledger this app reads (503 when the node has none)."""
    reader = getattr(request.app.state, "ledger", None)
    if reader is None:
        raise Unavailable("the ledger is not available on this node", retry_after=5)
    return reader


async def list_audit_events(request: Request) -> Response:
    """A page of the caller's tenant's audit events, newest first."""
    principal = require_scope(request, READ_SCOPE)
    settings: Settings = request.app.state.settings
    query = parse_list_query(request.query_params.multi_items())
    phi = tenant_phi(request.app.state, principal.tenant_id)
    request.scope["state"]["audit_metadata"] = {
        "limit": str(query.limit),
        **{k: v[:256] for k, v in phi_safe(as_mapping(query.filters), phi.mode).items()},
    }
    fingerprint = query.filters.fingerprint()
    filters = with_phi(query.filters, phi.id_filter_values)
    after = None
    if query.cursor is not None:
        after = cursor.decode(
            settings.cursor_secret, principal.tenant_id, fingerprint, query.cursor
        )
    hints = getattr(request.app.state, "window_hints", None)
    reveal = phi.revealer()
    tenant, limit = principal.tenant_id, query.limit + 1
    reader = ledger_reader(request)

    def mark() -> ReadMark | None:  # when the query runs
        return copies_mark(reader, tenant, filters)

    def json_page(cur: duckdb.DuckDBPyConnection) -> list[queries.JsonRow]:
        return queries.list_events_json(
            cur, tenant, filters, after, limit, hints=hints, copies=mark()
        )

    def row_page(cur: duckdb.DuckDBPyConnection) -> list[queries.Row]:
        return queries.list_events(cur, tenant, filters, after, limit, hints=hints, copies=mark())

    bodies: PageBodies | None = getattr(reader, "bodies", None)

    def body_page(cur: duckdb.DuckDBPyConnection) -> list[queries.JsonRow]:
        found = queries.list_event_seqs(
            cur, tenant, filters, after, limit, hints=hints, copies=mark()
        )
        assert bodies is not None
        return body_pages.body_page(cur, bodies, found, json_page)

    rows: list[queries.Row] | None = None
    rendered: list[queries.JsonRow] | None = None
    # When no head can cut the page: a page of stored values as they are shown takes
    # its bodies from the sorted copies (one actor or target id), else from the page
    # bodies, or is rendered by DuckDB when large; a small page without bodies, or a
    # server-mode tenant's (revealed by the Revealer), comes as rows.
    copy_page = sorted_pages.copy_for(filters) is not None
    read_audit.go_ahead(request.scope)  # the query is all that is left: record it meanwhile
    if not reveal.active and bodies is not None and not copy_page:
        held, rendered = await _read_page(reader, tenant, filters, after, limit, hints, body_page)
    elif not reveal.active and (copy_page or query.limit >= SQL_PAGE_MIN):
        held, rendered = await _read_page(reader, tenant, filters, after, limit, hints, json_page)
    else:
        held, rows = await _read_page(reader, tenant, filters, after, limit, hints, row_page)
    if held is not None:  # first pages and shallow cursors: the tenant's head, no DuckDB
        positions = [r.position for r in held]
    elif rendered is not None:
        positions = [(r[1], r[2]) for r in rendered]
    else:
        rows = rows or []
        positions = [(r["occurred_us"], r["event_id"]) for r in rows]
    more = len(positions) > query.limit
    next_cursor = None
    headers: dict[str, str] = {}
    if more:
        occurred_us, event_id = positions[query.limit - 1]
        next_cursor = cursor.encode(
            settings.cursor_secret,
            principal.tenant_id,
            fingerprint,
            cursor.Position(occurred_us, event_id),
        )
        items = query_items(query.filters, query.limit, next_cursor)
        headers["Link"] = f'<{page_url(request, settings, urlencode(items))}>; rel="next"'
    page = {"next_cursor": next_cursor, "limit": query.limit}
    if held is not None and not reveal.active:  # each held event is rendered once, then reused
        body = page_json([r.text(event_json) for r in held[: query.limit]], page)
        return JsonBytesResponse(body, headers=headers)
    if held is not None:
        rows = [r.row for r in held]
    elif rendered is not None:
        body = page_json([r[0] for r in rendered[: query.limit]], page)
        return JsonBytesResponse(body, headers=headers)
    events = [event_json(r, reveal) for r in (rows or [])[: query.limit]]
    return JsonResponse({"events": events, "page": page}, headers=headers)


async def _read_page(
    reader: LedgerReader,
    tenant: str,
    filters: Filters,
    after: cursor.Position | None,
    limit: int,
    hints: queries.WindowHints | None,
    from_sql: Callable[[duckdb.DuckDBPyConnection], T],
) -> tuple[list[HeadRow], None] | tuple[None, T]:
    """The page's rows from a head, or ``from_sql``'s answer when no head can cut it.

    A head is the tenant's, or the tenant's scoped to the filter's actor, target,
    action or ``until`` bound (:func:`head_pages.scope`); each is loaded on first use
    (an id head on its second ask). A page of a loaded head is cut in the event loop;
    otherwise the loads and, when they give no page, ``from_sql`` run in one job on a
    reader thread.

    A loaded scoped head is asked first, and alone: it holds every row of its scope
    that the tenant's head holds, and more below (the tenant's newest rows of the
    scope are among the scope's newest), so a page it cannot cut, the tenant's head
    cannot either, and scanning the tenant's rows for the few of the scope is skipped."""
    heads: TenantHeads | None = getattr(reader, "heads", None)
    if heads is None:
        return None, await reader.read(from_sql)
    scope = head_pages.scope(filters)
    if scope is not None and (own := heads.get(tenant, scope)) is not None:
        rows = head_pages.page(own, filters, after, limit)
        return (rows, None) if rows is not None else (None, await reader.read(from_sql))
    # the scoped head (if any) is not loaded: the tenant's own, then loads on a reader thread
    scopes: tuple[Scope | None, ...] = (None,) if scope is None else (None, scope)
    own = heads.get(tenant)
    if own is not None:
        rows = head_pages.page(own, filters, after, limit)
        if rows is not None:
            return rows, None
        if scope is None:
            return None, await reader.read(from_sql)
        scopes = (scope,)

    def load(cur: duckdb.DuckDBPyConnection) -> tuple[list[HeadRow], None] | tuple[None, T]:
        for s in scopes:
            of_scope = head_pages.scope_filters(s)
            head = heads.get(tenant, s) or heads.load(
                tenant,
                lambda n, f=of_scope: queries.list_events(
                    cur, tenant, f, None, n, hints=hints, copies=copies_mark(reader, tenant, f)
                ),
                s,
            )
            if head is None:
                continue  # not loaded now (a commit holds the lock, or its load backs off)
            rows = head_pages.page(head, filters, after, limit)
            if rows is not None:
                return rows, None
        return None, from_sql(cur)

    return await reader.read(load)


def copies_mark(reader: LedgerReader, tenant: str, filters: Filters) -> ReadMark | None:
    """How far a page of ``filters`` may read the reader's sorted copies
    (:mod:`ledger.sorted_copies`); None: not at all. Read when the query runs: a mark
    published later only moves rows from one part of the page's query to the other."""
    marks: CopyMarks | None = getattr(reader, "copies", None)
    if marks is None:
        return None
    return marks.for_reads(sorted_pages.noted_keys(tenant, filters))


async def get_audit_event(request: Request) -> JsonResponse:
    """One event of the caller's tenant; 404 for unknown ids and other tenants' events."""
    principal = require_scope(request, READ_SCOPE)
    for name, _ in request.query_params.multi_items():
        raise ValidationError(
            f"unknown query parameter {clip(name)!r}; this route takes none",
            (ErrorDetail(clip(name), "unknown parameter"),),
        )
    event_id: str = request.path_params["event_id"]
    shown = event_id[:MAX_EVENT_ID]
    request.scope["state"]["audit_target"] = Target("audit_event", shown)
    if len(event_id) > MAX_EVENT_ID or not event_id.isprintable():
        raise NotFound("no such audit event")
    row = await ledger_reader(request).read(
        lambda cur: queries.get_event(cur, principal.tenant_id, event_id)
    )
    if row is None:
        raise NotFound("no such audit event")
    reveal = tenant_phi(request.app.state, principal.tenant_id).revealer()
    return JsonResponse(event_json(row, reveal))


PHI_FILTERS = ("actor_id", "target_id")
REDACTED = "[PHI filter value not recorded]"


def phi_safe(items: Mapping[str, str], mode: str | None) -> dict[str, str]:
    """Filter values for the read-audit event: a server-mode tenant's PHI filters redacted.

    Such a tenant filters with plain values, which must not reach the log; in the
    other modes the value is a token (or not PHI) and is recorded as given.
    """
    return {k: REDACTED if mode == "server" and k in PHI_FILTERS else v for k, v in items.items()}


def event_routes(prefix: str) -> list[Route]:
    """The audit-event routes under ``prefix`` (``/api/v2/public``)."""
    return [
        Route(f"{prefix}/audit/events", list_audit_events, methods=["GET"]),
        Route(f"{prefix}/audit/events/{{event_id}}", get_audit_event, methods=["GET"]),
    ]

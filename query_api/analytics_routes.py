"""Routes: ``GET /api/v2/public/analytics/{timeseries,top,summary}`` (scope ``audit:read``).

Each takes the list filters over a required, bounded ``[since, until)``
(:mod:`query_api.ranges`) and answers JSON with ISO-8601 ``+00:00`` times; the
tenant is the key's. A server-mode tenant's ``actor_id``/``target_id`` filters take
plain values, and its ``top`` actor and target keys are plaintext. The numbers
come from :mod:`query_api.analytics`, inside one read snapshot of the ledger.
Shapes and rules: ``docs/analytics.md``.
"""

from __future__ import annotations

from dataclasses import replace

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from phi.policy import Revealer
from query_api import analytics, analytics_summary
from query_api.auth import require_scope
from query_api.filters import as_mapping, with_phi
from query_api.ranges import RangedRequest, bad, parse_ranged, resolve_interval
from query_api.routes import READ_SCOPE, ledger_reader, phi_safe
from query_api.serialize import tenant_phi

TOP_DEFAULT_LIMIT = 10
TOP_MAX_LIMIT = 100


def _audit(
    request: Request, parsed: RangedRequest, tenant_id: str
) -> tuple[RangedRequest, Revealer]:
    """Record the request's parameters (a server-mode tenant's PHI filter values
    redacted); the filters with PHI values widened as the tenant's mode says, and the
    tenant's revealer (503 for a server-mode tenant without its keyset)."""
    phi = tenant_phi(request.app.state, tenant_id)
    request.scope["state"]["audit_metadata"] = {
        **{k: v[:256] for k, v in phi_safe(as_mapping(parsed.filters), phi.mode).items()},
        **{k: v[:64] for k, v in parsed.own.items()},
    }
    reveal = phi.revealer()
    return replace(parsed, filters=with_phi(parsed.filters, phi.id_filter_values)), reveal


def _choice(
    parsed: RangedRequest, name: str, choices: tuple[str, ...], required: bool
) -> str | None:
    value = parsed.own.get(name)
    if value is None:
        if required:
            raise bad(name, f"is required: one of {', '.join(choices)}")
        return None
    if value not in choices:
        raise bad(name, f"must be one of {', '.join(choices)}")
    return value


def _limit(parsed: RangedRequest) -> int:
    raw = parsed.own.get("limit")
    if raw is None:
        return TOP_DEFAULT_LIMIT
    if not raw.isascii() or not raw.isdigit() or len(raw) > 4:
        raise bad("limit", f"must be an integer from 1 to {TOP_MAX_LIMIT}")
    value = int(raw)
    if not 1 <= value <= TOP_MAX_LIMIT:
        raise bad("limit", f"must be an integer from 1 to {TOP_MAX_LIMIT}")
    return value


async def timeseries(request: Request) -> JSONResponse:
    """Event counts per UTC bucket, zero-filled, optionally per group (20 + other)."""
    principal = require_scope(request, READ_SCOPE)
    parsed = parse_ranged(request.query_params.multi_items(), ("interval", "group_by"))
    parsed, _ = _audit(request, parsed, principal.tenant_id)
    interval = resolve_interval(parsed.own.get("interval"), parsed.since, parsed.until)
    group_by = _choice(parsed, "group_by", analytics.GROUP_BY, required=False)
    body = await ledger_reader(request).read(
        lambda cur: analytics.in_snapshot(
            cur,
            lambda: analytics.timeseries(
                cur, principal.tenant_id, parsed.filters, interval, group_by
            ),
        )
    )
    return JSONResponse(body)


async def top(request: Request) -> JSONResponse:
    """The most frequent actors, actions, targets or source IPs, with their share."""
    principal = require_scope(request, READ_SCOPE)
    parsed = parse_ranged(request.query_params.multi_items(), ("dimension", "limit"))
    parsed, reveal = _audit(request, parsed, principal.tenant_id)
    dimension = _choice(parsed, "dimension", analytics.TOP_DIMENSIONS, required=True)
    assert dimension is not None
    limit = _limit(parsed)
    body = await ledger_reader(request).read(
        lambda cur: analytics.in_snapshot(
            cur,
            lambda: analytics.top(
                cur, principal.tenant_id, parsed.filters, dimension, limit, reveal=reveal
            ),
        )
    )
    return JSONResponse(body)


async def summary(request: Request) -> JSONResponse:
    """Totals, distinct actors and targets, failure rate, busiest bucket; and the change."""
    principal = require_scope(request, READ_SCOPE)
    parsed = parse_ranged(request.query_params.multi_items(), ("interval",))
    parsed, _ = _audit(request, parsed, principal.tenant_id)
    interval = resolve_interval(parsed.own.get("interval"), parsed.since, parsed.until)
    body = await ledger_reader(request).read(
        lambda cur: analytics.in_snapshot(
            cur,
            lambda: analytics_summary.summary(cur, principal.tenant_id, parsed.filters, interval),
        )
    )
    return JSONResponse(body)


def analytics_routes(prefix: str) -> list[Route]:
    """The analytics routes under ``prefix`` (``/api/v2/public``)."""
    base = f"{prefix}/analytics"
    return [
        Route(f"{base}/timeseries", timeseries, methods=["GET"]),
        Route(f"{base}/top", top, methods=["GET"]),
        Route(f"{base}/summary", summary, methods=["GET"]),
    ]

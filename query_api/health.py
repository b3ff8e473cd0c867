"""``GET /healthz`` (the process is up) and ``GET /readyz`` (the ledger has caught up)."""

from __future__ import annotations

from typing import Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


class ReadinessSource(Protocol):
    """What the health routes need from the query node."""

    def readiness(self) -> dict[str, object]:
        """``{"ready": bool, "lag": int, ...}``; ready once caught up to start-time end offsets."""
        ...


def health_routes(node: ReadinessSource | None) -> list[Route]:
    """The two probe routes; ``/readyz`` answers 503 until ``node`` reports ready."""

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        if node is None:
            return JSONResponse({"ready": True, "lag": 0})
        state = node.readiness()
        return JSONResponse(state, status_code=200 if state.get("ready") else 503)

    return [Route("/healthz", healthz), Route("/readyz", readyz)]

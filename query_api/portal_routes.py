"""The portal: a small dashboard page at ``/portal``, served by the query node.

The page (``query_api/portal/``: hand-written HTML, CSS and JavaScript, no build
step) signs in with an API key pasted by the user, keeps it only in
``sessionStorage`` and sends it as ``Authorization: Bearer`` to the public API
(analytics, the event list). The page itself and its files need no key: they hold
no data.

The chart library is uPlot (:data:`UPLOT`), fetched at a pinned version and
integrity from the npm registry by the install step (``velora portal fetch``, run
by ``make run`` and ``make test``; a build stage of the ``Dockerfile``) into
``<cache_dir>/npm/uplot-<version>/``, and served from there under
``/portal/vendor/``. Nothing is loaded from a CDN.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from velora.errors import NotFound, Unavailable
from velora.settings import Settings

PAGE_DIR = Path(__file__).with_name("portal")
PAGE_FILES = {"app.js": "text/javascript", "app.css": "text/css"}


@dataclass(frozen=True)
class NpmAsset:
    """An npm package pinned by version and registry integrity, and the files used from it."""

    name: str
    version: str
    integrity: str
    files: dict[str, str]
    """Path inside the package -> name served under ``/portal/vendor/``."""

    def directory(self, cache_dir: Path) -> Path:
        """Where the install step puts the files."""
        return cache_dir / "npm" / f"{self.name}-{self.version}"


UPLOT = NpmAsset(
    name="uplot",
    version="1.6.32",
    integrity="sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==",
    files={
        "package/dist/uPlot.iife.min.js": "uPlot.iife.min.js",
        "package/dist/uPlot.min.css": "uPlot.min.css",
        "package/LICENSE": "uPlot.LICENSE",
    },
)
_MEDIA = {".js": "text/javascript", ".css": "text/css", ".LICENSE": "text/plain"}


def portal_routes(settings: Settings) -> list[BaseRoute]:
    """``/portal`` and its files."""
    vendor_dir = UPLOT.directory(settings.cache_dir)

    async def page(request: Request) -> Response:
        return FileResponse(PAGE_DIR / "index.html", media_type="text/html; charset=utf-8")

    async def page_file(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in PAGE_FILES:
            raise NotFound("no such portal file")
        return FileResponse(PAGE_DIR / name, media_type=PAGE_FILES[name])

    async def vendor_file(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in UPLOT.files.values():
            raise NotFound("no such portal file")
        path = vendor_dir / name
        if not path.is_file():
            raise Unavailable(
                "the portal's chart library is not installed; run `velora portal fetch`",
                retry_after=60,
            )
        return FileResponse(path, media_type=_MEDIA[Path(name).suffix or ".LICENSE"])

    async def slash(request: Request) -> Response:
        return RedirectResponse("/portal", status_code=308)

    return [
        Route("/portal", page, methods=["GET"]),
        Route("/portal/", slash, methods=["GET"]),
        Route("/portal/static/{name}", page_file, methods=["GET"]),
        Route("/portal/vendor/{name}", vendor_file, methods=["GET"]),
    ]

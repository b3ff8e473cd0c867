"""``GET /api/v2/public/openapi.json`` and the rendered reference at ``/api/v2/public/docs``.

The reference page is Swagger UI 5 served from the files that the ``swagger-ui-py``
package ships (a registry dependency), never from a CDN.
"""

from __future__ import annotations

from pathlib import Path

import swagger_ui
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from query_api.links import base_url
from query_api.openapi import openapi_document

SWAGGER_STATIC = Path(swagger_ui.__file__).with_name("static")

_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Velora Public API reference</title>
  <link rel="stylesheet" href="{prefix}/docs/static/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{prefix}/docs/static/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{url: "{prefix}/openapi.json", dom_id: "#swagger-ui",
                                  deepLinking: true}});
  </script>
</body>
</html>
"""


def docs_routes(prefix: str) -> list[BaseRoute]:
    """The OpenAPI document, the reference page and its static files."""

    async def openapi_json(request: Request) -> JSONResponse:
        base = base_url(request, request.app.state.settings)
        return JSONResponse(openapi_document(base))

    async def docs_page(request: Request) -> HTMLResponse:
        return HTMLResponse(_PAGE.format(prefix=prefix))

    return [
        Route(f"{prefix}/openapi.json", openapi_json, methods=["GET"]),
        Route(f"{prefix}/docs", docs_page, methods=["GET"]),
        Mount(f"{prefix}/docs/static", app=StaticFiles(directory=SWAGGER_STATIC), name="swagger"),
    ]

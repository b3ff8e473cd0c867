"""``velora ingest serve``: the internal HTTP ingest service (``ingest.http``) under uvicorn.

Refuses to start without a service token, and with a published development token
on a non-loopback bind (``check_bind_secrets``; a warning on loopback). uvicorn's
own proxy-header handling is off: forwarded headers are trusted only from
``VELORA_TRUSTED_PROXIES``, inside the app.
"""

from __future__ import annotations

import argparse

from velora.errors import ConfigError
from velora.settings import Settings, check_bind_secrets


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``ingest`` command group."""
    p = sub.add_parser("ingest", help="the internal HTTP ingest service")
    cmds = p.add_subparsers(dest="ingest_command", required=True, metavar="ACTION")
    serve = cmds.add_parser(
        "serve",
        help="serve POST /internal/v1/events (needs VELORA_INGEST_TOKENS)",
        description="Serve the internal ingest API on VELORA_INGEST_HOST:VELORA_INGEST_PORT. "
        "Refuses to start without at least one service token in VELORA_INGEST_TOKENS.",
    )
    serve.add_argument("--host", help="bind address (default: VELORA_INGEST_HOST)")
    serve.add_argument("--port", type=int, help="port, 0 for any free one (VELORA_INGEST_PORT)")
    serve.add_argument(
        "--access-log", action="store_true", help="log every request (off by default)"
    )
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.ingest_tokens:
        raise ConfigError(
            "VELORA_INGEST_TOKENS is not set: the ingest service needs at least one service "
            "token (comma-separated, each at least 16 characters)"
        )
    import uvicorn  # imported here so other commands start fast

    from ingest.http import create_ingest_app

    host = args.host or settings.ingest_host
    port = settings.ingest_port if args.port is None else args.port
    check_bind_secrets(settings, "ingest", host)
    app = create_ingest_app(settings)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        access_log=args.access_log,
        lifespan="on",
        proxy_headers=False,
    )
    return 0

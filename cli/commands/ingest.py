"""``velora ingest serve``: the internal HTTP ingest service (``ingest.http``).

Refuses to start without a service token, and with a published development token
on a non-loopback bind (``check_bind_secrets``; a warning on loopback). Served like
every service (``velora.http_server``: uvicorn with the ``VELORA_HTTP_*`` limits,
and uvicorn's own proxy-header handling off: forwarded headers are trusted only
from ``VELORA_TRUSTED_PROXIES``, inside the app) on a socket bound here, so with
``--port 0`` the port the OS chose is logged as ``listening on http://HOST:PORT``.

PHI: the service follows the control topic (tenants' PHI modes and wrapped
keysets, :class:`ledger.control.ControlState`) and writes through
:class:`phi.policy.PhiTransform`: server-mode tenants' PHI fields are tokenized
before encoding, client- and sidecar-mode tenants' must hold tokens. Start-up waits
up to ``CONTROL_WAIT_S`` for the control state before it listens; if that is not
enough (Kafka down), ingest serves and answers 503 until the state has caught up,
rather than guess a tenant's mode.
"""

from __future__ import annotations

import argparse
import logging

from velora.errors import ConfigError
from velora.memory import freeze_start_up
from velora.settings import Settings, check_bind_secrets

log = logging.getLogger("velora.ingest")

CONTROL_WAIT_S = 15.0
"""How long start-up waits for the control state (PHI modes) before serving regardless."""


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
    # imported here so other commands start fast
    from ingest.http import REQUEST_DEADLINE_S, create_ingest_app
    from ingest.producer import AuditProducer
    from ledger.control import ControlState
    from phi.policy import PhiDirectory, PhiTransform
    from phi.wrap import KeysetWrapper
    from velora.http_server import listen, make_server, url_of

    host = args.host or settings.ingest_host
    port = settings.ingest_port if args.port is None else args.port
    check_bind_secrets(settings, "ingest", host)
    sock = listen(host, port, settings.http_backlog)
    control = ControlState(settings)
    # Wait (a bounded time) for the tenants' PHI modes before serving; with Kafka down it
    # serves anyway and answers 503 until the control state has caught up.
    control.start(wait_timeout=CONTROL_WAIT_S)
    directory = PhiDirectory(
        control.tenant_settings,
        control.phi_keyset,
        KeysetWrapper(settings.secrets_key),
        control.caught_up,
    )
    producer = AuditProducer(
        settings, transform=PhiTransform(directory), timeout=REQUEST_DEADLINE_S
    )
    try:
        app = create_ingest_app(settings, producer)
        server = make_server(app, settings, access_log=args.access_log)
        freeze_start_up()
        log.info("listening on %s", url_of(sock))
        server.run(sockets=[sock])
    finally:
        sock.close()
        producer.close()
        control.stop()
    return 0

"""``velora sidecar``: the PHI sidecar in the customer's network (:mod:`sidecar`).

Reads the customer's keyset (``VELORA_SIDECAR_KEYSET``, permissions checked) and
serves the API proxy towards ``VELORA_SIDECAR_UPSTREAM`` and the webhook relay on
``VELORA_SIDECAR_HOST:VELORA_SIDECAR_PORT``, through :mod:`velora.http_server` (the
same HTTP limits as every service), logging ``listening on http://HOST:PORT``.
"""

from __future__ import annotations

import argparse
import logging

from velora.errors import ConfigError
from velora.memory import freeze_start_up
from velora.settings import Settings

log = logging.getLogger("velora.sidecar")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``sidecar`` command."""
    p = sub.add_parser(
        "sidecar",
        help="PHI sidecar-mode: tokenizing API proxy and webhook relay (docs/phi.md)",
        description="Proxy /api/v2/public/* to VELORA_SIDECAR_UPSTREAM, tokenizing PHI filters "
        "and detokenizing answers with VELORA_SIDECAR_KEYSET; relay webhooks to "
        "VELORA_SIDECAR_SIEM_URL.",
    )
    p.add_argument("--host", help="bind address (default: VELORA_SIDECAR_HOST)")
    p.add_argument("--port", type=int, help="port, 0 for any free one (VELORA_SIDECAR_PORT)")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    if settings.sidecar_upstream is None or settings.sidecar_keyset is None:
        raise ConfigError("velora sidecar needs VELORA_SIDECAR_UPSTREAM and VELORA_SIDECAR_KEYSET")
    from phi.keyset import load_keyset
    from phi.tokens import Tokenizer
    from sidecar.app import create_sidecar_app
    from sidecar.rewrite import Rewriter
    from velora.http_server import listen, make_server, url_of

    tokenizer = Tokenizer(load_keyset(settings.sidecar_keyset))
    app = create_sidecar_app(
        Rewriter(tokenizer, settings.sidecar_metadata_keys),
        settings.sidecar_upstream,
        velora_secret=settings.sidecar_velora_secret.reveal() or None,
        relay_secret=settings.sidecar_relay_secret.reveal() or None,
        siem_url=settings.sidecar_siem_url,
    )
    host = args.host or settings.sidecar_host
    port = settings.sidecar_port if args.port is None else args.port
    sock = listen(host, port, settings.http_backlog)
    try:
        server = make_server(app, settings)
        freeze_start_up()
        log.info("listening on %s (tenant %s)", url_of(sock), tokenizer.tenant_id)
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0

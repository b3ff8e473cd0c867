"""``velora node [--host --port]``: one query node (ledger materializer + public API).

Creates the topics if missing, opens the DuckDB ledger, starts the materializer
and serves ``query_api.app.create_app(settings, node)`` with the server every
service uses (``velora.http_server``: uvicorn with the ``VELORA_HTTP_*`` limits,
and uvicorn's own proxy-header handling off: forwarded headers are trusted only
from ``VELORA_TRUSTED_PROXIES``, inside the app). Before anything starts, published
development secrets (pepper, cursor secret, secrets key) are refused on a non-loopback bind and
warned about on loopback (``check_bind_secrets``). The socket is bound here,
before uvicorn starts, so with ``--port 0`` (or ``VELORA_NODE_PORT=0``) the port
the OS chose is logged as ``listening on http://HOST:PORT``. SIGTERM and SIGINT
stop uvicorn, then the materializer (the batch in flight is committed) and
DuckDB, cleanly.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from typing import TYPE_CHECKING

from velora.errors import VeloraError
from velora.memory import prepare_to_serve
from velora.settings import Settings, check_bind_secrets

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger("velora.node")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``node`` command."""
    p = sub.add_parser("node", help="run a query node: ledger materializer + public API")
    p.add_argument("--host", help="address to listen on (default VELORA_NODE_HOST)")
    p.add_argument("--port", type=int, help="port to listen on, 0 = any (default VELORA_NODE_PORT)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Serve until SIGTERM/SIGINT."""
    from ledger.node import QueryNode
    from ledger.progress import ReplayProgress
    from query_api.app import create_app
    from velora.http_server import listen, make_server, url_of
    from velora.topics import ensure_topics

    quiet_kafka_selector()
    host = args.host or settings.node_host
    port = settings.node_port if args.port is None else args.port
    settings = settings.with_overrides(node_host=host, node_port=port)
    check_bind_secrets(settings, "node", host)
    ensure_topics(settings)
    progress = ReplayProgress("replaying the audit log into the ledger")
    node = QueryNode(settings, on_batch=progress.on_batch)
    sock = listen(host, port, settings.http_backlog)
    server: uvicorn.Server | None = None
    stopping = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        # uvicorn installs its own handlers while it serves and re-raises the signal
        # after its shutdown; this handler then lets the node stop cleanly (exit 0).
        stopping.set()
        if server is not None:
            server.should_exit = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    def watch_fatal() -> None:
        # A ledger that does not match the log must not keep serving stale data, and a
        # DuckDB invalidated by a fatal error serves nothing until the file is reopened.
        while not stopping.wait(0.5):
            if node.fatal:
                stopping.set()
                if server is not None:
                    server.should_exit = True

    try:
        node.start()
        if node.replaying and node.materializer is not None:
            progress.attach(node.materializer)
        threading.Thread(target=watch_fatal, name="velora-fatal-watch", daemon=True).start()
        server = make_server(create_app(settings, node), settings)
        prepare_to_serve()  # start-up frozen, fewer collections (velora.memory)
        log.info("listening on %s", url_of(sock))
        if not stopping.is_set():
            server.run(sockets=[sock])
    finally:
        stopping.set()
        for s, handler in previous.items():
            signal.signal(s, handler)
        progress.close()
        fatal = node.fatal
        node.stop()
        sock.close()
        log.info("query node stopped")
    if fatal:
        raise VeloraError(fatal)
    return 0


def quiet_kafka_selector() -> None:
    """kafka-python warns each time its network task waited over 100 ms for the GIL.

    The materializer's reader holds the GIL that long by design (it decodes whole
    polls), and without a consumer group nothing can time out, so only errors show.
    """
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)

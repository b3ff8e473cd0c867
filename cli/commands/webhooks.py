"""``velora webhooks dispatch|listen``: the webhook dispatcher, and a local receiver.

- ``dispatch``: one dispatcher of the consumer group ``<prefix>.webhooks``
  (:mod:`webhooks.service`); run several to share the work. Serves ``/healthz``,
  ``/readyz`` and ``/metrics`` on ``VELORA_DISPATCHER_HOST:VELORA_DISPATCHER_PORT``
  (logged as ``probes on http://HOST:PORT``). SIGTERM/SIGINT commit what is
  settled and leave the group.
- ``listen --port P --secret whsec_...``: verifies every delivery's signatures and
  prints one line per event (:mod:`webhooks.receiver`). ``--secret`` may be given
  twice around a rotation.

Both serve with :mod:`velora.http_server`, bounded by the same ``VELORA_HTTP_*``
limits as the query node and ingest (headers, URL, read timeouts, connections, the
per-request deadline); the receiver also refuses a body over 32 MiB (413).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from velora.memory import prepare_to_serve
from velora.settings import Settings, check_bind_secrets

log = logging.getLogger("velora.webhooks")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``webhooks`` command group."""
    p = sub.add_parser("webhooks", help="the webhook dispatcher and a local receiver")
    cmds = p.add_subparsers(dest="webhooks_command", required=True, metavar="ACTION")
    dispatch = cmds.add_parser(
        "dispatch", help="run a dispatcher (consumer group <prefix>.webhooks)"
    )
    dispatch.add_argument("--host", help="probe address (default VELORA_DISPATCHER_HOST)")
    dispatch.add_argument("--port", type=int, help="probe port, 0 = any (VELORA_DISPATCHER_PORT)")
    dispatch.set_defaults(func=_dispatch)
    listen = cmds.add_parser(
        "listen", help="receive deliveries locally, verify their signatures, print each event"
    )
    listen.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    listen.add_argument("--port", type=int, required=True, help="port (0 = any)")
    listen.add_argument(
        "--secret",
        action="append",
        required=True,
        help="the endpoint's signing secret (whsec_...); twice during a rotation",
    )
    listen.set_defaults(func=_listen)


def _dispatch(args: argparse.Namespace, settings: Settings) -> int:
    import uvloop

    from cli.commands.node import quiet_kafka_selector
    from velora.http_server import listen, make_server, url_of
    from velora.topics import ensure_topics
    from webhooks.service import DispatcherService, probe_app

    host = args.host or settings.dispatcher_host
    port = settings.dispatcher_port if args.port is None else args.port
    check_bind_secrets(settings, "dispatcher", host)
    quiet_kafka_selector()
    ensure_topics(settings)
    sock = listen(host, port, settings.http_backlog)
    service = DispatcherService(settings)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await service.start()
        prepare_to_serve()  # start-up frozen, fewer collections (velora.memory)
        server = make_server(probe_app(service), settings)
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        log.info("probes on %s", url_of(sock))
        try:
            await stop.wait()
        finally:
            server.should_exit = True
            await serving
            await service.stop()
            log.info("webhook dispatcher stopped")

    try:
        # uvloop: the dispatcher is one event loop of many small POSTs and Kafka
        # hand-overs, where uvloop's transports cost a fraction of asyncio's
        uvloop.run(main())
    finally:
        sock.close()
    return 0


def _listen(args: argparse.Namespace, settings: Settings) -> int:
    from velora.http_server import listen, make_server, url_of
    from webhooks.receiver import receiver_app

    sock = listen(args.host, args.port, settings.http_backlog)
    print(
        f"listening on {url_of(sock)}/ (verifying Velora-Signature and webhook-signature)",
        flush=True,
    )
    try:
        make_server(receiver_app(args.secret), settings).run(sockets=[sock])
    finally:
        sock.close()
    return 0

"""Support for the webhook tests: a real receiver, endpoints on the control topic, dispatchers.

:class:`Receiver` is a real uvicorn server on 127.0.0.1 that records every
delivery and verifies it with the public ``stripe`` and ``standardwebhooks``
libraries (not only with our own code). It can go down and come back on the same
port, hang, or answer with a chosen status. :func:`running_dispatcher` runs a
:class:`webhooks.service.DispatcherService` on its own event loop in a thread.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import standardwebhooks
import stripe
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ingest.control import ControlWriter
from ingest.producer import AuditProducer
from ledger.control import ControlState
from schemas.events import AuditEvent, WebhookEndpoint
from tests.helpers import wait_for
from velora.settings import Settings
from velora.topics import ensure_topics
from webhooks.endpoints import new_record, parse_fields, rotated_record
from webhooks.receiver import envelopes_of
from webhooks.secrets import SecretBox
from webhooks.service import DispatcherService


@dataclass
class Received:
    """One POST the receiver got."""

    headers: dict[str, str]
    body: bytes
    envelopes: list[dict[str, Any]]
    at: float
    stripe_ok: bool
    standard_ok: bool


@dataclass
class Receiver:
    """A real HTTP receiver (see the module docstring)."""

    secrets: list[str] = field(default_factory=list)
    status: int = 200
    hang: bool = False
    answer: Callable[[Request], Response | None] | None = None
    received: list[Received] = field(default_factory=list)
    port: int = 0
    verify: bool = True
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def _verify(self, body: bytes, headers: dict[str, str]) -> tuple[bool, bool]:
        stripe_ok = standard_ok = False
        for secret in self.secrets:
            try:
                stripe.WebhookSignature.verify_header(
                    body, headers.get("velora-signature"), secret, tolerance=300
                )
                stripe_ok = True
            except stripe.SignatureVerificationError:
                pass
            try:
                standard_verify(secret, body, headers)
                standard_ok = True
            except standardwebhooks.WebhookVerificationError:
                pass
        return stripe_ok, standard_ok

    def app(self) -> Starlette:
        async def hook(request: Request) -> Response:
            body = await request.body()
            headers = {k.lower(): v for k, v in request.headers.items()}
            if self.hang:
                await asyncio.sleep(3600)
            custom = self.answer(request) if self.answer is not None else None
            stripe_ok, standard_ok = self._verify(body, headers) if self.verify else (False, False)
            try:
                envelopes = envelopes_of(body)
            except ValueError:
                envelopes = []
            with self._lock:
                self.received.append(
                    Received(headers, body, envelopes, _now(), stripe_ok, standard_ok)
                )
            return custom or Response(status_code=self.status)

        return Starlette(routes=[Route("/hook", hook, methods=["POST"])])

    def start(self) -> Receiver:
        """Serve (again, on the same port once it has one)."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(1024)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app(), log_level="warning", lifespan="off")
        self._server = server = uvicorn.Server(config)
        self._thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        wait_for(lambda: server.started, timeout=30, what="receiver start")
        return self

    def stop(self) -> None:
        """Go down: no more connections are accepted."""
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._server = self._thread = None

    def events(self) -> list[dict[str, Any]]:
        """Every envelope received, in arrival order."""
        with self._lock:
            return [e for r in self.received for e in r.envelopes]

    def ids(self) -> set[str]:
        return {e["id"] for e in self.events()}


def standard_verify(secret: str, body: bytes, headers: dict[str, str]) -> None:
    """``standardwebhooks.Webhook.verify``; a batch body (ndjson, HEC) is not one JSON value.

    The library checks the signature first and then ``json.loads`` the body, so a
    ``JSONDecodeError`` means the signature verified and the body is a batch.
    """
    try:
        standardwebhooks.Webhook(secret).verify(body, headers)
    except json.JSONDecodeError:
        pass


def _now() -> float:
    import time

    return time.monotonic()


def create_endpoint(
    settings: Settings, tenant: str, url: str, **fields: Any
) -> tuple[WebhookEndpoint, str, int]:
    """An endpoint written to the control topic as the API writes it: (record, secret, offset)."""
    checked = parse_fields({"url": url, **fields}, creating=True, allow_insecure_loopback=True)
    record, secret = new_record(SecretBox(settings.secrets_key), tenant, checked, datetime.now(UTC))
    with ControlWriter(settings) as writer:
        offset = writer.put_webhook_endpoint(record)
    return record, secret, offset


def rotate_endpoint(settings: Settings, record: WebhookEndpoint, overlap_s: float = 3600):
    """Rotate the secret as the API does: (new record, new secret, offset)."""
    from datetime import timedelta

    new, secret = rotated_record(
        SecretBox(settings.secrets_key), record, timedelta(seconds=overlap_s), datetime.now(UTC)
    )
    with ControlWriter(settings) as writer:
        offset = writer.put_webhook_endpoint(new)
    return new, secret, offset


class DispatcherThread:
    """A dispatcher service on its own event loop in a thread."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        self.service = DispatcherService(settings, **kwargs)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> DispatcherThread:
        ensure_topics(self.service.settings)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.service.start(), self.loop).result(60)
        state: dict[str, Any] = {}

        def ready() -> bool:
            state.update(self.service.readiness())
            return bool(state["ready"])

        try:
            wait_for(ready, timeout=120, what="dispatcher ready")
        except AssertionError as exc:
            raise AssertionError(f"dispatcher not ready: {state.get('reason')}") from exc
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.service.stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)
        self.loop.close()

    def wait_control(self, offset: int) -> None:
        wait_for(lambda: self.service.control.position > offset, timeout=15, what="control offset")


@contextmanager
def running_dispatcher(settings: Settings, **kwargs: Any) -> Iterator[DispatcherThread]:
    d = DispatcherThread(settings, **kwargs).start()
    try:
        yield d
    finally:
        d.stop()


def send_events(settings: Settings, events: list[AuditEvent]) -> None:
    """Send events through the ingest library; returns once Kafka acknowledged all."""
    producer = AuditProducer(settings)
    try:
        for f in [producer.send(e) for e in events]:
            f.result(timeout=30)
    finally:
        producer.close()


def control_caught_up(state: ControlState, offset: int) -> None:
    wait_for(lambda: state.position > offset, timeout=15, what="control offset")

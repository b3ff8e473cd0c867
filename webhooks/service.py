"""``velora webhooks dispatch``: the dispatcher process, its probes and its metrics.

:class:`DispatcherService` wires the pieces: the control-state follower (endpoints
and their health, :class:`ledger.control.ControlState`), the consumer group
(:mod:`webhooks.consumer`), the dispatcher core (:mod:`webhooks.dispatcher`), the
HTTP client (:mod:`webhooks.transport`) and the publisher of attempt records and
jobs (:mod:`webhooks.publisher`). :func:`probe_app` serves, on
``VELORA_DISPATCHER_HOST:PORT``:

- ``GET /healthz``: 200 while the process runs;
- ``GET /readyz``: 200 once the control state is caught up and the consumer has
  partitions and no error; the body has the counters below;
- ``GET /metrics``: Prometheus text. Per endpoint (label ``endpoint``), counted by
  this dispatcher since it started: ``velora_webhook_deliveries_total`` (2xx),
  ``velora_webhook_failures_total`` (failed attempts),
  ``velora_webhook_retries_scheduled_total``, ``velora_webhook_deferred_total``
  (parked because the endpoint's queue was full), ``velora_webhook_dropped_total``
  (pending deliveries not sent: endpoint disabled), ``velora_webhook_skipped_total``
  (matching events read while the endpoint was disabled: what a replay after
  re-enabling it would send), and the gauges ``velora_webhook_in_flight`` and
  ``velora_webhook_queued``; for the whole dispatcher
  ``velora_webhook_retries_pending`` (records waiting in the retry partitions this
  dispatcher owns), ``velora_webhook_records_in_flight`` and the counter
  ``velora_webhook_group_rejoins_total`` (label ``cause``: ``dropped_join``, a
  finished group join whose assignment kafka-python dropped, joined again at once;
  ``idle``, the member left and joined again after holding no partitions too
  long; see :mod:`webhooks.consumer`). The retries pending per
  endpoint, across every dispatcher, are in the API
  (``GET /api/v2/public/webhooks/endpoints/{id}``, ``stats``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from kafka.structs import TopicPartition
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from ledger.control import ControlState
from velora.errors import UnknownSchema
from velora.settings import Settings
from webhooks.consumer import GroupConsumer, OffsetTracker, Ref
from webhooks.dispatcher import CONTROL_REFRESH_S, Dispatcher
from webhooks.inbox import Inbox
from webhooks.publisher import Publisher
from webhooks.transport import WebhookClient
from webhooks.urls import Resolver, system_resolver

log = logging.getLogger(__name__)

COUNTERS = (
    ("delivered", "velora_webhook_deliveries_total", "Deliveries answered with a 2xx."),
    ("failed", "velora_webhook_failures_total", "Attempts that failed."),
    ("retries_scheduled", "velora_webhook_retries_scheduled_total", "Retries scheduled."),
    ("deferred", "velora_webhook_deferred_total", "Deliveries parked: endpoint queue full."),
    ("dropped", "velora_webhook_dropped_total", "Pending deliveries not sent: endpoint disabled."),
    ("skipped", "velora_webhook_skipped_total", "Matching events not sent: endpoint disabled."),
)


class DispatcherService:
    """One dispatcher: start it on an event loop, stop it, read its state."""

    def __init__(
        self,
        settings: Settings,
        *,
        resolve: Resolver = system_resolver,
        client_id: str = "velora-webhooks",
    ) -> None:
        self.settings = settings
        self._resolve = resolve
        self._client_id = client_id
        self.control = ControlState(settings, refresh_s=CONTROL_REFRESH_S)
        self.tracker = OffsetTracker()
        self.dispatcher: Dispatcher | None = None
        self.consumer: GroupConsumer | None = None
        self.publisher: Publisher | None = None
        self._inbox: Inbox | None = None
        self._unknown_logged = False

    async def start(self) -> None:
        """Follow the control topic, join the group, start dispatching."""
        self._inbox = Inbox(asyncio.get_running_loop())
        while not await asyncio.to_thread(self.control.start):
            # Fanning out with a partial endpoint list would skip events for good.
            log.warning("webhook dispatcher: control state not caught up yet; waiting")
        self.publisher = await asyncio.to_thread(Publisher, self.settings, inbox=self._inbox)
        client = WebhookClient(
            self._resolve,
            allow_insecure_loopback=self.settings.webhooks_allow_insecure_loopback,
            timeout_s=self.settings.webhooks_timeout_s,
            max_connections=1000,
        )
        self.dispatcher = Dispatcher(
            self.settings, self.control, client, self.publisher, self.tracker
        )
        self.consumer = GroupConsumer(
            self.settings, self.tracker, self._handle, self._wait, client_id=self._client_id
        )
        await asyncio.to_thread(self.consumer.start)
        log.info("webhook dispatcher started (group %s)", self.settings.webhook_group)

    async def stop(self) -> None:
        """Leave the group (committing what is settled), then close everything."""
        if self.consumer is not None:
            await asyncio.to_thread(self.consumer.stop)
        if self.dispatcher is not None:
            await self.dispatcher.close()
            await self.dispatcher.client.aclose()
        if self.publisher is not None:
            await asyncio.to_thread(self.publisher.close)
        await asyncio.to_thread(self.control.stop)

    # -- called in the consumer thread ----------------------------------------------------
    def _handle(self, tp: TopicPartition, record: Any, ref: Ref) -> None:
        dispatcher, inbox = self.dispatcher, self._inbox
        if dispatcher is None or inbox is None:
            return
        if tp.topic == self.settings.audit_topic:
            try:
                event = dispatcher.decode_event(record.value)
            except UnknownSchema as exc:
                if not self._unknown_logged:
                    self._unknown_logged = True
                    log.error(
                        "webhooks: audit partition %d offset %d has schema %s, not deployed "
                        "here; its offset is held until it is (deploy it and restart)",
                        tp.partition,
                        record.offset,
                        exc.fp,
                    )
                return
            inbox.put(dispatcher.offer_event, ref, event, record.value, record.timestamp)
        else:
            inbox.put(dispatcher.offer_job, ref, dispatcher.decode_job(record.value))

    def _wait(self, tp: TopicPartition, record: Any) -> float:
        dispatcher = self.dispatcher
        if dispatcher is None:
            return 1.0
        tier = self.settings.webhook_retry_topics.index(tp.topic)
        return dispatcher.wait_s(tier, dispatcher.decode_job(record.value), record.timestamp)

    # -- observation ------------------------------------------------------------------
    def readiness(self) -> dict[str, Any]:
        """What ``/readyz`` answers."""
        control = self.control.readiness()
        consumer = self.consumer
        reason = None
        if not control["caught_up"]:
            reason = "control state not caught up"
        elif consumer is None:
            reason = "not started"
        elif consumer.error:
            reason = f"consumer: {consumer.error}"
        elif not consumer.assigned:
            reason = "no partitions assigned yet"
        out: dict[str, Any] = {
            "ready": reason is None,
            "partitions": 0 if consumer is None else len(consumer.assigned),
            "records_in_flight": self.tracker.in_flight,
            "retries_pending": 0 if consumer is None else consumer.retries_waiting,
            "group_rejoins": {
                "dropped_join": 0 if consumer is None else consumer.join_repairs,
                "idle": 0 if consumer is None else consumer.rejoins,
            },
            "endpoints": self.endpoint_metrics(),
        }
        if reason is not None:
            out["reason"] = reason
        return out

    def endpoint_metrics(self) -> dict[str, dict[str, int]]:
        """Per endpoint: the counters and the lane's gauges."""
        dispatcher = self.dispatcher
        if dispatcher is None:
            return {}
        lanes = dispatcher.lanes()
        out: dict[str, dict[str, int]] = {}
        for eid in sorted(set(dispatcher.counters) | set(lanes)):
            row = {name: dispatcher.counters[eid][name] for name, _, _ in COUNTERS}
            row.update(lanes.get(eid, {"in_flight": 0, "queued": 0}))
            out[eid] = row
        return out

    def metrics_text(self) -> str:
        """The Prometheus text exposition of :meth:`endpoint_metrics`."""
        rows = self.endpoint_metrics()
        lines: list[str] = []
        series = [(k, n, h, "counter") for k, n, h in COUNTERS] + [
            ("in_flight", "velora_webhook_in_flight", "Requests running now.", "gauge"),
            ("queued", "velora_webhook_queued", "Events queued in this dispatcher.", "gauge"),
        ]
        for key, name, help_text, kind in series:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            lines += [f'{name}{{endpoint="{eid}"}} {row[key]}' for eid, row in rows.items()]
        state = self.readiness()
        for name, value, help_text in (
            ("velora_webhook_retries_pending", state["retries_pending"], "Retries waiting."),
            ("velora_webhook_records_in_flight", state["records_in_flight"], "Unsettled."),
        ):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]
        name = "velora_webhook_group_rejoins_total"
        lines += [f"# HELP {name} Group rejoins, by cause.", f"# TYPE {name} counter"]
        lines += [f'{name}{{cause="{c}"}} {n}' for c, n in state["group_rejoins"].items()]
        return "\n".join(lines) + "\n"


def probe_app(service: DispatcherService) -> Starlette:
    """``/healthz``, ``/readyz`` and ``/metrics`` of one dispatcher."""

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> JSONResponse:
        state = service.readiness()
        return JSONResponse(state, status_code=200 if state["ready"] else 503)

    async def metrics(request: Request) -> PlainTextResponse:
        return PlainTextResponse(service.metrics_text(), media_type="text/plain; version=0.0.4")

    return Starlette(
        routes=[Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)]
    )

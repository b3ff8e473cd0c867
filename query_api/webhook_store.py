"""What the webhook routes read from DuckDB and write to Kafka.

- :func:`list_attempts`: one endpoint's attempts, newest first by
  ``(attempted_at, attempt_id)``, strictly after a keyset position;
- :func:`attempt_stats`: per endpoint, attempts delivered and failed, deliveries
  whose latest attempt scheduled a retry (retries pending) and deliveries failed
  for good; over every dispatcher, as the attempt log says;
- :func:`delivery_attempts`, :func:`events_by_id`, :func:`events_in_range`: what a
  manual retry or a replay re-sends (events from ``audit_events``, the log's view);
- :class:`RequestWriter`: jobs for the dispatchers on the request topic, and endpoint
  records on the control topic, each returning once Kafka acknowledged it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import duckdb

from ingest.control import ControlWriter
from ledger.tables import ledger_key
from query_api.cursor import Position
from query_api.queries import COLUMN_NAMES, COLUMNS
from query_api.serialize import _metadata
from schemas.codec import AvroCodec
from schemas.events import Actor, AuditEvent, Outcome, Target, WebhookJob
from schemas.times import from_micros
from velora.kafka_clients import close_producer, map_kafka_errors, new_producer
from velora.settings import Settings

SEND_TIMEOUT_S = 15.0
ATTEMPT_FIELDS = (
    "attempt_id", "delivery_id", "event_ids", "event_type", "attempt", "trigger",
    "attempted_us", "status_code", "latency_ms", "outcome", "error_class", "next_us",
)  # fmt: skip
_ATTEMPT_SQL = (
    "SELECT attempt_id, delivery_id, event_ids, event_type, attempt, trigger, "
    "epoch_us(attempted_at), status_code, latency_ms, outcome, error_class, "
    "epoch_us(next_attempt_at) FROM webhook_attempts WHERE tenant_id = ? AND endpoint_id = ?"
)


def list_attempts(
    cur: duckdb.DuckDBPyConnection,
    tenant_id: str,
    endpoint_id: str,
    after: Position | None,
    limit: int,
) -> list[dict[str, Any]]:
    """Up to ``limit`` attempts of one endpoint, newest first, strictly after ``after``."""
    sql, params = _ATTEMPT_SQL, [tenant_id, endpoint_id]
    if after is not None:
        at = from_micros(after.occurred_us)
        sql += " AND attempted_at <= ? AND (attempted_at < ? OR attempt_id < ?)"
        params += [at, at, after.event_id]
    sql += " ORDER BY attempted_at DESC, attempt_id DESC LIMIT ?"
    rows = cur.execute(sql, [*params, limit]).fetchall()
    return [dict(zip(ATTEMPT_FIELDS, r, strict=True)) for r in rows]


def delivery_attempts(
    cur: duckdb.DuckDBPyConnection, tenant_id: str, endpoint_id: str, delivery_id: str
) -> list[dict[str, Any]]:
    """Every attempt of one delivery, newest first."""
    sql = _ATTEMPT_SQL + " AND delivery_id = ? ORDER BY attempted_at DESC, attempt_id DESC"
    rows = cur.execute(sql, [tenant_id, endpoint_id, delivery_id]).fetchall()
    return [dict(zip(ATTEMPT_FIELDS, r, strict=True)) for r in rows]


def attempt_stats(
    cur: duckdb.DuckDBPyConnection, tenant_id: str, endpoint_id: str
) -> dict[str, int]:
    """Counts over the attempt log for one endpoint (see the module docstring)."""
    row = cur.execute(
        """
        WITH a AS (SELECT * FROM webhook_attempts WHERE tenant_id = ? AND endpoint_id = ?),
             last AS (SELECT arg_max(outcome, (attempted_at, attempt_id)) AS outcome
                      FROM a GROUP BY delivery_id)
        SELECT
          (SELECT count(*) FROM a WHERE outcome = 'delivered'),
          (SELECT count(*) FROM a WHERE outcome IN ('retry_scheduled', 'failed')),
          (SELECT count(*) FROM last WHERE outcome = 'retry_scheduled'),
          (SELECT count(*) FROM last WHERE outcome = 'failed'),
          (SELECT count(*) FROM a WHERE outcome = 'dropped')
        """,
        [tenant_id, endpoint_id],
    ).fetchone()
    names = ("delivered", "failed_attempts", "retries_pending", "failed_deliveries", "dropped")
    return {n: int(v or 0) for n, v in zip(names, row or (0,) * 5, strict=True)}


def _event(row: Sequence[Any]) -> AuditEvent:
    r = dict(zip(COLUMN_NAMES, row, strict=True))
    return AuditEvent(
        event_id=r["event_id"],
        tenant_id=r["tenant_id"],
        occurred_at=from_micros(r["occurred_us"]),
        received_at=from_micros(r["received_us"]),
        action=r["action"],
        crud=r["crud"],
        category=r["category"],
        actor=Actor(
            type=r["actor_type"],
            id=r["actor_id"],
            name=r["actor_name"],
            email=r["actor_email"],
            ip=r["actor_ip"],
            user_agent=r["actor_user_agent"],
        ),
        targets=tuple(Target(t["type"], t["id"], t["name"]) for t in r["targets"] or ()),
        outcome=Outcome(r["outcome_result"], r["outcome_reason"]),
        request_id=r["request_id"],
        source=r["source"],
        metadata=_metadata(r["metadata"]),
        schema_version=r["schema_version"],
    )


def events_by_id(
    cur: duckdb.DuckDBPyConnection, tenant_id: str, event_ids: Sequence[str]
) -> list[AuditEvent]:
    """The tenant's events with these ids (those that exist), in the given order."""
    keys = [ledger_key(tenant_id, e) for e in event_ids]
    rows = cur.execute(
        f"SELECT {COLUMNS} FROM audit_events WHERE ledger_key IN (SELECT unnest(?))",  # noqa: S608
        [keys],
    ).fetchall()
    found = {r[0]: _event(r) for r in rows}
    return [found[e] for e in event_ids if e in found]


def events_in_range(
    cur: duckdb.DuckDBPyConnection, tenant_id: str, since: datetime, until: datetime, limit: int
) -> list[AuditEvent]:
    """Up to ``limit`` events of the tenant with ``since <= occurred_at < until``, oldest first."""
    rows = cur.execute(
        f"SELECT {COLUMNS} FROM audit_events WHERE tenant_id = ? "  # noqa: S608
        "AND occurred_at >= ? AND occurred_at < ? ORDER BY occurred_at, event_id LIMIT ?",
        [tenant_id, since, until, limit],
    ).fetchall()
    return [_event(r) for r in rows]


class RequestWriter:
    """Writes for the webhook routes: control records and request jobs (blocking calls)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.codec = AvroCodec()
        self._control: ControlWriter | None = None
        self._producer: Any = None

    def control(self) -> ControlWriter:
        """The control-topic writer (made on first use)."""
        if self._control is None:
            self._control = ControlWriter(self.settings, self.codec)
        return self._control

    def encode_event(self, event: AuditEvent) -> bytes:
        """An event as the log holds it (single-object Avro)."""
        return self.codec.encode("AuditEvent", event.to_avro())

    def send_jobs(self, jobs: Sequence[WebhookJob]) -> None:
        """Put jobs on the request topic; returns once Kafka acknowledged all of them."""
        if self._producer is None:
            self._producer = new_producer(self.settings, "velora-webhook-requests", linger_ms=5)
        topic = self.settings.webhook_requests_topic
        with map_kafka_errors("webhook request write"):
            futures = [
                self._producer.send(
                    topic,
                    key=j.endpoint_id.encode(),
                    value=self.codec.encode("WebhookJob", j.to_avro()),
                )
                for j in jobs
            ]
            for f in futures:
                f.get(timeout=SEND_TIMEOUT_S)

    def close(self) -> None:
        """Close what was opened."""
        if self._producer is not None:
            close_producer(self._producer, 10.0)
        if self._control is not None:
            self._control.close()

"""Write control records (API keys, tenant settings, webhooks) to the compacted control topic.

Every record is the entity's *full current state*, keyed ``<kind>:<id>`` so that
compaction keeps the latest one: ``api_key:<key_id>``, ``tenant:<tenant_id>``,
``phi_keyset:<tenant_id>``, ``webhook:<endpoint_id>`` and
``webhook_health:<endpoint_id>``; deleting an endpoint
writes a tombstone (no value) under both of its keys.
Values are single-object Avro (see :mod:`schemas.codec`). Each write waits for
``acks=all`` and returns the record's offset, so a caller can wait until a node's
:class:`ledger.control.ControlState` has folded it (read-your-writes).
"""

from __future__ import annotations

from types import TracebackType

from schemas.codec import AvroCodec
from schemas.events import ApiKey, PhiKeyset, TenantSettings, WebhookEndpoint, WebhookHealth
from velora.kafka_clients import close_producer, map_kafka_errors, new_producer
from velora.settings import Settings

SEND_TIMEOUT_S = 15.0
REQUEST_TIMEOUT_S = 10.0


def api_key_record_key(key_id: str) -> str:
    """The control-topic key of one API key."""
    return f"api_key:{key_id}"


def tenant_record_key(tenant_id: str) -> str:
    """The control-topic key of one tenant's settings."""
    return f"tenant:{tenant_id}"


def phi_keyset_record_key(tenant_id: str) -> str:
    """The control-topic key of one server-mode tenant's wrapped PHI keyset."""
    return f"phi_keyset:{tenant_id}"


def webhook_record_key(endpoint_id: str) -> str:
    """The control-topic key of one webhook endpoint's configuration."""
    return f"webhook:{endpoint_id}"


def webhook_health_record_key(endpoint_id: str) -> str:
    """The control-topic key of one webhook endpoint's delivery health."""
    return f"webhook_health:{endpoint_id}"


class ControlWriter:
    """Produce control records with ``acks=all``; each ``put_*`` returns the offset."""

    def __init__(self, settings: Settings, codec: AvroCodec | None = None) -> None:
        self._topic = settings.control_topic
        self._codec = codec or AvroCodec()
        # Retries are bounded by time, not by count: a topic created a moment ago may
        # answer NotLeaderForPartition for a while. The producer gives up before the
        # caller stops waiting, so a write reported failed cannot land afterwards.
        self._producer = new_producer(
            settings,
            "velora-control-writer",
            linger_ms=0,
            request_timeout_ms=int(REQUEST_TIMEOUT_S * 1000),
            delivery_timeout_ms=int((SEND_TIMEOUT_S - 1) * 1000),
        )

    def put_api_key(self, key: ApiKey) -> int:
        """Write the full state of one API key; return its offset once acknowledged."""
        return self._send(
            api_key_record_key(key.key_id), self._codec.encode("ApiKey", key.to_avro())
        )

    def put_tenant_settings(self, tenant: TenantSettings) -> int:
        """Write the full settings of one tenant; return its offset once acknowledged."""
        value = self._codec.encode("TenantSettings", tenant.to_avro())
        return self._send(tenant_record_key(tenant.tenant_id), value)

    def put_phi_keyset(self, keyset: PhiKeyset) -> int:
        """Write one tenant's wrapped PHI keyset; return its offset once acknowledged."""
        value = self._codec.encode("PhiKeyset", keyset.to_avro())
        return self._send(phi_keyset_record_key(keyset.tenant_id), value)

    def put_webhook_endpoint(self, endpoint: WebhookEndpoint) -> int:
        """Write the full configuration of one webhook endpoint; return its offset."""
        value = self._codec.encode("WebhookEndpoint", endpoint.to_avro())
        return self._send(webhook_record_key(endpoint.endpoint_id), value)

    def put_webhook_health(self, health: WebhookHealth) -> int:
        """Write the delivery health of one webhook endpoint; return its offset."""
        value = self._codec.encode("WebhookHealth", health.to_avro())
        return self._send(webhook_health_record_key(health.endpoint_id), value)

    def delete_webhook_endpoint(self, endpoint_id: str) -> int:
        """Tombstone both keys of an endpoint; return the offset of the last one."""
        self._send(webhook_health_record_key(endpoint_id), None)
        return self._send(webhook_record_key(endpoint_id), None)

    def _send(self, key: str, value: bytes | None) -> int:
        with map_kafka_errors("control topic write"):
            meta = self._producer.send(self._topic, key=key.encode(), value=value, partition=0)
            return int(meta.get(timeout=SEND_TIMEOUT_S).offset)

    def close(self) -> None:
        """Flush (up to 10 s) and close the producer, even while Kafka is down."""
        close_producer(self._producer, 10.0)

    def __enter__(self) -> ControlWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

"""Write control records (API keys, tenant settings) to the compacted control topic.

Every record is the entity's *full current state*, keyed ``<kind>:<id>`` so that
compaction keeps the latest one: ``api_key:<key_id>``, ``tenant:<tenant_id>``.
Values are single-object Avro (see :mod:`schemas.codec`). Each write waits for
``acks=all`` and returns the record's offset, so a caller can wait until a node's
:class:`ledger.control.ControlState` has folded it (read-your-writes).
"""

from __future__ import annotations

from types import TracebackType

from schemas.codec import AvroCodec
from schemas.events import ApiKey, TenantSettings
from velora.kafka_clients import close_producer, map_kafka_errors, new_producer
from velora.settings import Settings

SEND_TIMEOUT_S = 15.0


def api_key_record_key(key_id: str) -> str:
    """The control-topic key of one API key."""
    return f"api_key:{key_id}"


def tenant_record_key(tenant_id: str) -> str:
    """The control-topic key of one tenant's settings."""
    return f"tenant:{tenant_id}"


class ControlWriter:
    """Produce control records with ``acks=all``; each ``put_*`` returns the offset."""

    def __init__(self, settings: Settings, codec: AvroCodec | None = None) -> None:
        self._topic = settings.control_topic
        self._codec = codec or AvroCodec()
        self._producer = new_producer(settings, "velora-control-writer", linger_ms=0, retries=5)

    def put_api_key(self, key: ApiKey) -> int:
        """Write the full state of one API key; return its offset once acknowledged."""
        return self._send(
            api_key_record_key(key.key_id), self._codec.encode("ApiKey", key.to_avro())
        )

    def put_tenant_settings(self, tenant: TenantSettings) -> int:
        """Write the full settings of one tenant; return its offset once acknowledged."""
        value = self._codec.encode("TenantSettings", tenant.to_avro())
        return self._send(tenant_record_key(tenant.tenant_id), value)

    def _send(self, key: str, value: bytes) -> int:
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

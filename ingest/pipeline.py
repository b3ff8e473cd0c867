"""One event through ingest: ``validate -> transform -> encode``, ready to produce.

:class:`Pipeline` is pure CPU work with no I/O, shared by the library and HTTP
ingest. Its output is ``(event_id, tenant_id, value)``: the value is the Avro
single-object encoding of the ``AuditEvent`` schema (the codec's contract), the
tenant is the Kafka key.

Encoding uses the codec's registered schema (its fingerprint and parsed form)
but not :meth:`schemas.AvroCodec.encode` itself: the record was just built by
:func:`~ingest.validation.to_record`, so the codec's pre-checks cannot fail, and
the body is written by a writer generated for the schema
(:mod:`ingest.avro_writer`, 2.4x faster than fastavro). The bytes are identical
to the codec's (``tests/test_producer.py`` pins that). A record the generated
writer cannot handle goes through fastavro, and one fastavro refuses through the
codec, which explains the problem naming the field.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import fastavro

from ingest.avro_writer import compile_writer
from ingest.transform import TenantTransform
from ingest.validation import check_encoded_size, event_as_mapping, to_record
from schemas import AUDIT_EVENT, AuditEvent, AvroCodec
from schemas.codec import MAGIC
from velora.errors import ErrorDetail, ValidationError, VeloraError

_WRITE_ERRORS = (ValueError, TypeError, KeyError, AttributeError, OverflowError)

REPEATED_STRINGS = frozenset(
    {"tenant_id", "action", "category", "source", "actor.type", "targets.type", "metadata.*"}
)
"""Record paths whose strings come from a small set: the writer caches their encoding."""

Prepared = tuple[str, str, bytes]
"""``(event_id, tenant_id, encoded value)`` of one event that passed the pipeline."""


class Pipeline:
    """Validate, transform and encode events, one at a time; thread-safe.

    ``system=True`` admits the reserved ``audit_log.`` actions and ``velora.``
    sources: only the query node's own auditing makes such a pipeline.
    """

    def __init__(
        self,
        codec: AvroCodec | None = None,
        transform: TenantTransform | None = None,
        *,
        system: bool = False,
    ) -> None:
        self.codec = codec or AvroCodec()
        self.system = system
        latest = self.codec.registry.latest(AUDIT_EVENT)
        self._header = MAGIC + latest.fingerprint
        self._schema = latest.parsed
        self._writer = compile_writer(latest.parsed, REPEATED_STRINGS)
        self._transform = transform
        self._record_transform = getattr(transform, "transform_record", None)

    def prepare(
        self,
        item: Mapping[str, Any] | AuditEvent,
        now: datetime,
        sources: frozenset[str] | None = None,
    ) -> Prepared:
        """Run one event through the pipeline; raise ``ValidationError`` to reject it.

        ``sources``, when given, are the only ``source`` values accepted.
        """
        raw = event_as_mapping(item) if isinstance(item, AuditEvent) else item
        record = to_record(raw, now, system=self.system, sources=sources)
        if self._record_transform is not None:
            record = self._record_transform(record)
        elif self._transform is not None:
            record = self._apply_transform(record)
        value = self.encode(record)
        return record["event_id"], record["tenant_id"], value

    def encode(self, record: Mapping[str, Any]) -> bytes:
        """Single-object Avro encoding of one ``AuditEvent`` record, size-checked."""
        if self._writer is not None:
            try:
                value = self._header + self._writer(record)
            except _WRITE_ERRORS:
                value = self._encode_slow(record)
        else:
            value = self._encode_slow(record)
        check_encoded_size(value)
        return value

    def _encode_slow(self, record: Mapping[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self._header)
        try:
            fastavro.schemaless_writer(buf, self._schema, record)
        except _WRITE_ERRORS:
            return self.codec.encode(AUDIT_EVENT, record)  # raises EncodeError naming the field
        return buf.getvalue()

    def _apply_transform(self, record: dict[str, Any]) -> dict[str, Any]:
        event = AuditEvent.from_avro(record)
        out = self._transform(event)  # type: ignore[misc]
        if not isinstance(out, AuditEvent):
            raise VeloraError(f"transform returned {type(out).__name__}, not AuditEvent")
        if out.event_id != event.event_id or out.tenant_id != event.tenant_id:
            raise VeloraError("transform must not change event_id or tenant_id")
        try:
            return out.to_avro()
        except VeloraError as exc:
            detail = ErrorDetail("event", f"transform produced an invalid event: {exc.message}")
            raise ValidationError(detail.reason, details=(detail,)) from exc

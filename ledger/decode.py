"""Kafka record values -> one Arrow table shaped like ``audit_events``.

Values written with the latest ``AuditEvent`` schema go through the vectorized
decoder (:mod:`ledger.columnar`). Anything else (an older writer schema that needs
resolution, or a batch the fast path finds corrupt) goes record by record through
:meth:`schemas.codec.AvroCodec.decode`, which is also the reference the tests
compare the fast path against.

A record that cannot become a row is never silently dropped:

- **unknown writer schema** (a fingerprint the registry does not hold): the record
  is fine, this node is just missing the schema. Its partition is *held* at that
  offset (:attr:`Decoded.held`): nothing of it at or after the offset is in the
  batch, so the materializer stops there until the schema is deployed.
- **anything else** (corrupt bytes, no value, an Avro body that does not match its
  schema): the log is immutable and every replay would fail the same way, so the
  record is *quarantined* (:attr:`Decoded.quarantined`) by partition and offset,
  never its content, and the offset moves past it in the same transaction.

Both outcomes depend only on the bytes in the log and the deployed schemas, so two
nodes, or two rebuilds, decide the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ledger.columnar import Corrupt, Node, decode_batch, decode_spans, plan_for
from ledger.record_runs import RecordRun
from ledger.tables import AUDIT_COLUMNS
from schemas.codec import MAGIC, AvroCodec, SchemaVersion
from schemas.events import AUDIT_EVENT
from schemas.rules import EVENT_ID_PATTERN
from velora.errors import DecodeError, SchemaError, UnknownSchema

log = logging.getLogger(__name__)

TS = pa.timestamp("us", tz="UTC")
TARGETS = pa.list_(pa.struct([("type", pa.string()), ("id", pa.string()), ("name", pa.string())]))
METADATA = pa.map_(pa.string(), pa.string())

#: Arrow schema of the table that :meth:`EventDecoder.decode` returns (= audit_events).
LEDGER_SCHEMA = pa.schema(
    [
        ("ledger_key", pa.string()),
        ("event_id", pa.string()),
        ("tenant_id", pa.string()),
        ("occurred_at", TS),
        ("received_at", TS),
        ("action", pa.string()),
        ("crud", pa.string()),
        ("category", pa.string()),
        ("actor_type", pa.string()),
        ("actor_id", pa.string()),
        ("actor_name", pa.string()),
        ("actor_email", pa.string()),
        ("actor_ip", pa.string()),
        ("actor_user_agent", pa.string()),
        ("targets", TARGETS),
        ("outcome_result", pa.string()),
        ("outcome_reason", pa.string()),
        ("request_id", pa.string()),
        ("source", pa.string()),
        ("metadata", METADATA),
        ("schema_version", pa.int32()),
        ("kafka_partition", pa.int32()),
        ("kafka_offset", pa.int64()),
    ]
)
if tuple(LEDGER_SCHEMA.names) != AUDIT_COLUMNS:
    raise SchemaError("LEDGER_SCHEMA and ledger.tables.AUDIT_COLUMNS disagree")


@dataclass
class Decoded:
    """One decoded batch: its rows, the records quarantined, the partitions held."""

    table: pa.Table
    quarantined: list[tuple[int, int, str]] = field(default_factory=list)
    """``(partition, offset, reason)`` of each record that can never become a row."""
    held: dict[int, tuple[int, str]] = field(default_factory=dict)
    """partition -> ``(offset, fingerprint hex)`` of its first record of an unknown schema."""


class EventDecoder:
    """Decodes batches of audit-topic values into ``audit_events``-shaped Arrow tables."""

    def __init__(self, codec: AvroCodec | None = None) -> None:
        self.codec = codec or AvroCodec()
        self.latest: SchemaVersion = self.codec.registry.latest(AUDIT_EVENT)
        self._plan: Node | None = plan_for(self.latest.raw)
        self._header = MAGIC + self.latest.fingerprint

    def decode(
        self, values: Sequence[bytes | None], partitions: np.ndarray, offsets: np.ndarray
    ) -> Decoded:
        """Decode ``values`` (in log order) with their partitions and offsets."""
        n = len(values)
        if n == 0:
            return Decoded(LEDGER_SCHEMA.empty_table())
        if self._plan is not None and None not in values:
            try:
                events = decode_batch(self._plan, values, self._header)  # type: ignore[arg-type]
                return _canonical_ids(Decoded(_ledger_table(events, partitions, offsets)))
            except Corrupt:
                log.info("batch of %d needs the per-record decoder", n)
        return _canonical_ids(self._slow(values, partitions, offsets))

    def decode_runs(self, runs: Sequence[tuple[int, RecordRun]]) -> Decoded:
        """Decode record runs (partition, run) in order, straight from the batch buffers."""
        if not runs:
            return Decoded(LEDGER_SCHEMA.empty_table())
        shift = 0
        starts, ends, parts, offs, buffers = [], [], [], [], []
        for partition, run in runs:
            buffers.append(run.buffer)
            starts.append(run.value_starts + shift)
            ends.append(run.value_ends + shift)
            parts.append(np.full(len(run), partition, dtype=np.int32))
            offs.append(run.offsets)
            shift += len(run.buffer)
        partitions, offsets = np.concatenate(parts), np.concatenate(offs)
        value_starts = np.concatenate(starts)
        if self._plan is not None and (value_starts >= 0).all():
            buf = np.frombuffer(b"".join(buffers) + bytes(16), dtype=np.uint8)
            try:
                events = decode_spans(
                    self._plan, buf, value_starts, np.concatenate(ends), self._header
                )
                return _canonical_ids(Decoded(_ledger_table(events, partitions, offsets)))
            except Corrupt:
                log.info("%d records need the per-record decoder", len(offsets))
        values = [v for _, run in runs for v in run.values()]
        return _canonical_ids(self._slow(values, partitions, offsets))

    def _slow(
        self, values: Sequence[bytes | None], partitions: np.ndarray, offsets: np.ndarray
    ) -> Decoded:
        """The reference path: fastavro per record, with schema resolution."""
        records, keep = [], []
        out = Decoded(LEDGER_SCHEMA.empty_table())
        for i, value in enumerate(values):
            partition, offset = int(partitions[i]), int(offsets[i])
            if partition in out.held:
                continue  # nothing after a held record of its partition
            try:
                if value is None:
                    raise DecodeError("record has no value")
                _, record = self.codec.decode(value, reader=self.latest)
            except UnknownSchema as exc:
                out.held[partition] = (offset, exc.fp)
                continue
            except DecodeError as exc:
                log.error(
                    "quarantining record at partition %d offset %d: %s", partition, offset, exc
                )
                out.quarantined.append((partition, offset, f"decode: {exc.message}"))
                continue
            records.append(record)
            keep.append(i)
        struct = pa.array(records, type=pa.struct(list(_avro_arrow_type(self))))
        idx = np.asarray(keep, dtype=np.int64)
        out.table = _ledger_table(struct, partitions[idx], offsets[idx])
        return out


CANONICAL_UUID = f"^{EVENT_ID_PATTERN}$"
"""What ingest accepts as an ``event_id`` (:data:`schemas.rules.EVENT_ID_PATTERN`), whole."""


def _canonical_ids(out: Decoded) -> Decoded:
    """Quarantine the rows whose ``event_id`` is not a canonical UUID (~0.1 us a row).

    Ingest never writes one, but the log may hold another writer's records. The
    ``UUID`` column would refuse most such ids, yet it also takes upper case, braces
    and stray hyphens, storing the canonical form: the stored id would then differ
    from the record's (and from its ledger key), so those are stopped here as well.
    """
    ids = out.table.column("event_id")
    good = pc.fill_null(pc.match_substring_regex(ids, CANONICAL_UUID), False)
    if not out.table.num_rows or pc.all(good).as_py():
        return out
    bad = pc.invert(good)
    parts = out.table.column("kafka_partition").filter(bad).to_pylist()
    offs = out.table.column("kafka_offset").filter(bad).to_pylist()
    for partition, offset in zip(parts, offs, strict=True):
        log.error(
            "quarantining record at partition %d offset %d: event_id is not a canonical UUID",
            partition,
            offset,
        )
        out.quarantined.append((partition, offset, "decode: event_id is not a canonical UUID"))
    out.table = out.table.filter(good)
    return out


def _avro_arrow_type(decoder: EventDecoder) -> pa.StructType:
    """The Arrow type of a decoded AuditEvent record (same as the fast path's)."""
    plan = decoder._plan or plan_for(decoder.latest.raw)
    if plan is None:  # pragma: no cover - the audit contract only uses supported types
        raise DecodeError("the AuditEvent schema uses a type the Arrow mapping lacks")
    return plan.arrow  # type: ignore[return-value]


def _ledger_table(events: pa.StructArray, partitions: np.ndarray, offsets: np.ndarray) -> pa.Table:
    """Flatten decoded AuditEvent structs into the audit_events column layout."""
    f = events.field
    actor, outcome = f("actor"), f("outcome")
    event_id, tenant_id = f("event_id"), f("tenant_id")
    columns = [
        ledger_keys(tenant_id, event_id),
        event_id,
        tenant_id,
        f("occurred_at").cast(TS),
        f("received_at").cast(TS),
        f("action"),
        f("crud"),
        f("category"),
        actor.field("type"),
        actor.field("id"),
        actor.field("name"),
        actor.field("email"),
        actor.field("ip"),
        actor.field("user_agent"),
        f("targets").cast(TARGETS),
        outcome.field("result"),
        outcome.field("reason"),
        f("request_id"),
        f("source"),
        f("metadata").cast(METADATA),
        f("schema_version"),
        pa.array(np.asarray(partitions, dtype=np.int32), pa.int32()),
        pa.array(np.asarray(offsets, dtype=np.int64), pa.int64()),
    ]
    return pa.Table.from_arrays(columns, schema=LEDGER_SCHEMA)


def ledger_keys(tenant_ids: pa.Array, event_ids: pa.Array) -> pa.Array:
    """:func:`ledger.tables.ledger_key` for whole columns."""
    lengths = pc.cast(pc.utf8_length(tenant_ids), pa.string())
    return pc.binary_join_element_wise(lengths, tenant_ids, event_ids, ":")

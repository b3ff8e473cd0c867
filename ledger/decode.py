"""Kafka record values -> one Arrow table shaped like ``audit_events``.

Values written with the latest ``AuditEvent`` schema go through the vectorized
decoder (:mod:`ledger.columnar`). Anything else (an older writer schema that needs
resolution, or a batch the fast path finds corrupt) goes record by record through
:meth:`schemas.codec.AvroCodec.decode`, which is also the reference the tests
compare the fast path against. A value that cannot be decoded as an AuditEvent is
*skipped* and reported (partition and offset only, never its content): the log is
immutable, so stopping on it would stop the ledger forever, and skipping is
deterministic, so a replay skips the same records.
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
from velora.errors import DecodeError, SchemaError

log = logging.getLogger(__name__)

TS = pa.timestamp("us", tz="UTC")
TARGETS = pa.list_(pa.struct([("type", pa.string()), ("id", pa.string()), ("name", pa.string())]))
METADATA = pa.map_(pa.string(), pa.string())

#: Arrow schema of the table that :meth:`EventDecoder.decode` returns (= audit_events).
LEDGER_SCHEMA = pa.schema(
    [
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
    """One decoded batch: the rows to insert and the records that were skipped."""

    table: pa.Table
    skipped: list[tuple[int, int, str]] = field(default_factory=list)  # (partition, offset, why)


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
                return Decoded(dedup(_ledger_table(events, partitions, offsets)))
            except Corrupt:
                log.info("batch of %d needs the per-record decoder", n)
        return self._slow(values, partitions, offsets)

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
                return Decoded(dedup(_ledger_table(events, partitions, offsets)))
            except Corrupt:
                log.info("%d records need the per-record decoder", len(offsets))
        values = [v for _, run in runs for v in run.values()]
        return self._slow(values, partitions, offsets)

    def _slow(
        self, values: Sequence[bytes | None], partitions: np.ndarray, offsets: np.ndarray
    ) -> Decoded:
        """The reference path: fastavro per record, with schema resolution."""
        records, keep, skipped = [], [], []
        for i, value in enumerate(values):
            try:
                if value is None:
                    raise DecodeError("record has no value")
                _, record = self.codec.decode(value, reader=self.latest)
            except DecodeError as exc:
                where = (int(partitions[i]), int(offsets[i]))
                log.error("skipping undecodable record at partition %d offset %d: %s", *where, exc)
                skipped.append((*where, str(exc)))
                continue
            records.append(record)
            keep.append(i)
        struct = pa.array(records, type=pa.struct(list(_avro_arrow_type(self))))
        idx = np.asarray(keep, dtype=np.int64)
        table = _ledger_table(struct, partitions[idx], offsets[idx])
        return Decoded(dedup(table), skipped)


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
    columns = [
        f("event_id"),
        f("tenant_id"),
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


def dedup(table: pa.Table) -> pa.Table:
    """Keep the first row (log order) of each event_id that repeats inside one batch.

    DuckDB's ``ON CONFLICT DO NOTHING`` keeps an arbitrary one of two new rows with the
    same key inside one INSERT (it inserts in parallel), so a rebuild could differ.
    """
    ids = table.column("event_id")
    if pc.count_distinct(ids).as_py() == table.num_rows:
        return table
    indexed = table.select(["event_id"]).append_column("i", pa.array(np.arange(table.num_rows)))
    first = indexed.group_by("event_id", use_threads=False).aggregate([("i", "min")])
    return table.take(np.sort(first.column("i_min").to_numpy()))

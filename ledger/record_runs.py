"""Whole Kafka record batches out of kafka-python, without one Python object per record.

kafka-python parses every record of a fetch in Python and wraps it in a
``ConsumerRecord``: about 10 us per record, which was two thirds of the
materializer's reading thread. :func:`install` swaps the consumer's per-partition
record iterator for one that yields a :class:`RecordRun` per record batch instead:
the batch's (decompressed) bytes, plus numpy arrays of each record's offset and
the span of its value inside those bytes. Only the record boundaries are walked in
Python (one varint per record); the fields are read for all records of the batch
at once (:mod:`ledger.columnar`), and the values are never copied into ``bytes``.

Everything around the records stays kafka-python's own: fetch sessions, positions,
CRC checks, compression, and under ``read_committed`` the skipping of aborted
transactions and control batches (the batch-level code below mirrors
``Fetcher.PartitionRecords._unpack_records`` of kafka-python 3.0). A test compares
both paths on the same log.

The internals are guarded (:mod:`velora.kafka_internals`): the private modules
(``kafka.consumer.fetcher``, ``kafka.protocol.consumer``,
``kafka.record.default_records``, ``kafka.record.memory_records``) are imported
only by :func:`_probe`, which runs once per process on the pinned kafka-python
version, checks every class, method and attribute used here, and reads a small
transactional batch it builds through the fast path. If anything differs,
:func:`install` returns False, one warning is logged per process, and the consumer
keeps kafka-python's own per-record path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from kafka import KafkaConsumer
from kafka.errors import CorruptRecordError
from kafka.structs import TopicPartition

from ledger.columnar import Corrupt, Reader
from velora.kafka_internals import InternalsChanged, InternalsGuard, require

_PAD = 16


@dataclass(frozen=True, eq=False)
class RecordRun:
    """The records of one record batch at or after the fetch position."""

    offset: int  # the last record's offset (what kafka-python's skip check reads)
    buffer: bytes
    offsets: np.ndarray  # int64, one per record
    value_starts: np.ndarray  # int64 into ``buffer``; -1 for a null value
    value_ends: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets)

    def values(self) -> list[bytes | None]:
        """The values as bytes (the slow path, for batches the fast decoder rejects)."""
        return [
            None if s < 0 else self.buffer[s:e]
            for s, e in zip(self.value_starts.tolist(), self.value_ends.tolist(), strict=True)
        ]


def install(consumer: KafkaConsumer) -> bool:
    """Make ``consumer.poll()`` return :class:`RecordRun` items; False if not possible.

    Never raises: if kafka-python's internals are not the ones this module was
    written against, the consumer is left alone (and one warning per process says so).
    """
    internals = GUARD.internals()
    if internals is None:
        return False
    fetcher = getattr(consumer, "_fetcher", None)
    if not isinstance(fetcher, internals.fetcher):
        GUARD.decline("KafkaConsumer._fetcher is not a Fetcher")
        return False
    current = getattr(fetcher, "PartitionRecords", None)
    if current is internals.runs:
        return True
    if current is not internals.base:
        GUARD.decline("Fetcher.PartitionRecords is not kafka-python's own")
        return False
    fetcher.PartitionRecords = internals.runs
    return True


@dataclass(frozen=True)
class _Internals:
    """What the probe found: the fetcher class, its records class, and our subclass of it."""

    fetcher: type
    base: type
    runs: type


_PARTITION_RECORDS_USES = (
    "__init__",
    "_unpack_records",
    "_consume_aborted_transactions_up_to",
    "_contains_abort_marker",
    "_is_batch_aborted",
    "_maybe_skip_record",
    "drain",
    "take",
)
_BATCH_USES = (
    "validate_crc",
    "magic",
    "leader_epoch",
    "has_producer_id",
    "last_offset",
    "producer_id",
    "is_transactional",
    "is_control_batch",
    "next_offset",
    "base_offset",
    "size_in_bytes",
    "records_count",
    "_maybe_uncompress",
)


def _probe() -> _Internals:
    """Import and check every kafka-python internal used here; raise if one differs."""
    from kafka.consumer.fetcher import Fetcher
    from kafka.protocol.consumer import IsolationLevel
    from kafka.record.default_records import DefaultRecordBatch
    from kafka.record.memory_records import MemoryRecords, MemoryRecordsBuilder

    require(Fetcher, "PartitionRecords")
    base = Fetcher.PartitionRecords
    require(base, *_PARTITION_RECORDS_USES)
    require(DefaultRecordBatch, *_BATCH_USES)
    require(IsolationLevel, "READ_COMMITTED")
    require(MemoryRecords, "next_batch")
    runs = _run_records_class(base, IsolationLevel.READ_COMMITTED)
    _self_test(runs, IsolationLevel.READ_COMMITTED, MemoryRecords, MemoryRecordsBuilder)
    return _Internals(Fetcher, base, runs)


def _self_test(runs: type, read_committed: Any, records: type, builder_class: type) -> None:
    """Read a transactional batch built here through ``runs``; raise unless it reads right.

    This checks what ``hasattr`` on classes cannot: the attributes kafka-python sets
    on its objects (``fetch_offset``, ``next_fetch_offset``, ``_buffer``, ``_pos``, ...)
    and the calls of the ``read_committed`` checks, on a batch with a null value,
    read from its second record on.
    """
    builder = builder_class(
        2, 0, 1024, transactional=True, producer_id=7, producer_epoch=0, base_sequence=0
    )
    for value in (b"first", b"second", None):
        builder.append(0, b"key", value, [])
    builder.close()
    part = runs(
        1,
        TopicPartition("probe", 0),
        records(bytes(builder.buffer())),
        check_crcs=True,
        isolation_level=read_committed,
    )
    got = part.take()
    if (
        len(got) != 1
        or not isinstance(got[0], RecordRun)
        or got[0].offsets.tolist() != [1, 2]
        or got[0].values() != [b"second", None]
        or part.next_fetch_offset != 3
        or part.records_read != 2
    ):
        raise InternalsChanged("reading a record batch through PartitionRecords gave other records")


GUARD: InternalsGuard[_Internals] = InternalsGuard("the ledger's record runs", _probe)
"""Probes this module's kafka-python internals once per process."""


def _run_records_class(base: type, read_committed: Any) -> type:
    class RunPartitionRecords(base):  # type: ignore[misc, valid-type]
        """kafka-python's PartitionRecords, yielding one RecordRun per record batch."""

        def _unpack_records(
            self, tp: Any, records: Any, key_deserializer: Any, value_deserializer: Any
        ) -> Iterator[RecordRun]:
            batch = records.next_batch()
            last_batch = None
            while batch is not None:
                last_batch = batch
                if self.check_crcs and not batch.validate_crc():
                    raise CorruptRecordError(
                        f"Record batch for partition {tp} at offset {batch.base_offset} "
                        "failed crc check"
                    )
                if batch.magic != 2:
                    raise CorruptRecordError(f"message format v{batch.magic} is not supported")
                self.leader_epoch = batch.leader_epoch
                if self.isolation_level == read_committed and batch.has_producer_id():
                    self._consume_aborted_transactions_up_to(batch.last_offset)
                    producer_id = batch.producer_id
                    if self._contains_abort_marker(batch):
                        self.aborted_producer_ids.discard(producer_id)
                    elif self._is_batch_aborted(batch):
                        self.next_fetch_offset = batch.next_offset
                        batch = records.next_batch()
                        continue
                if batch.is_control_batch:
                    self.next_fetch_offset = batch.next_offset
                    batch = records.next_batch()
                    continue
                run = parse_batch(batch, self.fetch_offset)
                if run is not None:
                    self.records_read += len(run)
                    self.bytes_read += batch.size_in_bytes
                    self.next_fetch_offset = run.offset + 1
                    yield run
                batch = records.next_batch()
            if last_batch is not None:
                self.next_fetch_offset = last_batch.next_offset
            self.drain()

    return RunPartitionRecords


def parse_batch(batch: Any, fetch_offset: int) -> RecordRun | None:
    """The records of a v2 ``DefaultRecordBatch`` with offset >= ``fetch_offset``."""
    batch._maybe_uncompress()
    buffer = bytes(batch._buffer)
    n = batch.records_count
    starts, ends = _boundaries(buffer, batch._pos, n)
    buf = np.frombuffer(buffer + bytes(_PAD), dtype=np.uint8)
    reader = Reader(buf, len(buffer))
    try:
        pos = starts + 1  # attributes
        _, pos = reader.long(pos)  # timestamp delta
        offset_delta, pos = reader.long(pos)
        key_len, pos = reader.long(pos)
        pos = pos + np.maximum(key_len, 0)
        value_len, pos = reader.long(pos)
    except (Corrupt, IndexError) as exc:
        raise CorruptRecordError(f"bad record in batch at offset {batch.base_offset}") from exc
    value_ends = pos + np.maximum(value_len, 0)
    if len(value_ends) and (value_ends > ends).any():
        raise CorruptRecordError(f"record overruns its length at offset {batch.base_offset}")
    value_starts = np.where(value_len < 0, -1, pos)
    offsets = batch.base_offset + offset_delta
    keep = offsets >= fetch_offset
    if not keep.all():
        offsets, value_starts, value_ends = offsets[keep], value_starts[keep], value_ends[keep]
    if not len(offsets):
        return None
    return RecordRun(int(offsets[-1]), buffer, offsets, value_starts, value_ends)


def _boundaries(buffer: bytes, pos: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and end of each record's body (after its length varint), walking lengths."""
    starts = [0] * n
    ends = [0] * n
    size = len(buffer)
    try:
        _walk(buffer, pos, n, starts, ends, size)
    except IndexError as exc:
        raise CorruptRecordError("record batch ends inside a record") from exc
    return np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)


def _walk(buffer: bytes, pos: int, n: int, starts: list[int], ends: list[int], size: int) -> None:
    for i in range(n):
        b = buffer[pos]
        if b < 0x80:
            raw = b
            pos += 1
        else:
            raw, shift = b & 0x7F, 7
            pos += 1
            while True:
                b = buffer[pos]
                raw |= (b & 0x7F) << shift
                pos += 1
                if b < 0x80:
                    break
                shift += 7
                if shift > 63:
                    raise CorruptRecordError("record length varint too long")
        length = (raw >> 1) ^ -(raw & 1)
        starts[i] = pos
        pos += length
        ends[i] = pos
        if length < 0 or pos > size:
            raise CorruptRecordError("record length runs past the batch")

"""Vectorized Avro decoding: many records of one writer schema -> one Arrow struct array.

fastavro decodes about 90k records/s per core, one Python dict at a time; the
materializer needs more than that on two shared cores. This decoder walks the
schema once per *batch* instead of once per record: every record of the batch
advances in lockstep, field by field, with numpy doing the byte work (varints,
string gathers) for all of them at once, and Arrow arrays built directly.

It handles the types the audit contract uses: records, strings, bytes, ints,
longs, booleans, floats, doubles, enums, arrays, maps, ``[null, X]`` unions and
the ``timestamp-micros``/``timestamp-millis`` logical types. :func:`plan_for`
returns ``None`` for any other schema, and the caller falls back to fastavro.

Any inconsistency (a length running past the record, a bad union branch or enum
index, trailing bytes, invalid UTF-8) raises :class:`Corrupt`; the caller then
decodes record by record with fastavro to find and report the bad one, so the
result is always the same as fastavro's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

_PAD = 16  # zero bytes after the last record, so a varint read never leaves the buffer


class Corrupt(Exception):
    """The batch is not a valid sequence of records of the writer schema."""


@dataclass(frozen=True)
class Node:
    """One compiled schema node: its kind, its Arrow type and its children."""

    kind: str
    arrow: pa.DataType
    children: tuple[Node, ...] = ()
    names: tuple[str, ...] = ()
    symbols: tuple[str, ...] = ()
    null_branch: int = 0


_PRIMITIVES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "bytes": pa.binary(),
    "int": pa.int32(),
    "long": pa.int64(),
    "boolean": pa.bool_(),
    "float": pa.float32(),
    "double": pa.float64(),
}
_TIMESTAMPS = {"timestamp-micros": "us", "timestamp-millis": "ms"}


def plan_for(schema: Mapping[str, Any]) -> Node | None:
    """Compile a writer schema (its JSON form); ``None`` when a type is not supported."""
    try:
        return _compile(schema, {}, schema.get("namespace", ""))
    except _Unsupported:
        return None


class _Unsupported(Exception):
    pass


def _compile(s: Any, named: dict[str, Node], ns: str) -> Node:
    if isinstance(s, str):
        if s in _PRIMITIVES:
            return Node(s, _PRIMITIVES[s])
        full = s if "." in s else f"{ns}.{s}" if ns else s
        if full in named:
            return named[full]
        if s in named:
            return named[s]
        raise _Unsupported(s)
    if isinstance(s, list):
        branches = [b for b in s if b != "null"]
        if len(s) != 2 or len(branches) != 1:
            raise _Unsupported("union")
        inner = _compile(branches[0], named, ns)
        return Node("nullable", inner.arrow, (inner,), null_branch=s.index("null"))
    if not isinstance(s, Mapping):
        raise _Unsupported(repr(s))
    t = s.get("type")
    if t in _PRIMITIVES:
        logical = s.get("logicalType")
        if logical in _TIMESTAMPS and t == "long":
            return Node(logical, pa.timestamp(_TIMESTAMPS[logical], tz="UTC"))
        return _compile(t, named, ns)
    if t == "record":
        name = s["name"]
        rec_ns = s.get("namespace", ns) if "." not in name else name.rsplit(".", 1)[0]
        full = name if "." in name else f"{rec_ns}.{name}" if rec_ns else name
        children = tuple(_compile(f["type"], named, rec_ns) for f in s["fields"])
        names = tuple(f["name"] for f in s["fields"])
        node = Node(
            "record",
            pa.struct([pa.field(n, c.arrow) for n, c in zip(names, children, strict=True)]),
            children,
            names,
        )
        named[full] = node
        return node
    if t == "enum":
        name = s["name"]
        full = name if "." in name or not ns else f"{ns}.{name}"
        node = Node("enum", pa.string(), symbols=tuple(s["symbols"]))
        named[full] = node
        return node
    if t == "array":
        inner = _compile(s["items"], named, ns)
        return Node("array", pa.list_(inner.arrow), (inner,))
    if t == "map":
        inner = _compile(s["values"], named, ns)
        return Node("map", pa.map_(pa.string(), inner.arrow), (inner,))
    raise _Unsupported(str(t))


def decode_batch(plan: Node, messages: Sequence[bytes], header: bytes = b"") -> pa.StructArray:
    """Decode messages of one writer schema, in order; each starts with ``header``.

    The header (e.g. the single-object marker and fingerprint) is checked, not decoded.
    """
    lengths = np.fromiter(map(len, messages), dtype=np.int64, count=len(messages))
    ends = np.cumsum(lengths)
    starts = ends - lengths
    buf = np.frombuffer(b"".join(messages) + bytes(_PAD), dtype=np.uint8)
    return decode_spans(plan, buf, starts, ends, header)


def decode_spans(
    plan: Node, buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, header: bytes = b""
) -> pa.StructArray:
    """Decode the messages at ``buf[starts[i]:ends[i]]``; ``buf`` ends with 16 zero bytes."""
    lengths = ends - starts
    if header:
        if len(lengths) and lengths.min() < len(header):
            raise Corrupt("message shorter than its header")
        expected = np.frombuffer(header, dtype=np.uint8)
        if not (buf[starts[:, None] + np.arange(len(header))] == expected).all():
            raise Corrupt("message header differs")
        starts = starts + len(header)
    reader = Reader(buf, len(buf) - _PAD)
    try:
        array, pos = reader.read(plan, starts)
    except (IndexError, ValueError, OverflowError, pa.ArrowException) as exc:
        raise Corrupt(str(exc)) from exc
    if not np.array_equal(pos, ends):
        raise Corrupt("record length does not match its schema")
    if not isinstance(array, pa.StructArray):
        raise Corrupt("top-level schema is not a record")
    return array


class Reader:
    """Reads one node for many slots at once; ``pos`` holds each slot's byte position."""

    def __init__(self, buf: np.ndarray, size: int) -> None:
        self.buf = buf
        self.size = size

    def read(self, node: Node, pos: np.ndarray) -> tuple[pa.Array, np.ndarray]:
        kind = node.kind
        if kind == "string" or kind == "bytes":
            return self._bytes(pos, node.arrow)
        if kind in ("long", "int", "timestamp-micros", "timestamp-millis"):
            values, pos = self.long(pos)
            if kind == "int":
                if len(values) and (values.min() < -(2**31) or values.max() >= 2**31):
                    raise Corrupt("int out of range")
                return pa.array(values.astype(np.int32), pa.int32()), pos
            return pa.array(values, pa.int64()).view(node.arrow), pos
        if kind == "record":
            arrays = []
            for child in node.children:
                array, pos = self.read(child, pos)
                arrays.append(array)
            return pa.StructArray.from_arrays(arrays, fields=list(node.arrow)), pos
        if kind == "enum":
            index, pos = self.long(pos)
            if len(index) and (index.min() < 0 or index.max() >= len(node.symbols)):
                raise Corrupt("enum index out of range")
            return pa.array(node.symbols, pa.string()).take(pa.array(index)), pos
        if kind == "nullable":
            return self._nullable(node, pos)
        if kind == "boolean":
            self._check(pos, 1)
            raw = self.buf[pos]
            if len(raw) and raw.max() > 1:
                raise Corrupt("boolean byte is not 0 or 1")
            return pa.array(raw.astype(bool), pa.bool_()), pos + 1
        if kind in ("float", "double"):
            width = 4 if kind == "float" else 8
            self._check(pos, width)
            raw = self.buf[pos[:, None] + np.arange(width)].copy()
            dtype = np.dtype("<f4") if width == 4 else np.dtype("<f8")
            return pa.array(raw.view(dtype).reshape(-1), node.arrow), pos + width
        if kind in ("array", "map"):
            return self._blocks(node, pos)
        raise Corrupt(f"unsupported node {kind}")

    def _check(self, pos: np.ndarray, width: int = 1) -> None:
        if len(pos) and (pos.min() < 0 or pos.max() + width > self.size):
            raise Corrupt("read past the end of the batch")

    def long(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Zigzag varints at ``pos``: (values, positions after them)."""
        self._check(pos)
        b = self.buf[pos]
        value = (b & 0x7F).astype(np.uint64)
        width = np.ones(len(pos), dtype=np.int64)
        idx = np.flatnonzero(b & 0x80)
        shift = 7
        while idx.size:
            if shift > 63:
                raise Corrupt("varint longer than 10 bytes")
            b = self.buf[pos[idx] + width[idx]]
            value[idx] |= (b & 0x7F).astype(np.uint64) << np.uint64(shift)
            width[idx] += 1
            shift += 7
            idx = idx[(b & 0x80) != 0]
        one = np.uint64(1)
        signed = (value >> one).astype(np.int64) ^ -((value & one).astype(np.int64))
        end = pos + width
        self._check(end, 0)
        return signed, end

    def _bytes(
        self, pos: np.ndarray, arrow: pa.DataType, present: np.ndarray | None = None
    ) -> tuple[pa.Array, np.ndarray]:
        """Strings or bytes; with ``present``, only those slots hold one (the rest are null)."""
        if present is None:
            lengths, pos = self.long(pos)
        else:
            sel = np.flatnonzero(present)
            lengths = np.zeros(len(pos), dtype=np.int64)
            pos = pos.copy()
            lengths[sel], pos[sel] = self.long(pos[sel])
        if len(lengths) and lengths.min() < 0:
            raise Corrupt("negative length")
        end = pos + lengths
        self._check(end, 0)
        offsets = np.zeros(len(pos) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        total = int(offsets[-1])
        if total >= 2**31:
            raise Corrupt("batch too large")
        if total:
            gather = np.repeat(pos - offsets[:-1], lengths) + np.arange(total, dtype=np.int64)
            data = self.buf[gather]
        else:
            data = np.zeros(0, dtype=np.uint8)
        validity = None
        nulls = 0
        if present is not None and not present.all():
            validity = pa.py_buffer(np.packbits(present, bitorder="little"))
            nulls = len(present) - int(present.sum())
        array = pa.Array.from_buffers(
            arrow,
            len(pos),
            [validity, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)],
            null_count=nulls,
        )
        if arrow == pa.string():
            array.validate(full=True)  # invalid UTF-8 raises ArrowInvalid -> Corrupt
        return array, end

    def _nullable(self, node: Node, pos: np.ndarray) -> tuple[pa.Array, np.ndarray]:
        branch, pos = self.long(pos)
        if len(branch) and (branch.min() < 0 or branch.max() > 1):
            raise Corrupt("union branch out of range")
        present = branch != node.null_branch
        if node.children[0].kind in ("string", "bytes"):
            return self._bytes(pos, node.children[0].arrow, present)
        sel = np.flatnonzero(present)
        inner, sub_pos = self.read(node.children[0], pos[sel])
        pos = pos.copy()
        pos[sel] = sub_pos
        if sel.size == len(pos):
            return inner, pos
        index = np.zeros(len(pos), dtype=np.int64)
        index[sel] = np.arange(sel.size)
        return inner.take(pa.array(index, mask=~present)), pos

    def _blocks(self, node: Node, pos: np.ndarray) -> tuple[pa.Array, np.ndarray]:
        """Arrays and maps: blocks of items until a zero count, items in slot order."""
        n = len(pos)
        pos = pos.copy()
        counts = np.zeros(n, dtype=np.int64)
        pieces: list[tuple[np.ndarray, np.ndarray, pa.Array, pa.Array | None]] = []
        active = np.arange(n)
        while active.size:
            count, pos[active] = self.long(pos[active])
            negative = count < 0
            if negative.any():  # a negative count is followed by the block's byte size
                neg = active[negative]
                _, pos[neg] = self.long(pos[neg])
                count = np.abs(count)
            keep = count > 0
            active, count = active[keep], count[keep]
            for j in range(int(count.max()) if count.size else 0):
                slots = active[count > j]
                keys = None
                if node.kind == "map":
                    keys, pos[slots] = self._bytes(pos[slots], pa.string())
                values, pos[slots] = self.read(node.children[0], pos[slots])
                pieces.append((slots, counts[slots] + j, values, keys))
            counts[active] += count
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        child_type = node.children[0].arrow
        if pieces:
            owner = np.concatenate([p[0] for p in pieces])
            ordinal = np.concatenate([p[1] for p in pieces])
            order = pa.array(np.lexsort((ordinal, owner)))
            values = pa.concat_arrays([p[2] for p in pieces]).take(order)
            keys = None
            if node.kind == "map":
                keys = pa.concat_arrays([p[3] for p in pieces]).take(order)
        else:
            values = pa.array([], child_type)
            keys = pa.array([], pa.string())
        offsets_arr = pa.array(offsets.astype(np.int32), pa.int32())
        if node.kind == "map":
            if keys is not None and len(keys) > 1:
                _unique_keys(np.repeat(np.arange(n), counts), keys)
            return pa.MapArray.from_arrays(offsets_arr, keys, values), pos
        return pa.ListArray.from_arrays(offsets_arr, values), pos


def _unique_keys(owner: np.ndarray, keys: pa.Array) -> None:
    """Avro lets a map repeat a key; fastavro keeps the last value. Leave such maps to it.

    (DuckDB would refuse the row, so the two decoders would disagree on it.)
    """
    pairs = pa.table({"owner": owner, "key": keys})
    if pairs.group_by(["owner", "key"], use_threads=False).aggregate([]).num_rows < len(keys):
        raise Corrupt("a map repeats a key")

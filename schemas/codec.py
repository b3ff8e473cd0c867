"""Avro single-object encoding over a registry of every schema version ever written.

Wire format of every message value (Avro spec, "Single object encoding")::

    C3 01 | 8-byte little-endian CRC-64-AVRO fingerprint of the writer schema | Avro body

The fingerprint names the writer schema, so a reader resolves it against its own
(reader) schema and old messages stay readable after an evolution. Schemas are
parsed once, when the registry loads.

fastavro's ``ValueError``/``TypeError``/``EOFError`` never leak out: they become
:class:`~velora.errors.EncodeError` or :class:`~velora.errors.DecodeError`.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import fastavro
from fastavro.read import SchemaResolutionError
from fastavro.schema import fingerprint, to_parsing_canonical_form
from fastavro.validation import validate

from velora.errors import DecodeError, EncodeError, ErrorDetail, SchemaError, UnknownSchema

MAGIC = b"\xc3\x01"
HEADER_LEN = 10
SCHEMA_DIR = Path(__file__).with_name("avro")
_FILE_RE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\.v(?P<version>[1-9][0-9]*)\.avsc$")


@dataclass(frozen=True)
class SchemaVersion:
    """One parsed schema version: its full name, version number and fingerprint."""

    full_name: str
    version: int
    fingerprint: bytes
    parsed: Any
    raw: Mapping[str, Any]
    path: Path
    shape: RecordShape | None = None


class SchemaRegistry:
    """Every schema version in a folder, looked up by fingerprint or by name.

    Files are named ``<Name>.v<N>.avsc``; the highest ``N`` of a name is the
    version that writers use and readers resolve to.
    """

    def __init__(self, versions: Iterable[SchemaVersion], folder: Path | None = None) -> None:
        self._by_fp: dict[bytes, SchemaVersion] = {}
        self._by_name: dict[str, dict[int, SchemaVersion]] = {}
        self._folder = folder
        for v in versions:
            self._add(v)

    def _add(self, v: SchemaVersion) -> None:
        if v.fingerprint in self._by_fp:
            other = self._by_fp[v.fingerprint]
            raise SchemaError(f"{v.path.name} is identical to {other.path.name}")
        self._by_fp[v.fingerprint] = v
        self._by_name.setdefault(v.full_name, {})[v.version] = v
        short = v.full_name.rsplit(".", 1)[-1]
        self._by_name.setdefault(short, self._by_name[v.full_name])

    @classmethod
    def load(cls, folder: Path = SCHEMA_DIR) -> SchemaRegistry:
        """Parse every ``*.avsc`` in ``folder`` once."""
        return cls(_parse_folder(folder), folder)

    def refresh(self) -> int:
        """Add versions deployed to the folder since it was loaded; return how many.

        Versions already known are never replaced (a written version is immutable).
        A reader holding a message of an unknown writer schema calls this to pick up
        the schema once it is deployed, without a restart.
        """
        if self._folder is None:
            return 0
        added = 0
        for v in _parse_folder(self._folder):
            if v.fingerprint not in self._by_fp:
                known = self._by_name.get(v.full_name, {}).get(v.version)
                if known is not None:
                    raise SchemaError(f"{v.path.name} changed after it was loaded")
                self._add(v)
                added += 1
        return added

    def latest(self, name: str) -> SchemaVersion:
        """The newest version of ``name`` (full or short name)."""
        try:
            by_version = self._by_name[name]
        except KeyError:
            raise SchemaError(f"unknown schema {name!r}") from None
        return by_version[max(by_version)]

    def version(self, name: str, version: int) -> SchemaVersion:
        """One specific version of ``name``."""
        try:
            return self._by_name[name][version]
        except KeyError:
            raise SchemaError(f"unknown schema {name!r} v{version}") from None

    def by_fingerprint(self, fp: bytes) -> SchemaVersion:
        """The writer schema that a message names."""
        try:
            return self._by_fp[fp]
        except KeyError:
            raise UnknownSchema(f"unknown schema fingerprint {fp.hex()}", fp=fp.hex()) from None

    def __iter__(self) -> Any:
        return iter(self._by_fp.values())


class AvroCodec:
    """Encode and decode single-object Avro messages against a :class:`SchemaRegistry`."""

    def __init__(self, registry: SchemaRegistry | None = None) -> None:
        self.registry = registry or SchemaRegistry.load()

    def encode(self, name: str, record: Mapping[str, Any], version: int | None = None) -> bytes:
        """Encode ``record`` with the latest (or the given) version of schema ``name``."""
        sv = self.registry.latest(name) if version is None else self.registry.version(name, version)
        if not isinstance(record, Mapping):
            raise EncodeError(f"{sv.full_name} must be a mapping, got {type(record).__name__}")
        if sv.shape is not None:
            _precheck(record, sv.shape, "")
        buf = io.BytesIO()
        buf.write(MAGIC)
        buf.write(sv.fingerprint)
        try:
            fastavro.schemaless_writer(buf, sv.parsed, record)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise _explain(sv, record, exc) from None
        return buf.getvalue()

    def decode(self, data: bytes, reader: str | SchemaVersion | None = None) -> tuple[str, Any]:
        """Decode one message. Returns ``(full schema name, record)``.

        The writer schema comes from the fingerprint; the record is resolved to
        ``reader`` (a name or a version), by default the latest version of the
        writer's own name.
        """
        writer = self.writer_of(data)
        if reader is None:
            reader_sv = self.registry.latest(writer.full_name)
        elif isinstance(reader, SchemaVersion):
            reader_sv = reader
        else:
            reader_sv = self.registry.latest(reader)
        if reader_sv.full_name != writer.full_name:
            raise DecodeError(f"message holds {writer.full_name}, not {reader_sv.full_name}")
        reader_schema = None if reader_sv is writer else reader_sv.parsed
        body = io.BytesIO(memoryview(data)[HEADER_LEN:])
        try:
            record = fastavro.schemaless_reader(body, writer.parsed, reader_schema)
        except (
            EOFError,
            ValueError,
            TypeError,
            KeyError,
            IndexError,
            OverflowError,  # a timestamp outside datetime's range
        ) as exc:
            raise DecodeError(f"corrupt {writer.full_name} body: {_short(exc)}") from None
        except SchemaResolutionError as exc:
            raise DecodeError(
                f"{writer.full_name} v{writer.version} cannot be read as v{reader_sv.version}: "
                f"{_short(exc)}"
            ) from None
        if body.tell() != len(data) - HEADER_LEN:
            raise DecodeError(f"{len(data) - HEADER_LEN - body.tell()} trailing bytes after record")
        return writer.full_name, record

    def writer_of(self, data: bytes) -> SchemaVersion:
        """The writer schema named in a message's header."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError(f"expected bytes, got {type(data).__name__}")
        if len(data) < HEADER_LEN:
            raise DecodeError(f"message is {len(data)} bytes, shorter than the 10-byte header")
        if bytes(data[:2]) != MAGIC:
            raise DecodeError("message does not start with the single-object marker C3 01")
        return self.registry.by_fingerprint(bytes(data[2:HEADER_LEN]))


def _parse_folder(folder: Path) -> list[SchemaVersion]:
    """Every ``<Name>.v<N>.avsc`` of ``folder``, parsed."""
    versions = []
    for path in sorted(folder.glob("*.avsc")):
        m = _FILE_RE.match(path.name)
        if not m:
            raise SchemaError(f"{path.name}: schema files must be named <Name>.v<N>.avsc")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            parsed = fastavro.parse_schema(raw, named_schemas={})
        except (ValueError, TypeError, KeyError) as exc:
            raise SchemaError(f"{path.name}: {exc}") from exc
        full_name = parsed["name"]
        if full_name.rsplit(".", 1)[-1] != m["name"]:
            raise SchemaError(f"{path.name}: file name does not match record {full_name}")
        fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(raw), "CRC-64-AVRO"))
        versions.append(
            SchemaVersion(full_name, int(m["version"]), fp, parsed, raw, path, _shape_of(raw, {}))
        )
    if not versions:
        raise SchemaError(f"no .avsc files in {folder}")
    return versions


_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


@dataclass(frozen=True)
class RecordShape:
    """What :meth:`AvroCodec.encode` checks before fastavro sees a record.

    fastavro silently drops unknown fields, reports a missing field as a wrong
    type, writes an out-of-range ``int`` that other readers reject, and accepts
    naive datetimes. These checks are computed once per schema and cost about
    4 microseconds per audit event (fastavro's full ``validate`` costs ~70).
    """

    name: str
    fields: frozenset[str]
    required: frozenset[str] = frozenset()
    timestamps: tuple[str, ...] = ()
    ints: tuple[str, ...] = ()
    records: tuple[tuple[str, RecordShape], ...] = ()
    record_arrays: tuple[tuple[str, RecordShape], ...] = ()


def _shape_of(schema: Mapping[str, Any], named: dict[str, RecordShape]) -> RecordShape:
    """Build the :class:`RecordShape` of a record schema (and of its nested records)."""
    timestamps: list[str] = []
    ints: list[str] = []
    records: list[tuple[str, RecordShape]] = []
    arrays: list[tuple[str, RecordShape]] = []

    def record(t: Any) -> RecordShape | None:
        if isinstance(t, Mapping) and t.get("type") == "record":
            return _shape_of(t, named)
        if isinstance(t, str):
            return named.get(t) or named.get(t.rsplit(".", 1)[-1])
        return None

    for f in schema.get("fields", []):
        name = f["name"]
        for t in f["type"] if isinstance(f["type"], list) else [f["type"]]:
            if isinstance(t, Mapping) and str(t.get("logicalType", "")).startswith("timestamp"):
                timestamps.append(name)
            elif t == "int" or (isinstance(t, Mapping) and t.get("type") == "int"):
                ints.append(name)
            elif isinstance(t, Mapping) and t.get("type") == "array":
                if (items := record(t["items"])) is not None:
                    arrays.append((name, items))
            elif (nested := record(t)) is not None:
                records.append((name, nested))
    shape = RecordShape(
        name=str(schema["name"]),
        fields=frozenset(f["name"] for f in schema.get("fields", [])),
        required=frozenset(f["name"] for f in schema.get("fields", []) if "default" not in f),
        timestamps=tuple(timestamps),
        ints=tuple(ints),
        records=tuple(records),
        record_arrays=tuple(arrays),
    )
    named[shape.name] = shape
    if "namespace" in schema:
        named[f"{schema['namespace']}.{shape.name}"] = shape
    return shape


def _precheck(record: Mapping[str, Any], shape: RecordShape, prefix: str) -> None:
    """Raise :class:`EncodeError` naming the field for what fastavro would let through."""
    if not record.keys() <= shape.fields:
        names = sorted(f"{prefix}{k}" for k in map(str, record.keys() - shape.fields))
        raise EncodeError(
            f"{shape.name} has unknown field(s): {', '.join(names)}",
            details=tuple(ErrorDetail(n, "unknown field") for n in names),
        )
    if not record.keys() >= shape.required:
        names = sorted(f"{prefix}{k}" for k in shape.required - record.keys())
        raise EncodeError(
            f"{shape.name} is missing required field(s): {', '.join(names)}",
            details=tuple(ErrorDetail(n, "missing required field") for n in names),
        )
    for key in shape.timestamps:
        value = record.get(key)
        if isinstance(value, datetime) and value.utcoffset() is None:
            raise EncodeError(
                f"{prefix}{key} is a naive datetime; timestamps must carry a UTC offset",
                details=(ErrorDetail(f"{prefix}{key}", "naive datetime"),),
            )
    for key in shape.ints:
        value = record.get(key)
        if isinstance(value, int) and not _INT_MIN <= value <= _INT_MAX:
            raise EncodeError(
                f"{prefix}{key} does not fit an Avro int (32-bit signed)",
                details=(ErrorDetail(f"{prefix}{key}", "out of int range"),),
            )
    for key, nested in shape.records:
        value = record.get(key)
        if isinstance(value, Mapping):
            _precheck(value, nested, f"{prefix}{key}.")
    for key, items in shape.record_arrays:
        value = record.get(key)
        if isinstance(value, list | tuple):
            for i, item in enumerate(value):
                if isinstance(item, Mapping):
                    _precheck(item, items, f"{prefix}{key}[{i}].")


def _explain(sv: SchemaVersion, record: Any, exc: Exception) -> EncodeError:
    """Turn a fastavro failure into an EncodeError that names the field.

    Values are never echoed (they may be PHI), only their types.
    """
    try:
        validate(record, sv.parsed, raise_errors=True)
    except fastavro.validation.ValidationError as verr:
        problems: dict[str, tuple[list[str], str]] = {}
        for err in verr.errors:
            field, expected, got = _describe(err)
            wanted, _ = problems.setdefault(field, ([], got))
            if expected not in wanted:
                wanted.append(expected)
        if problems:
            reasons = {f: f"expected {' or '.join(w)}, got {g}" for f, (w, g) in problems.items()}
            return EncodeError(
                f"{sv.full_name} does not match its schema: "
                + "; ".join(f"{f}: {r}" for f, r in reasons.items()),
                details=tuple(ErrorDetail(f, r) for f, r in reasons.items()),
            )
    except (ValueError, TypeError, KeyError, AttributeError) as verr:
        return EncodeError(f"{sv.full_name} does not match its schema: {_short(verr)}")
    return EncodeError(f"{sv.full_name} does not match its schema: {_short(exc)}")


def _describe(err: Any) -> tuple[str, str, str]:
    """``(field, expected, got)`` of one fastavro validation error, e.g. ``Actor.id``."""
    field = ".".join(str(getattr(err, "field", None) or "record").rsplit(".", 2)[-2:])
    expected: Any = getattr(err, "schema", None)
    if isinstance(expected, Mapping) and expected.get("type") == "enum":
        expected = f"one of {', '.join(expected['symbols'])}"
    elif isinstance(expected, Mapping):
        expected = expected.get("logicalType") or expected.get("type")
    return field, str(expected), type(getattr(err, "datum", None)).__name__


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."

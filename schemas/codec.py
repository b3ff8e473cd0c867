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
from fastavro.schema import fingerprint, to_parsing_canonical_form
from fastavro.validation import validate

from velora.errors import DecodeError, EncodeError, ErrorDetail, SchemaError

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
    timestamp_paths: tuple[tuple[str, ...], ...] = ()


class SchemaRegistry:
    """Every schema version in a folder, looked up by fingerprint or by name.

    Files are named ``<Name>.v<N>.avsc``; the highest ``N`` of a name is the
    version that writers use and readers resolve to.
    """

    def __init__(self, versions: Iterable[SchemaVersion]) -> None:
        self._by_fp: dict[bytes, SchemaVersion] = {}
        self._by_name: dict[str, dict[int, SchemaVersion]] = {}
        for v in versions:
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
                SchemaVersion(
                    full_name, int(m["version"]), fp, parsed, raw, path, _timestamp_paths(raw)
                )
            )
        if not versions:
            raise SchemaError(f"no .avsc files in {folder}")
        return cls(versions)

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
            raise DecodeError(f"unknown schema fingerprint {fp.hex()}") from None

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
        _reject_naive(record, sv)
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
        except (EOFError, ValueError, TypeError, KeyError, IndexError, UnicodeDecodeError) as exc:
            raise DecodeError(f"corrupt {writer.full_name} body: {_short(exc)}") from None
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


def _timestamp_paths(schema: Any, prefix: tuple[str, ...] = ()) -> tuple[tuple[str, ...], ...]:
    """Paths (through nested records) of every timestamp field, found once per schema."""
    paths: list[tuple[str, ...]] = []
    for f in schema.get("fields", []) if isinstance(schema, Mapping) else []:
        branches = f["type"] if isinstance(f["type"], list) else [f["type"]]
        for t in branches:
            if isinstance(t, Mapping) and str(t.get("logicalType", "")).startswith("timestamp"):
                paths.append((*prefix, f["name"]))
            elif isinstance(t, Mapping) and t.get("type") == "record":
                paths.extend(_timestamp_paths(t, (*prefix, f["name"])))
    return tuple(paths)


def _reject_naive(record: Mapping[str, Any], sv: SchemaVersion) -> None:
    """Raise on a naive datetime in any timestamp field of the schema."""
    for path in sv.timestamp_paths:
        value: Any = record
        for key in path:
            value = value.get(key) if isinstance(value, Mapping) else None
        if isinstance(value, datetime) and value.utcoffset() is None:
            name = ".".join(path)
            raise EncodeError(
                f"{name} is a naive datetime; timestamps must carry a UTC offset",
                details=(ErrorDetail(name, "naive datetime"),),
            )


def _explain(sv: SchemaVersion, record: Any, exc: Exception) -> EncodeError:
    """Turn a fastavro failure into an EncodeError that names the field."""
    missing = [
        f["name"] for f in sv.raw["fields"] if "default" not in f and f["name"] not in record
    ]
    if missing:
        return EncodeError(
            f"{sv.full_name} is missing required field(s): {', '.join(missing)}",
            details=tuple(ErrorDetail(name, "missing required field") for name in missing),
        )
    try:
        validate(record, sv.parsed, raise_errors=True)
    except fastavro.validation.ValidationError as verr:
        reasons = [_describe(e) for e in verr.errors] or [_short(exc)]
        return EncodeError(
            f"{sv.full_name} does not match its schema: {'; '.join(reasons)}",
            details=tuple(ErrorDetail(sv.full_name, r) for r in reasons),
        )
    except (ValueError, TypeError, KeyError, AttributeError) as verr:
        return EncodeError(f"{sv.full_name} does not match its schema: {_short(verr)}")
    return EncodeError(f"{sv.full_name} does not match its schema: {_short(exc)}")


def _describe(err: Any) -> str:
    field = (getattr(err, "field", None) or "record").split(".", 3)[-1]
    datum = getattr(err, "datum", None)
    expected = getattr(err, "schema", None)
    if isinstance(expected, Mapping):
        expected = expected.get("type")
    if isinstance(expected, list):
        expected = " or ".join(
            str(e.get("type", e) if isinstance(e, Mapping) else e) for e in expected
        )
    return f"{field}: expected {expected}, got {type(datum).__name__} {_clip(datum)}"


def _clip(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."

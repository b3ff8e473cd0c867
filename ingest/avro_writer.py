"""A specialised Avro binary writer, generated once from a parsed record schema.

Why: encoding is the largest single cost of ingest. fastavro walks the schema
for every record (about 13 us for an ``AuditEvent`` on the 2-core reference
machine, most of it per-field dispatch and union resolution); a function
generated for one schema, with every field inlined, writes the same bytes in
about 5.5 us. See ``docs/ingest.md`` (performance) for the measurements.

Scope: records whose fields are ``null``, ``boolean``, ``int``, ``long`` (with or
without a timestamp logical type, given as integers), ``double``, ``string``, ``enum``,
nested records, arrays, maps and two-branch unions with ``null``. For any other
schema :func:`compile_writer` returns ``None`` and the caller uses fastavro. A
generated writer raises ``TypeError``/``KeyError``/``ValueError``/
``AttributeError``/``OverflowError`` on a record it cannot write (a datetime
instead of micros, a missing field that has a default...), so the caller can
fall back to fastavro, which knows every rule. ``tests/test_producer.py``
checks byte-for-byte equality with fastavro.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Mapping
from typing import Any

Writer = Callable[[Mapping[str, Any]], bytes]

_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1
_INT_MIN, _INT_MAX = -(1 << 31), (1 << 31) - 1


def _varint(n: int) -> bytes:
    """Unsigned LEB128 of an already zig-zagged value."""
    if n >> 49 and not n >> 56:  # 8 bytes: epoch microseconds of this century
        return bytes(
            (
                n & 0x7F | 0x80,
                n >> 7 & 0x7F | 0x80,
                n >> 14 & 0x7F | 0x80,
                n >> 21 & 0x7F | 0x80,
                n >> 28 & 0x7F | 0x80,
                n >> 35 & 0x7F | 0x80,
                n >> 42 & 0x7F | 0x80,
                n >> 49,
            )
        )
    out = []
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = tuple(_varint(n << 1) for n in range(4096))  # zig-zag(n) for 0 <= n < 4096


def _size(n: int) -> bytes:
    """A non-negative length or count, zig-zag encoded."""
    return _SMALL[n] if n < 4096 else _varint(n << 1)


# The last long written and its encoding, as one tuple (swapped atomically between
# threads): every event of a batch shares received_at.
_last_long: list[tuple[Any, bytes]] = [(None, b"")]


# Length-prefixed encodings of strings that repeat in nearly every record (tenant,
# action, types, source, metadata keys: never free text or identifiers of people).
# Bounded; cleared when full.
_encoded: dict[str, bytes] = {}
_MAX_ENCODED = 4096


def _encode_new(text: str) -> bytes:
    body = text.encode()
    out = _size(len(body)) + body
    if len(_encoded) >= _MAX_ENCODED:
        _encoded.clear()
    _encoded[text] = out
    return out


def _long(n: int) -> bytes:
    value, encoded = _last_long[0]
    if n == value and type(n) is int:
        return encoded
    if type(n) is not int or not _LONG_MIN <= n <= _LONG_MAX:
        raise TypeError("not a 64-bit integer")
    out = _varint(((n << 1) ^ (n >> 63)) & 0xFFFFFFFFFFFFFFFF)
    _last_long[0] = (n, out)
    return out


def _int(n: int) -> bytes:
    if type(n) is not int or not _INT_MIN <= n <= _INT_MAX:
        raise TypeError("not a 32-bit integer")
    return _varint(((n << 1) ^ (n >> 63)) & 0xFFFFFFFFFFFFFFFF)


def _bool(v: bool) -> bytes:
    if type(v) is not bool:
        raise TypeError("not a boolean")
    return b"\x01" if v else b"\x00"


class _Unsupported(Exception):
    """The schema uses a type this writer does not generate code for."""


class _Gen:
    def __init__(self, repeated: frozenset[str]) -> None:
        self.repeated = repeated
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}
        self._ids = itertools.count()

    def var(self, stem: str) -> str:
        return f"{stem}{next(self._ids)}"

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def write(self, schema: Any, expr: str, indent: int, path: str = "") -> None:
        """Emit code appending the encoding of ``expr`` (a local name) to ``parts``.

        ``path`` names the value in the record: ``actor.type``, ``targets.id``
        (array items share their array's path), ``metadata.*`` (map keys).
        """
        if isinstance(schema, list):
            self._union(schema, expr, indent, path)
            return
        kind = schema if isinstance(schema, str) else schema.get("type")
        if kind == "null":
            self.emit(indent, f"if {expr} is not None: raise TypeError('not null')")
        elif kind == "string" and path in self.repeated:
            e = self.var("e")
            self.emit(indent, f"{e} = _encoded.get({expr})")
            self.emit(indent, f"a(_encode_new({expr}) if {e} is None else {e})")
        elif kind == "string":
            b, n = self.var("b"), self.var("n")
            self.emit(indent, f"{b} = {expr}.encode()")
            self.emit(indent, f"{n} = len({b})")
            self.emit(indent, f"a(_SMALL[{n}] if {n} < 4096 else _size({n})); a({b})")
        elif kind == "long":
            self.emit(indent, f"a(_long({expr}))")
        elif kind == "int":
            self.emit(indent, f"a(_int({expr}))")
        elif kind == "double":
            self.emit(indent, f"a(_double({expr}))")
        elif kind == "boolean":
            self.emit(indent, f"a(_bool({expr}))")
        elif kind == "enum":
            table = self.var("ENUM")
            self.consts[table] = {s: _size(i) for i, s in enumerate(schema["symbols"])}
            self.emit(indent, f"a({table}[{expr}])")
        elif kind == "record":
            for field in schema["fields"]:
                v = self.var("v")
                self.emit(indent, f"{v} = {expr}[{field['name']!r}]")
                name = f"{path}.{field['name']}" if path else field["name"]
                self.write(field["type"], v, indent, name)
        elif kind in ("array", "map"):
            items = self.var("items")
            item = self.var("item")
            self.emit(indent, f"{items} = {expr}")
            self.emit(indent, f"if {items}:")
            self.emit(indent + 1, f"a(_size(len({items})))")
            if kind == "array":
                self.emit(indent + 1, f"for {item} in {items}:")
                self.write(schema["items"], item, indent + 2, path)
            else:
                key = self.var("k")
                self.emit(indent + 1, f"for {key}, {item} in {items}.items():")
                self.write("string", key, indent + 2, f"{path}.*")
                self.write(schema["values"], item, indent + 2, path)
            self.emit(indent, "a(b'\\x00')")
        else:
            raise _Unsupported(str(kind))

    def _union(self, branches: list[Any], expr: str, indent: int, path: str) -> None:
        names = [b if isinstance(b, str) else b.get("type") for b in branches]
        if len(branches) != 2 or "null" not in names or names[0] == names[1]:
            raise _Unsupported("union other than [null, T]")
        null_at = names.index("null")
        other = branches[1 - null_at]
        if isinstance(other, list):
            raise _Unsupported("nested union")
        self.emit(indent, f"if {expr} is None:")
        self.emit(indent + 1, f"a({_size(null_at)!r})")
        self.emit(indent, "else:")
        self.emit(indent + 1, f"a({_size(1 - null_at)!r})")
        self.write(other, expr, indent + 1, path)


def compile_writer(
    schema: Mapping[str, Any], repeated: frozenset[str] = frozenset()
) -> Writer | None:
    """A function ``record -> Avro body`` for the parsed record ``schema``, or None.

    String values at the paths in ``repeated`` (``tenant_id``, ``actor.type``,
    ``metadata.*`` for map keys) are encoded once and then looked up: only for
    values from a small set, never free text or per-person data.
    """
    gen = _Gen(repeated)
    gen.emit(0, "def write(r):")
    gen.emit(1, "parts = []")
    gen.emit(1, "a = parts.append")
    try:
        gen.write(schema, "r", 1)
    except (_Unsupported, KeyError, TypeError, AttributeError):
        return None
    gen.emit(1, "return b''.join(parts)")
    namespace: dict[str, Any] = {
        "_size": _size,
        "_encoded": _encoded,
        "_encode_new": _encode_new,
        "_SMALL": _SMALL,
        "_long": _long,
        "_int": _int,
        "_bool": _bool,
        "_double": struct.Struct("<d").pack,  # what fastavro writes for a double
        **gen.consts,
    }
    exec(compile("\n".join(gen.lines), f"<avro writer {schema.get('name')}>", "exec"), namespace)  # noqa: S102
    return namespace["write"]  # type: ignore[no-any-return]

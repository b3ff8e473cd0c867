"""Exports through the sidecar: NDJSON and CSV rewritten as they stream, Parquet as a whole.

:class:`ExportStream` takes Velora's export body chunk by chunk and gives back the
detokenized body chunk by chunk, holding at most one incomplete record:

- **NDJSON**: each complete line is one event (the list API's shape), opened with
  :meth:`sidecar.rewrite.Rewriter.event`.
- **CSV** (the columns of ``docs/exports.md``): a record ends at a newline outside
  quotes (an even number of ``"`` so far; quotes inside a field are doubled). The
  first record is the header, which says where ``actor_type``, ``actor_id``,
  ``actor_name``, ``actor_email``, ``targets`` and ``metadata`` are; the PHI values
  of every later record are opened (``targets`` and ``metadata`` are JSON text) and
  the record is written back with each field quoted as it was (Velora's writer
  quotes strings, not numbers or nulls).

Every output piece is scanned for tokens left over before it is handed on, and
every problem raises :class:`~sidecar.rewrite.SidecarFailure`, so nothing with a
token where plaintext is due leaves the sidecar. **Parquet** cannot be streamed
(its index is at the end): :func:`parquet` rewrites a whole file with Arrow.
"""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

from sidecar.rewrite import SidecarFailure, dumps_event, fail, no_tokens_left

if TYPE_CHECKING:
    from sidecar.rewrite import Rewriter

STREAMED = frozenset({"application/x-ndjson", "text/csv"})
"""Media types rewritten as they stream."""
PARQUET = "application/vnd.apache.parquet"
_CSV_PHI = ("actor_type", "actor_id", "actor_name", "actor_email", "targets", "metadata")


class ExportStream:
    """Rewrites one streamed export (see the module docstring)."""

    def __init__(self, rewriter: Rewriter, media: str) -> None:
        self._rw = rewriter
        self._csv = media == "text/csv"
        self._buf = b""
        self._record: list[bytes] = []
        self._quotes = 0
        self._header: dict[str, int] | None = None
        self._held = b""  # the CSV header, until the first record is rewritten
        self._n = 0

    def feed(self, chunk: bytes) -> bytes:
        """The rewritten complete records of what has arrived so far."""
        self._buf += chunk
        cut = self._buf.rfind(b"\n")
        if cut < 0:
            return b""
        lines, self._buf = self._buf[: cut + 1].splitlines(keepends=True), self._buf[cut + 1 :]
        out = b"".join(self._line(line) for line in lines)
        no_tokens_left(out)
        if self._held and out:  # the header goes out with the first rewritten record
            out, self._held = self._held + out, b""
        return out

    def close(self) -> bytes:
        """The rest; :class:`SidecarFailure` if the body ended inside a record."""
        out = self.feed(b"\n") if self._buf else b""
        if self._record:
            raise fail("response", "the export ended inside a CSV record")
        held, self._held = self._held, b""
        return held + out

    def _line(self, line: bytes) -> bytes:
        self._n += 1
        if not self._csv:
            if not line.strip():
                return b""
            try:
                event = json.loads(line)
            except ValueError:
                raise fail(f"line {self._n}", "is not valid JSON") from None
            return dumps_event(self._rw.event(event, f"line {self._n}")) + b"\n"
        self._record.append(line)
        self._quotes += line.count(b'"')
        if self._quotes % 2:
            return b""  # a newline inside a quoted field
        record = b"".join(self._record).rstrip(b"\r\n")
        self._record, self._quotes = [], 0
        out = self._csv_record(record.decode("utf-8"))
        return out.encode("utf-8") + b"\n" if out else b""

    def _csv_record(self, record: str) -> str:
        fields = csv_fields(record)
        if self._header is None:
            self._header = {name: i for i, (name, _) in enumerate(fields)}
            self._held = record.encode("utf-8") + b"\n"
            return ""
        where = f"row {self._n}"
        at = {name: self._header.get(name) for name in _CSV_PHI}
        if any(i is None or i >= len(fields) for i in at.values()):
            raise fail(where, "the CSV export lacks the event columns")

        def text(name: str) -> str:
            return fields[at[name]][0]  # type: ignore[index]

        try:
            targets = json.loads(text("targets")) if text("targets") else None
            metadata = json.loads(text("metadata")) if text("metadata") else None
        except ValueError:
            raise fail(where, "targets or metadata is not JSON") from None
        event: dict[str, Any] = {
            "actor": {"type": text("actor_type"), "id": text("actor_id"),
                      "name": text("actor_name"), "email": text("actor_email")},
            "targets": targets,
            "metadata": metadata,
        }  # fmt: skip
        opened = self._rw.event(event, where)
        for part in ("id", "name", "email"):
            i = at[f"actor_{part}"]
            assert i is not None
            fields[i] = (opened["actor"][part], fields[i][1])
        for name in ("targets", "metadata"):
            i = at[name]
            assert i is not None
            if opened[name] is not None:
                value = json.dumps(opened[name], separators=(",", ":"), ensure_ascii=False)
                fields[i] = (value, fields[i][1])
        return ",".join(_quoted(v) if q else v for v, q in fields)


def csv_fields(record: str) -> list[tuple[str, bool]]:
    """The fields of one CSV record as ``(text, was quoted)``."""
    out: list[tuple[str, bool]] = []
    i, n = 0, len(record)
    while True:
        if i < n and record[i] == '"':
            parts, j = [], i + 1
            while True:
                k = record.find('"', j)
                if k < 0:
                    raise fail("response", "a CSV field's quote is not closed")
                parts.append(record[j:k])
                if record.startswith('"', k + 1):
                    parts.append('"')
                    j = k + 2
                    continue
                i = k + 1
                break
            out.append(("".join(parts), True))
        else:
            k = record.find(",", i)
            k = n if k < 0 else k
            out.append((record[i:k], False))
            i = k
        if i >= n:
            return out
        if record[i] != ",":
            raise fail("response", "a CSV field has text after its closing quote")
        i += 1
        if i == n:
            out.append(("", False))
            return out


def _quoted(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def parquet(rewriter: Rewriter, body: bytes) -> bytes:
    """A Parquet export with every event's PHI opened (same schema, one row group)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(body))
    except (pa.ArrowException, OSError):
        raise fail("response", "is not a Parquet file") from None
    rows = []
    for n, row in enumerate(table.to_pylist(), start=1):
        if isinstance(row.get("metadata"), list):  # a Parquet map reads as (key, value) pairs
            row["metadata"] = dict(row["metadata"])
        rows.append(rewriter.event(row, f"row {n}"))
    no_tokens_left(repr(rows).encode())
    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), out, compression="snappy")
    return out.getvalue()


__all__ = ["PARQUET", "STREAMED", "ExportStream", "SidecarFailure", "csv_fields", "parquet"]

"""One head's rows: the immutable structure the query node cuts pages from.

:class:`Head` holds a tenant's committed rows (of one scope) above its floor, oldest
first, as :class:`HeadRow` objects; :meth:`Head.merged` adds a commit's rows. How
heads are kept, loaded and dropped is :mod:`ledger.head`.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa

from ledger.tables import EVENT_COLUMN_NAMES

Position = tuple[int, str]
"""``(occurred_at in epoch microseconds, event_id)``: the list's order, unique per tenant."""
INSERT_MAX = 64
"""Late rows a merge inserts one by one into a head's ordered rows; past it, it sorts."""


class HeadRow:
    """One event of a head: the row as the API reads it, and its rendering, made once."""

    __slots__ = ("_text", "action", "position", "row")

    def __init__(self, row: dict[str, Any]) -> None:
        self.row = row
        self.position: Position = (row["occurred_us"], row["event_id"])
        self.action: str = row["action"]
        self._text: str | None = None

    def text(self, render: Callable[[dict[str, Any]], Any]) -> str:
        """``orjson.dumps(render(row))`` as text, computed on first use (no PHI revealed:
        callers pass the renderer of stored values only)."""
        text = self._text
        if text is None:
            text = self._text = orjson.dumps(render(self.row)).decode()
        return text


@dataclass(frozen=True, slots=True)
class Head:
    """A tenant's committed rows above :attr:`floor`, oldest first."""

    rows: tuple[HeadRow, ...]
    positions: tuple[Position, ...]
    floor: Position | None
    """The newest position not held; None: every row of the tenant is held."""

    @classmethod
    def of(cls, rows: Sequence[HeadRow], floor: Position | None) -> Head:
        """A head of ``rows`` (oldest first)."""
        return cls(tuple(rows), tuple(r.position for r in rows), floor)

    def below(self, position: Position | None) -> int:
        """How many held rows lie strictly below ``position`` (all of them for None)."""
        if position is None:
            return len(self.rows)
        return bisect.bisect_left(self.positions, position)

    def merged(self, new: Iterable[HeadRow], depth: int) -> Head:
        """This head with ``new`` rows (never held before) added, cut to ``depth``.

        The held rows are already in order: new rows newer than all of them (the
        usual commit) are appended, a few late ones inserted by bisection, and only
        many late ones sort everything again."""
        floor = self.floor
        fresh = sorted((r for r in new if floor is None or r.position > floor), key=_position)
        if not fresh:
            return self
        rows, positions = list(self.rows), list(self.positions)
        if not positions or fresh[0].position > positions[-1]:
            rows += fresh
            positions += [r.position for r in fresh]
        elif len(fresh) <= INSERT_MAX:
            for r in fresh:
                at = bisect.bisect_left(positions, r.position)
                positions.insert(at, r.position)
                rows.insert(at, r)
        else:
            rows = sorted(rows + fresh, key=_position)
            positions = [r.position for r in rows]
        if len(rows) > depth:
            cut = len(rows) - depth
            floor = positions[cut - 1]
            rows, positions = rows[cut:], positions[cut:]
        return Head(tuple(rows), tuple(positions), floor)


def _position(row: HeadRow) -> Position:
    return row.position


def python_rows(table: pa.Table) -> list[dict[str, Any]]:
    """The rows of a batch of ``audit_events``' shape as :data:`EVENT_COLUMN_NAMES` dicts,
    equal to what DuckDB returns for ``SELECT EVENT_COLUMNS`` over them (``tests/
    test_head.py`` compares heads made this way with DuckDB's rows): times as epoch
    microseconds, ``targets`` a list of dicts, ``metadata`` a dict."""
    columns: list[list[Any]] = []
    for name in EVENT_COLUMN_NAMES:
        if name in ("occurred_us", "received_us"):
            at = table.column(name.replace("_us", "_at"))
            columns.append(at.cast(pa.int64()).to_pylist())
        elif name == "metadata":
            columns.append([dict(pairs) for pairs in table.column(name).to_pylist()])
        else:
            columns.append(table.column(name).to_pylist())
    names = EVENT_COLUMN_NAMES
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]

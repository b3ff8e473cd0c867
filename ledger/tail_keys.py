"""Which actors and target ids have rows past the sorted copies' mark.

A page of one actor or one target id reads the sorted copies up to their mark and
``audit_events`` past it (:mod:`query_api.sorted_pages`). That second part is a query
of its own inside the page's (planned, and scanning every row past the mark: at 10M
events with 20,000 rows past the mark, about 4 ms of a 15 ms page), and a one-off
lookup seldom finds a row there: the rows past the mark are the last minute's or so.

So the writer notes, before each commit, the keys of the rows it numbered (the
``(tenant, actor)`` and ``(tenant, target id)`` of every row, as
:func:`ledger.sorted_copies.key_text` writes them), one entry per batch with its
``seq`` range, and a page asks :meth:`TailKeys.newer` whether any of its keys has a
row past the mark. An entry is dropped once the mark reaches the end of its range.

The answer errs one way only: "maybe" whenever the keys of some row past the mark are
not known (rows committed before this process noted any, a ``seq`` published without
a note, or more rows past the mark than :data:`MAX_NOTED_ROWS`), so a page reads past
the mark as before. "No" means that no row committed before the question has one of
the keys and lies past the mark.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

ACTOR = "a"
TARGET = "t"
MAX_NOTED_ROWS = 250_000
"""Past this many rows past the mark (a backlog, or a top merge under a heavy ingest)
no keys are noted: every page reads past the mark until the mark has passed the rows
whose keys are not known. About two row groups' worth: more than a steady ingest
leaves past the mark between two of the keeper's looks (a run takes a row group's
worth, looked for every 5 s). The keys of 500,000 of the query benchmark's rows, in
batches of 5,000, took 83 MB."""


@dataclass(frozen=True)
class _Noted:
    """The keys of the rows of ``seq`` ``lo..hi``."""

    lo: int
    hi: int
    keys: frozenset[str]


def key(kind: str, tenant_id: str, value: str) -> str:
    """A noted key: the copy (:data:`ACTOR` or :data:`TARGET`) and the copy's key text."""
    return f"{kind}{len(tenant_id)}:{tenant_id}:{value}"


def batch_keys(table: pa.Table) -> frozenset[str]:
    """The noted keys of a batch of ``audit_events`` rows (its ``tenant_id``,
    ``actor_id`` and ``targets`` columns), computed by Arrow, not per row in Python."""
    tenants = table.column("tenant_id").combine_chunks()
    length = pc.cast(pc.utf8_length(tenants), pa.string())
    prefix = pc.binary_join_element_wise(length, tenants, pa.scalar(""), ":")  # "9:tenant-00:"
    actor_keys = pc.binary_join_element_wise(
        pa.scalar(ACTOR), prefix, table.column("actor_id").combine_chunks(), ""
    )
    targets = table.column("targets").combine_chunks()
    ids = pc.struct_field(pc.list_flatten(targets), "id")
    owners = pc.take(prefix, pc.list_parent_indices(targets))
    target_keys = pc.binary_join_element_wise(pa.scalar(TARGET), owners, ids, "")
    return frozenset(pc.unique(actor_keys).to_pylist()) | frozenset(
        pc.unique(target_keys).to_pylist()
    )


class TailKeys:
    """The noted keys of the rows past the mark. Not thread-safe on its own: the
    caller (:class:`ledger.sorted_copies.CopyMarks`) holds a lock around every call."""

    def __init__(self, unknown_upto: int) -> None:
        self._noted: deque[_Noted] = deque()
        self._unknown_upto = unknown_upto
        """Rows up to this ``seq`` past the mark have keys that were not noted."""

    @staticmethod
    def takes(hi: int, mark: int) -> bool:
        """Whether rows up to ``seq`` ``hi`` are noted at all with the mark at ``mark``
        (not a backlog: :data:`MAX_NOTED_ROWS`)."""
        return hi - mark <= MAX_NOTED_ROWS

    def note(self, lo: int, hi: int, keys: frozenset[str], mark: int) -> None:
        """The rows of ``seq`` ``lo..hi`` (numbered, not committed yet) have ``keys``."""
        self.forget(mark)
        if not self.takes(hi, mark):
            self._noted.clear()
            self._unknown_upto = hi
            return
        self._noted.append(_Noted(lo, hi, keys))

    def unknown(self, upto: int) -> None:
        """Rows up to ``seq`` ``upto`` may have been committed without a note."""
        self._unknown_upto = max(self._unknown_upto, upto)

    def forget(self, mark: int) -> None:
        """Drop the entries the mark has passed."""
        while self._noted and self._noted[0].hi <= mark:
            self._noted.popleft()

    def newer(self, keys: Iterable[str], mark: int, last: int) -> bool:
        """Whether a row of ``keys`` may lie past ``mark``, rows up to ``last`` committed."""
        if last <= mark:
            return False
        noted_upto = self._noted[-1].hi if self._noted else self._unknown_upto
        if mark < self._unknown_upto or last > noted_upto:
            return True  # rows past the mark whose keys are not known
        wanted = tuple(keys)
        return any(k in n.keys for n in self._noted if n.hi > mark for k in wanted)

"""Everything that reads the log: the materializer, control state, shared log types.

The public surface of the ledger is exactly :data:`__all__`:

- :class:`QueryNode` - one DuckDB ledger kept up to date, readable from many threads;
- :class:`LedgerStore` - the DuckDB file and its exactly-once ``write_batch``;
- :class:`Materializer` - the Kafka -> DuckDB loop (``read_committed``, stored offsets);
- :class:`EventDecoder` - audit-topic values -> an ``audit_events``-shaped Arrow table.

They are imported on first use, so ``import ledger.control`` (the operator commands)
does not load DuckDB or pyarrow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ledger.decode import EventDecoder
    from ledger.materializer import Materializer
    from ledger.node import QueryNode
    from ledger.store import LedgerStore

__all__ = ["EventDecoder", "LedgerStore", "Materializer", "QueryNode"]

_HOMES = {
    "EventDecoder": "ledger.decode",
    "LedgerStore": "ledger.store",
    "Materializer": "ledger.materializer",
    "QueryNode": "ledger.node",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'ledger' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)

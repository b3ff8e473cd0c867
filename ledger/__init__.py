"""Everything that reads the log: the materializer, control state, shared log types.

The public surface of the ledger is exactly :data:`__all__`:

- :class:`QueryNode` - one DuckDB ledger kept up to date, readable from many threads;
- :class:`LedgerStore` - the DuckDB file and its exactly-once ``write_batch``;
- :class:`Materializer` - the Kafka -> DuckDB loop (``read_committed``, stored offsets);
- :class:`EventDecoder` - audit-topic values -> an ``audit_events``-shaped Arrow table.
"""

from ledger.batch import EventDecoder
from ledger.materializer import Materializer
from ledger.node import QueryNode
from ledger.store import LedgerStore

__all__ = ["EventDecoder", "LedgerStore", "Materializer", "QueryNode"]

"""Everything that writes to the log: the ingest library and the internal HTTP service.

Pipeline of one event::

    raw mapping / AuditEvent --validate--> record --transform--> --encode--> produce
                                (validation.py)      (transform.py)  (pipeline.py)  (producer.py)

Public surface (pinned by ``tests/test_producer.py``)::

    with AuditProducer(settings) as producer:
        results = producer.send_many([{...}, {...}])  # Accepted(i, ack) / Rejected(i, errors)
        ack = producer.send(event).result()           # Ack(event_id, partition, offset)

A caller on an asyncio event loop that waits for each acknowledgement (the query
node's read audit) uses :class:`ingest.loop_producer.LoopAuditProducer` instead:
``ack = await producer.deliver(event)``, sent and acknowledged in that loop.

The HTTP service lives in :mod:`ingest.http` (``create_ingest_app``); it is not
imported here so that library users do not pay for Starlette.
"""

from ingest.producer import AuditProducer
from ingest.results import Accepted, Ack, Rejected, SendResult
from ingest.transform import TenantTransform, identity
from ingest.validation import validate_event

__all__ = [
    "Accepted",
    "Ack",
    "AuditProducer",
    "Rejected",
    "SendResult",
    "TenantTransform",
    "identity",
    "validate_event",
]

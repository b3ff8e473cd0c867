"""The per-tenant transform seam between validation and encoding.

The ingest pipeline is ``parse/validate -> transform -> encode -> produce``. The
transform step is where PHI handling plugs in (:class:`phi.policy.PhiTransform`:
server-mode tenants' PHI fields are tokenized, client- and sidecar-mode tenants'
must already hold tokens): it receives each validated event (its tenant is
``event.tenant_id``) and returns the event to write. The default is the identity,
and :class:`~ingest.AuditProducer` skips the step entirely when no transform is
given, so the hot path pays nothing for the seam.

A transform may also offer ``transform_record(record) -> record``, the same
function on the validated Avro record (a dict, timestamps as epoch micros); the
pipeline then calls that instead and skips building an ``AuditEvent``. It must
keep ``event_id`` and ``tenant_id`` and the record's shape.

Contract for implementations:

- called once per event, from the thread that calls ``send``/``send_many``
  (possibly several threads at once), before the event is encoded;
- must return an :class:`~schemas.AuditEvent` with the same ``event_id`` and
  ``tenant_id`` (the key and the idempotency key must not change);
- may raise :class:`~velora.errors.ValidationError` to reject that one event
  (reported per item like any validation failure), or
  :class:`~velora.errors.Unavailable` when it cannot decide now (the request
  answers 503 and nothing is written); any other exception is a bug and propagates.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from schemas import AuditEvent


@runtime_checkable
class TenantTransform(Protocol):
    """Rewrite one validated event before it is encoded (see the module docstring)."""

    def __call__(self, event: AuditEvent) -> AuditEvent:
        """Return the event to write for ``event.tenant_id``."""
        ...


def identity(event: AuditEvent) -> AuditEvent:
    """The default transform: write the event as validated."""
    return event

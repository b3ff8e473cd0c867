"""The per-tenant transform seam between validation and encoding.

The ingest pipeline is ``parse/validate -> transform -> encode -> produce``. The
transform step is where PHI tokenization will plug in for tenants whose PHI mode
is ``client`` or ``sidecar``: it receives each validated event (its tenant is
``event.tenant_id``) and returns the event to write, e.g. with free-text fields
replaced by tokens. Nothing here tokenizes yet; the default is the identity, and
:class:`~ingest.AuditProducer` skips the step entirely when no transform is given,
so the hot path pays nothing for the seam.

Contract for implementations:

- called once per event, from the thread that calls ``send``/``send_many``
  (possibly several threads at once), before the event is encoded;
- must return an :class:`~schemas.AuditEvent` with the same ``event_id`` and
  ``tenant_id`` (the key and the idempotency key must not change);
- may raise :class:`~velora.errors.ValidationError` to reject that one event
  (reported per item like any validation failure); any other exception is a bug
  and propagates.
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

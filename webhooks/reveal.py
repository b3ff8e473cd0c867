"""Server-mode PHI in webhook deliveries: each event's PHI opened with its own tenant's keyset.

The envelopes of a delivery carry the event as the API shows it
(:mod:`webhooks.envelope`), so a server-mode tenant's receiver gets plaintext, as
its API answers and exports do. :class:`DeliveryPhi` looks the policy up per
event's tenant (the dispatcher's own control state: ``TenantSettings`` and the
wrapped ``PhiKeyset`` records) and opens the event with
:class:`phi.policy.Revealer`, the one place that detokenizes. An event is only
ever opened with its own tenant's keyset (and a token is bound to its tenant, so
another tenant's keyset would not open it anyway).

**Fails closed.** A server-mode tenant whose keyset is missing or does not unwrap
(``VELORA_SECRETS_KEY`` changed) raises :class:`~velora.errors.Unavailable`: the
dispatcher then sends nothing, neither tokens where plaintext is due nor anything
else, and schedules a retry as for an endpoint that did not answer (the attempt's
``error_class`` is ``phi_unavailable``; it does not count against the endpoint's
health).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ledger.control import ControlState
from phi.policy import PhiDirectory, Revealer
from phi.wrap import KeysetWrapper
from schemas.events import AuditEvent
from velora.settings import Settings
from webhooks import envelope

ERROR_CLASS = "phi_unavailable"
"""The ``error_class`` of an attempt held back because a keyset could not be read."""


class DeliveryPhi:
    """Envelopes of events with each server-mode tenant's PHI opened (see the module)."""

    def __init__(self, settings: Settings, control: ControlState) -> None:
        self._directory = PhiDirectory(
            control.tenant_settings,
            control.phi_keyset,
            KeysetWrapper(settings.secrets_key),
            control.caught_up,
        )

    def envelopes(self, events: Sequence[AuditEvent]) -> list[dict[str, Any]]:
        """The envelopes of ``events``; :class:`Unavailable` when a keyset cannot be read."""
        revealers: dict[str, Revealer] = {}
        out = []
        for e in events:
            reveal = revealers.get(e.tenant_id)
            if reveal is None:
                reveal = revealers[e.tenant_id] = self._directory.tenant(e.tenant_id).revealer()
            out.append(envelope.event_envelope(e, reveal))
        return out

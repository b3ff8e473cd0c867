"""The tenant PHI lifecycle behind ``velora tenants set-phi-mode|rotate-phi-key|show``.

- **Set a mode** (:func:`set_phi_mode`): a ``TenantSettings`` record on the control
  topic. Changing the mode of a tenant that already has events is refused unless
  ``force`` is given: a change applies to events ingested from then on, and the
  events already in the log keep what they hold (plaintext, tokens of the customer's
  key, or tokens of the server's key); history is never rewritten (``docs/phi.md``).
  Whether a tenant has events is read from its partition of the audit topic.
- **Server-mode keysets.** Choosing ``server`` for a tenant without a keyset
  generates one and writes it, wrapped by ``VELORA_SECRETS_KEY``
  (:class:`phi.wrap.KeysetWrapper`), as a ``PhiKeyset`` record *before* the
  settings record, so a node that folds the new mode already has the keyset.
  :func:`rotate_phi_key` adds a new primary key (old tokens still open; new events
  use the new key; filters search under every key).
- :func:`show` is what operators see: mode, PHI metadata keys, and for server-mode
  the key ids (never key material).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from kafka.structs import TopicPartition

from ingest.appender import TenantPartitioner
from ingest.control import ControlWriter
from ledger.control import ControlFold, read_control
from phi.keyset import Keyset
from phi.wrap import KeysetWrapper
from schemas.events import PHI_MODES, PhiKeyset, TenantSettings
from schemas.rules import valid_tenant
from velora.errors import ErrorDetail, Unavailable, ValidationError
from velora.kafka_clients import close_quietly, map_kafka_errors, new_consumer
from velora.settings import Settings

SCAN_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class TenantView:
    """What ``velora tenants show`` prints."""

    tenant_id: str
    phi_mode: str | None
    phi_metadata_keys: tuple[str, ...]
    updated_at: datetime | None
    key_ids: tuple[str, ...]
    primary_kid: str | None

    def to_json(self) -> dict[str, object]:
        """JSON form (``--json``)."""
        return {
            "tenant_id": self.tenant_id,
            "phi_mode": self.phi_mode,
            "phi_metadata_keys": list(self.phi_metadata_keys),
            "updated_at": None if self.updated_at is None else self.updated_at.isoformat(),
            "phi_key_ids": list(self.key_ids),
            "phi_primary_key_id": self.primary_kid,
        }


def _check_tenant(tenant_id: str) -> None:
    if not valid_tenant(tenant_id):
        raise ValidationError("invalid tenant id", (ErrorDetail("tenant", "invalid tenant id"),))


def tenant_has_events(settings: Settings, tenant_id: str, timeout: float = SCAN_TIMEOUT_S) -> bool:
    """Whether the audit topic holds any event of ``tenant_id`` (scans its partition)."""
    consumer = new_consumer(settings, "velora-tenants", fetch_max_wait_ms=100)
    key = tenant_id.encode()
    try:
        with map_kafka_errors("audit topic read"):
            partitions = consumer.partitions_for_topic(settings.audit_topic)
            if not partitions:
                return False
            tp = TopicPartition(settings.audit_topic, TenantPartitioner().for_key(key, partitions))
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            end = consumer.end_offsets([tp])[tp]
            deadline = time.monotonic() + timeout
            while consumer.position(tp) < end:
                if time.monotonic() > deadline:
                    raise Unavailable(f"audit topic not scanned in {timeout:.0f}s", retry_after=5)
                for records in consumer.poll(timeout_ms=500, max_records=5000).values():
                    if any(r.key == key for r in records):
                        return True
    finally:
        close_quietly(consumer)
    return False


def _view(fold: ControlFold, tenant_id: str, wrapper: KeysetWrapper | None) -> TenantView:
    settings = fold.tenants.get(tenant_id)
    record = fold.phi_keysets.get(tenant_id)
    key_ids: tuple[str, ...] = ()
    if record is not None and wrapper is not None:
        key_ids = tuple(k.kid for k in wrapper.unwrap(record.wrapped, tenant_id).keys)
    return TenantView(
        tenant_id,
        None if settings is None else settings.phi_mode,
        () if settings is None else settings.phi_metadata_keys,
        None if settings is None else settings.updated_at,
        key_ids,
        None if record is None else record.primary_kid,
    )


def show(settings: Settings, tenant_id: str) -> TenantView:
    """The tenant's PHI settings as the control topic holds them now."""
    _check_tenant(tenant_id)
    return _view(read_control(settings), tenant_id, KeysetWrapper(settings.secrets_key))


def set_phi_mode(
    settings: Settings,
    tenant_id: str,
    mode: str,
    metadata_keys: tuple[str, ...] | None = None,
    *,
    force: bool = False,
) -> TenantView:
    """Set the tenant's PHI mode (and PHI metadata keys; None keeps the current ones)."""
    _check_tenant(tenant_id)
    if mode not in PHI_MODES:
        raise ValidationError(
            f"PHI mode must be one of {', '.join(PHI_MODES)}",
            (ErrorDetail("mode", "unknown PHI mode"),),
        )
    fold = read_control(settings)
    current = fold.tenants.get(tenant_id)
    old_mode = None if current is None else current.phi_mode
    if metadata_keys is None:
        metadata_keys = () if current is None else current.phi_metadata_keys
    if old_mode != mode and not force and tenant_has_events(settings, tenant_id):
        raise ValidationError(
            f"tenant {tenant_id} already has events under PHI mode {old_mode or 'none'}; "
            "a change applies to new events only and never rewrites history: "
            "rerun with --force to change it anyway",
            (ErrorDetail("--force", "required: the tenant already has events"),),
        )
    wrapper = KeysetWrapper(settings.secrets_key)
    now = datetime.now(UTC)
    with ControlWriter(settings) as writer:
        if mode == "server" and tenant_id not in fold.phi_keysets:
            keyset = Keyset.generate(tenant_id)
            record = PhiKeyset(tenant_id, wrapper.wrap(keyset), keyset.primary.kid, now)
            writer.put_phi_keyset(record)
            fold.phi_keysets[tenant_id] = record
        updated = TenantSettings(tenant_id, now, mode, tuple(metadata_keys))
        writer.put_tenant_settings(updated)
    fold.tenants[tenant_id] = updated
    return _view(fold, tenant_id, wrapper)


def rotate_phi_key(settings: Settings, tenant_id: str) -> TenantView:
    """Give a server-mode tenant's keyset a new primary key; older keys decrypt only."""
    _check_tenant(tenant_id)
    fold = read_control(settings)
    record = fold.phi_keysets.get(tenant_id)
    current = fold.tenants.get(tenant_id)
    if record is None or current is None or current.phi_mode != "server":
        raise ValidationError(
            f"tenant {tenant_id} is not in server PHI mode: its keys are the customer's "
            "(rotate them with velora-tokenizer keys rotate)",
            (ErrorDetail("tenant", "not in server PHI mode"),),
        )
    wrapper = KeysetWrapper(settings.secrets_key)
    keyset = wrapper.unwrap(record.wrapped, tenant_id).rotate()
    rotated = PhiKeyset(tenant_id, wrapper.wrap(keyset), keyset.primary.kid, datetime.now(UTC))
    with ControlWriter(settings) as writer:
        writer.put_phi_keyset(rotated)
    fold.phi_keysets[tenant_id] = rotated
    return _view(fold, tenant_id, wrapper)

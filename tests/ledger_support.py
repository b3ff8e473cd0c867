"""Helpers for the ledger tests: encoded events of chosen tenants and ids, tenant placement."""

from __future__ import annotations

import random
import shutil
from datetime import UTC, datetime
from pathlib import Path

import uuid_utils

from ingest.appender import TenantPartitioner
from ledger.materializer import Materializer
from ledger.store import LedgerStore
from schemas.codec import SCHEMA_DIR, AvroCodec
from tests.factory import Made, sample_record
from velora.settings import Settings

CODEC = AvroCodec()
CHECKSUM = (
    "SELECT count(*), md5(string_agg(to_json(e)::VARCHAR, chr(10) ORDER BY tenant_id, event_id))"
    " FROM audit_events e"
)


def encoded(
    tenant: str,
    event_id: str | None = None,
    *,
    seed: int = 1,
    codec: AvroCodec = CODEC,
    version: int | None = None,
    **changes: object,
) -> Made:
    """One event of ``tenant`` (id ``event_id``, or a new UUIDv7), encoded like ingest would."""
    record = sample_record(random.Random(seed), tenant, datetime(2025, 5, 1, 12, tzinfo=UTC))
    record["event_id"] = event_id or str(uuid_utils.uuid7())
    record.update(changes)
    return Made(record["event_id"], tenant.encode(), codec.encode("AuditEvent", record, version))


def tenants_on_distinct_partitions(partitions: int, count: int = 2) -> list[str]:
    """``count`` tenant ids whose events land on ``count`` different partitions."""
    placer = TenantPartitioner()
    chosen: dict[int, str] = {}
    i = 0
    while len(chosen) < count:
        name = f"tenant-{i:03d}"
        chosen.setdefault(placer.for_key(name.encode(), set(range(partitions))), name)
        i += 1
    return list(chosen.values())


def partition_of(tenant: str, partitions: int) -> int:
    """The audit-topic partition of ``tenant``'s events."""
    return TenantPartitioner().for_key(tenant.encode(), set(range(partitions)))


def materialize(settings: Settings, path: Path, **kwargs: object) -> LedgerStore:
    """Materialize the whole audit topic into a new ledger at ``path``; the store, still open."""
    store = LedgerStore(path)
    m = Materializer(settings, store, **kwargs)  # type: ignore[arg-type]
    m.start()
    try:
        assert m.wait_caught_up(timeout=120), m.status()
    finally:
        m.stop()
    return store


def schema_folder(tmp: Path, *extra: Path) -> Path:
    """A schema folder holding the deployed schemas plus ``extra`` files."""
    folder = tmp / "schemas"
    folder.mkdir(exist_ok=True)
    for path in [*SCHEMA_DIR.glob("*.avsc"), *extra]:
        shutil.copy(path, folder / path.name)
    return folder

"""Control state: the control topic folded by a background follower and by one-shot reads."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from kafka import KafkaProducer

from ingest.control import ControlWriter
from ledger.control import ControlFold, ControlState, read_control
from schemas.events import ApiKey, TenantSettings


def _key(key_id: str, tenant: str = "acme") -> ApiKey:
    now = datetime.now(UTC)
    return ApiKey(
        key_id=key_id,
        tenant_id=tenant,
        scopes=("audit:read",),
        secret_hash="ab" * 32,
        created_at=now,
        updated_at=now,
    )


def test_follower_folds_latest_state_per_key(settings):
    state = ControlState(settings)
    with ControlWriter(settings) as writer:
        first = writer.put_api_key(_key("0000000a"))
        state.start()
        try:
            assert state.position > first
            assert state.api_key("0000000a").revoked_at is None
            revoked = replace(_key("0000000a"), revoked_at=datetime.now(UTC))
            offset = writer.put_api_key(revoked)
            writer.put_api_key(_key("0000000b", "other"))
            tenant_offset = writer.put_tenant_settings(
                TenantSettings("acme", datetime.now(UTC), "sidecar")
            )
            assert offset > first and tenant_offset > offset
            assert state.wait_for_offset(tenant_offset, timeout=2.0)
            assert state.api_key("0000000a").revoked_at is not None
            assert [k.key_id for k in state.api_keys("other")] == ["0000000b"]
            assert state.tenant_settings("acme").phi_mode == "sidecar"
            assert state.readiness()["caught_up"] is True
            assert state.api_key("ffffffff") is None
        finally:
            state.stop()


def test_one_shot_read_and_tombstones_and_garbage(settings):
    with ControlWriter(settings) as writer:
        writer.put_api_key(_key("0000000c"))
        writer.put_api_key(_key("0000000d"))
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    topic = settings.control_topic
    producer.send(topic, key=b"api_key:0000000d", value=None, partition=0).get(timeout=10)
    producer.send(topic, key=b"api_key:0000000e", value=b"not avro", partition=0).get(timeout=10)
    producer.send(topic, key=b"webhook:1", value=b"\xc3\x01abcdefgh", partition=0).get(timeout=10)
    producer.close()
    fold = read_control(settings)
    assert set(fold.api_keys) == {"0000000c"}
    assert fold.skipped == 2


def test_fold_is_pure():
    fold = ControlFold()
    from schemas.codec import AvroCodec

    value = AvroCodec().encode("ApiKey", _key("00000001").to_avro())
    fold.apply(b"api_key:00000001", value)
    fold.apply(b"tenant:acme", value)  # wrong record kind for the key: skipped
    assert set(fold.api_keys) == {"00000001"} and fold.tenants == {} and fold.skipped == 1

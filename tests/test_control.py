"""Control state: the control topic folded by a background follower and by one-shot reads;
sticky revocation, the revoke/rotate race, start-up gating, staleness and follower faults."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from kafka import KafkaProducer
from kafka.errors import KafkaConnectionError

from cli.keys import create_key, revoke_key, rotate_key
from ingest.control import ControlWriter
from ledger.control import ControlFold, ControlState, read_control
from schemas.events import ApiKey, TenantSettings
from tests.helpers import wait_for
from velora.errors import ValidationError
from velora.topics import end_offsets


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


# -- sticky fold ---------------------------------------------------------------------

CODEC = None


def _encode(key: ApiKey) -> bytes:
    from schemas.codec import AvroCodec

    global CODEC
    CODEC = CODEC or AvroCodec()
    return CODEC.encode("ApiKey", key.to_avro())


def test_revocation_and_expiry_are_sticky_in_the_fold():
    """Issue 8 finding 6: a later record written from a stale view never un-revokes."""
    base = _key("00000002")
    t = base.created_at
    revoked = replace(
        base, revoked_at=t + timedelta(seconds=5), updated_at=t + timedelta(seconds=5)
    )
    rotated = replace(
        base,
        expires_at=t + timedelta(days=1),
        rotated_to="00000003",
        updated_at=t + timedelta(seconds=6),
    )
    later_expiry = replace(
        base, expires_at=t + timedelta(days=9), updated_at=t + timedelta(seconds=7)
    )
    fold = ControlFold()
    for record in (base, revoked, rotated, later_expiry, base):
        fold.apply(b"api_key:00000002", _encode(record))
    state = fold.api_keys["00000002"]
    assert state.revoked_at == revoked.revoked_at
    assert state.expires_at == rotated.expires_at  # never extended
    assert state.rotated_to == "00000003"  # never cleared
    assert fold.last_written["00000002"] == base  # what compaction would keep
    assert fold.last_written["00000002"] != state


# -- the revocation race ---------------------------------------------------------------


@pytest.mark.parametrize("first", ["revoke", "rotate"])
def test_revoke_and_rotate_race_ends_revoked_in_every_interleaving(settings, first):
    """Both operators read the topic before either writes (stale views), then act in
    either order: the key is revoked at the end, on a running node and in the record
    compaction keeps, and a rotation of the revoked key never yields a usable key."""
    issued = create_key(settings, "acme", ("audit:read",))
    key_id = issued.record.key_id
    follower = ControlState(settings)
    follower.start()
    try:
        stale_for_revoke = read_control(settings)
        stale_for_rotate = read_control(settings)
        if first == "revoke":
            revoke_key(settings, key_id, fold=stale_for_revoke)
            with pytest.raises(ValidationError, match="revoked"):
                rotate_key(settings, key_id, fold=stale_for_rotate)
            replacement = None
        else:
            new, _ = rotate_key(settings, key_id, fold=stale_for_rotate)
            revoke_key(settings, key_id, fold=stale_for_revoke)
            replacement = new.record.key_id
        final = read_control(settings)
        assert final.api_keys[key_id].revoked_at is not None
        assert final.last_written[key_id].revoked_at is not None  # survives compaction
        assert final.last_written[key_id] == final.api_keys[key_id]
        end = max(final_offsets(settings), default=0)
        assert follower.wait_for_offset(end - 1, timeout=5)
        assert follower.api_key(key_id).revoked_at is not None
        if replacement is None:  # the refused rotation wrote no usable key
            assert {k.key_id for k in final.api_keys.values()} == {key_id}
        else:
            assert final.api_keys[replacement].revoked_at is None
            assert final.api_keys[key_id].rotated_to == replacement
    finally:
        follower.stop()


def test_rotating_a_revoked_key_is_refused(settings):
    issued = create_key(settings, "acme", ("audit:read",))
    revoke_key(settings, issued.record.key_id)
    with pytest.raises(ValidationError, match="revoked"):
        rotate_key(settings, issued.record.key_id)


def final_offsets(settings) -> list[int]:
    return list(end_offsets(settings, settings.control_topic).values())


# -- the follower: start-up gating, staleness, faults ----------------------------------


class FlakyFold(ControlFold):
    """Fault injection: ``apply`` raises for the first ``failures`` records of one key."""

    def __init__(self, poison: bytes, failures: int) -> None:
        super().__init__()
        self.poison = poison
        self.failures = failures

    def apply(self, key, value):
        if key == self.poison and self.failures > 0:
            self.failures -= 1
            raise RuntimeError("injected fold failure")
        super().apply(key, value)


def test_an_exception_in_the_fold_is_recovered_and_shown(settings, caplog):
    """Issue 8 finding 2 (control follower): anything raised is logged, shown, retried."""
    with ControlWriter(settings) as writer:
        writer.put_api_key(_key("0000000f"))
        fold = FlakyFold(b"api_key:0000000f", failures=2)
        state = ControlState(settings, fold=fold)
        with caplog.at_level(logging.ERROR, logger="ledger.control"):
            state.start(wait_timeout=0)
            try:
                wait_for(lambda: state.restarts >= 1, timeout=10, what="a restart")
                seen = state.readiness()
                assert seen["restarts"] >= 1
                assert seen["ready"] is False
                assert "RuntimeError" in (seen["error"] or seen.get("reason", ""))
                wait_for(lambda: state.readiness()["ready"], timeout=30, what="recovery")
                assert state.restarts == 2
                assert state.api_key("0000000f") is not None
                # Revocations keep applying after the recovery.
                offset = writer.put_api_key(replace(_key("0000000f"), revoked_at=datetime.now(UTC)))
                assert state.wait_for_offset(offset, timeout=5)
                assert state.api_key("0000000f").revoked_at is not None
            finally:
                state.stop()
    assert "control follower at offset 0 failed" in caplog.text
    assert "injected fold failure" in caplog.text  # the traceback is logged


def test_a_persistent_failure_is_reported_not_ready_with_a_reason(settings):
    with ControlWriter(settings) as writer:
        writer.put_api_key(_key("0000001f"))
    state = ControlState(settings, fold=FlakyFold(b"api_key:0000001f", failures=10**6))
    state.start(wait_timeout=0)
    try:
        wait_for(lambda: state.restarts >= 2, timeout=15, what="repeated restarts")
        seen = state.readiness()
        assert seen["ready"] is False and seen["caught_up"] is False
        assert seen["reason"] == "control state still loading"
        assert seen["error"] == "control follower failed (RuntimeError); restarting"
        assert settings.kafka_bootstrap not in repr(seen)
        assert state.serving_problem() == "API-key state is still loading"
    finally:
        state.stop()


class LosingConsumer:
    """Fault injection: a real consumer whose end-offset requests fail once ``broken``."""

    broken = threading.Event()

    def __init__(self, real):
        self._real = real

    def end_offsets(self, tps):
        if self.broken.is_set():
            raise KafkaConnectionError("injected: broker unreachable at 10.9.8.7:9092")
        return self._real.end_offsets(tps)

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_state_older_than_the_staleness_bound_is_refused_then_recovers(settings):
    """Issue 8 finding 7: a Kafka outage no longer leaves key state stale without bound."""
    LosingConsumer.broken = threading.Event()

    def factory(s):
        from ledger.control import _consumer

        consumer, tp = _consumer(s)
        return LosingConsumer(consumer), tp

    quick = settings.with_overrides(control_max_staleness_s=1)
    state = ControlState(quick, consumer_factory=factory)
    assert state.start(wait_timeout=10)
    try:
        # Confirmed fresh once (on a busy machine the first check may come after 1 s).
        wait_for(
            lambda: state.serving_problem() is None and state.readiness()["ready"] is True,
            timeout=30,
            what="fresh",
        )
        LosingConsumer.broken.set()
        wait_for(lambda: state.serving_problem() is not None, timeout=10, what="stale")
        assert state.serving_problem() == "API-key state is stale"
        seen = state.readiness()
        assert seen["ready"] is False and seen["stale"] is True
        assert "stale" in seen["reason"] and "10.9.8.7" not in repr(seen)
        LosingConsumer.broken.clear()
        wait_for(lambda: state.serving_problem() is None, timeout=30, what="fresh again")
        assert state.readiness()["ready"] is True
    finally:
        state.stop()


class StallingPosition:
    """Fault injection: a real consumer whose ``position()`` waits while ``stall`` is set,
    as kafka-python's does when it must fetch the position from a broker that went away."""

    def __init__(self, real, stall: threading.Event, inside: threading.Event, go: threading.Event):
        self._real, self._stall, self._inside, self._go = real, stall, inside, go

    def position(self, tp, timeout_ms=None):
        if self._stall.is_set():
            self._inside.set()
            self._go.wait(60)
        return self._real.position(tp, timeout_ms=timeout_ms)

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_a_stalled_kafka_call_never_holds_up_the_requests_that_read_the_state(settings):
    """Every authenticated request asks the state on the event loop (serving_problem,
    api_key); a follower waiting on Kafka must not hold the lock those take."""
    stall, inside, go = threading.Event(), threading.Event(), threading.Event()

    def factory(s):
        from ledger.control import _consumer

        consumer, tp = _consumer(s)
        return StallingPosition(consumer, stall, inside, go), tp

    state = ControlState(settings, consumer_factory=factory)
    assert state.start(wait_timeout=30)
    try:
        stall.set()
        assert inside.wait(30), "the follower never asked for its position"
        answers: list[object] = []
        asking = threading.Thread(
            target=lambda: answers.extend(
                [state.serving_problem(), state.api_key("nope"), state.readiness()["caught_up"]]
            )
        )
        asking.start()
        asking.join(10)
        answered_while_stalled = not asking.is_alive()  # the follower still waits on Kafka
        go.set()
        asking.join(30)
        assert answered_while_stalled and answers == [None, None, True]
    finally:
        go.set()
        state.stop()

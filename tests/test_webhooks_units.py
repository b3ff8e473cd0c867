"""The pure parts of webhooks: retry schedule, secrets at rest, signing, the local receiver."""

from __future__ import annotations

import asyncio
import functools
import gc
import io
import random
import threading
import time
import warnings
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import httpx
import pytest
import standardwebhooks
import stripe
from kafka.structs import TopicPartition

from schemas.codec import AvroCodec
from schemas.events import WebhookAttempt, WebhookEndpoint
from tests.api_support import make_event
from velora.errors import AuthenticationError, ConfigError, EncodeError
from velora.settings import Secret, Settings, check_bind_secrets
from webhooks.consumer import GroupConsumer, OffsetTracker
from webhooks.dispatcher import Dispatcher
from webhooks.endpoints import matches
from webhooks.inbox import Inbox
from webhooks.lanes import Delivery
from webhooks.publisher import AttemptEncoder
from webhooks.receiver import receiver_app
from webhooks.schedule import next_delay, retry_after, tier_for
from webhooks.secrets import SecretBox, new_signing_secret
from webhooks.signing import signature_headers, verify_standard, verify_velora
from webhooks.transport import Answer, WebhookClient

SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)


def test_schedule_is_svix_like_with_jitter_and_ends():
    rng = random.Random(1)
    for attempt, base in enumerate(SCHEDULE, start=1):
        waits = [next_delay(SCHEDULE, attempt, rng) for _ in range(200)]
        assert all(0.8 * base <= w <= 1.2 * base for w in waits)
        assert len(set(waits)) > 100  # jittered, not one fixed value
    assert next_delay(SCHEDULE, len(SCHEDULE) + 1, rng) is None  # eight attempts, then failed


def test_retry_after_seconds_and_dates_are_capped():
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert retry_after("120") == 120.0
    assert retry_after("999999999") == 86_400.0
    assert retry_after("Wed, 01 Jan 2025 00:01:00 GMT", now) == 60.0
    assert retry_after("soon") is None and retry_after(None) is None


def test_tiers_hold_the_longest_delay_that_fits():
    tiers = (5.0, 300.0, 1800.0)
    assert [tier_for(tiers, d) for d in (0.1, 5, 299, 300, 5000)] == [0, 0, 0, 1, 2]


def test_event_type_patterns():
    assert matches((), "anything.at_all")
    assert matches(("claim.*",), "claim.viewed") and matches(("claim.*",), "claim.note.added")
    assert not matches(("claim.*",), "claimx.viewed") and not matches(("claim.*",), "member.viewed")
    assert matches(("member.viewed",), "member.viewed") and not matches(
        ("member.viewed",), "member"
    )


def test_secrets_are_bound_to_their_key_endpoint_and_field():
    box = SecretBox(Secret("k" * 32))
    secret = new_signing_secret()
    text = box.encrypt(secret, "we_1", "secret")
    assert secret not in text and text.startswith("v1.")
    assert box.decrypt(text, "we_1", "secret") == secret
    assert box.encrypt(secret, "we_1", "secret") != text  # a fresh nonce each time
    for other in (SecretBox(Secret("x" * 32)).decrypt, lambda t, e, f: box.decrypt(t, "we_2", f)):
        with pytest.raises(ConfigError) as info:
            other(text, "we_1", "secret")
        assert "VELORA_SECRETS_KEY" in str(info.value) and secret not in str(info.value)
    with pytest.raises(ConfigError):
        box.decrypt(text, "we_1", "splunk_token")


def test_our_signatures_match_the_public_libraries_and_refuse_stale_ones():
    secret = new_signing_secret()
    body = b'{"id":"e1","type":"claim.viewed"}'
    now = int(time.time())
    headers = signature_headers([secret], "e1", body, now)
    stripe.WebhookSignature.verify_header(body, headers["Velora-Signature"], secret)
    standardwebhooks.Webhook(secret).verify(body, headers)
    verify_velora(body, headers["Velora-Signature"], secret)
    verify_standard(body, headers, secret)
    stale = signature_headers([secret], "e1", body, now - 3600)
    with pytest.raises(AuthenticationError):
        verify_velora(body, stale["Velora-Signature"], secret)
    with pytest.raises(AuthenticationError):
        verify_standard(body, stale, secret)
    with pytest.raises(AuthenticationError):
        verify_velora(body + b" ", headers["Velora-Signature"], secret)


def test_listen_verifies_and_prints_each_event():
    secret = new_signing_secret()
    out = io.StringIO()
    app = receiver_app([secret], out)
    body = b'{"id":"e1","type":"claim.viewed"}\n{"id":"e2","type":"member.viewed"}\n'
    headers = signature_headers([secret], "batch_1", body, int(time.time()))

    async def send() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://rx") as client:
            ok = await client.post("/hook", content=body, headers=headers)
            bad = await client.post("/hook", content=body.replace(b"e1", b"e9"), headers=headers)
            return ok, bad

    ok, forged = asyncio.run(send())
    assert ok.status_code == 200 and ok.json() == {"verified": True, "events": 2}
    assert forged.status_code == 400
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("batch_1 claim.viewed e1") and lines[1].endswith("member.viewed e2")
    assert "REFUSED batch_1" in lines[2]


def test_published_secrets_key_is_refused_off_loopback():
    dev = Settings()
    assert check_bind_secrets(dev, "dispatcher", "127.0.0.1") == ["VELORA_SECRETS_KEY"]
    with pytest.raises(ConfigError, match="VELORA_SECRETS_KEY"):
        check_bind_secrets(dev, "dispatcher", "0.0.0.0")
    node = dev.with_overrides(
        key_pepper=Secret("an-operator-chosen-pepper"),
        cursor_secret=Secret("an-operator-chosen-cursor"),
    )
    with pytest.raises(ConfigError, match="VELORA_SECRETS_KEY"):
        check_bind_secrets(node, "node", "0.0.0.0")
    own = node.with_overrides(secrets_key=Secret("an-operator-chosen-key"))
    assert check_bind_secrets(own, "dispatcher", "0.0.0.0") == []
    assert check_bind_secrets(own, "node", "0.0.0.0") == []
    assert timedelta(seconds=dev.webhooks_rotation_overlap_s) == timedelta(hours=24)


def test_the_inbox_keeps_order_wakes_the_loop_once_per_burst_and_survives_a_bad_call():
    loop = asyncio.new_event_loop()
    wakeups: list[int] = []
    real = loop.call_soon_threadsafe

    def counted(*args: object) -> object:
        wakeups.append(1)
        return real(*args)

    loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
    inbox, seen = Inbox(loop), []

    def bad() -> None:
        raise ValueError("boom")

    def burst() -> None:
        for i in range(100):
            inbox.put(bad) if i == 5 else inbox.put(seen.append, i)

    def drained() -> None:  # put last: runs once everything before it has run
        done = loop.create_future()
        inbox.put(done.set_result, None)
        loop.run_until_complete(asyncio.wait_for(done, timeout=10))

    try:
        worker = threading.Thread(target=burst)
        worker.start()
        worker.join()
        drained()
        assert seen == [i for i in range(100) if i != 5]
        assert len(wakeups) == 1
        inbox.put(seen.append, 100)  # the inbox still works after the failed call
        drained()
        assert seen[-1] == 100 and len(wakeups) == 2
    finally:
        loop.close()


@pytest.mark.parametrize(
    ("url", "loopback", "error"),
    [
        ("https://10.0.0.7/hook", False, "ssrf_refused"),
        ("https://169.254.169.254/latest", False, "ssrf_refused"),
        ("https://[::1]/hook", False, "ssrf_refused"),
        ("http://127.0.0.1:9/hook", False, "ssrf_refused"),  # the exception needs the setting
        ("https://127.0.0.1:9/hook", True, "ssrf_refused"),  # ... and plain http
        ("https://internal.example/hook", False, "ssrf_refused"),  # resolves to 10.1.2.3
    ],
)
def test_the_client_refuses_internal_addresses_before_any_connection(url, loopback, error):
    resolved: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        resolved.append(host)
        return ["10.1.2.3"]

    async def post() -> Answer:
        client = WebhookClient(
            resolve, allow_insecure_loopback=loopback, timeout_s=5, max_connections=4
        )
        try:
            return await client.post(url, b"{}", {"Content-Type": "application/json"})
        finally:
            await client.aclose()

    answer = asyncio.run(post())
    assert (answer.status, answer.error) == (None, error)
    assert resolved == (["internal.example"] if "example" in url else [])


class _FakeKafka:
    """Fault injection: the consumer calls the handover makes, and where it seeks."""

    def __init__(self) -> None:
        self.seeks: list[int | str] = []
        self.commits: list[dict[int, int]] = []

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append(offset)

    def seek_to_beginning(self, tp: TopicPartition) -> None:
        self.seeks.append("beginning")

    def pause(self, *tps: TopicPartition) -> None:
        pass

    def commit_async(self, offsets: dict) -> None:
        self.commits.append({tp.partition: o.offset for tp, o in offsets.items()})

    def resume(self, *tps: TopicPartition) -> None:
        pass

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition("units.audit.v1", p) for p in range(3)}


def _records(first: int, n: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(offset=o, value=b"", timestamp=0) for o in range(first, first + n)]


def _group() -> tuple[GroupConsumer, OffsetTracker, list[int]]:
    tracker, handed = OffsetTracker(), []
    group = GroupConsumer(
        Settings(topic_prefix="units"), tracker, lambda tp, r, ref: handed.append(r.offset), None
    )
    return group, tracker, handed


def test_a_partition_kept_across_a_rebalance_is_read_again_from_its_oldest_unsettled_record():
    group, tracker, handed = _group()
    tp = TopicPartition("units.audit.v1", 0)
    fake = _FakeKafka()
    group._consumer = fake  # type: ignore[assignment]
    group.assigned_to([tp])
    seen = group._rebalances
    group._take_all(fake, {tp: _records(2254, 10)}, seen)
    assert handed == list(range(2254, 2264)) and fake.seeks == []  # in flight, unsettled

    # The partition is revoked and assigned again to this member. kafka-python may keep
    # its fetch position (2264): the unsettled records would be committed past and, if
    # the process died before their attempts, lost. It is read again from 2254.
    group.revoked([tp])
    group.assigned_to([tp])
    assert fake.seeks == [2254] and fake.commits == [{0: 2254}]

    # Records polled under the old assignment reach the thread after that (the listener
    # runs on kafka-python's I/O thread): dropped, and read again from 2254 too.
    group._take_all(fake, {tp: _records(4500, 100)}, seen)
    assert handed == list(range(2254, 2264)) and fake.seeks == [2254, 2254]
    assert tracker.committable() == {}  # nothing handed over: nothing to commit past

    # A partition that was not ours before: dropped records were fetched from the
    # committed offset, so they are read again from their first offset.
    other = TopicPartition("units.audit.v1", 1)
    seen = group._rebalances
    group.revoked([tp])
    group.assigned_to([other])
    group._take_all(fake, {other: _records(70, 5)}, seen)
    assert fake.seeks == [2254, 2254, 70]

    # Ours before, but nothing was ever handed over: from the log start.
    seen = group._rebalances
    group.revoked([other])
    group.assigned_to([other])
    group._take_all(fake, {other: _records(75, 1)}, seen)
    assert fake.seeks == [2254, 2254, 70, "beginning"] and handed == list(range(2254, 2264))


def test_within_an_assignment_the_handover_never_skips_a_record():
    group, tracker, handed = _group()
    tp = TopicPartition("units.audit.v1", 0)
    fake = _FakeKafka()
    group.assigned_to([tp])
    seen = group._rebalances
    group._take_all(fake, {tp: _records(2254, 10)}, seen)
    group._take_all(fake, {tp: _records(2270, 10)}, seen)  # a gap: read again from 2264
    assert handed == list(range(2254, 2264)) and fake.seeks == [2264]
    group._take_all(fake, {tp: _records(2264, 6)}, seen)
    assert handed == list(range(2254, 2270))
    assert tracker.committable() == {tp: 2254}  # the oldest unsettled record

    # A gap that stays (expired by retention) is accepted the second time.
    group._take_all(fake, {tp: _records(2300, 1)}, seen)
    group._take_all(fake, {tp: _records(2300, 1)}, seen)
    assert handed[-1] == 2300 and fake.seeks == [2264, 2270]


class _LateControl:
    """Fault injection: a control state that has not folded a new endpoint yet."""

    def __init__(self) -> None:
        self.as_of: float | None = time.time() - 60
        self.endpoints: list[WebhookEndpoint] = []
        self.position = 0

    def folded_as_of(self) -> float | None:
        return self.as_of

    def webhook_endpoints(self) -> list[WebhookEndpoint]:
        return self.endpoints

    def webhook_endpoint(self, endpoint_id: str) -> None:
        return None  # the attempt finds it deleted, and settles

    def webhook_health(self, endpoint_id: str) -> None:
        return None

    def tenant_settings(self, tenant_id: str) -> None:
        return None  # no PHI mode: nothing to reveal

    def phi_keyset(self, tenant_id: str) -> None:
        return None

    def caught_up(self) -> bool:
        return True


def test_an_event_newer_than_the_control_state_waits_for_its_endpoints():
    settings = Settings(topic_prefix="units")
    control, tracker = _LateControl(), OffsetTracker()
    tp = TopicPartition(settings.audit_topic, 0)
    tracker.assign([tp])
    created = datetime.now(UTC) - timedelta(seconds=1)
    endpoint = WebhookEndpoint("we_1", "acme", "https://example.org/h", "x", created, created)
    event = make_event("acme", 0)
    logged_ms = int(time.time() * 1000)

    async def scenario() -> tuple[int, int, bool]:
        d = Dispatcher(settings, control, None, None, tracker)  # type: ignore[arg-type]
        ref = tracker.add(tp, 0)
        d.offer_event(ref, event, b"", logged_ms)
        await asyncio.sleep(0.3)  # six hold steps: long enough to have settled it if it would
        held = tracker.in_flight  # not settled: the endpoint set may be incomplete
        control.endpoints = [endpoint]  # the endpoint is folded, and the state confirmed
        control.position, control.as_of = 1, time.time()
        deadline = time.monotonic() + 10
        while tracker.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return held, tracker.in_flight, "we_1" in d.lanes()

    held, after, offered = asyncio.run(scenario())
    assert held == 1  # before: settled at once as "no endpoint", so never delivered
    assert offered and after == 0


class _Control(_LateControl):
    """Fault injection: a control state that holds one endpoint, as given."""

    def __init__(self, endpoint: WebhookEndpoint) -> None:
        super().__init__()
        self.endpoint = endpoint

    def webhook_endpoint(self, endpoint_id: str) -> WebhookEndpoint | None:
        return self.endpoint if endpoint_id == self.endpoint.endpoint_id else None


class _RecordingPublisher:
    """Fault injection: a publisher that keeps the attempt records instead of producing them."""

    def __init__(self) -> None:
        self.attempts: list = []

    async def publish_attempt(self, attempt) -> None:
        self.attempts.append(attempt)


class _NoClient:
    async def post(self, *args, **kwargs):
        raise AssertionError("a disabled endpoint must not be sent anything")


def test_a_pending_delivery_of_a_disabled_endpoint_is_dropped_recorded_and_settled():
    settings = Settings(topic_prefix="units")
    created = datetime.now(UTC) - timedelta(seconds=1)
    endpoint = WebhookEndpoint(
        "we_1", "acme", "https://example.org/h", "x", created, created, enabled=False
    )
    tracker, publisher = OffsetTracker(), _RecordingPublisher()
    tp = TopicPartition(settings.audit_topic, 0)
    tracker.assign([tp])
    ref = tracker.add(tp, 0)
    event = make_event("acme", 0)

    async def scenario() -> Dispatcher:
        d = Dispatcher(settings, _Control(endpoint), _NoClient(), publisher, tracker)  # type: ignore[arg-type]
        delivery = Delivery("we_1", "acme", event.event_id, [event], [b""], [ref], attempt=3)
        await d.attempt(delivery)
        return d

    d = asyncio.run(scenario())
    assert d.counters["we_1"]["dropped"] == 1 and d.counters["we_1"]["failed"] == 0
    [record] = publisher.attempts
    assert (record.outcome, record.error_class, record.attempt) == (
        "dropped",
        "endpoint_disabled",
        3,
    )
    assert record.event_ids == (event.event_id,) and record.status_code is None
    assert tracker.in_flight == 0  # settled: the offset may be committed past it


def _attempt(**changes) -> WebhookAttempt:
    fields = {
        "attempt_id": "0190-a", "delivery_id": "d1", "endpoint_id": "we_1",
        "tenant_id": "acme", "event_ids": ("e1",), "event_type": "claim.viewed",
        "attempt": 1, "attempted_at": datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        "trigger": "event", "status_code": 200, "latency_ms": 12.5, "outcome": "delivered",
        "error_class": None, "next_attempt_at": None,
    }  # fmt: skip
    fields.update(changes)
    return WebhookAttempt(**fields)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"latency_ms": None, "status_code": None, "error_class": "timeout"},
        {"latency_ms": 0.001, "status_code": 503, "outcome": "retry_scheduled",
         "error_class": "http_503", "trigger": "retry", "attempt": 7,
         "next_attempt_at": datetime(2027, 5, 6, tzinfo=UTC)},
        {"event_ids": ("e1", "e2", "é3" * 300), "trigger": "replay", "outcome": "failed"},
        {"event_ids": (), "latency_ms": 1e300, "outcome": "dropped", "trigger": "test"},
    ],
)  # fmt: skip
def test_the_generated_attempt_writer_writes_the_codecs_bytes(changes):
    codec = AvroCodec()
    attempt = _attempt(**changes)
    encoded = AttemptEncoder(codec)(attempt)
    assert encoded == codec.encode("WebhookAttempt", attempt.to_avro())
    assert WebhookAttempt.from_avro(codec.decode(encoded)[1]) == attempt


def test_an_attempt_the_generated_writer_cannot_write_gets_the_codecs_error():
    with pytest.raises(EncodeError, match="outcome"):
        AttemptEncoder(AvroCodec())(_attempt(outcome="lost"))


def test_writes_cancelled_before_they_started_leave_no_coroutine_and_nothing_settled():
    """The dispatcher stopping cancels a delivery's write task before its first step:
    no write coroutine is left unawaited (they are made inside the task), nothing is
    written and the record stays unsettled (delivered again after the restart)."""
    settings = Settings(topic_prefix="units")
    tracker, publisher = OffsetTracker(), _RecordingPublisher()
    tp = TopicPartition(settings.audit_topic, 0)
    tracker.assign([tp])
    ref = tracker.add(tp, 0)
    event = make_event("acme", 0)

    async def scenario() -> None:
        control = _LateControl()
        d = Dispatcher(settings, control, _NoClient(), publisher, tracker)  # type: ignore[arg-type]
        delivery = Delivery("we_1", "acme", event.event_id, [event], [b""], [ref])
        d._spawn(d._written(delivery, [functools.partial(publisher.publish_attempt, _attempt())]))
        await d.close()  # before the task ran a step

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        asyncio.run(scenario())
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
    assert publisher.attempts == [] and tracker.in_flight == 1

"""The pure parts of webhooks: retry schedule, secrets at rest, signing, the local receiver."""

from __future__ import annotations

import asyncio
import io
import random
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import standardwebhooks
import stripe

from velora.errors import AuthenticationError, ConfigError
from velora.settings import Secret, Settings, check_bind_secrets
from webhooks.endpoints import matches
from webhooks.receiver import receiver_app
from webhooks.schedule import next_delay, retry_after, tier_for
from webhooks.secrets import SecretBox, new_signing_secret
from webhooks.signing import signature_headers, verify_standard, verify_velora

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

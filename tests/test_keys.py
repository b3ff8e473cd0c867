"""``velora keys create|list|revoke|rotate`` and the key format/hash."""

from __future__ import annotations

import json
import re

import pytest

from cli.keys import create_key, parse_allow_ips, parse_scopes
from cli.main import main
from ledger.control import read_control
from query_api.tokens import KEY_LENGTH, TOKEN_RE, ParsedToken, hash_secret, parse_token
from velora.errors import ValidationError


@pytest.fixture
def cli(settings, monkeypatch, capsys):
    """Run the CLI in-process with the test's settings in the environment mapping."""
    env = {
        "VELORA_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "VELORA_TOPIC_PREFIX": settings.topic_prefix,
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_create_prints_the_key_once_on_the_last_line(cli, settings):
    code, out, _ = cli(
        "keys",
        "create",
        "--tenant",
        "acme",
        "--scopes",
        "audit:read,audit:export,webhooks:write",
        "--name",
        "SIEM",
    )
    assert code == 0
    lines = out.strip().splitlines()
    token = lines[-1]
    assert len(token) == KEY_LENGTH == 50
    assert TOKEN_RE.fullmatch(token)
    assert sum(token in line for line in lines) == 1
    parsed = parse_token(token)
    key_id, secret = parsed.key_id, parsed.secret
    assert parsed.environment == "live" and token.startswith("vlk_live_")
    stored = read_control(settings).api_keys[key_id]
    assert stored.tenant_id == "acme" and stored.name == "SIEM"
    assert stored.scopes == ("audit:read", "audit:export", "webhooks:write")
    assert stored.secret_hash == hash_secret(settings.key_pepper, secret)
    assert secret not in repr(stored)


def test_json_list_revoke_rotate(cli, settings):
    code, out, _ = cli("keys", "create", "--tenant", "acme", "--scopes", "audit:read", "--json")
    created = json.loads(out.strip().splitlines()[-1])
    assert created["key"].startswith(f"vlk_live_{created['key_id']}_")
    assert created["status"] == "active"
    cli("keys", "create", "--tenant", "other", "--scopes", "audit:read")

    code, out, _ = cli("keys", "list", "--tenant", "acme", "--json")
    listed = json.loads(out)
    assert [k["key_id"] for k in listed] == [created["key_id"]]
    assert "key" not in listed[0] and "secret_hash" not in listed[0]

    code, out, _ = cli("keys", "list", "--tenant", "acme")
    assert code == 0 and created["key_id"] in out and "vlk_live_" not in out
    assert out.splitlines()[0].startswith("KEY_ID")

    code, out, _ = cli("keys", "rotate", created["key_id"], "--json")
    rotated = json.loads(out)
    assert rotated["scopes"] == ["audit:read"] and rotated["key_id"] != created["key_id"]
    assert rotated["replaces"]["rotated_to"] == rotated["key_id"]
    assert rotated["replaces"]["status"] == "active"  # in its grace period
    assert rotated["replaces"]["expires_at"] is not None

    code, out, _ = cli("keys", "revoke", created["key_id"])
    assert code == 0 and "revoked" in out
    code, out, _ = cli("keys", "list", "--json")
    status = {k["key_id"]: k["status"] for k in json.loads(out)}
    assert status[created["key_id"]] == "revoked"
    assert status[rotated["key_id"]] == "active"
    assert "vlk_live_" not in out


def test_bad_input_is_a_clear_error(cli):
    code, _, err = cli("keys", "create", "--tenant", "acme", "--scopes", "audit:write")
    assert code == 2 and "audit:write" in err
    code, _, err = cli("keys", "create", "--tenant", "bad tenant!", "--scopes", "audit:read")
    assert code == 2 and "tenant" in err
    code, _, err = cli("keys", "revoke", "deadbeef")
    assert code == 2 and "no API key" in err


def test_key_format_helpers():
    assert parse_token("vlk_live_a3f7b921_c8e4d2f6109a4bc7e2f3859d1a4b0c92") == ParsedToken(
        "live", "a3f7b921", "c8e4d2f6109a4bc7e2f3859d1a4b0c92"
    )
    assert parse_token("vlk_test_a3f7b921_c8e4d2f6109a4bc7e2f3859d1a4b0c92") == ParsedToken(
        "staging", "a3f7b921", "c8e4d2f6109a4bc7e2f3859d1a4b0c92"
    )
    for bad in (
        "vlk_live_a3f7b921_c8e4",
        "vlk_prod_a3f7b921_c8e4d2f6109a4bc7e2f3859d1a4b0c92",
        "vlk_live_A3F7B921_c8e4d2f6109a4bc7e2f3859d1a4b0c92",
        "",
    ):
        assert parse_token(bad) is None
    assert parse_scopes("audit:read, audit:read,audit:export") == ("audit:read", "audit:export")
    with pytest.raises(ValidationError):
        parse_scopes("")
    assert re.fullmatch(
        "[0-9a-f]{64}",
        hash_secret(__import__("velora.settings").settings.Secret("pepper-pepper-pepper"), "x"),
    )


def test_staging_keys_and_allow_lists_are_stored(cli, settings):
    code, out, _ = cli(
        "keys", "create", "--tenant", "acme", "--scopes", "audit:read", "--environment",
        "staging", "--allow-ip", "203.0.113.0/24", "--allow-ip", "2001:db8::/48",
        "--allow-ip", "198.51.100.7", "--json",
    )  # fmt: skip
    assert code == 0
    created = json.loads(out.strip().splitlines()[-1])
    assert created["key"].startswith(f"vlk_test_{created['key_id']}_")
    assert len(created["key"]) == KEY_LENGTH
    assert created["environment"] == "staging"
    assert created["allowed_ips"] == ["203.0.113.0/24", "2001:db8::/48", "198.51.100.7/32"]
    stored = read_control(settings).api_keys[created["key_id"]]
    assert stored.environment == "staging"
    assert stored.allowed_ips == ("203.0.113.0/24", "2001:db8::/48", "198.51.100.7/32")
    # Without --environment a key gets the environment this process serves.
    staging = settings.with_overrides(environment="staging")
    assert create_key(staging, "acme", ("audit:read",)).token.startswith("vlk_test_")
    assert create_key(settings, "acme", ("audit:read",)).token.startswith("vlk_live_")


@pytest.mark.parametrize("cidr", ["203.0.113.5/24", "300.1.1.1/8", "not-an-ip", "10.0.0.0/33", ""])
def test_bad_allow_ip_is_a_clear_error(cli, cidr):
    code, out, err = cli(
        "keys", "create", "--tenant", "acme", "--scopes", "audit:read", "--allow-ip", cidr
    )
    assert code == 2 and "--allow-ip" in err and "vlk_" not in out
    with pytest.raises(ValidationError) as info:
        parse_allow_ips(["10.0.0.0/8", cidr])
    assert info.value.details[0].field == "allow_ip"


@pytest.mark.parametrize(
    "name",
    [
        "line\nbreak",
        "x" * 129,
        "tab\there",
        "bidi\u202eoverride",
        "zero\u200bwidth",
        "",
        "   ",
        "nul\x00",
    ],
)
def test_bad_key_names_are_refused_before_anything_is_written(cli, settings, name):
    """Issue 14 finding 4: a name the read auditor cannot record is never stored."""
    before = read_control(settings).api_keys
    code, out, err = cli("keys", "create", "--tenant", "acme", "--scopes", "audit:read",
                         "--name", name)  # fmt: skip
    assert code == 2
    assert "name" in err and "printable" in err
    assert "vlk_" not in out
    assert read_control(settings).api_keys == before


@pytest.mark.parametrize("name", ["acme SIEM", "x" * 128, "Équipe sécurité 🔒", "a/b:c (prod)"])
def test_good_key_names_are_kept(settings, name):
    issued = create_key(settings, "acme", ("audit:read",), name)
    assert read_control(settings).api_keys[issued.record.key_id].name == name

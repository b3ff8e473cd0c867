"""PHI modes: setting and showing them, refusing a change on a tenant with events,
client-mode end to end with the tokenizer CLI, rotation and cross-tenant refusal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cli.keys import create_key
from cli.tenants import rotate_phi_key, set_phi_mode, show, tenant_has_events
from ledger.control import read_control
from phi.keyset import Keyset
from phi.policy import PhiDirectory, TenantPhi
from phi.tokens import Tokenizer, is_token
from phi.wrap import KeysetWrapper
from schemas.events import PhiKeyset, TenantSettings
from tests.helpers import REPO, wait_for
from tests.phi_support import (
    PHI,
    api_list,
    phi_event,
    phi_settings,
    phi_stack,
    post_events,
    velora,
)
from velora.errors import Unavailable, ValidationError
from velora.settings import Secret

TOKENIZER = Path(sys.executable).with_name("velora-tokenizer")


def tokenizer(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VELORA_")}
    out = subprocess.run(
        [str(TOKENIZER), *args], input=stdin, capture_output=True, text=True, cwd=REPO,
        env=env, timeout=60, check=False,
    )  # fmt: skip
    return out


@pytest.fixture
def phi_env(kafka_bootstrap, tmp_path):
    return phi_settings(kafka_bootstrap, tmp_path)


def test_mode_change_is_refused_once_the_tenant_has_events_unless_forced(phi_env) -> None:
    s = phi_env
    assert show(s, "acme").phi_mode is None
    view = set_phi_mode(s, "acme", "client")  # no events yet: allowed
    assert view.phi_mode == "client" and view.key_ids == ()
    assert not tenant_has_events(s, "acme")
    with phi_stack(s) as (_node, ingest_url, control):
        wait_for(lambda: control.tenant_settings("acme") is not None, timeout=20)
        keyset = Tokenizer(Keyset.generate("acme"))
        event = phi_event("acme", 1)
        tokenized = tokenizer_event(keyset, event)
        assert post_events(ingest_url, [tokenized]).status_code == 200
    assert tenant_has_events(s, "acme") and not tenant_has_events(s, "globex")
    with pytest.raises(ValidationError, match="--force") as info:
        set_phi_mode(s, "acme", "server")
    assert "never rewrites history" in info.value.message
    assert show(s, "acme").phi_mode == "client"
    refused = velora(s, "tenants", "set-phi-mode", "acme", "sidecar")
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert set_phi_mode(s, "acme", "client", ("mrn",)).phi_metadata_keys == ("mrn",)  # same mode
    forced = set_phi_mode(s, "acme", "server", force=True)
    assert forced.phi_mode == "server" and len(forced.key_ids) == 1
    assert show(s, "acme").primary_kid == forced.key_ids[0]
    rotated = rotate_phi_key(s, "acme")
    assert len(rotated.key_ids) == 2 and rotated.primary_kid != forced.primary_kid
    shown = velora(s, "tenants", "show", "acme", "--json")
    data = json.loads(shown.stdout)
    assert data["phi_mode"] == "server" and data["phi_metadata_keys"] == ["mrn"]
    assert set(data["phi_key_ids"]) == set(rotated.key_ids)
    stored = read_control(s).phi_keysets["acme"]
    for key in KeysetWrapper(s.secrets_key).unwrap(stored.wrapped, "acme").to_json()["keys"]:
        assert key["key"] not in shown.stdout  # key ids only, never key material


def tokenizer_event(tok: Tokenizer, event: dict) -> dict:
    from phi.fields import map_event

    return map_event(event, lambda v, d, _p: tok.tokenize(v, d), ["mrn"])


def test_client_mode_end_to_end_with_the_cli(phi_env, tmp_path) -> None:
    s = phi_env
    set_phi_mode(s, "acme", "client", ("mrn",))
    set_phi_mode(s, "globex", "client", ("mrn",))
    keyset, other = tmp_path / "acme.json", tmp_path / "globex.json"
    assert tokenizer("keys", "generate", "--tenant", "acme", str(keyset)).returncode == 0
    assert tokenizer("keys", "generate", "--tenant", "globex", str(other)).returncode == 0

    def tokenize_events(events: list[dict]) -> list[dict]:
        out = tokenizer(
            "tokenize", "--keyset", str(keyset), "--events", "--metadata-key", "mrn",
            stdin="".join(json.dumps(e) + "\n" for e in events),
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines()]

    with phi_stack(s) as (node_url, ingest_url, control):
        wait_for(lambda: control.tenant_settings("globex") is not None, timeout=20)
        # a raw value in a PHI field is refused, naming the field
        raw = post_events(ingest_url, [phi_event("acme", 1)])
        assert raw.status_code == 422, raw.text
        fields = {d["field"] for d in raw.json()["error"]["details"]}
        assert {"actor.id", "actor.email", "targets[0].id", "metadata.mrn"} <= fields
        assert PHI["member_id"] not in raw.text and PHI["email"] not in raw.text
        first = tokenize_events([phi_event("acme", 1)])
        assert post_events(ingest_url, first).status_code == 200
        # rotation: the customer's key; new events use it, search-tokens covers both
        assert tokenizer("keys", "rotate", str(keyset)).returncode == 0
        second = tokenize_events([phi_event("acme", 2)])
        assert second[0]["actor"]["id"] != first[0]["actor"]["id"]
        assert post_events(ingest_url, second).status_code == 200
        api_key = create_key(s, "acme", ("audit:read",)).token
        events = wait_for(
            lambda: len(e := api_list(node_url, api_key)) >= 2 and e, timeout=60, what="events"
        )
        assert all(is_token(e["actor"]["id"]) and is_token(e["metadata"]["mrn"]) for e in events)
        # a filter takes a token; the tokens of every key find events under both keys
        one = api_list(node_url, api_key, actor_id=first[0]["actor"]["id"])
        assert [e["event_id"] for e in one] == [first[0]["event_id"]]
        search = tokenizer(
            "search-tokens", "--keyset", str(keyset), "--domain", "member_id", PHI["member_id"]
        )
        both = api_list(node_url, api_key, actor_id=",".join(search.stdout.split()))
        assert len(both) == 2
        assert api_list(node_url, api_key, actor_id=PHI["member_id"]) == []  # plain: no match
        # the answer detokenizes with the customer's keyset, and only with it
        answer = "".join(json.dumps(e) + "\n" for e in both)
        back = tokenizer(
            "detokenize", "--keyset", str(keyset), "--events", "--metadata-key", "mrn",
            stdin=answer,
        )  # fmt: skip
        assert back.returncode == 0, back.stderr
        plain = [json.loads(line) for line in back.stdout.splitlines()]
        assert {p["actor"]["email"] for p in plain} == {PHI["email"]}
        assert {p["metadata"]["mrn"] for p in plain} == {PHI["mrn"]}
        refused = tokenizer(
            "detokenize", "--keyset", str(other), "--events", "--metadata-key", "mrn",
            stdin=answer,
        )  # fmt: skip
        assert refused.returncode == 1 and refused.stdout == ""
        assert "key id is not in this keyset" in refused.stderr
        assert PHI["email"] not in refused.stderr


def test_the_same_value_gives_other_tokens_in_other_tenants_and_domains() -> None:
    acme, globex = Tokenizer(Keyset.generate("acme")), Tokenizer(Keyset.generate("globex"))
    assert acme.tokenize("M-1", "member_id") != globex.tokenize("M-1", "member_id")
    with pytest.raises(ValidationError):
        globex.detokenize(acme.tokenize("M-1", "member_id"), "member_id")


def test_server_mode_fails_closed_without_its_keyset_and_before_loading() -> None:
    record = {"tenant_id": "acme", "actor": {"type": "member", "id": "M-1"}, "targets": []}
    with pytest.raises(Unavailable, match="rather than written in plaintext"):
        TenantPhi("acme", "server").protect(record)
    now = datetime.now(UTC)
    wrapper = KeysetWrapper(Secret("phi-unit-secrets-key-0123"))
    settings = {"acme": TenantSettings("acme", now, "server")}
    loading = PhiDirectory(settings.get, lambda t: None, wrapper, ready=lambda: False)
    with pytest.raises(Unavailable, match="loading"):
        loading.tenant("acme")
    keyset = Keyset.generate("acme")
    keysets = {"acme": PhiKeyset("acme", wrapper.wrap(keyset), keyset.primary.kid, now)}
    directory = PhiDirectory(settings.get, keysets.get, wrapper)
    policy = directory.tenant("acme")
    assert directory.tenant("acme") is policy  # cached until a record changes
    out = policy.protect(record)
    assert is_token(out["actor"]["id"]) and record["actor"]["id"] == "M-1"
    assert policy.reveal(out)["actor"]["id"] == "M-1"
    assert directory.tenant("nobody").mode is None
    values = policy.id_filter_values("target_id", "P-1")
    assert values[0] == "P-1" and len(values) == 4  # member, patient, claim id domains
    # a server-mode record whose keyset does not unwrap: no plaintext is written
    bad = {"acme": PhiKeyset("acme", "v1.AAAA", "00000000", now)}
    with pytest.raises(Exception, match="VELORA_SECRETS_KEY"):
        PhiDirectory(settings.get, bad.get, wrapper).tenant("acme")

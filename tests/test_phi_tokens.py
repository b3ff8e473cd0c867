"""The PHI tokenizer library: AES-SIV tokens, keyset files, rotation, wrapping, the field map."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import unicodedata

import pytest

from phi.fields import ACTOR_RULES, TARGET_RULES, map_event
from phi.keyset import KEY_BYTES, Keyset, load_keyset, save_keyset
from phi.tokens import TOKEN_RE, Tokenizer, is_token, normalize
from phi.wrap import KeysetWrapper
from schemas.codec import AvroCodec
from tests.helpers import REPO
from velora.errors import ConfigError, ValidationError
from velora.settings import Secret


@pytest.fixture(scope="module")
def acme() -> Tokenizer:
    return Tokenizer(Keyset.generate("acme"))


def test_tokens_are_deterministic_siv_with_512_bit_keys_and_round_trip(acme: Tokenizer) -> None:
    assert len(acme.keyset.primary.key) == KEY_BYTES == 64
    token = acme.tokenize("Jane Q. Public", "name")
    assert token == acme.tokenize("Jane Q. Public", "name")
    assert TOKEN_RE.fullmatch(token) and token.startswith(f"tok_v1_{acme.keyset.primary.kid}_")
    assert "Jane" not in token
    assert acme.detokenize(token, "name") == "Jane Q. Public"


def test_values_are_normalized_per_domain(acme: Tokenizer) -> None:
    decomposed = unicodedata.normalize("NFD", "  José ")
    assert acme.tokenize(decomposed, "name") == acme.tokenize("José", "name")
    lower = acme.tokenize("jane@example.com", "email")
    assert acme.tokenize(" Jane@Example.COM ", "email") == lower
    assert acme.tokenize("Jane", "name") != acme.tokenize("jane", "name")  # only emails fold case
    assert normalize(" A@B.C ", "email") == "a@b.c"


def test_tenant_and_domain_are_bound_in_the_associated_data(acme: Tokenizer) -> None:
    other = Tokenizer(Keyset.generate("globex"))
    token = acme.tokenize("M-1001", "member_id")
    assert other.tokenize("M-1001", "member_id") != token
    assert acme.tokenize("M-1001", "patient_id") != token
    # a keyset with the same key material but another tenant still refuses the token
    forged = Tokenizer(Keyset("globex", acme.keyset.keys))
    for tok, domain in ((other, "member_id"), (forged, "member_id"), (acme, "patient_id")):
        with pytest.raises(ValidationError) as info:
            tok.detokenize(token, domain)
        assert "does not decrypt" in info.value.message or "key id" in info.value.message
        assert "M-1001" not in str(info.value)


@pytest.mark.parametrize(
    "bad",
    ["M-1001", "tok_v1_zzzz_abc", "tok_v2_0a1b2c3d_" + "A" * 30, "tok_v1_0a1b2c3d_short"],
)
def test_malformed_tokens_are_refused_without_echo(acme: Tokenizer, bad: str) -> None:
    with pytest.raises(ValidationError) as info:
        acme.detokenize(bad, "member_id", "actor.id")
    assert info.value.details[0].field == "actor.id"
    assert bad not in info.value.message


def test_an_edited_key_id_or_body_does_not_open(acme: Tokenizer) -> None:
    rotated = Tokenizer(acme.keyset.rotate())
    token = rotated.tokenize("x", "name")
    old_kid = acme.keyset.primary.kid
    swapped = token.replace(rotated.keyset.primary.kid, old_kid, 1)
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    for bad in (swapped, flipped):
        with pytest.raises(ValidationError):
            rotated.detokenize(bad, "name")


def test_rotation_keeps_old_tokens_and_search_fans_out(acme: Tokenizer) -> None:
    old = acme.tokenize("P-77", "patient_id")
    rotated = Tokenizer(acme.keyset.rotate())
    assert rotated.keyset.primary.kid != acme.keyset.primary.kid
    assert [k.status for k in rotated.keyset.keys] == ["primary", "decrypt"]
    new = rotated.tokenize("P-77", "patient_id")
    assert new != old and new.startswith(f"tok_v1_{rotated.keyset.primary.kid}_")
    assert rotated.detokenize(old, "patient_id") == rotated.detokenize(new, "patient_id") == "P-77"
    assert rotated.search_tokens("P-77", "patient_id") == [new, old]


def test_keyset_files_are_0600_and_group_readable_ones_are_refused(tmp_path) -> None:
    path = tmp_path / "acme.json"
    keyset = Keyset.generate("acme")
    save_keyset(keyset, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_keyset(path).to_json() == keyset.to_json()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        save_keyset(keyset, path)
    os.chmod(path, 0o640)
    with pytest.raises(ConfigError, match="chmod 600") as info:
        load_keyset(path)
    assert keyset.to_json()["keys"][0]["key"] not in str(info.value)
    assert "key=" not in repr(keyset) and keyset.to_json()["keys"][0]["key"] not in repr(keyset)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda d: d.update(format="x"), "not a Velora PHI keyset"),
        (lambda d: d["keys"][0].update(key="AAAA"), "512 bits"),
        (lambda d: d["keys"][0].update(status="decrypt"), "exactly one primary"),
        (lambda d: d.update(primary="00000000"), "'primary'"),
    ],
)
def test_broken_keysets_are_refused_by_name(tmp_path, edit, problem) -> None:
    data = Keyset.generate("acme").to_json()
    edit(data)
    with pytest.raises(ConfigError, match=problem):
        Keyset.from_json(data)


def test_wrapped_keysets_open_only_with_the_same_secrets_key_and_tenant() -> None:
    keyset = Keyset.generate("acme")
    wrapper = KeysetWrapper(Secret("operator-secrets-key-1"))
    text = wrapper.wrap(keyset)
    assert keyset.to_json()["keys"][0]["key"] not in text
    assert wrapper.unwrap(text, "acme").to_json() == keyset.to_json()
    with pytest.raises(ConfigError, match="VELORA_SECRETS_KEY"):
        KeysetWrapper(Secret("another-secrets-key")).unwrap(text, "acme")
    with pytest.raises(ConfigError):
        wrapper.unwrap(text, "globex")


def _schema_rules() -> dict[str, dict[str, dict[str, str]]]:
    raw = AvroCodec().registry.latest("AuditEvent").raw
    out: dict[str, dict[str, dict[str, str]]] = {}
    for f in raw["fields"]:
        record = f["type"]["items"] if f["name"] == "targets" else f["type"]
        if f["name"] in ("actor", "targets"):
            for sub in record["fields"]:
                if "phi" in sub:
                    assert sub["phi"]["when"] == "type"
                    out.setdefault(f["name"], {})[sub["name"]] = sub["phi"]["domains"]
        else:
            assert "phi" not in f
    return out


def test_the_field_map_mirrors_the_schema_declarations() -> None:
    assert _schema_rules() == {"actor": ACTOR_RULES, "targets": TARGET_RULES}


def test_map_event_touches_only_phi_fields(acme: Tokenizer) -> None:
    event = {
        "actor": {"type": "member", "id": "M-1", "name": "Ann", "email": "a@x.io", "ip": "1.2.3.4"},
        "targets": [
            {"type": "patient", "id": "P-1", "name": "Bob"},
            {"type": "document", "id": "D-1", "name": "Scan"},
            {"type": "claim", "id": "C-1", "name": None},
        ],
        "metadata": {"mrn": "123", "ward": "4"},
        "outcome": {"reason": "free text"},
    }
    seen: list[tuple[str, str]] = []
    out = map_event(event, lambda v, d, p: seen.append((p, d)) or "T", ["mrn"])
    assert sorted(seen) == sorted(
        [
            ("actor.id", "member_id"),
            ("actor.name", "name"),
            ("actor.email", "email"),
            ("targets[0].id", "patient_id"),
            ("targets[0].name", "name"),
            ("targets[2].id", "claim_id"),
            ("metadata.mrn", "metadata"),
        ]
    )
    assert out["targets"][1] == event["targets"][1] and out["actor"]["ip"] == "1.2.3.4"
    assert out["metadata"] == {"mrn": "T", "ward": "4"} and event["metadata"]["mrn"] == "123"
    service = {"actor": {"type": "service", "id": "svc", "name": "billing"}, "targets": []}
    assert map_event(service, lambda v, d, p: "T") == service
    assert is_token(acme.tokenize("x", "name")) and not is_token("x")


def test_the_tokenizer_imports_only_cryptography_and_the_stdlib() -> None:
    probe = (
        "import sys, phi.cli, phi.tokens, phi.keyset, phi.fields, phi.paths\n"
        "import json; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    loaded = set(json.loads(out.stdout))
    project = {"velora", "schemas", "ingest", "ledger", "webhooks", "query_api", "cli", "phi"}
    third_party = {m for m in loaded - set(sys.stdlib_module_names) if not m.startswith("_")}
    assert third_party - project <= {"cryptography"}, third_party
    assert loaded & project == {"phi", "velora"}
    assert not {"kafka", "fastavro", "duckdb", "starlette", "httpx", "uvicorn"} & loaded

"""``velora-tokenizer`` and ``velora tokenizer``: keys, tokenize, detokenize, search, failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

SCRIPT = Path(sys.executable).with_name("velora-tokenizer")


def tokenizer(*args: str, stdin: str = "", via_velora: bool = False) -> subprocess.CompletedProcess:
    cmd = (
        [sys.executable, "-m", "cli.main", "tokenizer", *args]
        if via_velora
        else [str(SCRIPT), *args]
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("VELORA_")}
    return subprocess.run(
        cmd, input=stdin, capture_output=True, text=True, cwd=REPO, env=env, timeout=60
    )


@pytest.fixture
def keyset(tmp_path) -> Path:
    path = tmp_path / "acme.json"
    out = tokenizer("keys", "generate", "--tenant", "acme", str(path))
    assert out.returncode == 0, out.stderr
    return path


def test_one_value_round_trips_and_search_covers_every_key_after_rotation(keyset) -> None:
    tok = tokenizer("tokenize", "--keyset", str(keyset), "--domain", "email", " Ann@X.io ")
    assert tok.returncode == 0, tok.stderr
    token = tok.stdout.strip()
    # the value is not in the token ('@' is not base64url; a random 'ann' may well be)
    assert token.startswith("tok_v1_") and "ann@x.io" not in token.lower()
    back = tokenizer("detokenize", "--keyset", str(keyset), "--domain", "email", token)
    assert back.stdout == "ann@x.io\n"
    assert tokenizer("keys", "rotate", str(keyset)).returncode == 0
    fresh = tokenizer("tokenize", "--keyset", str(keyset), "--domain", "email", "ann@x.io")
    assert fresh.stdout.strip() != token
    search = tokenizer(
        "search-tokens", "--keyset", str(keyset), "--domain", "email", "ann@x.io", via_velora=True
    )
    assert search.returncode == 0, search.stderr
    assert search.stdout.split() == [fresh.stdout.strip(), token]
    old = tokenizer("detokenize", "--keyset", str(keyset), "--domain", "email", token)
    assert old.stdout == "ann@x.io\n"


def test_ndjson_by_field_paths_and_by_the_event_map(keyset) -> None:
    docs = [
        {"actor": {"type": "member", "id": "M-1", "email": "a@x.io"}, "n": 1,
         "targets": [{"type": "patient", "id": "P-1", "name": "Bob"}], "metadata": {"mrn": "9"}},
        {"actor": {"type": "service", "id": "svc"}, "n": 2, "targets": []},
    ]  # fmt: skip
    text = "".join(json.dumps(d) + "\n" for d in docs)
    by_path = tokenizer(
        "tokenize", "--keyset", str(keyset), "--field", "targets[].id=patient_id",
        "--field", "actor.email=email", "--progress", stdin=text,
    )  # fmt: skip
    assert by_path.returncode == 0, by_path.stderr
    rows = [json.loads(line) for line in by_path.stdout.splitlines()]
    assert rows[0]["targets"][0]["id"].startswith("tok_v1_")
    assert rows[0]["targets"][0]["name"] == "Bob"  # not a listed path
    assert rows[0]["actor"]["id"] == "M-1"
    assert "records" in by_path.stderr  # the progress line
    events = tokenizer(
        "tokenize", "--keyset", str(keyset), "--events", "--metadata-key", "mrn", stdin=text
    )
    tokenized = [json.loads(line) for line in events.stdout.splitlines()]
    first = tokenized[0]
    assert all(v.startswith("tok_v1_") for v in
               (first["actor"]["id"], first["actor"]["email"], first["targets"][0]["name"],
                first["metadata"]["mrn"]))  # fmt: skip
    assert tokenized[1] == docs[1]
    back = tokenizer(
        "detokenize", "--keyset", str(keyset), "--events", "--metadata-key", "mrn",
        stdin=events.stdout,
    )  # fmt: skip
    assert [json.loads(line) for line in back.stdout.splitlines()] == docs
    whole = tokenizer(
        "tokenize", "--keyset", str(keyset), "--format", "json", "--events", stdin=json.dumps(docs)
    )
    assert json.loads(whole.stdout)[0]["actor"]["email"] == first["actor"]["email"]


def test_failures_exit_nonzero_and_print_no_plaintext(keyset, tmp_path) -> None:
    other = tmp_path / "globex.json"
    tokenizer("keys", "generate", "--tenant", "globex", str(other))
    token = tokenizer("tokenize", "--keyset", str(keyset), "--domain", "name", "Zelda Q").stdout
    token = token.strip()
    for args in (
        ("--keyset", str(other), "--domain", "name", token),  # another tenant's keyset
        ("--keyset", str(keyset), "--domain", "email", token),  # another domain
        ("--keyset", str(keyset), "--domain", "name", "tok_v1_nothex_x"),  # malformed
    ):
        out = tokenizer("detokenize", *args)
        assert out.returncode == 1 and out.stdout == ""
        assert out.stderr.startswith("velora-tokenizer: error: ") and "Zelda" not in out.stderr
    good = json.dumps({"n": 3})
    stream = "\n".join(
        [
            json.dumps({"targets": [{"type": "member", "name": token}]}),
            json.dumps({"targets": [{"type": "member", "name": token}, {"type": "claim",
                        "name": "tok_v1_0a0a0a0a_AAAAAAAAAAAAAAAAAAAAAAAA"}]}),
            good,
        ]
    )  # fmt: skip
    out = tokenizer("detokenize", "--keyset", str(keyset), "--events", stdin=stream)
    assert out.returncode == 1
    assert out.stdout.count("\n") == 1 and out.stdout.count("Zelda Q") == 1  # only line 1
    assert "line 2: targets[1].name" in out.stderr and "Zelda" not in out.stderr
    os.chmod(keyset, 0o644)
    loose = tokenizer("tokenize", "--keyset", str(keyset), "--domain", "name", "x")
    assert loose.returncode == 1 and "chmod 600" in loose.stderr
    usage = tokenizer("tokenize", "--keyset", str(other), "x")
    assert usage.returncode == 1 and "--domain" in usage.stderr

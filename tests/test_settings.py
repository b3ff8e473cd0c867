"""One frozen settings object from ``VELORA_*`` variables, validated at start.

Every variable in ``ENV_VARS`` has a good and a bad value here (a new variable
fails ``test_every_variable_is_covered`` until it is added). A bad value raises
:class:`ConfigError` naming the variable; secrets never show in ``repr``, ``str``
or error messages.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from velora.errors import ConfigError
from velora.settings import (
    ENV_VARS,
    Secret,
    ServiceToken,
    Settings,
    check_bind_secrets,
    dev_secrets,
)

PEPPER = "pepper-0123456789-abcdef"
CURSOR = "cursor-0123456789-abcdef"
TOKEN_A = "token-a-0123456789abcdef"
TOKEN_B = "token-b-0123456789abcdef"
SECRETS = (PEPPER, CURSOR, TOKEN_A, TOKEN_B)

# variable: (raw value, the parsed value it must give)
GOOD: dict[str, tuple[str, Any]] = {
    "VELORA_KAFKA_BOOTSTRAP": ("10.0.0.1:9092, kafka-2:19092", "10.0.0.1:9092, kafka-2:19092"),
    "VELORA_TOPIC_PREFIX": ("acme.prod-1", "acme.prod-1"),
    "VELORA_AUDIT_PARTITIONS": (" 12 ", 12),
    "VELORA_STATE_DIR": ("/srv/velora", Path("/srv/velora")),
    "VELORA_DUCKDB_PATH": ("/srv/velora/ledger.duckdb", Path("/srv/velora/ledger.duckdb")),
    "VELORA_CACHE_DIR": ("~/.cache/velora", Path("~/.cache/velora")),
    "VELORA_KAFKA_VERSION": ("4.1.0", "4.1.0"),
    "VELORA_BROKER_PORT": ("0", 0),
    "VELORA_CONTROLLER_PORT": ("19093", 19093),
    "VELORA_BROKER_HEAP_MB": ("1024", 1024),
    "VELORA_NODE_HOST": ("0.0.0.0", "0.0.0.0"),
    "VELORA_NODE_PORT": ("18080", 18080),
    "VELORA_INGEST_HOST": ("::1", "::1"),
    "VELORA_INGEST_PORT": ("18081", 18081),
    "VELORA_INGEST_TOKENS": (f"{TOKEN_A}, {TOKEN_B},", (Secret(TOKEN_A), Secret(TOKEN_B))),
    "VELORA_KEY_PEPPER": (PEPPER, Secret(PEPPER)),
    "VELORA_KEY_PEPPERS": (
        f"p2:{PEPPER}-2, p1:{PEPPER}",
        (("p2", Secret(f"{PEPPER}-2")), ("p1", Secret(PEPPER))),
    ),
    "VELORA_CURSOR_SECRET": (CURSOR, Secret(CURSOR)),
    "VELORA_ENVIRONMENT": ("Staging", "staging"),
    "VELORA_TRUSTED_PROXIES": (
        "10.0.0.0/8, 192.0.2.7,2001:db8::/32",
        ("10.0.0.0/8", "192.0.2.7/32", "2001:db8::/32"),
    ),
    "VELORA_RATE_LIMIT_PER_SECOND": ("2.5", 2.5),
    "VELORA_RATE_LIMIT_BURST": ("50", 50),
    "VELORA_AUTH_FAILURE_LIMIT": ("5", 5),
    "VELORA_KEY_ROTATION_GRACE_SECONDS": ("0", 0),
    "VELORA_CONTROL_MAX_STALENESS_S": ("15", 15),
    "VELORA_READ_AUDIT": ("best_effort", "best_effort"),
    "VELORA_MATERIALIZER_MAX_BATCH": ("20000", 20000),
    "VELORA_LOG_LEVEL": ("debug", "DEBUG"),
    "VELORA_PUBLIC_BASE_URL": ("HTTPS://API.Example.com:8443/", "https://api.example.com:8443"),
    "VELORA_HTTP_MAX_HEADER_BYTES": ("32768", 32768),
    "VELORA_HTTP_MAX_URL_BYTES": ("4096", 4096),
    "VELORA_HTTP_HEADER_TIMEOUT_S": ("2.5", 2.5),
    "VELORA_HTTP_BODY_TIMEOUT_S": ("60", 60.0),
    "VELORA_HTTP_KEEPALIVE_TIMEOUT_S": ("0.5", 0.5),
    "VELORA_HTTP_REQUEST_DEADLINE_S": ("30", 30.0),
    "VELORA_HTTP_LIMIT_CONCURRENCY": ("200", 200),
    "VELORA_HTTP_BACKLOG": ("128", 128),
    "VELORA_INGEST_MEMORY_BUDGET_MB": ("64", 64),
    "VELORA_DUCKDB_MEMORY_LIMIT_MB": ("512", 512),
    "VELORA_HEAD_EVENTS": ("0", 0),
    "VELORA_HEAD_TENANTS": ("1000", 1000),
    "VELORA_HEAD_ACTIONS": ("0", 0),
    "VELORA_HEAD_IDS": ("64", 64),
    "VELORA_PAGE_BODIES": ("true", True),
    "VELORA_WARM_COPIES": ("false", False),
    "VELORA_EXPORT_MAX_STREAMS": ("8", 8),
    "VELORA_EXPORT_MAX_JOBS": ("1", 1),
    "VELORA_EXPORT_LINK_TTL_SECONDS": ("60", 60),
    "VELORA_EXPORT_RETENTION_SECONDS": ("3600", 3600),
    "VELORA_SECRETS_KEY": ("s" * 32, Secret("s" * 32)),
    "VELORA_WEBHOOKS_ALLOW_INSECURE_LOOPBACK": ("1", True),
    "VELORA_WEBHOOKS_RETRY_SCHEDULE": ("0.2, 0.5,0.5", (0.2, 0.5, 0.5)),
    "VELORA_WEBHOOKS_TIMEOUT_S": ("2.5", 2.5),
    "VELORA_WEBHOOKS_CONCURRENCY": ("4", 4),
    "VELORA_WEBHOOKS_RATE_PER_SECOND": ("0", 0.0),
    "VELORA_WEBHOOKS_ROTATION_OVERLAP_S": ("60", 60),
    "VELORA_WEBHOOKS_DISABLE_AFTER_S": ("3", 3),
    "VELORA_WEBHOOKS_BATCH_MAX_EVENTS": ("10", 10),
    "VELORA_WEBHOOKS_BATCH_MAX_WAIT_MS": ("50", 50),
    "VELORA_WEBHOOKS_SESSION_TIMEOUT_MS": ("6000", 6000),
    "VELORA_DISPATCHER_HOST": ("0.0.0.0", "0.0.0.0"),
    "VELORA_DISPATCHER_PORT": ("0", 0),
    "VELORA_SIDECAR_HOST": ("0.0.0.0", "0.0.0.0"),
    "VELORA_SIDECAR_PORT": ("0", 0),
    "VELORA_SIDECAR_UPSTREAM": ("https://audit.velora.example", "https://audit.velora.example"),
    "VELORA_SIDECAR_KEYSET": ("/etc/velora/acme.json", Path("/etc/velora/acme.json")),
    "VELORA_SIDECAR_METADATA_KEYS": ("mrn, dob", ("mrn", "dob")),
    "VELORA_SIDECAR_VELORA_SECRET": ("whsec_" + "v" * 32, Secret("whsec_" + "v" * 32)),
    "VELORA_SIDECAR_RELAY_SECRET": ("whsec_" + "r" * 32, Secret("whsec_" + "r" * 32)),
    "VELORA_SIDECAR_SIEM_URL": ("https://siem.internal/hec", "https://siem.internal/hec"),
}

# variable: bad raw values, each of which must be rejected
BAD: dict[str, tuple[str, ...]] = {
    "VELORA_KAFKA_BOOTSTRAP": ("", "localhost", "host:port", ":9092", "h:0", "h:65536"),
    "VELORA_TOPIC_PREFIX": ("", "a b", "a/b", "x" * 201),
    "VELORA_AUDIT_PARTITIONS": ("0", "-1", "1001", "six", "6.0"),
    "VELORA_STATE_DIR": ("",),
    "VELORA_DUCKDB_PATH": ("",),
    "VELORA_CACHE_DIR": ("",),
    "VELORA_KAFKA_VERSION": ("latest", "4.0", "4.0.x", ""),
    "VELORA_BROKER_PORT": ("-1", "65536", "http"),
    "VELORA_CONTROLLER_PORT": ("70000", "x"),
    "VELORA_BROKER_HEAP_MB": ("64", "100000", "1g"),
    "VELORA_NODE_HOST": ("", "my host"),
    "VELORA_NODE_PORT": ("65536", "eighty"),
    "VELORA_INGEST_HOST": ("a\tb",),
    "VELORA_INGEST_PORT": ("-5",),
    "VELORA_INGEST_TOKENS": ("short", f"{TOKEN_A},tooshort"),
    "VELORA_KEY_PEPPER": ("tooshort", ""),
    "VELORA_KEY_PEPPERS": (
        f"{PEPPER}",  # no id
        "p1:tooshort",
        f"p1:{PEPPER},p1:{PEPPER}-2",  # duplicate id
        f"bad id:{PEPPER}",
    ),
    "VELORA_CURSOR_SECRET": ("123",),
    "VELORA_ENVIRONMENT": ("prod", "test", ""),
    "VELORA_TRUSTED_PROXIES": ("*", "10.0.0.1/8", "localhost", "10.0.0.0/33"),
    "VELORA_RATE_LIMIT_PER_SECOND": ("0", "nan", "inf", "fast"),
    "VELORA_RATE_LIMIT_BURST": ("0", "1.5"),
    "VELORA_AUTH_FAILURE_LIMIT": ("0",),
    "VELORA_KEY_ROTATION_GRACE_SECONDS": ("-1", str(91 * 86_400)),
    "VELORA_CONTROL_MAX_STALENESS_S": ("0", "1.5", "86401"),
    "VELORA_READ_AUDIT": ("off", "optional", ""),
    "VELORA_MATERIALIZER_MAX_BATCH": ("0", "100001"),
    "VELORA_LOG_LEVEL": ("trace", "verbose", ""),
    "VELORA_PUBLIC_BASE_URL": (
        "api.example.com",
        "ftp://api.example.com",
        "https://user:pw@api.example.com",
        "https://api.example.com/v2",
        "https://api.example.com?x=1",
        "https://api.example.com#top",
        "https://api example.com",
        "https://api.example.com:99999",
        "https://" + "a" * 300 + ".com",
        "https://[::1",
    ),
    "VELORA_HTTP_MAX_HEADER_BYTES": ("512", str(2 * 1024 * 1024), "16k"),
    "VELORA_HTTP_MAX_URL_BYTES": ("100", "8kb"),
    "VELORA_HTTP_HEADER_TIMEOUT_S": ("0", "-1", "nan", "601"),
    "VELORA_HTTP_BODY_TIMEOUT_S": ("0", "inf"),
    "VELORA_HTTP_KEEPALIVE_TIMEOUT_S": ("0", "forever"),
    "VELORA_HTTP_REQUEST_DEADLINE_S": ("0", "1h"),
    "VELORA_HTTP_LIMIT_CONCURRENCY": ("0", "100001"),
    "VELORA_HTTP_BACKLOG": ("0", "70000"),
    "VELORA_INGEST_MEMORY_BUDGET_MB": ("4", "1.5", "lots"),
    "VELORA_DUCKDB_MEMORY_LIMIT_MB": ("63", "-1", "1GB", "1048577"),
    "VELORA_HEAD_EVENTS": ("-1", "10001", "many"),
    "VELORA_HEAD_TENANTS": ("0", "100001"),
    "VELORA_HEAD_ACTIONS": ("-1", "100001", "all"),
    "VELORA_HEAD_IDS": ("-1", "100001", "some"),
    "VELORA_PAGE_BODIES": ("maybe", "2"),
    "VELORA_WARM_COPIES": ("maybe", "2"),
    "VELORA_EXPORT_MAX_STREAMS": ("0", "65"),
    "VELORA_EXPORT_MAX_JOBS": ("0", "two"),
    "VELORA_EXPORT_LINK_TTL_SECONDS": ("9", str(8 * 86_400)),
    "VELORA_EXPORT_RETENTION_SECONDS": ("59", "1.5"),
    "VELORA_SECRETS_KEY": ("short",),
    "VELORA_WEBHOOKS_ALLOW_INSECURE_LOOPBACK": ("maybe", "2"),
    "VELORA_WEBHOOKS_RETRY_SCHEDULE": ("", "5,x", "300,5", "0", "1e9", ",".join(["1"] * 21)),
    "VELORA_WEBHOOKS_TIMEOUT_S": ("0", "121", "nan"),
    "VELORA_WEBHOOKS_CONCURRENCY": ("0", "257"),
    "VELORA_WEBHOOKS_RATE_PER_SECOND": ("-1", "nan"),
    "VELORA_WEBHOOKS_ROTATION_OVERLAP_S": ("-1",),
    "VELORA_WEBHOOKS_DISABLE_AFTER_S": ("0",),
    "VELORA_WEBHOOKS_BATCH_MAX_EVENTS": ("0", "10001"),
    "VELORA_WEBHOOKS_BATCH_MAX_WAIT_MS": ("0",),
    "VELORA_WEBHOOKS_SESSION_TIMEOUT_MS": ("5999", "300001"),
    "VELORA_DISPATCHER_HOST": ("a b",),
    "VELORA_DISPATCHER_PORT": ("65536",),
    "VELORA_SIDECAR_HOST": ("a b",),
    "VELORA_SIDECAR_PORT": ("65536",),
    "VELORA_SIDECAR_UPSTREAM": ("ftp://x", "not a url"),
    "VELORA_SIDECAR_KEYSET": ("",),
    "VELORA_SIDECAR_METADATA_KEYS": ("a b", "x" * 41),
    "VELORA_SIDECAR_VELORA_SECRET": ("short",),
    "VELORA_SIDECAR_RELAY_SECRET": ("short",),
    "VELORA_SIDECAR_SIEM_URL": ("ftp://siem", "siem.internal"),
}

SECRET_VARS = {
    "VELORA_INGEST_TOKENS",
    "VELORA_KEY_PEPPER",
    "VELORA_KEY_PEPPERS",
    "VELORA_CURSOR_SECRET",
    "VELORA_SECRETS_KEY",
    "VELORA_SIDECAR_VELORA_SECRET",
    "VELORA_SIDECAR_RELAY_SECRET",
}


def test_every_variable_is_covered():
    assert set(GOOD) == set(ENV_VARS) == set(BAD)


def test_every_variable_names_a_settings_field():
    names = {f.name for f in dataclasses.fields(Settings)}
    assert {name for name, _parse in ENV_VARS.values()} == names


def test_defaults_without_environment():
    s = Settings.from_env({})
    assert s == Settings()
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.audit_partitions == 6
    assert s.kafka_version == "4.0.2"
    assert (s.broker_port, s.controller_port) == (9092, 9093)
    assert s.audit_topic == "velora.audit.v1"
    assert s.control_topic == "velora.control.v1"
    assert s.ingest_tokens == ()
    assert s.key_pepper and s.cursor_secret  # development values, never empty


@pytest.mark.parametrize("var", sorted(GOOD))
def test_each_variable_parses(var):
    raw, expected = GOOD[var]
    name, _parse = ENV_VARS[var]
    assert getattr(Settings.from_env({var: raw}), name) == expected


def test_all_variables_at_once():
    env = {var: raw for var, (raw, _) in GOOD.items()}
    s = Settings.from_env(env)
    for var, (_raw, expected) in GOOD.items():
        assert getattr(s, ENV_VARS[var][0]) == expected, var


@pytest.mark.parametrize(("var", "raw"), [(v, r) for v, raws in BAD.items() for r in raws])
def test_bad_value_is_a_config_error_naming_the_variable(var, raw):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({var: raw})
    message = str(info.value)
    assert message.startswith(f"{var}=")
    assert "is invalid: " in message and len(message.split("is invalid: ")[1]) > 5
    assert info.value.__cause__ is None and info.value.__suppress_context__
    if var in SECRET_VARS:
        assert "<redacted>" in message
        for part in raw.replace(":", ",").split(","):
            assert len(part) < 4 or part not in message


def test_unknown_velora_variable_is_rejected():
    with pytest.raises(ConfigError, match="unknown setting VELORA_KAFKA_BOOSTRAP"):
        Settings.from_env({"VELORA_KAFKA_BOOSTRAP": "h:1"})


def test_unknown_variable_error_does_not_echo_its_value():
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"VELORA_KEY_PEPER": PEPPER})
    assert PEPPER not in str(info.value)


def test_other_variables_are_ignored():
    env = {"PATH": "/bin", "KAFKA_BOOTSTRAP": "x", "VELORA_TEST_KAFKA_BOOTSTRAP": "h:1"}
    assert Settings.from_env(env) == Settings()


@pytest.mark.parametrize(
    ("env", "words"),
    [
        (
            {"VELORA_BROKER_PORT": "9500", "VELORA_CONTROLLER_PORT": "9500"},
            "VELORA_BROKER_PORT and VELORA_CONTROLLER_PORT are both 9500",
        ),
        ({"VELORA_NODE_PORT": "8081"}, "VELORA_NODE_PORT and VELORA_INGEST_PORT are both 8081"),
        (
            {"VELORA_NODE_HOST": "0.0.0.0", "VELORA_NODE_PORT": "8081"},
            "are both 8081",
        ),
    ],
)
def test_listeners_sharing_a_fixed_port_are_rejected(env, words):
    with pytest.raises(ConfigError, match=words):
        Settings.from_env(env)


def test_the_url_limit_must_fit_in_the_header_limit():
    with pytest.raises(ConfigError, match=r"VELORA_HTTP_MAX_URL_BYTES .* must not exceed"):
        Settings.from_env(
            {"VELORA_HTTP_MAX_HEADER_BYTES": "4096", "VELORA_HTTP_MAX_URL_BYTES": "8192"}
        )


def test_an_empty_public_base_url_means_unset():
    assert Settings.from_env({"VELORA_PUBLIC_BASE_URL": ""}).public_base_url is None


def test_port_zero_means_free_and_never_clashes():
    s = Settings.from_env(
        {
            "VELORA_BROKER_PORT": "0",
            "VELORA_CONTROLLER_PORT": "0",
            "VELORA_NODE_PORT": "0",
            "VELORA_INGEST_PORT": "0",
        }
    )
    assert (s.broker_port, s.controller_port, s.node_port, s.ingest_port) == (0, 0, 0, 0)


def test_secrets_never_show_in_repr_or_str():
    env = {var: GOOD[var][0] for var in SECRET_VARS}
    s = Settings.from_env(env)
    for text in (repr(s), str(s), repr(s.key_pepper), str(s.ingest_tokens), f"{s.cursor_secret}"):
        for secret in SECRETS:
            assert secret not in text
    assert "Secret('**********')" in repr(s)
    assert s.key_pepper.reveal() == PEPPER
    assert [t.reveal() for t in s.ingest_tokens] == [TOKEN_A, TOKEN_B]


def test_settings_are_frozen():
    s = Settings.from_env({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.audit_partitions = 1  # type: ignore[misc]
    changed = s.with_overrides(audit_partitions=3)
    assert (changed.audit_partitions, s.audit_partitions) == (3, 6)
    assert hash(s) == hash(Settings.from_env({}))


def test_topic_names_follow_the_prefix():
    s = Settings.from_env({"VELORA_TOPIC_PREFIX": "acme"})
    assert (s.audit_topic, s.control_topic) == ("acme.audit.v1", "acme.control.v1")


def test_the_cli_reports_a_bad_value_and_exits_2(tmp_path):
    """Validated at start: the process stops with one clear line, no traceback."""
    env = {"PATH": "/usr/bin:/bin", "VELORA_AUDIT_PARTITIONS": "many"}
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "kafka", "status"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "velora: error: VELORA_AUDIT_PARTITIONS='many' is invalid: "
        "must be an integer between 1 and 1000"
    )
    assert "Traceback" not in proc.stderr


# -- service tokens, peppers and published development secrets ----------------------


def test_service_tokens_may_be_restricted_to_sources():
    raw = f"{TOKEN_A}=claims-api|billing, {TOKEN_B}, base64-token-0123456789==="
    tokens = Settings.from_env({"VELORA_INGEST_TOKENS": raw}).ingest_tokens
    assert [t.reveal() for t in tokens] == [TOKEN_A, TOKEN_B, "base64-token-0123456789==="]
    assert [t.sources for t in tokens] == [frozenset({"claims-api", "billing"}), None, None]
    assert tokens[0] == ServiceToken(TOKEN_A, frozenset({"billing", "claims-api"}))
    assert tokens[0] != ServiceToken(TOKEN_A)
    assert "claims" not in repr(tokens) and TOKEN_A not in repr(tokens)
    for bad in (f"{TOKEN_A}=velora.query_api", f"{TOKEN_A}=a b", f"{TOKEN_A}=ok||x"):
        with pytest.raises(ConfigError, match="VELORA_INGEST_TOKENS=<redacted> is invalid"):
            Settings.from_env({"VELORA_INGEST_TOKENS": bad})


DEV_PEPPER = Settings().key_pepper.reveal()
DEV_CURSOR = Settings().cursor_secret.reveal()
DEV_TOKEN = "dev-ingest-token-change-me"
DEV_SECRETS_KEY = Settings().secrets_key.reveal()
SECRETS_KEY = "operator-secrets-key-0123456789"


@pytest.mark.parametrize(
    ("service", "env", "variable"),
    [
        ("node", {"VELORA_CURSOR_SECRET": CURSOR}, "VELORA_KEY_PEPPER"),
        ("node", {"VELORA_KEY_PEPPER": PEPPER}, "VELORA_CURSOR_SECRET"),
        (
            "node",
            {
                "VELORA_KEY_PEPPER": PEPPER,
                "VELORA_CURSOR_SECRET": CURSOR,
                "VELORA_KEY_PEPPERS": f"new:{DEV_CURSOR}",
            },
            "VELORA_KEY_PEPPERS",
        ),
        ("ingest", {"VELORA_INGEST_TOKENS": f"{TOKEN_A},{DEV_TOKEN}"}, "VELORA_INGEST_TOKENS"),
        (
            "node",
            {"VELORA_KEY_PEPPER": PEPPER, "VELORA_CURSOR_SECRET": CURSOR},
            "VELORA_SECRETS_KEY",
        ),
        ("dispatcher", {}, "VELORA_SECRETS_KEY"),
        ("ingest", {"VELORA_INGEST_TOKENS": TOKEN_A}, "VELORA_SECRETS_KEY"),
    ],
)
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "node.internal"])
def test_published_secrets_refuse_a_non_loopback_bind(service, env, variable, host):
    settings = Settings.from_env(env)
    with pytest.raises(ConfigError) as info:
        check_bind_secrets(settings, service, host)
    message = str(info.value)
    assert message.startswith(variable + " ") and "non-loopback" in message
    for value in (DEV_PEPPER, DEV_CURSOR, DEV_TOKEN, DEV_SECRETS_KEY, PEPPER, CURSOR, TOKEN_A):
        assert value not in message


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_published_secrets_on_loopback_log_one_warning(host, caplog):
    with caplog.at_level("WARNING", logger="velora.settings"):
        found = check_bind_secrets(Settings.from_env({}), "node", host)
    assert found == ["VELORA_KEY_PEPPER", "VELORA_CURSOR_SECRET", "VELORA_SECRETS_KEY"]
    lines = [r for r in caplog.records if r.name == "velora.settings"]
    assert len(lines) == 1 and lines[0].levelname == "WARNING"
    assert "VELORA_KEY_PEPPER" in lines[0].getMessage()
    for value in (DEV_PEPPER, DEV_CURSOR, DEV_SECRETS_KEY):
        assert value not in caplog.text


def test_own_secrets_bind_anywhere_without_a_word(caplog):
    env = {
        "VELORA_KEY_PEPPER": PEPPER,
        "VELORA_CURSOR_SECRET": CURSOR,
        "VELORA_INGEST_TOKENS": TOKEN_A,
        "VELORA_SECRETS_KEY": SECRETS_KEY,
    }
    settings = Settings.from_env(env)
    with caplog.at_level("WARNING"):
        assert check_bind_secrets(settings, "node", "0.0.0.0") == []
        assert check_bind_secrets(settings, "ingest", "0.0.0.0") == []
        assert check_bind_secrets(settings, "dispatcher", "0.0.0.0") == []
    assert not caplog.records
    # no token is refused elsewhere; the secrets key unwraps server-mode PHI keysets
    assert dev_secrets(Settings.from_env({}), "ingest") == ["VELORA_SECRETS_KEY"]

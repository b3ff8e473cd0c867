"""``compose.yaml`` and the ``Dockerfile`` stay in step with the CLI and the settings.

Docker does not run here, so the files are parsed: every velora service runs a real
``velora`` subcommand, every ``VELORA_*`` variable is one :data:`ENV_VARS` knows and
its value (with compose's ``${VAR:-default}`` resolved, and the secrets that
``${VAR:?message}`` requires taken from an operator's ``.env``) passes
:meth:`Settings.from_env`; the secrets have no default and no published value; the
Kafka service is a consistent single-node KRaft setup of the same Kafka version the
local runtime uses.
"""

from __future__ import annotations

import base64
import re
import tomllib
from functools import cache
from typing import Any

import pytest
import yaml

from cli.main import subcommand_names
from ingest.http import create_ingest_app
from query_api.health import health_routes
from tests.helpers import REPO
from velora.settings import DEV_SECRET_VALUES, ENV_VARS, Settings, check_bind_secrets

COMPOSE = yaml.safe_load((REPO / "compose.yaml").read_text(encoding="utf-8"))
DOCKERFILE = (REPO / "Dockerfile").read_text(encoding="utf-8")
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
VELORA_SERVICES = sorted(name for name, svc in SERVICES.items() if "build" in svc)
_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<default>[^}]*))?\}")
REQUIRED_SECRETS = (
    "VELORA_KEY_PEPPER",
    "VELORA_CURSOR_SECRET",
    "VELORA_INGEST_TOKENS",
    "VELORA_SECRETS_KEY",
)
OPERATOR_ENV = {name: f"operator-{name.lower()}-0123456789" for name in REQUIRED_SECRETS}
"""What an operator's .env provides: the secrets compose requires."""


def interpolate(value: object, env: dict[str, str] | None = None) -> str:
    """Resolve ``${VAR:-default}`` and ``${VAR:?message}`` as ``docker compose up`` does.

    ``env`` is the shell or ``.env``; a required variable missing from it fails.
    """
    text = str(value).lower() if isinstance(value, bool) else str(value)
    given = OPERATOR_ENV if env is None else env

    def sub(m: re.Match[str]) -> str:
        assert m["op"] is not None, f"${{{m['name']}}} has no default: compose up would fail"
        if m["op"].endswith("?"):
            assert m["name"] in given, f"compose up stops: {m['default']}"
            return given[m["name"]]
        return m["default"]

    return _VAR.sub(sub, text).replace("$$", "$")


def environment(service: str) -> dict[str, str]:
    env = SERVICES[service].get("environment") or {}
    assert isinstance(env, dict), f"{service}: use the mapping form of environment"
    return {k: interpolate(v) for k, v in env.items()}


def command(service: str) -> list[str]:
    cmd = SERVICES[service]["command"]
    assert isinstance(cmd, list), f"{service}: use the exec (list) form of command"
    return [str(c) for c in cmd]


@cache
def cli_paths() -> set[tuple[str, ...]]:
    return subcommand_names()


def test_the_expected_services_exist():
    assert {"kafka", "topics", "node", "ingest"} <= set(SERVICES)
    assert VELORA_SERVICES == ["dispatcher", "ingest", "node", "replica", "topics"]


@pytest.mark.parametrize("service", VELORA_SERVICES)
def test_command_is_a_real_velora_subcommand(service):
    cmd = command(service)
    assert cmd[0] == "velora"
    path = tuple(arg for arg in cmd[1:] if not arg.startswith("-"))
    assert path in cli_paths(), f"{service}: `{' '.join(cmd)}` is not a velora command"


def test_the_services_run_node_ingest_and_topics():
    commands = {service: tuple(command(service)[1:]) for service in VELORA_SERVICES}
    assert commands == {
        "node": ("node",),
        "replica": ("node",),
        "ingest": ("ingest", "serve"),
        "topics": ("kafka", "topics"),
        "dispatcher": ("webhooks", "dispatch"),
    }


@pytest.mark.parametrize("service", VELORA_SERVICES)
def test_every_variable_is_a_known_setting_with_a_valid_value(service):
    env = environment(service)
    unknown = sorted(k for k in env if k not in ENV_VARS)
    assert not unknown, f"{service}: unknown variables {unknown}"
    settings = Settings.from_env(env)
    assert settings.kafka_bootstrap == "kafka:9092"
    assert settings.audit_partitions == Settings().audit_partitions


def test_published_services_listen_on_all_interfaces_of_their_container():
    for service, var_host, var_port in (
        ("node", "VELORA_NODE_HOST", "VELORA_NODE_PORT"),
        ("ingest", "VELORA_INGEST_HOST", "VELORA_INGEST_PORT"),
    ):
        env = environment(service)
        assert env[var_host] == "0.0.0.0"
        published = [str(p).rsplit(":", 1)[-1] for p in SERVICES[service]["ports"]]
        assert env[var_port] in published
        probe = " ".join(SERVICES[service]["healthcheck"]["test"])
        assert f"127.0.0.1:{env[var_port]}/healthz" in probe


def test_health_probes_hit_routes_that_exist():
    assert "/healthz" in [r.path for r in health_routes(None)]
    ingest_settings = Settings.from_env(environment("ingest"))
    app = create_ingest_app(ingest_settings, producer=object())  # type: ignore[arg-type]
    assert "/healthz" in [getattr(r, "path", None) for r in app.routes]


def test_secrets_are_required_and_never_defaulted():
    """Issue 8 finding 8: compose no longer passes the published development values."""
    text = (REPO / "compose.yaml").read_text(encoding="utf-8")
    for value in DEV_SECRET_VALUES:
        assert value not in text
    for service, names in (
        ("node", ("VELORA_KEY_PEPPER", "VELORA_CURSOR_SECRET", "VELORA_SECRETS_KEY")),
        ("ingest", ("VELORA_INGEST_TOKENS",)),
        ("dispatcher", ("VELORA_SECRETS_KEY",)),
    ):
        raw = SERVICES[service]["environment"]
        for name in names:
            assert re.fullmatch(rf"\$\{{{name}:\?[^}}]*{name}[^}}]*\}}", raw[name]), raw[name]
            missing = {k: v for k, v in OPERATOR_ENV.items() if k != name}
            with pytest.raises(AssertionError, match=f"compose up stops: set {name}"):
                interpolate(raw[name], missing)


@pytest.mark.parametrize(
    ("service", "host_var"),
    [
        ("node", "VELORA_NODE_HOST"),
        ("ingest", "VELORA_INGEST_HOST"),
        ("dispatcher", "VELORA_DISPATCHER_HOST"),
    ],
)
def test_the_services_pass_the_secret_check_on_their_bind_address(service, host_var):
    env = environment(service)
    assert check_bind_secrets(Settings.from_env(env), service, env[host_var]) == []


def test_ingest_has_service_tokens_and_node_has_secrets():
    assert Settings.from_env(environment("ingest")).ingest_tokens
    node = Settings.from_env(environment("node"))
    assert node.key_pepper and node.cursor_secret
    assert str(node.duckdb_path).startswith("/var/lib/velora/")
    volumes = [v.split(":")[1] for v in SERVICES["node"]["volumes"]]
    assert "/var/lib/velora" in volumes


def test_node_and_dispatcher_require_the_secrets_key():
    for service in ("node", "dispatcher"):
        raw = SERVICES[service]["environment"]["VELORA_SECRETS_KEY"]
        assert raw.startswith("${VELORA_SECRETS_KEY:?"), service
        assert (
            Settings.from_env(environment(service)).secrets_key.reveal()
            == OPERATOR_ENV["VELORA_SECRETS_KEY"]
        )
    env = environment("dispatcher")
    probe = " ".join(SERVICES["dispatcher"]["healthcheck"]["test"])
    assert f"127.0.0.1:{env['VELORA_DISPATCHER_PORT']}/healthz" in probe


def test_start_order():
    assert SERVICES["topics"]["depends_on"] == {"kafka": {"condition": "service_healthy"}}
    for service in ("node", "replica", "ingest", "dispatcher"):
        assert SERVICES[service]["depends_on"] == {
            "topics": {"condition": "service_completed_successfully"}
        }


def test_replicas_scale_the_node_behind_a_load_balancer_that_checks_readiness():
    """`docker compose --profile scale up --scale replica=N`: N query nodes like `node`."""
    replica = SERVICES["replica"]
    assert replica["profiles"] == ["scale"] and SERVICES["lb"]["profiles"] == ["scale"]
    # the same settings as node: the same cursor secret and pepper, so any replica
    # accepts another's cursors and keys
    assert replica["environment"] == SERVICES["node"]["environment"]
    env = environment("replica")
    port = env["VELORA_NODE_PORT"]
    assert "ports" not in replica, "a fixed host port cannot be scaled"
    assert [str(p) for p in replica["expose"]] == [port]
    # an anonymous volume per replica: DuckDB admits one process per file
    assert replica["volumes"] == ["/var/lib/velora"]
    assert str(Settings.from_env(env).duckdb_path).startswith("/var/lib/velora/")
    assert check_bind_secrets(Settings.from_env(env), "node", env["VELORA_NODE_HOST"]) == []

    lb = SERVICES["lb"]
    assert lb["image"].startswith("haproxy:")
    source, target, mode = lb["volumes"][0].split(":")
    assert target == "/usr/local/etc/haproxy/haproxy.cfg" and mode == "ro"
    cfg = (REPO / source).read_text(encoding="utf-8")
    lines = [line.split("#")[0].split() for line in cfg.splitlines()]
    lines = [line for line in lines if line]
    binds = [line[1].lstrip(":") for line in lines if line[0] == "bind"]
    assert [str(p).rsplit(":", 1)[-1] for p in lb["ports"]] == binds
    templates = [line for line in lines if line[0] == "server-template"]
    assert len(templates) == 1 and templates[0][3] == f"replica:{port}"
    assert {"check", "resolvers"} <= set(templates[0])
    assert ["option", "httpchk", "GET", "/readyz"] in lines
    assert ["http-check", "expect", "status", "200"] in lines
    assert "/readyz" in [r.path for r in health_routes(None)]
    assert ["http-request", "set-header", "X-Forwarded-For", "%[src]"] in lines


# -- the Kafka service ---------------------------------------------------------------


def kafka_env() -> dict[str, str]:
    return environment("kafka")


def listeners(value: str) -> dict[str, tuple[str, int]]:
    out = {}
    for item in value.split(","):
        name, _, address = item.partition("://")
        host, _, port = address.rpartition(":")
        out[name] = (host, int(port))
    return out


def test_kafka_is_the_official_image_of_the_local_version():
    assert SERVICES["kafka"]["image"] == f"apache/kafka:{Settings().kafka_version}"


def test_kafka_is_a_single_kraft_node():
    env = kafka_env()
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    node_id = env["KAFKA_NODE_ID"]
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    own = listeners(env["KAFKA_LISTENERS"])
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert voters == [f"{node_id}@{SERVICES['kafka']['hostname']}:{own[controller][1]}"]
    protocol = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(own) == set(protocol)
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in own
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR",
    ):
        assert env[key] == "1", key


def test_services_reach_an_advertised_kafka_listener():
    env = kafka_env()
    own = listeners(env["KAFKA_LISTENERS"])
    advertised = listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    assert set(advertised) <= set(own)
    addresses = {f"{host}:{port}" for host, port in advertised.values()}
    for service in VELORA_SERVICES:
        assert environment(service)["VELORA_KAFKA_BOOTSTRAP"] in addresses
    # The host listener is published on the port it advertises.
    host, port = advertised["HOST"]
    assert host == "localhost"
    assert f"127.0.0.1:{port}:{port}" in SERVICES["kafka"]["ports"]


def test_kafka_data_lives_in_a_named_volume():
    log_dir = kafka_env()["KAFKA_LOG_DIRS"]
    assert f"kafka-data:{log_dir}" in SERVICES["kafka"]["volumes"]
    assert "kafka-data" in COMPOSE["volumes"]


# -- the Dockerfile -------------------------------------------------------------------


def test_dockerfile_copies_every_package_it_installs():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    roots = {p.split(".")[0] for p in project["tool"]["setuptools"]["packages"]}
    copied = set(re.findall(r"^COPY (\S+) \./\1$", DOCKERFILE, flags=re.M))
    assert roots <= copied, f"not copied into the image: {sorted(roots - copied)}"
    assert re.search(r"^COPY pyproject\.toml README\.md \./$", DOCKERFILE, flags=re.M)
    assert re.search(r"^RUN pip install \.", DOCKERFILE, flags=re.M)


def test_dockerfile_python_matches_the_project():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    stages = re.findall(r"^FROM (\S+)", DOCKERFILE, flags=re.M)
    assert stages[-1] == "python:3.11-slim"  # the image compose runs is the last stage
    assert project["project"]["requires-python"] == ">=3.11"


def test_dockerfile_sets_only_known_settings():
    names = re.findall(r"\b(VELORA_[A-Z_]+)=", DOCKERFILE)
    assert names and set(names) <= set(ENV_VARS)
    assert re.search(r"^USER velora$", DOCKERFILE, flags=re.M)


def test_dockerfile_fetches_the_pinned_portal_assets_where_the_node_serves_them():
    from query_api.portal_routes import UPLOT

    args = dict(re.findall(r"^ARG (UPLOT_[A-Z]+)=(\S+)$", DOCKERFILE, flags=re.M))
    assert args == {"UPLOT_VERSION": UPLOT.version, "UPLOT_INTEGRITY": UPLOT.integrity}
    assert re.search(r'npm pack "uplot@\$\{UPLOT_VERSION\}"', DOCKERFILE)
    for served in UPLOT.files.values():
        assert served in DOCKERFILE
    cache = re.search(r"VELORA_CACHE_DIR=(\S+)", DOCKERFILE)
    assert cache is not None
    settings = Settings.from_env({"VELORA_CACHE_DIR": cache[1]})
    target = UPLOT.directory(settings.cache_dir)
    copied = re.search(r"^COPY --from=portal-assets /assets (\S+)$", DOCKERFILE, flags=re.M)
    assert copied is not None and str(target).startswith(copied[1] + "/npm/")
    assert "/assets/npm/uplot-${UPLOT_VERSION}" in DOCKERFILE


def test_interpolation_helper():
    assert interpolate("${A:-x}") == "x"
    assert interpolate("${A-y}/$$HOME") == "y/$HOME"
    assert interpolate(8080) == "8080"
    assert interpolate("${A:?set A}", {"A": "given"}) == "given"
    with pytest.raises(AssertionError, match="compose up stops: set A"):
        interpolate("${A:?set A}", {})
    with pytest.raises(AssertionError, match="has no default"):
        interpolate("${A}")

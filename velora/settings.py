"""One frozen settings object, built once from ``VELORA_*`` environment variables.

No other module reads ``os.environ``. Tests pass a mapping to
:meth:`Settings.from_env` instead of patching the environment. Every variable the
project understands is listed in :data:`ENV_VARS`; a bad value raises
:class:`~velora.errors.ConfigError` naming the variable.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from velora.errors import ConfigError
from velora.networks import is_loopback_host, parse_network
from velora.urls import parse_base_url

log = logging.getLogger(__name__)

PREFIX = "VELORA_"


class Secret:
    """A string that never shows its value in ``repr`` or ``str``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret value. Call only where it is used, never to log it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


class ServiceToken(Secret):
    """An ingest service token, optionally restricted to some event ``source`` values.

    ``sources`` is None for a token that may write any non-reserved source.
    """

    __slots__ = ("sources",)

    def __init__(self, value: str, sources: frozenset[str] | None = None) -> None:
        super().__init__(value)
        self.sources = sources

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Secret)
            and other.reveal() == self.reveal()
            and getattr(other, "sources", None) == self.sources
        )

    def __hash__(self) -> int:
        return hash((self.reveal(), self.sources))


def _int(lo: int, hi: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"must be an integer between {lo} and {hi}") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return parse


def _float(lo: float, hi: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"must be a number between {lo} and {hi}") from None
        if not lo <= value <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return value

    return parse


def _memory_limit_mb(raw: str) -> int:
    """0 (DuckDB's own default) or a limit of 64 MB to 1 TB."""
    value = _int(0, 1_048_576)(raw)
    if 0 < value < 64:
        raise ValueError("must be 0 (DuckDB's default) or at least 64")
    return value


def _host(raw: str) -> str:
    if not raw or any(c.isspace() for c in raw):
        raise ValueError("must be a host name or address")
    return raw


def _bootstrap(raw: str) -> str:
    for part in raw.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be host:port[,host:port...] with ports 1-65535")
    return raw


def _path(raw: str) -> Path:
    if not raw or "\0" in raw:
        raise ValueError("must be a non-empty path")
    return Path(raw)


def _version(raw: str) -> str:
    parts = raw.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError("must be a Kafka release such as 4.0.2")
    return raw


def _topic_prefix(raw: str) -> str:
    if not raw or not all(c.isalnum() or c in "._-" for c in raw) or len(raw) > 200:
        raise ValueError("must be 1-200 characters of [A-Za-z0-9._-]")
    return raw


_SOURCE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}")


def _tokens(raw: str) -> tuple[ServiceToken, ...]:
    """``token[=source|source...]``, comma-separated.

    The sources follow the *last* ``=``; a trailing ``=`` (base64 padding) is part
    of the token. A token without sources may write any non-reserved source.
    """
    tokens = []
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        head, sep, tail = entry.rpartition("=")
        token, sources = (head, tail) if sep and tail else (entry, "")
        if len(token) < 16:
            raise ValueError("each service token must be at least 16 characters")
        allowed: frozenset[str] | None = None
        if sources:
            names = [s.strip() for s in sources.split("|")]
            if not all(_SOURCE_RE.fullmatch(n) for n in names):
                raise ValueError("token sources must be source names separated by '|'")
            if any(n.startswith("velora.") for n in names):
                raise ValueError("sources under 'velora.' are reserved for the system")
            allowed = frozenset(names)
        tokens.append(ServiceToken(token, allowed))
    return tuple(tokens)


def _secret(raw: str) -> Secret:
    if len(raw) < 16:
        raise ValueError("must be at least 16 characters")
    return Secret(raw)


def _base_url(raw: str) -> str | None:
    return parse_base_url(raw) if raw else None


def _url(raw: str) -> str | None:
    if not raw:
        return None
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s#]*)?", raw):
        raise ValueError("must be an http(s) URL")
    return raw


def _names(raw: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in raw.split(",") if n.strip())
    if any(not re.fullmatch(r"[A-Za-z0-9_.:-]{1,40}", n) for n in names):
        raise ValueError("must be comma-separated metadata keys ([A-Za-z0-9_.:-], 1-40 each)")
    return names


_PEPPER_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")


def _peppers(raw: str) -> tuple[tuple[str, Secret], ...]:
    """``id:value,id:value``, newest first; ids unique, values 16+ characters."""
    out: list[tuple[str, Secret]] = []
    for entry in (e.strip() for e in raw.split(",")):
        if not entry:
            continue
        ident, sep, value = entry.partition(":")
        if not sep or not _PEPPER_ID_RE.fullmatch(ident):
            raise ValueError("each entry must be id:value with an id of 1-32 [A-Za-z0-9_-]")
        if len(value) < 16:
            raise ValueError("each pepper must be at least 16 characters")
        if any(ident == known for known, _ in out):
            raise ValueError("pepper ids must be unique")
        out.append((ident, Secret(value)))
    return tuple(out)


def _networks(raw: str) -> tuple[str, ...]:
    return tuple(parse_network(part) for part in raw.split(",") if part.strip())


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.lower()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return parse


def _bool(raw: str) -> bool:
    value = raw.lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("must be 1 or 0 (true or false)")


def _schedule(raw: str) -> tuple[float, ...]:
    """Seconds between attempts, comma-separated: ``5,300,1800`` (fractions allowed)."""
    try:
        delays = tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError:
        raise ValueError("must be comma-separated seconds, e.g. 5,300,1800") from None
    if not 1 <= len(delays) <= 20 or not all(0.01 <= d <= 7 * 86_400 for d in delays):
        raise ValueError("must be 1-20 delays, each between 0.01 and 604800 seconds")
    if list(delays) != sorted(delays):
        raise ValueError("delays must not decrease")
    return delays


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
    return level


# Development defaults only; production sets VELORA_KEY_PEPPER and VELORA_CURSOR_SECRET.
_DEV_PEPPER = Secret("velora-dev-pepper-change-me")
_DEV_CURSOR_SECRET = Secret("velora-dev-cursor-secret-change-me")
_DEV_SECRETS_KEY = Secret("velora-dev-secrets-key-change-me")
_NO_SECRET = Secret("")
_DEV_INGEST_TOKEN = "dev-ingest-token-change-me"  # noqa: S105 - the value published in the repo
DEV_SECRET_VALUES = frozenset(
    {
        _DEV_PEPPER.reveal(),
        _DEV_CURSOR_SECRET.reveal(),
        _DEV_INGEST_TOKEN,
        _DEV_SECRETS_KEY.reveal(),
    }
)
"""Secret values published in this repository (defaults, docs, old compose files)."""
# Svix's hosted schedule: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (eight attempts in all).
_RETRY_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)


@dataclass(frozen=True)
class Settings:
    """Validated configuration. Build it with :meth:`from_env`."""

    kafka_bootstrap: str = "127.0.0.1:9092"
    topic_prefix: str = "velora"
    audit_partitions: int = 6
    state_dir: Path = Path("var")
    duckdb_path: Path = Path("var/velora.duckdb")
    duckdb_memory_limit_mb: int = 0
    head_events: int = 200
    head_tenants: int = 128
    head_actions: int = 128
    head_ids: int = 128
    page_bodies: bool = False
    warm_copies: bool = True
    cache_dir: Path = Path(".cache")
    kafka_version: str = "4.0.2"
    broker_port: int = 9092
    controller_port: int = 9093
    broker_heap_mb: int = 768
    node_host: str = "127.0.0.1"
    node_port: int = 8080
    ingest_host: str = "127.0.0.1"
    ingest_port: int = 8081
    ingest_tokens: tuple[ServiceToken, ...] = ()
    key_pepper: Secret = _DEV_PEPPER
    key_peppers: tuple[tuple[str, Secret], ...] = ()
    cursor_secret: Secret = _DEV_CURSOR_SECRET
    environment: str = "live"
    trusted_proxies: tuple[str, ...] = ()
    rate_limit_per_second: float = 20.0
    rate_limit_burst: int = 100
    auth_failure_limit: int = 20
    key_rotation_grace_seconds: int = 86_400
    control_max_staleness_s: int = 60
    read_audit: str = "required"
    materializer_max_batch: int = 5000
    log_level: str = "INFO"
    public_base_url: str | None = None
    http_max_header_bytes: int = 16_384
    http_max_url_bytes: int = 8_192
    http_header_timeout_s: float = 10.0
    http_body_timeout_s: float = 30.0
    http_keepalive_timeout_s: float = 5.0
    http_request_deadline_s: float = 15.0
    http_limit_concurrency: int = 1000
    http_backlog: int = 2048
    ingest_memory_budget_mb: int = 256
    export_max_streams: int = 4
    export_max_jobs: int = 2
    export_link_ttl_seconds: int = 900
    export_retention_seconds: int = 86_400
    secrets_key: Secret = _DEV_SECRETS_KEY
    webhooks_allow_insecure_loopback: bool = False
    webhooks_retry_schedule: tuple[float, ...] = _RETRY_SCHEDULE
    webhooks_timeout_s: float = 10.0
    webhooks_concurrency: int = 16
    webhooks_rate_per_second: float = 0.0
    webhooks_rotation_overlap_s: int = 86_400
    webhooks_disable_after_s: int = 432_000
    webhooks_batch_max_events: int = 500
    webhooks_batch_max_wait_ms: int = 1000
    webhooks_session_timeout_ms: int = 10_000
    dispatcher_host: str = "127.0.0.1"
    dispatcher_port: int = 8082
    sidecar_host: str = "127.0.0.1"
    sidecar_port: int = 8700
    sidecar_upstream: str | None = None
    sidecar_keyset: Path | None = None
    sidecar_metadata_keys: tuple[str, ...] = ()
    sidecar_velora_secret: Secret = _NO_SECRET
    sidecar_relay_secret: Secret = _NO_SECRET
    sidecar_siem_url: str | None = None

    @property
    def audit_topic(self) -> str:
        """The audit-event topic: infinite retention, never compacted."""
        return f"{self.topic_prefix}.audit.v1"

    @property
    def control_topic(self) -> str:
        """The compacted control topic: API keys, webhook endpoints, tenant settings."""
        return f"{self.topic_prefix}.control.v1"

    @property
    def webhook_group(self) -> str:
        """The dispatchers' consumer group."""
        return f"{self.topic_prefix}.webhooks"

    @property
    def webhook_requests_topic(self) -> str:
        """Deliveries asked for through the API (test, retry, replay), due at once."""
        return f"{self.topic_prefix}.webhooks.requests.v1"

    @property
    def webhook_attempts_topic(self) -> str:
        """Every delivery attempt, materialized by query nodes."""
        return f"{self.topic_prefix}.webhooks.attempts.v1"

    @property
    def webhook_retry_tiers(self) -> tuple[float, ...]:
        """The distinct delays of the retry schedule, shortest first: one retry topic each."""
        return tuple(sorted(set(self.webhooks_retry_schedule)))

    @property
    def webhook_retry_topics(self) -> tuple[str, ...]:
        """``<prefix>.webhooks.retry.<i>.v1``, one per tier of :attr:`webhook_retry_tiers`."""
        tiers = range(len(self.webhook_retry_tiers))
        return tuple(f"{self.topic_prefix}.webhooks.retry.{i}.v1" for i in tiers)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build from ``VELORA_*`` variables in ``environ`` (default: the process env).

        Raises :class:`ConfigError` naming the first invalid variable.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        unknown = sorted(
            k for k in env if k.startswith(PREFIX) and k not in ENV_VARS and k not in _IGNORED
        )
        if unknown:
            raise ConfigError(f"unknown setting {unknown[0]}; known settings: {sorted(ENV_VARS)}")
        for var, (name, parse) in ENV_VARS.items():
            raw = env.get(var)
            if raw is None:
                continue
            try:
                values[name] = parse(raw.strip())
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{var}={_shown(var, raw)!s} is invalid: {exc}") from None
        values.update(overrides)
        settings = cls(**values)
        settings._check_ports()
        settings._check_http_limits()
        return settings

    def _check_ports(self) -> None:
        """Listeners started from one settings object must not share a fixed port (0 = free)."""
        clashes = (
            (
                "VELORA_BROKER_PORT",
                "VELORA_CONTROLLER_PORT",
                self.broker_port,
                self.controller_port,
            ),
        )
        wildcard = {"0.0.0.0", "::"}  # noqa: S104 - compared, not bound
        if self.node_host == self.ingest_host or {self.node_host, self.ingest_host} & wildcard:
            clashes += (
                ("VELORA_NODE_PORT", "VELORA_INGEST_PORT", self.node_port, self.ingest_port),
            )
        hosts = {self.node_host, self.ingest_host} | wildcard
        if self.dispatcher_host in hosts:
            dispatcher = ("VELORA_DISPATCHER_PORT", self.dispatcher_port)
            clashes += (
                ("VELORA_NODE_PORT", dispatcher[0], self.node_port, dispatcher[1]),
                ("VELORA_INGEST_PORT", dispatcher[0], self.ingest_port, dispatcher[1]),
            )
        for a, b, pa, pb in clashes:
            if pa and pa == pb:
                raise ConfigError(f"{a} and {b} are both {pa}; each listener needs its own port")

    def _check_http_limits(self) -> None:
        """A URL must fit in the request head that carries it."""
        if self.http_max_url_bytes > self.http_max_header_bytes:
            raise ConfigError(
                f"VELORA_HTTP_MAX_URL_BYTES ({self.http_max_url_bytes}) must not exceed "
                f"VELORA_HTTP_MAX_HEADER_BYTES ({self.http_max_header_bytes}): the request "
                "line is part of the request head"
            )

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some fields replaced (used by the CLI and tests)."""
        current = {f.name: getattr(self, f.name) for f in fields(self)}
        current.update(changes)
        return Settings(**current)


def _shown(var: str, raw: str) -> str:
    """Never echo a secret back in an error message."""
    if var in SECRET_VARS:
        return "<redacted>"
    return repr(raw)


SECRET_VARS = frozenset(
    {
        "VELORA_INGEST_TOKENS",
        "VELORA_KEY_PEPPER",
        "VELORA_KEY_PEPPERS",
        "VELORA_CURSOR_SECRET",
        "VELORA_SECRETS_KEY",
        "VELORA_SIDECAR_VELORA_SECRET",
        "VELORA_SIDECAR_RELAY_SECRET",
    }
)


def dev_secrets(settings: Settings, service: str) -> list[str]:
    """The variables whose value is a published one, for ``node``, ``ingest`` or ``dispatcher``."""
    found = []
    if service == "node":
        if settings.key_pepper.reveal() in DEV_SECRET_VALUES:
            found.append("VELORA_KEY_PEPPER")
        if any(p.reveal() in DEV_SECRET_VALUES for _, p in settings.key_peppers):
            found.append("VELORA_KEY_PEPPERS")
        if settings.cursor_secret.reveal() in DEV_SECRET_VALUES:
            found.append("VELORA_CURSOR_SECRET")
    elif service == "ingest":
        if any(t.reveal() in DEV_SECRET_VALUES for t in settings.ingest_tokens):
            found.append("VELORA_INGEST_TOKENS")
    elif service != "dispatcher":
        raise ValueError(f"unknown service {service!r}")
    if settings.secrets_key.reveal() in DEV_SECRET_VALUES:  # every service unwraps with it
        found.append("VELORA_SECRETS_KEY")
    return found


def check_bind_secrets(settings: Settings, service: str, host: str) -> list[str]:
    """Refuse published secret values on a non-loopback bind; warn once on loopback.

    Raises :class:`ConfigError` naming the first such variable when ``host`` is
    not a loopback address; on loopback logs one warning line and returns the
    variables (empty when every secret is the operator's own).
    """
    found = dev_secrets(settings, service)
    if not found:
        return found
    if not is_loopback_host(host):
        raise ConfigError(
            f"{found[0]} is a development value published in the Velora repository; "
            f"set it before binding the {service} to a non-loopback address"
        )
    log.warning(
        "%s uses development secret values (%s); fine on loopback, never in production",
        service,
        ", ".join(found),
    )
    return found


ENV_VARS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "VELORA_KAFKA_BOOTSTRAP": ("kafka_bootstrap", _bootstrap),
    "VELORA_TOPIC_PREFIX": ("topic_prefix", _topic_prefix),
    "VELORA_AUDIT_PARTITIONS": ("audit_partitions", _int(1, 1000)),
    "VELORA_STATE_DIR": ("state_dir", _path),
    "VELORA_DUCKDB_PATH": ("duckdb_path", _path),
    "VELORA_DUCKDB_MEMORY_LIMIT_MB": ("duckdb_memory_limit_mb", _memory_limit_mb),
    "VELORA_HEAD_EVENTS": ("head_events", _int(0, 10_000)),
    "VELORA_HEAD_TENANTS": ("head_tenants", _int(1, 100_000)),
    "VELORA_HEAD_ACTIONS": ("head_actions", _int(0, 100_000)),
    "VELORA_HEAD_IDS": ("head_ids", _int(0, 100_000)),
    "VELORA_PAGE_BODIES": ("page_bodies", _bool),
    "VELORA_WARM_COPIES": ("warm_copies", _bool),
    "VELORA_CACHE_DIR": ("cache_dir", _path),
    "VELORA_KAFKA_VERSION": ("kafka_version", _version),
    "VELORA_BROKER_PORT": ("broker_port", _int(0, 65535)),
    "VELORA_CONTROLLER_PORT": ("controller_port", _int(0, 65535)),
    "VELORA_BROKER_HEAP_MB": ("broker_heap_mb", _int(128, 16384)),
    "VELORA_NODE_HOST": ("node_host", _host),
    "VELORA_NODE_PORT": ("node_port", _int(0, 65535)),
    "VELORA_INGEST_HOST": ("ingest_host", _host),
    "VELORA_INGEST_PORT": ("ingest_port", _int(0, 65535)),
    "VELORA_INGEST_TOKENS": ("ingest_tokens", _tokens),
    "VELORA_KEY_PEPPER": ("key_pepper", _secret),
    "VELORA_KEY_PEPPERS": ("key_peppers", _peppers),
    "VELORA_CURSOR_SECRET": ("cursor_secret", _secret),
    "VELORA_ENVIRONMENT": ("environment", _choice("live", "staging")),
    "VELORA_TRUSTED_PROXIES": ("trusted_proxies", _networks),
    "VELORA_RATE_LIMIT_PER_SECOND": ("rate_limit_per_second", _float(0.01, 1e6)),
    "VELORA_RATE_LIMIT_BURST": ("rate_limit_burst", _int(1, 1_000_000)),
    "VELORA_AUTH_FAILURE_LIMIT": ("auth_failure_limit", _int(1, 1_000_000)),
    "VELORA_KEY_ROTATION_GRACE_SECONDS": ("key_rotation_grace_seconds", _int(0, 90 * 86_400)),
    "VELORA_CONTROL_MAX_STALENESS_S": ("control_max_staleness_s", _int(1, 86_400)),
    "VELORA_READ_AUDIT": ("read_audit", _choice("required", "best_effort")),
    "VELORA_MATERIALIZER_MAX_BATCH": ("materializer_max_batch", _int(1, 100_000)),
    "VELORA_LOG_LEVEL": ("log_level", _log_level),
    "VELORA_PUBLIC_BASE_URL": ("public_base_url", _base_url),
    "VELORA_HTTP_MAX_HEADER_BYTES": ("http_max_header_bytes", _int(1024, 1024 * 1024)),
    "VELORA_HTTP_MAX_URL_BYTES": ("http_max_url_bytes", _int(256, 1024 * 1024)),
    "VELORA_HTTP_HEADER_TIMEOUT_S": ("http_header_timeout_s", _float(0.1, 600)),
    "VELORA_HTTP_BODY_TIMEOUT_S": ("http_body_timeout_s", _float(0.1, 3600)),
    "VELORA_HTTP_KEEPALIVE_TIMEOUT_S": ("http_keepalive_timeout_s", _float(0.1, 3600)),
    "VELORA_HTTP_REQUEST_DEADLINE_S": ("http_request_deadline_s", _float(0.1, 3600)),
    "VELORA_HTTP_LIMIT_CONCURRENCY": ("http_limit_concurrency", _int(1, 100_000)),
    "VELORA_HTTP_BACKLOG": ("http_backlog", _int(1, 65_535)),
    "VELORA_INGEST_MEMORY_BUDGET_MB": ("ingest_memory_budget_mb", _int(8, 65_536)),
    "VELORA_EXPORT_MAX_STREAMS": ("export_max_streams", _int(1, 64)),
    "VELORA_EXPORT_MAX_JOBS": ("export_max_jobs", _int(1, 64)),
    "VELORA_EXPORT_LINK_TTL_SECONDS": ("export_link_ttl_seconds", _int(10, 7 * 86_400)),
    "VELORA_EXPORT_RETENTION_SECONDS": ("export_retention_seconds", _int(60, 30 * 86_400)),
    "VELORA_SECRETS_KEY": ("secrets_key", _secret),
    "VELORA_WEBHOOKS_ALLOW_INSECURE_LOOPBACK": ("webhooks_allow_insecure_loopback", _bool),
    "VELORA_WEBHOOKS_RETRY_SCHEDULE": ("webhooks_retry_schedule", _schedule),
    "VELORA_WEBHOOKS_TIMEOUT_S": ("webhooks_timeout_s", _float(0.05, 120.0)),
    "VELORA_WEBHOOKS_CONCURRENCY": ("webhooks_concurrency", _int(1, 256)),
    "VELORA_WEBHOOKS_RATE_PER_SECOND": ("webhooks_rate_per_second", _float(0.0, 1e6)),
    "VELORA_WEBHOOKS_ROTATION_OVERLAP_S": ("webhooks_rotation_overlap_s", _int(0, 30 * 86_400)),
    "VELORA_WEBHOOKS_DISABLE_AFTER_S": ("webhooks_disable_after_s", _int(1, 90 * 86_400)),
    "VELORA_WEBHOOKS_BATCH_MAX_EVENTS": ("webhooks_batch_max_events", _int(1, 10_000)),
    "VELORA_WEBHOOKS_BATCH_MAX_WAIT_MS": ("webhooks_batch_max_wait_ms", _int(1, 60_000)),
    "VELORA_WEBHOOKS_SESSION_TIMEOUT_MS": ("webhooks_session_timeout_ms", _int(6_000, 300_000)),
    "VELORA_DISPATCHER_HOST": ("dispatcher_host", _host),
    "VELORA_DISPATCHER_PORT": ("dispatcher_port", _int(0, 65535)),
    "VELORA_SIDECAR_HOST": ("sidecar_host", _host),
    "VELORA_SIDECAR_PORT": ("sidecar_port", _int(0, 65535)),
    "VELORA_SIDECAR_UPSTREAM": ("sidecar_upstream", _base_url),
    "VELORA_SIDECAR_KEYSET": ("sidecar_keyset", _path),
    "VELORA_SIDECAR_METADATA_KEYS": ("sidecar_metadata_keys", _names),
    "VELORA_SIDECAR_VELORA_SECRET": ("sidecar_velora_secret", _secret),
    "VELORA_SIDECAR_RELAY_SECRET": ("sidecar_relay_secret", _secret),
    "VELORA_SIDECAR_SIEM_URL": ("sidecar_siem_url", _url),
}


# Variables read by the test suite and scripts, not by the application itself.
_IGNORED = frozenset({"VELORA_TEST_KAFKA_BOOTSTRAP", "VELORA_API_KEY"})

"""The one place Kafka clients are made, and the one boundary their errors cross.

Every consumer, producer and admin client of the project comes from
:func:`new_consumer`, :func:`new_producer` or :func:`new_admin`, so they share the
bootstrap servers, the error translation and the defaults that matter for an audit
log (``read_committed``, no auto-commit, no automatic offset reset). Each first
installs :mod:`velora.kafka_sockets` (once per process), so a failed connection
attempt never leaves its socket open, and a client whose constructor fails is
closed (:func:`build_client`).

One producer runs on an asyncio event loop instead of a thread of its own:
aiokafka's, made by :func:`new_loop_producer` (for ``ingest.loop_producer``), with
the same bootstrap servers and ``acks=all``. Its errors are aiokafka's own classes,
listed by :func:`loop_kafka_errors` and translated by the same
:func:`kafka_unavailable`. aiokafka is imported only when such a producer is made.

:func:`map_kafka_errors` is the boundary, in the style of httpx's
``map_exceptions``: inside it, kafka-python's errors (and the socket errors it
lets through) become :class:`~velora.errors.Unavailable`, raised ``from`` the
original. Messages name the operation and the error class only, never a broker
address, a record or a credential, because they can reach an HTTP answer or a
readiness probe.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from velora import kafka_sockets
from velora.errors import Unavailable
from velora.settings import Settings

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer

log = logging.getLogger(__name__)
T = TypeVar("T")

KAFKA_ERRORS: tuple[type[BaseException], ...] = (KafkaError, OSError)
"""What kafka-python raises for a broker that is down, slow or refusing."""
RETRY_AFTER_S = 5.0


@contextmanager
def map_kafka_errors(what: str, retry_after: float = RETRY_AFTER_S) -> Iterator[None]:
    """Translate kafka-python's errors raised inside the block into :class:`Unavailable`."""
    try:
        yield
    except KAFKA_ERRORS as exc:
        raise kafka_unavailable(what, exc, retry_after) from exc


def kafka_unavailable(
    what: str, exc: BaseException, retry_after: float = RETRY_AFTER_S
) -> Unavailable:
    """The :class:`Unavailable` for a failed Kafka operation (no addresses, no data)."""
    if isinstance(exc, KafkaTimeoutError | TimeoutError):
        reason = "timed out"
    else:
        reason = f"failed ({type(exc).__name__})"
    return Unavailable(f"Kafka {what} {reason}", retry_after=retry_after)


def build_client(cls: type[T], **options: Any) -> T:
    """``cls(**options)`` for a kafka-python client class; a constructor that fails
    closes what it made, then raises as it did.

    kafka-python 3.0.12 makes its network client first and then bootstraps (connects,
    asks the broker's API versions). When the bootstrap fails after connecting (a
    broker that accepts but does not answer in time, as one does while it starts),
    the half-built client is never closed: a consumer's or admin client's I/O thread
    keeps running with its connection, a producer's connections are left to the
    garbage collector. The network client is recorded as it is made (``kafka_client``,
    a documented setting) and closed here in that case.
    """
    made: list[Any] = []
    factory = options.get("kafka_client") or cls.DEFAULT_CONFIG["kafka_client"]  # type: ignore[attr-defined]

    def recording(**config: Any) -> Any:
        client = factory(**config)
        made.append(client)
        return client

    try:
        made_client = cls(**{**options, "kafka_client": recording})
    except BaseException:
        for client in made:
            try:
                client.close()
            except Exception as exc:  # closing is best effort; the first error is raised
                log.warning("closing a half-built Kafka client failed: %s", type(exc).__name__)
        raise
    made_client.config["kafka_client"] = factory  # what was asked for: code reads it back
    return made_client


def _made(cls: type[T], what: str, options: dict[str, Any]) -> T:
    with map_kafka_errors(what):
        return build_client(cls, **options)


def _bootstrap(settings: Settings) -> list[str]:
    return [s.strip() for s in settings.kafka_bootstrap.split(",") if s.strip()]


def new_consumer(settings: Settings, client_id: str, **config: Any) -> KafkaConsumer:
    """A consumer with no group and no auto-commit that reads committed records only.

    ``auto_offset_reset`` is ``"none"``: a position that is out of range raises
    instead of silently jumping to the beginning or the end of a partition.
    ``config`` overrides or adds kafka-python settings.
    """
    options: dict[str, Any] = {
        "bootstrap_servers": _bootstrap(settings),
        "client_id": client_id,
        "group_id": None,
        "enable_auto_commit": False,
        "isolation_level": "read_committed",
        "auto_offset_reset": "none",
        **config,
    }
    kafka_sockets.install()
    return _made(KafkaConsumer, "connect", options)


def new_producer(settings: Settings, client_id: str, **config: Any) -> KafkaProducer:
    """A producer that waits for every in-sync replica (``acks=all``); ``config`` adds more."""
    options: dict[str, Any] = {
        "bootstrap_servers": _bootstrap(settings),
        "client_id": client_id,
        "acks": "all",
        **config,
    }
    kafka_sockets.install()
    return _made(KafkaProducer, "connect", options)


def new_loop_producer(settings: Settings, client_id: str, **config: Any) -> AIOKafkaProducer:
    """An aiokafka producer for the running event loop that waits for every in-sync
    replica (``acks=all``); ``config`` adds more. Not connected: ``await start()``."""
    from aiokafka import AIOKafkaProducer

    options: dict[str, Any] = {
        "bootstrap_servers": _bootstrap(settings),
        "client_id": client_id,
        "acks": "all",
        **config,
    }
    return AIOKafkaProducer(**options)


def loop_kafka_errors() -> tuple[type[BaseException], ...]:
    """What aiokafka raises for a broker that is down, slow or refusing (its own
    ``KafkaError`` tree, and the socket errors it lets through)."""
    from aiokafka.errors import KafkaError as LoopKafkaError

    return (LoopKafkaError, OSError)


def new_admin(settings: Settings, client_id: str = "velora-admin") -> KafkaAdminClient:
    """An admin client (topic creation and inspection)."""
    kafka_sockets.install()
    options = {
        "bootstrap_servers": _bootstrap(settings),
        "client_id": client_id,
        "request_timeout_ms": 15000,
    }
    return _made(KafkaAdminClient, "connect", options)


def close_producer(kafka: KafkaProducer, timeout: float) -> None:
    """Close a producer, waiting at most ``timeout`` s; unfinished records then fail.

    kafka-python 3.0.12's ``close`` raises from its flush when the timeout runs out
    and leaves the sender thread and sockets open; force-close them in that case.
    """
    try:
        kafka.close(timeout=timeout)
    except KafkaTimeoutError:
        sender = getattr(kafka, "_sender", None)
        if sender is not None:
            sender.force_close()
            sender.join(5.0)
        kafka._closed = True  # type: ignore[attr-defined]  # nothing left for __del__
        log.info("Kafka producer force-closed after %.1fs with records unacknowledged", timeout)


def close_quietly(client: KafkaConsumer | KafkaAdminClient) -> None:
    """Close a consumer or admin client; a failure to close is logged, never raised."""
    try:
        client.close()
    except KAFKA_ERRORS as exc:
        log.warning("closing a Kafka client failed: %s", type(exc).__name__)

"""The DuckDB layout of the ledger: audit events, stored offsets, quarantine, conflicts, meta.

The Kafka log is the source of truth; these tables are a view that a replay rebuilds
with identical content.

- ``audit_events``: one row per ``(tenant_id, event_id)``. The key is held in one
  column, ``ledger_key`` (see :func:`ledger_key`), because DuckDB answers point
  look-ups and ``ON CONFLICT`` from a single-column ART index only; a two-column key
  would make every single-event read a scan. The first copy of a key in log order
  wins: within a partition the lowest offset, across partitions (only possible after
  partitions were added to the topic) the lowest partition.
- ``ledger_offsets``: per topic partition, the offset of the *next* record to read.
  The materializer commits it in the same transaction as the rows it covers, and
  resumes *at* it (never after it) on start.
- ``ledger_quarantine``: records that can never become a row (undecodable, or
  refused by DuckDB), by topic, partition and offset, with the reason; committed in
  the same transaction as the offset that passes them, so they are not retried.
- ``ledger_conflicts``: a copy of a ``(tenant_id, event_id)`` whose content differs
  from the row that won (ids, offsets and content hashes only, never the payload).
- ``webhook_attempts``: one row per webhook delivery attempt, materialized from the
  attempt log (``<prefix>.webhooks.attempts.v1``) by :mod:`ledger.attempts`, with its
  offsets in ``ledger_offsets`` committed in the same transaction.
- ``ledger_meta``: the layout version (:data:`LAYOUT_VERSION`) and the identity of
  the topic the file was built from.
- ``audit_rollup_minute``, ``audit_rollup_hour``, ``audit_rollup_day``: per-tenant
  event counts per minute, hour and day by action, outcome, source and actor type,
  written in the same transaction as the rows they count (:mod:`ledger.rollups`).
  ``audit_actor_day``: per-tenant event and failure counts per day by actor id and
  action; ``audit_actor_target_day``: per-tenant counts per day by actor id, action
  and target id of the events naming the target; both in the same transaction.
  Layout v3 added the first two and ``webhook_attempts``; v4 the day rollup; v5 the
  actor table; v6 the actor table's failures and the target table.
- ``audit_by_actor``, ``audit_by_target``, ``audit_sorted_runs``: the rows again,
  sorted for the rare filters, kept behind the writer (:mod:`ledger.sorted_copies`);
  layout v9 added them and ``audit_events.seq`` (:data:`SEQ_COLUMN`); v10 keys the
  target copy's rows by the key of a target id alone, without the id's column; v11
  adds each row's public JSON (``body``).

``event_id`` is stored as a ``UUID`` (layout v8; text before): ingest accepts only
canonical lowercase UUIDs, which a ``UUID`` holds exactly in 16 bytes and orders as
their text. The column is 35-45% smaller than the text was (407 blocks against 734
for 10M UUIDv7-shaped ids), which every scan of it reads (an export reads the whole
column of a tenant spread over the log); reads that hand it to Python cast it back
to text (:data:`EVENT_COLUMNS`). The decoder quarantines a record whose id is not a
canonical UUID (:mod:`ledger.decode`).
"""

from __future__ import annotations

from ledger.rollups import ROLLUP_DDL
from ledger.sorted_copies import DDL as SORTED_COPIES_DDL
from ledger.target_sets import DDL as TARGET_SETS_DDL

LAYOUT_VERSION = 11
"""Bumped whenever a table changes; a node finding an older file rebuilds it from the log."""

AUDIT_EVENTS_DDL = """
CREATE TABLE IF NOT EXISTS audit_events (
    ledger_key        VARCHAR PRIMARY KEY,
    event_id          UUID NOT NULL,
    tenant_id         VARCHAR NOT NULL,
    occurred_at       TIMESTAMPTZ NOT NULL,
    received_at       TIMESTAMPTZ NOT NULL,
    action            VARCHAR NOT NULL,
    crud              VARCHAR NOT NULL,
    category          VARCHAR,
    actor_type        VARCHAR NOT NULL,
    actor_id          VARCHAR NOT NULL,
    actor_name        VARCHAR,
    actor_email       VARCHAR,
    actor_ip          VARCHAR,
    actor_user_agent  VARCHAR,
    targets           STRUCT(type VARCHAR, id VARCHAR, name VARCHAR)[] NOT NULL,
    outcome_result    VARCHAR NOT NULL,
    outcome_reason    VARCHAR,
    request_id        VARCHAR,
    source            VARCHAR NOT NULL,
    metadata          MAP(VARCHAR, VARCHAR) NOT NULL,
    schema_version    INTEGER NOT NULL,
    kafka_partition   INTEGER NOT NULL,
    kafka_offset      BIGINT NOT NULL,
    seq               BIGINT NOT NULL
)
"""

OFFSETS_DDL = """
CREATE TABLE IF NOT EXISTS ledger_offsets (
    topic        VARCHAR NOT NULL,
    partition    INTEGER NOT NULL,
    next_offset  BIGINT NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (topic, partition)
)
"""

QUARANTINE_DDL = """
CREATE TABLE IF NOT EXISTS ledger_quarantine (
    topic      VARCHAR NOT NULL,
    partition  INTEGER NOT NULL,
    "offset"   BIGINT NOT NULL,
    stage      VARCHAR NOT NULL,
    reason     VARCHAR NOT NULL,
    PRIMARY KEY (topic, partition, "offset")
)
"""

CONFLICTS_DDL = """
CREATE TABLE IF NOT EXISTS ledger_conflicts (
    topic              VARCHAR NOT NULL,
    tenant_id          VARCHAR NOT NULL,
    event_id           VARCHAR NOT NULL,
    kept_partition     INTEGER NOT NULL,
    kept_offset        BIGINT NOT NULL,
    kept_hash          VARCHAR NOT NULL,
    dropped_partition  INTEGER NOT NULL,
    dropped_offset     BIGINT NOT NULL,
    dropped_hash       VARCHAR NOT NULL,
    PRIMARY KEY (topic, dropped_partition, dropped_offset)
)
"""

WEBHOOK_ATTEMPTS_DDL = """
CREATE TABLE IF NOT EXISTS webhook_attempts (
    attempt_id       VARCHAR PRIMARY KEY,
    delivery_id      VARCHAR NOT NULL,
    endpoint_id      VARCHAR NOT NULL,
    tenant_id        VARCHAR NOT NULL,
    event_ids        VARCHAR[] NOT NULL,
    event_type       VARCHAR NOT NULL,
    attempt          INTEGER NOT NULL,
    trigger          VARCHAR NOT NULL,
    attempted_at     TIMESTAMPTZ NOT NULL,
    status_code      INTEGER,
    latency_ms       DOUBLE,
    outcome          VARCHAR NOT NULL,
    error_class      VARCHAR,
    next_attempt_at  TIMESTAMPTZ,
    kafka_partition  INTEGER NOT NULL,
    kafka_offset     BIGINT NOT NULL
)
"""

ATTEMPT_COLUMNS: tuple[str, ...] = (
    "attempt_id",
    "delivery_id",
    "endpoint_id",
    "tenant_id",
    "event_ids",
    "event_type",
    "attempt",
    "trigger",
    "attempted_at",
    "status_code",
    "latency_ms",
    "outcome",
    "error_class",
    "next_attempt_at",
    "kafka_partition",
    "kafka_offset",
)

META_DDL = """
CREATE TABLE IF NOT EXISTS ledger_meta (
    key    VARCHAR PRIMARY KEY,
    value  VARCHAR NOT NULL
)
"""

# Columns of audit_events in table order (the Arrow batch the materializer builds).
AUDIT_COLUMNS: tuple[str, ...] = (
    "ledger_key",
    "event_id",
    "tenant_id",
    "occurred_at",
    "received_at",
    "action",
    "crud",
    "category",
    "actor_type",
    "actor_id",
    "actor_name",
    "actor_email",
    "actor_ip",
    "actor_user_agent",
    "targets",
    "outcome_result",
    "outcome_reason",
    "request_id",
    "source",
    "metadata",
    "schema_version",
    "kafka_partition",
    "kafka_offset",
)

SEQ_COLUMN = "seq"
"""The column of ``audit_events`` after :data:`AUDIT_COLUMNS`: the order in which this
file committed its rows (1, 2, ...; gaps where a write failed), assigned by the
writer, never reused. It rises with the physical order, so DuckDB's zone maps find
the rows committed after a point; the sorted copies (:mod:`ledger.sorted_copies`)
mark how far they reach with it. It is the file's own, not the log's: a rebuild
numbers the same rows afresh (the log order is ``(kafka_partition, kafka_offset)``)."""
STORED_COLUMNS: tuple[str, ...] = (*AUDIT_COLUMNS, SEQ_COLUMN)
"""Every column of ``audit_events``, in table order."""

CONTENT_COLUMNS: tuple[str, ...] = tuple(
    c
    for c in AUDIT_COLUMNS
    if c not in {"ledger_key", "received_at", "schema_version", "kafka_partition", "kafka_offset"}
)
"""What a conflict compares: everything the caller said, not when or where it was logged.

``received_at`` is left out because ingest stamps it when the caller does not: an
honest resend of the same event differs only there.
"""

CONTENT_HASH = f"md5(to_json(struct_pack({', '.join(CONTENT_COLUMNS)})))"
"""SQL for the content hash of a row of ``audit_events`` (or of a batch shaped like it)."""

ALL_DDL: tuple[str, ...] = (
    AUDIT_EVENTS_DDL,
    OFFSETS_DDL,
    QUARANTINE_DDL,
    CONFLICTS_DDL,
    WEBHOOK_ATTEMPTS_DDL,
    META_DDL,
    *ROLLUP_DDL,
    *TARGET_SETS_DDL,
    *SORTED_COPIES_DDL,
)


def ledger_key(tenant_id: str, event_id: str) -> str:
    """The one-column form of the ledger key ``(tenant_id, event_id)``; unambiguous.

    The tenant is length-prefixed, so no tenant or event id, whatever it holds,
    can make two different pairs share a key.
    """
    return f"{len(tenant_id)}:{tenant_id}:{event_id}"


EVENT_COLUMN_NAMES: tuple[str, ...] = (
    "event_id", "tenant_id", "occurred_us", "received_us", "action", "crud", "category",
    "actor_type", "actor_id", "actor_name", "actor_email", "actor_ip", "actor_user_agent",
    "targets", "outcome_result", "outcome_reason", "request_id", "source", "metadata",
    "schema_version",
)  # fmt: skip
"""The fields of an event as the API reads it: a row's columns, its times as epoch microseconds."""
_EXPRESSIONS = {
    "event_id": "event_id::VARCHAR AS event_id",
    "occurred_us": "epoch_us(occurred_at) AS occurred_us",
    "received_us": "epoch_us(received_at) AS received_us",
}
EVENT_COLUMNS = ", ".join(_EXPRESSIONS.get(name, name) for name in EVENT_COLUMN_NAMES)
"""The select list of :data:`EVENT_COLUMN_NAMES` over ``audit_events`` (or a batch of its shape)."""

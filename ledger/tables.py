"""The DuckDB layout of the ledger: the materialized audit events and the stored offsets.

The Kafka log is the source of truth; these tables are a view that a replay rebuilds
with identical content. ``ledger_offsets`` holds, per topic partition, the offset of
the *next* record to read: the materializer commits it in the same transaction as
the rows it covers, and resumes *at* it (never after it) on start.
"""

from __future__ import annotations

AUDIT_EVENTS_DDL = """
CREATE TABLE IF NOT EXISTS audit_events (
    event_id          VARCHAR PRIMARY KEY,
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
    kafka_offset      BIGINT NOT NULL
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

# Columns of audit_events in table order (the Arrow batch the materializer builds).
AUDIT_COLUMNS: tuple[str, ...] = (
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

ALL_DDL: tuple[str, ...] = (AUDIT_EVENTS_DDL, OFFSETS_DDL)

"""A throwaway local PostgreSQL for the query benchmark's peer (bench-only code).

:class:`LocalPostgres` runs Debian's ``postgresql`` server binaries: installed with
``apt-get`` when missing (root only), a fresh cluster in a temp folder
(``initdb``, C locale so text orders by bytes as in DuckDB), a free port on
127.0.0.1 with ``trust`` authentication, and stopped and deleted by :meth:`stop`.
As root the server runs as the ``postgres`` user (PostgreSQL refuses root).
Durability is switched off (``fsync``, ``synchronous_commit``): the data is
generated, read-only while measured, and thrown away.

:func:`load_from_duckdb` copies ``audit_events`` of a ledger file into it (CSV
through ``COPY``, timestamps in UTC, ``event_id`` as ``uuid`` as the ledger
stores it, ``targets`` and ``metadata`` as ``jsonb``) and builds the indexes a
typical team would build for the list API: ``(tenant_id, occurred_at DESC,
event_id DESC)``, ``(tenant_id, actor_id, occurred_at DESC)`` and ``(tenant_id,
action, occurred_at DESC)``.
Nothing in the product imports this module.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import asyncpg
import duckdb

from velora.broker.server import free_port
from velora.errors import BrokerError

PEER_DDL = """
CREATE TABLE audit_events (
    event_id          uuid NOT NULL,
    tenant_id         text NOT NULL,
    occurred_at       timestamptz NOT NULL,
    received_at       timestamptz NOT NULL,
    action            text NOT NULL,
    crud              text NOT NULL,
    category          text,
    actor_type        text NOT NULL,
    actor_id          text NOT NULL,
    actor_name        text,
    actor_email       text,
    actor_ip          text,
    actor_user_agent  text,
    targets           jsonb NOT NULL,
    outcome_result    text NOT NULL,
    outcome_reason    text,
    request_id        text,
    source            text NOT NULL,
    metadata          jsonb NOT NULL,
    schema_version    integer NOT NULL
)
"""
PEER_INDEXES = (
    "CREATE INDEX ae_tenant_time ON audit_events (tenant_id, occurred_at DESC, event_id DESC)",
    "CREATE INDEX ae_tenant_actor ON audit_events (tenant_id, actor_id, occurred_at DESC)",
    "CREATE INDEX ae_tenant_action ON audit_events (tenant_id, action, occurred_at DESC)",
    "CREATE INDEX ae_targets ON audit_events USING gin (targets jsonb_path_ops)",
)
_EXPORT = """
COPY (SELECT event_id, tenant_id, occurred_at, received_at, action, crud, category,
             actor_type, actor_id, actor_name, actor_email, actor_ip, actor_user_agent,
             to_json(targets), outcome_result, outcome_reason, request_id, source,
             to_json(metadata), schema_version
      FROM audit_events ORDER BY rowid) TO '{path}' (FORMAT csv, HEADER false)
"""


def server_bin_dir(install: bool = True) -> Path:
    """The folder of Debian's PostgreSQL server binaries; ``apt-get install`` them if missing."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found and install:
        if os.geteuid() != 0:
            raise BrokerError("PostgreSQL is not installed: apt-get install postgresql")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=True, env=env, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"],
            check=True,
            env=env,
            capture_output=True,
        )
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise BrokerError("PostgreSQL server binaries not found under /usr/lib/postgresql")
    return Path(found[-1]).parent


class LocalPostgres:
    """One PostgreSQL server in a temp folder on a free port; ``with`` starts and stops it."""

    def __init__(self, shared_buffers: str = "1GB") -> None:
        self.bin = server_bin_dir()
        self.port = free_port()
        self.shared_buffers = shared_buffers
        self.root = Path(tempfile.mkdtemp(prefix="velora-pg-"))
        self.data = self.root / "data"
        self._as_user: list[str] = []
        if os.geteuid() == 0:  # postgres refuses to run as root
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]
        self.started = False

    @property
    def dsn(self) -> str:
        """A libpq/asyncpg DSN for the ``postgres`` database as the ``postgres`` user."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        proc = subprocess.run([*self._as_user, *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise BrokerError(f"{Path(args[0]).name} failed: {proc.stderr.strip()[-300:]}")

    def start(self) -> float:
        """initdb and start; seconds taken."""
        t0 = time.perf_counter()
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "-A", "trust", "-E", "UTF8", "--locale=C")  # fmt: skip
        options = " ".join([
            f"-p {self.port}", "-c listen_addresses=127.0.0.1", f"-k {self.root}",
            f"-c shared_buffers={self.shared_buffers}", "-c fsync=off",
            "-c synchronous_commit=off", "-c full_page_writes=off",
            "-c maintenance_work_mem=512MB", "-c max_wal_size=8GB", "-c max_connections=100",
        ])  # fmt: skip
        log_file = str(self.root / "server.log")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", log_file,
                  "-o", options, "-w", "-t", "120", "start")  # fmt: skip
        self.started = True
        return time.perf_counter() - t0

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its folder."""
        try:
            if self.started:
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                          "-w", "-t", "60", "stop")  # fmt: skip
                self.started = False
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def load_from_duckdb(pg: LocalPostgres, ledger_file: Path) -> float:
    """Copy ``audit_events`` of ``ledger_file`` into a fresh table of ``pg``, with
    the peer's indexes, and ANALYZE it; seconds taken."""
    t0 = time.perf_counter()
    csv = pg.root / "audit_events.csv"
    con = duckdb.connect(str(ledger_file), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(_EXPORT.format(path=str(csv).replace("'", "''")))
    finally:
        con.close()
    asyncio.run(_load_csv(pg.dsn, csv))
    csv.unlink(missing_ok=True)
    return time.perf_counter() - t0


async def _load_csv(dsn: str, csv: Path) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP TABLE IF EXISTS audit_events")
        await conn.execute(PEER_DDL)
        await conn.copy_to_table("audit_events", source=str(csv), format="csv")
        for ddl in PEER_INDEXES:
            await conn.execute(ddl)
        await conn.execute("VACUUM ANALYZE audit_events")
    finally:
        await conn.close()

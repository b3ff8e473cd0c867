"""PHI benchmarks: tokenization values/s, and what server-mode costs HTTP ingest.

- ``tokenize``/``detokenize``: :class:`phi.tokens.Tokenizer` on one thread over
  realistic values (member ids, names, emails), values/s.
- ``http ratio``: one real ``velora ingest serve`` (subprocess, following the
  control topic) is fed 500-event JSON batches by a few ``httpx`` clients, for a
  server-mode tenant (every event has a member actor with id, name and email, and a
  patient and a claim target, plus one PHI metadata key: 7 values tokenized per
  event) and for a tenant with no PHI mode, with events of the same shape. Every
  request carries new events (new patient, claim and MRN values; members drawn from
  a pool of 250, as staff and members recur in real audit trails), so the
  tokenizer's cache only helps where real traffic would let it. Runs alternate
  between the two tenants in one server; the ratio of the medians is the figure.
  Floor: the server-mode tenant keeps >= 60% of the plain rate.

Results go to ``bench/results/phi.json``. Run alone with ``python -m bench phi``.
"""

from __future__ import annotations

import json
import logging
import secrets
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from bench.ingest import HTTP_CLIENTS, _check_http, _IngestServer, _parallel
from bench.report import Row, write_results
from cli.tenants import set_phi_mode
from phi.keyset import Keyset
from phi.tokens import Tokenizer
from velora.errors import BrokerError
from velora.settings import Settings

RATIO_FLOOR = 0.60
BATCH = 500
RUNS = 5
REQUESTS_PER_RUN = 80  # x 500 events, per tenant and run
TOKEN_VALUES = 50_000
SERVER_TENANT, PLAIN_TENANT = "phi-server", "phi-plain"


def run(settings: Settings) -> list[Row]:
    """Measure tokenization and the server-mode HTTP ingest ratio."""
    return [*tokenization(), *http_ratio(settings)]


def tokenization() -> list[Row]:
    """Values/s of tokenize and detokenize on one thread."""
    tok = Tokenizer(Keyset.generate("bench"))
    values = [
        (f"MEM-{i:08d}", "member_id") if i % 3 == 0
        else (f"Dana Whitfield {i}", "name") if i % 3 == 1
        else (f"dana.{i}@example.org", "email")
        for i in range(TOKEN_VALUES)
    ]  # fmt: skip
    start = time.perf_counter()
    tokens = [(tok.tokenize(v, d), d) for v, d in values]
    tokenize_rate = TOKEN_VALUES / (time.perf_counter() - start)
    start = time.perf_counter()
    for t, d in tokens:
        tok.detokenize(t, d)
    detokenize_rate = TOKEN_VALUES / (time.perf_counter() - start)
    data = {
        "tokenize_values_per_s": round(tokenize_rate),
        "detokenize_values_per_s": round(detokenize_rate),
        "values": TOKEN_VALUES,
        "threads": 1,
    }
    write_results("phi", "tokenization", data)
    return [
        Row("tokenize (AES-SIV, 512-bit key), 1 thread", tokenize_rate, "values/s", extra=data),
        Row("detokenize, 1 thread", detokenize_rate, "values/s"),
    ]


def phi_events(tenant: str, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` events naming a member (actor), a patient and a claim, with an MRN."""
    base = datetime.now(UTC) - timedelta(minutes=5)
    return [
        {
            "tenant_id": tenant,
            "occurred_at": (base + timedelta(milliseconds=i)).isoformat(),
            "action": "patient.record.viewed",
            "crud": "read",
            "category": "records",
            "actor": {
                "type": "member",
                "id": f"MEM-{i % 250:06d}",
                "name": "Dana Whitfield",
                "email": f"dana.{i % 250}@example.org",
                "ip": f"10.1.{i % 8}.{i % 200}",
            },
            "targets": [
                {"type": "patient", "id": f"PAT-{seed}-{i}", "name": "Ottoline Vance"},
                {"type": "claim", "id": f"CLM-{seed}-{i}"},
            ],
            "outcome": {"result": "success"},
            "request_id": f"req-{seed}-{i}",
            "source": "ehr-service",
            "metadata": {"mrn": f"MRN-{seed}-{i}", "region": "eu-west-1"},
        }
        for i in range(n)
    ]


def http_ratio(settings: Settings) -> list[Row]:
    """HTTP-ingest events/s of a server-mode tenant over a plain one, in one server."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
    set_phi_mode(settings, SERVER_TENANT, "server", ("mrn",))
    token = secrets.token_urlsafe(24)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    per_client = REQUESTS_PER_RUN // HTTP_CLIENTS
    seeds = iter(range(1, 1_000_000))

    def fresh(tenant: str) -> list[list[bytes]]:
        """Bodies of new events for each client (PHI caches must not see repeats)."""
        return [
            [json.dumps(phi_events(tenant, BATCH, next(seeds))).encode() for _ in range(per_client)]
            for _ in range(HTTP_CLIENTS)
        ]

    warm = {
        t: [json.dumps(phi_events(t, BATCH, 0)).encode()] for t in (PLAIN_TENANT, SERVER_TENANT)
    }
    rates: dict[str, list[float]] = {PLAIN_TENANT: [], SERVER_TENANT: []}
    with _IngestServer(settings, token) as server:
        clients = [httpx.Client(base_url=server.url, timeout=60) for _ in range(HTTP_CLIENTS)]
        try:
            deadline = time.monotonic() + 60
            while True:  # until ingest's control state has caught up (503 before)
                r = clients[0].post("/internal/v1/events", content=warm[SERVER_TENANT][0],
                                    headers=headers)  # fmt: skip
                if r.status_code == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            for tenant in rates:  # warm up
                _check_http(
                    clients[0].post("/internal/v1/events", content=warm[tenant][0], headers=headers)
                )

            def measure(tenant: str) -> float:
                bodies = fresh(tenant)

                def work(client: httpx.Client, mine: list[bytes]) -> None:
                    for body in mine:
                        _check_http(
                            client.post("/internal/v1/events", content=body, headers=headers)
                        )

                start = time.perf_counter()
                _parallel(
                    [lambda c=c, b=b: work(c, b) for c, b in zip(clients, bodies, strict=True)]
                )
                return per_client * HTTP_CLIENTS * BATCH / (time.perf_counter() - start)

            for _ in range(RUNS):
                for tenant in (PLAIN_TENANT, SERVER_TENANT):
                    rates[tenant].append(measure(tenant))
        finally:
            for client in clients:
                client.close()
    plain = statistics.median(rates[PLAIN_TENANT])
    server_mode = statistics.median(rates[SERVER_TENANT])
    if plain <= 0:
        raise BrokerError("the plain tenant ingested nothing")
    ratio = server_mode / plain
    data = {
        "plain_events_per_s": round(plain),
        "server_mode_events_per_s": round(server_mode),
        "ratio": round(ratio, 3),
        "plain_runs": [round(r) for r in rates[PLAIN_TENANT]],
        "server_mode_runs": [round(r) for r in rates[SERVER_TENANT]],
        "phi_values_per_event": 7,
        "clients": HTTP_CLIENTS,
        "batch": BATCH,
        "requests_per_run": REQUESTS_PER_RUN,
        "floor": RATIO_FLOOR,
        "meets_floor": ratio >= RATIO_FLOOR,
    }
    write_results("phi", "http_ingest", data)
    return [
        Row("http ingest, tenant without PHI mode", plain, "events/s"),
        Row("http ingest, server-mode tenant", server_mode, "events/s"),
        Row("server-mode / plain", ratio, "ratio", f">= {RATIO_FLOOR}", extra=data),
    ]

"""``velora demo load --tenant T --events N``: synthetic, realistic audit events for a tenant.

Events go through the real ingest library (``ingest.AuditProducer``) onto the audit
topic; the command returns once Kafka acknowledged every one, with a progress bar
on stderr. Times are spread over the last 7 days in ascending order, as a live
system would have written them.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import uuid_utils
from tqdm import tqdm

from ingest import AuditProducer, Rejected
from query_api.keys import validate_tenant
from schemas.events import Actor, AuditEvent, Outcome, Target
from velora.errors import ValidationError
from velora.settings import Settings

CHUNK = 2000
SPAN = timedelta(days=7)

_ACTIONS = (
    ("claim.viewed", "read", "claims", "claim"),
    ("claim.updated", "update", "claims", "claim"),
    ("claim.created", "create", "claims", "claim"),
    ("member.viewed", "read", "members", "member"),
    ("member.exported", "read", "members", "member"),
    ("eligibility.checked", "read", "eligibility", "member"),
    ("user.login", "other", "auth", "session"),
    ("report.downloaded", "read", "reports", "report"),
)
_USERS = tuple(
    (f"usr_{i:04d}", name, f"{name.split()[0].lower()}@example-health.test")
    for i, name in enumerate(
        ("Dana Reyes", "Sam Okafor", "Priya Nair", "Lee Chen", "Alex Morgan", "Jo Schmidt")
    )
)
_SERVICES = ("claims-service", "member-portal", "eligibility-api", "reporting")


def demo_events(
    tenant_id: str, count: int, now: datetime, seed: int | None = None
) -> Iterator[AuditEvent]:
    """``count`` plausible events for one tenant, oldest first, ending at ``now``."""
    rng = random.Random(seed)
    step = SPAN / max(count, 1)
    for i in range(count):
        at = now - SPAN + step * i
        action, crud, category, target_type = rng.choice(_ACTIONS)
        if rng.random() < 0.8:
            uid, name, email = rng.choice(_USERS)
            actor = Actor(
                "user",
                uid,
                name,
                email,
                f"10.20.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                "Mozilla/5.0 (Macintosh) VeloraPortal/4.2",
            )
        else:
            svc = rng.choice(_SERVICES)
            actor = Actor("service", f"svc_{svc}", svc)
        result = rng.choices(("success", "failure", "denied"), (0.93, 0.04, 0.03))[0]
        yield AuditEvent(
            event_id=str(uuid_utils.uuid7()),
            tenant_id=tenant_id,
            occurred_at=at,
            received_at=at + timedelta(milliseconds=rng.randrange(5, 400)),
            action=action,
            crud=crud,
            category=category,
            actor=actor,
            targets=(Target(target_type, f"{target_type[:3].upper()}-{rng.randrange(10**6):06d}"),),
            outcome=Outcome(result, None if result == "success" else f"{result}: demo"),
            request_id=f"req_{uuid_utils.uuid4().hex[:16]}",
            source=rng.choice(_SERVICES),
            metadata={"demo": "true", "portal_version": "4.2"},
        )


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``velora demo load``."""
    p = sub.add_parser("demo", help="demo data for a tenant")
    ds = p.add_subparsers(dest="demo_command", required=True, metavar="ACTION")
    load = ds.add_parser("load", help="send N synthetic audit events for a tenant via ingest")
    load.add_argument("--tenant", required=True, help="tenant id")
    load.add_argument("--events", type=int, default=1000, help="how many (default 1000)")
    load.add_argument("--seed", type=int, help="random seed, for repeatable data")
    load.set_defaults(func=_load)


def _load(args: argparse.Namespace, settings: Settings) -> int:
    validate_tenant(args.tenant)
    if args.events < 0:
        raise ValidationError("--events must be >= 0")
    sent = 0
    events = demo_events(args.tenant, args.events, datetime.now(UTC), args.seed)
    with (
        AuditProducer(settings) as producer,
        tqdm(total=args.events, unit="ev", file=sys.stderr, desc=f"demo {args.tenant}") as bar,
    ):
        while sent < args.events:
            chunk = [e for _, e in zip(range(CHUNK), events, strict=False)]
            results = producer.send_many(chunk)
            rejected = [r for r in results if isinstance(r, Rejected)]
            if rejected:
                raise ValidationError(f"{len(rejected)} demo events rejected by ingest")
            sent += len(chunk)
            bar.update(len(chunk))
    print(f"loaded {sent} events for tenant {args.tenant} (acknowledged by Kafka)")
    return 0

"""Synthetic, realistic audit events for a demo tenant (``velora demo load``, ``velora run``).

Times are spread over the last 7 days in ascending order, as a live system would
have written them.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta

import uuid_utils

from schemas.events import Actor, AuditEvent, Outcome, Target

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

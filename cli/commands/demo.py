"""``velora demo load --tenant T --events N``: synthetic, realistic audit events for a tenant.

Events go through the real ingest library (``ingest.AuditProducer``) onto the audit
topic; the command returns once Kafka acknowledged every one, with a progress bar
on stderr. Times are spread over the last 7 days in ascending order, as a live
system would have written them.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime

from velora.errors import ValidationError
from velora.settings import Settings

CHUNK = 2000


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
    from tqdm import tqdm

    from cli.demo_data import demo_events
    from ingest import AuditProducer, Rejected
    from schemas.rules import check_tenant

    check_tenant(args.tenant)
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

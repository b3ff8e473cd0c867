"""``velora keys create|list|revoke|rotate``: operators mint and manage API keys.

Keys live on the compacted control topic as ``ApiKey`` records that hold only an
HMAC of the secret. ``create`` and ``rotate`` print the full key exactly once, on
the last line of stdout (``--json``: one JSON object with a ``key`` field). The
other commands never print a secret.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

from query_api.tokens import SCOPES
from velora.settings import Settings


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``keys`` command group."""
    p = sub.add_parser("keys", help="mint, list, revoke and rotate public API keys")
    ks = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    create = ks.add_parser("create", help="mint a key; prints it once, on the last line")
    create.add_argument("--tenant", required=True, help="the tenant the key reads")
    create.add_argument("--scopes", required=True, help=f"comma-separated: {','.join(SCOPES)}")
    create.add_argument("--name", help="a label for operators (1-128 printable characters)")
    create.add_argument(
        "--environment",
        choices=("live", "staging"),
        help="live (vlk_live_ keys) or staging (vlk_test_ keys); default VELORA_ENVIRONMENT",
    )
    create.add_argument(
        "--allow-ip",
        action="append",
        default=[],
        metavar="CIDR",
        help="only accept the key from this IPv4/IPv6 network (repeatable; default: anywhere)",
    )
    create.add_argument("--json", action="store_true", help="print one JSON object")
    create.set_defaults(func=_create)

    listing = ks.add_parser("list", help="list a tenant's keys (never secrets)")
    listing.add_argument("--tenant", help="only this tenant's keys (default: all)")
    listing.add_argument("--json", action="store_true", help="print a JSON array")
    listing.set_defaults(func=_list)

    revoke = ks.add_parser("revoke", help="revoke a key now (nodes refuse it within 2 s)")
    revoke.add_argument("key_id", help="the 8 hex characters after vlk_live_")
    revoke.add_argument("--json", action="store_true", help="print one JSON object")
    revoke.set_defaults(func=_revoke)

    rotate = ks.add_parser(
        "rotate",
        help="mint a replacement with the same scopes; the old key expires after "
        "VELORA_KEY_ROTATION_GRACE_SECONDS (default 24 h)",
    )
    rotate.add_argument("key_id", help="the key to replace")
    rotate.add_argument("--json", action="store_true", help="print one JSON object")
    rotate.set_defaults(func=_rotate)


def _create(args: argparse.Namespace, settings: Settings) -> int:
    from cli.keys import create_key, parse_scopes

    issued = create_key(
        settings,
        args.tenant,
        parse_scopes(args.scopes),
        args.name,
        environment=args.environment,
        allowed_ips=args.allow_ip,
    )
    if args.json:
        print(json.dumps(issued.to_json()))
        return 0
    rec = issued.record
    print(
        f"created {rec.environment} key {rec.key_id} for tenant {rec.tenant_id} "
        f"with scopes {','.join(rec.scopes)}"
    )
    print("the full key is shown once; store it in a secrets manager now:")
    print(issued.token)
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    from cli.keys import list_keys, public_view

    now = datetime.now(UTC)
    views = [public_view(k, now) for k in list_keys(settings, args.tenant)]
    if args.json:
        print(json.dumps(views))
        return 0
    columns = ("key_id", "tenant_id", "name", "scopes", "status", "created_at", "expires_at")
    rows = [
        [
            ",".join(v[c]) if c == "scopes" else ("" if v[c] is None else str(v[c]))  # type: ignore[arg-type]
            for c in columns
        ]
        for v in views
    ]
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _revoke(args: argparse.Namespace, settings: Settings) -> int:
    from cli.keys import public_view, revoke_key

    key, _offset = revoke_key(settings, args.key_id)
    view = public_view(key, datetime.now(UTC))
    print(json.dumps(view) if args.json else f"revoked key {key.key_id} ({key.tenant_id})")
    return 0


def _rotate(args: argparse.Namespace, settings: Settings) -> int:
    from cli.keys import public_view, rotate_key

    issued, retired = rotate_key(settings, args.key_id)
    if args.json:
        out = issued.to_json()
        out["replaces"] = public_view(retired, datetime.now(UTC))
        print(json.dumps(out))
        return 0
    expires = retired.expires_at.isoformat() if retired.expires_at else "never"
    print(
        f"rotated key {retired.key_id} -> {issued.record.key_id}; "
        f"the old key stays valid until {expires}"
    )
    print("the new key is shown once; store it in a secrets manager now:")
    print(issued.token)
    return 0

"""``velora tenants set-phi-mode|rotate-phi-key|show``: a tenant's PHI mode (``cli.tenants``).

``set-phi-mode TENANT server|client|sidecar`` writes a control record; it refuses
to change the mode of a tenant that already has events unless ``--force`` is
given (a change applies to new events only; see ``docs/phi.md``).
``--metadata-key K`` (repeatable) marks metadata keys whose values are PHI.
``rotate-phi-key TENANT`` rotates a server-mode tenant's keyset. ``show TENANT``
prints the mode, the PHI metadata keys and (server-mode) the key ids.
"""

from __future__ import annotations

import argparse
import json

from velora.settings import Settings

MODES = ("server", "client", "sidecar")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``tenants`` command group."""
    p = sub.add_parser("tenants", help="a tenant's PHI mode (docs/phi.md)")
    ts = p.add_subparsers(dest="tenants_command", required=True, metavar="ACTION")
    setm = ts.add_parser("set-phi-mode", help="choose how the tenant's PHI crosses the wire")
    setm.add_argument("tenant")
    setm.add_argument("mode", choices=MODES)
    setm.add_argument(
        "--metadata-key",
        action="append",
        metavar="KEY",
        help="a metadata key whose values are PHI (repeatable; default: keep the current ones)",
    )
    setm.add_argument(
        "--force", action="store_true", help="change the mode although the tenant has events"
    )
    setm.add_argument("--json", action="store_true", help="print one JSON object")
    setm.set_defaults(func=_set)
    rot = ts.add_parser("rotate-phi-key", help="new primary key for a server-mode tenant")
    rot.add_argument("tenant")
    rot.add_argument("--json", action="store_true", help="print one JSON object")
    rot.set_defaults(func=_rotate)
    show = ts.add_parser("show", help="the tenant's PHI mode and keys (never key material)")
    show.add_argument("tenant")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.set_defaults(func=_show)


def _print(view: object, as_json: bool) -> int:
    data = view.to_json()  # type: ignore[attr-defined]
    if as_json:
        print(json.dumps(data))
        return 0
    print(f"tenant:            {data['tenant_id']}")
    print(f"PHI mode:          {data['phi_mode'] or 'none (no PHI mode set: nothing tokenized)'}")
    print(f"PHI metadata keys: {', '.join(data['phi_metadata_keys']) or '-'}")
    if data["phi_key_ids"]:
        print(f"PHI keys:          {', '.join(data['phi_key_ids'])} "
              f"(primary {data['phi_primary_key_id']})")  # fmt: skip
    if data["updated_at"]:
        print(f"updated at:        {data['updated_at']}")
    return 0


def _set(args: argparse.Namespace, settings: Settings) -> int:
    from cli.tenants import set_phi_mode

    keys = None if args.metadata_key is None else tuple(args.metadata_key)
    view = set_phi_mode(settings, args.tenant, args.mode, keys, force=args.force)
    return _print(view, args.json)


def _rotate(args: argparse.Namespace, settings: Settings) -> int:
    from cli.tenants import rotate_phi_key

    return _print(rotate_phi_key(settings, args.tenant), args.json)


def _show(args: argparse.Namespace, settings: Settings) -> int:
    from cli.tenants import show

    return _print(show(settings, args.tenant), args.json)

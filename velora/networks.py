"""IP networks: CIDR lists (trusted proxies, key allow-lists) and loopback binds.

- :func:`parse_network` reads one IPv4 or IPv6 network (``203.0.113.0/24``) or a
  single address (a /32 or /128) and returns its canonical text; host bits set
  below the prefix (``203.0.113.5/24``) are refused, since the intent is unclear.
- :class:`NetworkSet` answers "is this client address inside?", treating an
  IPv4-mapped IPv6 address (``::ffff:203.0.113.5``) as its IPv4 address.
- :func:`is_loopback_host` tells whether a bind address only listens on loopback.

Errors are :class:`ValueError` with a reason that never echoes the input, so the
settings parser and the CLI can name the variable or option themselves.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_network(text: str) -> str:
    """The canonical form of one CIDR network or address; ValueError if it is neither."""
    raw = text.strip()
    if not raw or len(raw) > 64:
        raise ValueError("must be an IPv4 or IPv6 CIDR such as 203.0.113.0/24")
    try:
        network = ipaddress.ip_network(raw, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            raise ValueError("has host bits set below its prefix length") from None
        raise ValueError("must be an IPv4 or IPv6 CIDR such as 203.0.113.0/24") from None
    return str(network)


def client_address(text: str | None) -> Address | None:
    """A client's address as an ip_address (IPv4-mapped IPv6 unwrapped), or None."""
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class NetworkSet:
    """A set of networks with a membership test for client address strings."""

    def __init__(self, networks: Iterable[str]) -> None:
        self._networks: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in networks)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __contains__(self, client: object) -> bool:
        address = client_address(client) if isinstance(client, str) else None
        if address is None:
            return False
        return any(address.version == n.version and address in n for n in self._networks)


def is_loopback_host(host: str) -> bool:
    """Whether binding ``host`` listens on loopback only (``127.0.0.0/8``, ``::1``, localhost)."""
    if host.strip().lower() == "localhost":
        return True
    address = client_address(host.strip().strip("[]"))
    return address is not None and address.is_loopback

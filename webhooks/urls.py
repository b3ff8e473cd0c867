"""Where a webhook may be delivered: the SSRF rules, checked at creation and at connect time.

An endpoint URL must be ``https`` with a host that resolves only to public
addresses. Refused, with a 422 naming ``url``: other schemes, credentials in the
URL, a fragment, over :data:`MAX_URL` characters, a host that does not resolve, and
any host with an address that is private, loopback, link-local (the cloud metadata
address 169.254.169.254 is one), multicast, reserved, unspecified, shared
(100.64.0.0/10), or an IPv6 form of one of those (IPv4-mapped, NAT64).

With ``VELORA_WEBHOOKS_ALLOW_INSECURE_LOOPBACK=1`` the one exception is
``http://127.0.0.1:<port>/...``, spelled with that literal address (local
development and the tests); a *name* that resolves to 127.0.0.1 stays refused.

The same check runs again when the dispatcher opens a connection
(:mod:`webhooks.transport`): the name is resolved once more and the connection goes
to an address that passed, so a DNS answer that changed since the endpoint was
created (DNS rebinding) cannot reach an internal address.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from velora.errors import ErrorDetail, ValidationError

MAX_URL = 2048
LOOPBACK_LITERAL = "127.0.0.1"
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]
"""``resolve(host, port)`` -> the addresses the host has (system DNS by default)."""


@dataclass(frozen=True)
class Destination:
    """A URL that passed the syntax rules: where it points."""

    url: str
    scheme: str
    host: str
    port: int

    @property
    def insecure_loopback(self) -> bool:
        """``http://127.0.0.1:...`` (only valid with the insecure-loopback setting)."""
        return self.scheme == "http"


def _refuse(reason: str) -> ValidationError:
    return ValidationError(f"url {reason}", (ErrorDetail("url", reason),))


def parse_url(url: object, allow_insecure_loopback: bool) -> Destination:
    """Check the URL's form (no DNS); raises :class:`ValidationError` naming ``url``."""
    if not isinstance(url, str) or not url:
        raise _refuse("must be a non-empty string")
    if len(url) > MAX_URL:
        raise _refuse(f"must be at most {MAX_URL} characters")
    if not url.isascii() or not url.isprintable() or any(c.isspace() for c in url):
        raise _refuse("must be printable ASCII without spaces (punycode for other names)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise _refuse("is not a valid URL") from None
    host = (parts.hostname or "").lower()
    if parts.scheme == "https":
        pass
    elif parts.scheme == "http" and allow_insecure_loopback and host == LOOPBACK_LITERAL:
        pass
    elif parts.scheme == "http" and allow_insecure_loopback:
        raise _refuse("must be https (http only as http://127.0.0.1:<port>/...)")
    else:
        raise _refuse("must be https")
    if not host:
        raise _refuse("has no host")
    if parts.username is not None or parts.password is not None:
        raise _refuse("must not carry credentials")
    if parts.fragment:
        raise _refuse("must not have a fragment")
    return Destination(url, parts.scheme, host, port or (443 if parts.scheme == "https" else 80))


def forbidden(address: str) -> str | None:
    """Why a delivery must not go to ``address``, or None for a public address."""
    try:
        ip: IpAddress = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    for reason, test in (
        ("loopback", ip.is_loopback),
        ("link-local (metadata)", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("unspecified", ip.is_unspecified),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("not globally routable", not ip.is_global),
    ):
        if test:
            return reason
    return None


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, by the system resolver (empty if none)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def allowed_addresses(dest: Destination, addresses: Iterable[str]) -> list[str]:
    """The addresses of ``dest`` to connect to; raises when any of them is forbidden."""
    found = list(addresses)
    if not found:
        raise _refuse(f"host {dest.host} does not resolve")
    if dest.insecure_loopback:
        if found != [LOOPBACK_LITERAL]:
            raise _refuse("http is allowed only to 127.0.0.1")
        return found
    for address in found:
        reason = forbidden(address)
        if reason is not None:
            raise _refuse(f"host {dest.host} resolves to a {reason} address")
    return found


def check_destination(
    url: object, allow_insecure_loopback: bool, resolve: Resolver = system_resolver
) -> Destination:
    """The full check at creation: form, then every address the host resolves to."""
    dest = parse_url(url, allow_insecure_loopback)
    try:
        literal = ipaddress.ip_address(dest.host.strip("[]"))
    except ValueError:
        addresses = resolve(dest.host, dest.port)
    else:
        addresses = [str(literal)]
    allowed_addresses(dest, addresses)
    return dest

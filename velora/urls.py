"""The authorities the services put into URLs they hand out, validated before they are used.

An absolute URL the API gives a client (the ``Link: rel="next"`` header) starts
with a base URL the operator configured (``VELORA_PUBLIC_BASE_URL``, checked by
:func:`parse_base_url` at start) or, when none is set, with the request's
``Host`` header. A ``Host`` is used only when :func:`clean_authority` accepts it:

- a DNS name of letters, digits and hyphens in dot-separated labels of 1-63
  characters (253 in all), an IPv4 address, or an IPv6 address in brackets;
- optionally ``:port`` with a port of 1-65535;
- at most :data:`MAX_AUTHORITY` characters, ASCII only.

Anything else (spaces, user info, a path, control characters, 10 KB of text) is
never echoed; the caller falls back to an address it knows. Hosts are returned
lowercased, so what is echoed is a normalised form, never the raw header.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from urllib.parse import urlsplit

MAX_AUTHORITY = 260
"""The longest ``host[:port]`` accepted: a 253-character DNS name and a port."""

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
_PORT = re.compile(r"[0-9]{1,5}", re.ASCII)


def _host(host: str) -> str | None:
    """``host`` in normal form if it is a DNS name, IPv4 or bracketed IPv6 address."""
    if host.startswith("["):
        if not host.endswith("]"):
            return None
        try:
            return f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            return None
    if not host or len(host) > 253:
        return None
    labels = host.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return None
    if labels[-1].isdigit():  # dotted digits must be a real IPv4 address
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            return None
    return host


@functools.lru_cache(maxsize=1024)
def clean_authority(raw: str | None) -> str | None:
    """``host[:port]`` in normal form when ``raw`` is a valid authority, else ``None``
    (cached: a node sees few ``Host`` values, and checks one on every listed page)."""
    if not raw or len(raw) > MAX_AUTHORITY or not raw.isascii():
        return None
    text = raw.lower()
    host, port = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end != -1 and text[end + 1 :].startswith(":"):
            host, port = text[: end + 1], text[end + 2 :]
    elif ":" in text:
        host, _, port = text.rpartition(":")
    if port or text.endswith(":"):
        if not _PORT.fullmatch(port) or not 0 < int(port) < 65536:
            return None
    cleaned = _host(host)
    if cleaned is None:
        return None
    return f"{cleaned}:{port}" if port else cleaned


def parse_base_url(raw: str) -> str:
    """A public base URL ``http(s)://host[:port]`` in normal form (no trailing slash).

    Raises :class:`ValueError` with the reason (the settings turn it into a
    ``ConfigError`` naming the variable).
    """
    try:
        parts = urlsplit(raw)
    except ValueError:
        raise ValueError("must be an http(s) URL such as https://api.example.com") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("must start with http:// or https://")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError("must not hold user information")
    if parts.path not in ("", "/") or parts.query or parts.fragment or raw.endswith(("?", "#")):
        raise ValueError("must be scheme://host[:port] only, without a path, query or fragment")
    authority = clean_authority(parts.netloc)
    if authority is None:
        raise ValueError("must name a valid host (DNS name or IP address) and optional port")
    return f"{parts.scheme.lower()}://{authority}"

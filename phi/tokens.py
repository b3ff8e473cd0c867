"""Deterministic PHI tokens: AES-SIV (RFC 5297) with 512-bit keys, bound to tenant and domain.

Token text: ``tok_v1_<key id>_<base64url>``, where the key id is the keyset key's
8 hex digits and the base64url (no padding) is AES-SIV's synthetic IV followed by
the ciphertext. The associated data is one component, ``tok_v1 NUL tenant NUL
domain NUL key id`` (none of the parts can hold a NUL, so the encoding is
unambiguous; one component instead of four halves the cost of S2V):

- the same value gives the same token under one key, tenant and domain, so
  equality filters work on tokens (determinism leaks equality and frequency, and
  the token's length follows the value's: see ``docs/phi.md``);
- another tenant or domain gives another token, and a token opened with another
  tenant's keyset or under another domain does not decrypt (SIV authenticates);
- the key id is authenticated too, so a token whose id was edited does not open.

Values are normalized per domain before tokenizing (:func:`normalize`): Unicode
NFC and surrounding whitespace trimmed for every domain, lowercased as well for
``email``. Detokenizing returns the normalized value.

A :class:`Tokenizer` remembers its most recent results (:data:`CACHE_SIZE` tokens
and as many detokenized values), because audit events name the same members and
staff again and again; the cache lives in the memory of the process that holds
the keys anyway, and is dropped with the tokenizer (a rotation makes a new one).

Errors are :class:`~velora.errors.ValidationError` naming the problem (malformed
token, unknown key id, does not decrypt), never a value or partial plaintext.
Imports: the standard library, ``cryptography`` and ``velora.errors`` only.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from phi.keyset import Keyset
from velora.errors import ErrorDetail, ValidationError

PREFIX = "tok_v1_"
TOKEN_RE = re.compile(r"tok_v1_([0-9a-f]{8})_([A-Za-z0-9_-]{22,})")
"""A well-formed token (16 bytes of SIV at least, so 22 base64url characters or more)."""
DOMAIN_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
LOWERCASE_DOMAINS = frozenset({"email"})
CACHE_SIZE = 16_384
_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _error(reason: str, where: str) -> ValidationError:
    return ValidationError(f"{where}: {reason}", (ErrorDetail(where, reason),))


def normalize(value: str, domain: str) -> str:
    """The value as it is tokenized: NFC, trimmed, and lowercased for emails."""
    # ASCII text is already NFC: skip the Unicode pass (most ids and emails)
    out = (value if value.isascii() else unicodedata.normalize("NFC", value)).strip()
    return out.lower() if domain in LOWERCASE_DOMAINS else out


def is_token(value: str) -> bool:
    """Whether ``value`` is a well-formed token (of some tenant and domain)."""
    return TOKEN_RE.fullmatch(value) is not None


def _check_domain(domain: str) -> None:
    if not DOMAIN_RE.fullmatch(domain):
        raise _error("domain must be 1-32 of a-z, 0-9 and _, starting with a letter", "domain")


@dataclass
class Tokenizer:
    """Tokenize and detokenize with one tenant's keyset; thread-safe."""

    keyset: Keyset
    _ciphers: dict[str, AESSIV] = field(default_factory=dict, repr=False)
    _ads: dict[tuple[str, str], list[bytes]] = field(default_factory=dict, repr=False)
    _cached: Any = field(default=None, repr=False)
    _opened: Any = field(default=None, repr=False)
    _primary: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        self._ciphers = {k.kid: AESSIV(k.key) for k in self.keyset.keys}
        self._primary = self.keyset.primary.kid
        self._cached = lru_cache(maxsize=CACHE_SIZE)(self._tokenize)
        self._opened = lru_cache(maxsize=CACHE_SIZE)(self._detokenize)

    @property
    def tenant_id(self) -> str:
        """The tenant whose keyset this is."""
        return self.keyset.tenant_id

    def _ad(self, domain: str, kid: str) -> list[bytes]:
        ad = self._ads.get((domain, kid))
        if ad is None:
            _check_domain(domain)
            ad = [b"\0".join((b"tok_v1", self.tenant_id.encode(), domain.encode(), kid.encode()))]
            self._ads[(domain, kid)] = ad
        return ad

    def tokenize(self, value: str, domain: str, kid: str | None = None) -> str:
        """The token of ``value`` in ``domain``, under the primary key (or key ``kid``)."""
        return self._cached(value, domain, kid or self._primary)  # type: ignore[no-any-return]

    def tokenize_at(self, value: str, domain: str, _path: str = "") -> str:
        """:meth:`tokenize` under the primary key, as a :data:`phi.fields.ValueFn`."""
        return self._cached(value, domain, self._primary)  # type: ignore[no-any-return]

    def _tokenize(self, value: str, domain: str, kid: str) -> str:
        ad = self._ad(domain, kid)
        sealed = self._ciphers[kid].encrypt(normalize(value, domain).encode("utf-8"), ad)
        text = binascii.b2a_base64(sealed, newline=False).translate(_URLSAFE).rstrip(b"=")
        return f"{PREFIX}{kid}_{text.decode('ascii')}"

    def search_tokens(self, value: str, domain: str) -> list[str]:
        """The token of ``value`` under every key, primary first: equality search after rotation."""
        return [self.tokenize(value, domain, k.kid) for k in self.keyset.keys]

    def detokenize(self, token: str, domain: str, where: str = "token") -> str:
        """The (normalized) value of ``token``; :class:`ValidationError` naming ``where``."""
        reason = None
        try:
            return self._opened(token, domain)  # type: ignore[no-any-return]
        except _Refused as exc:
            reason = exc.reason
        raise _error(reason, where)

    def _detokenize(self, token: str, domain: str) -> str:
        match = TOKEN_RE.fullmatch(token)
        if match is None:
            raise _Refused("is not a well-formed tok_v1 token")
        kid, body = match.groups()
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise _Refused("token's key id is not in this keyset")
        try:
            ad = self._ad(domain, kid)
        except ValidationError:
            raise _Refused("domain must be 1-32 of a-z, 0-9 and _, from a letter") from None
        try:
            sealed = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            plain = cipher.decrypt(sealed, ad)
        except (InvalidTag, binascii.Error, ValueError):
            raise _Refused(
                "token does not decrypt with this keyset (another tenant, domain or key)"
            ) from None
        try:
            return plain.decode("utf-8")
        except UnicodeDecodeError:  # pragma: no cover - SIV authenticated what we encrypted
            raise _Refused("token does not hold UTF-8 text") from None


class _Refused(Exception):
    """Why a token does not open (not cached: lru_cache keeps only results)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

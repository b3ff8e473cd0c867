"""Keysets: one tenant's AES-SIV keys, a primary that tokenizes and older decrypt-only keys.

A keyset belongs to one tenant (its tokens bind the tenant in their associated
data, see :mod:`phi.tokens`). Its JSON form, the file the tokenizer CLI reads::

    {"format": "velora-phi-keyset", "version": 1, "tenant_id": "acme",
     "primary": "3f2a9c01",
     "keys": [{"id": "3f2a9c01", "key": "<base64url of 64 bytes>",
               "status": "primary", "created_at": "2026-12-01T22:00:00+00:00"},
              {"id": "0b7e11d4", "key": "...", "status": "decrypt", ...}]}

- Keys are 512 bits (AES-SIV with AES-256), ids are 8 random hex digits.
- :meth:`Keyset.rotate` adds a new primary and keeps every older key as
  ``decrypt``: old tokens still detokenize, new values get the new key, and
  :func:`phi.tokens.search_tokens` fans a value out over every key.
- **Files.** :func:`load_keyset` refuses a file that the group or others may read
  or write (``chmod 600``); :func:`save_keyset` writes a new file with mode 0600,
  atomically (a temporary file renamed over the old one), so a crash never leaves
  half a keyset. Errors name the path and the problem, never key material.

This module imports only the standard library and ``velora.errors`` (no third-party
package), so the tokenizer CLI installs and starts without the server's dependencies.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from velora.errors import ConfigError

FORMAT = "velora-phi-keyset"
VERSION = 1
KEY_BYTES = 64
"""512-bit AES-SIV keys: two AES-256 keys (S2V's MAC and CTR)."""
KID_HEX = 8
PRIMARY, DECRYPT = "primary", "decrypt"


@dataclass(frozen=True)
class KeyEntry:
    """One key of a keyset; ``status`` is ``primary`` or ``decrypt``."""

    kid: str
    key: bytes
    status: str
    created_at: str

    def __repr__(self) -> str:  # never show key material
        return f"KeyEntry(kid={self.kid!r}, status={self.status!r})"


@dataclass(frozen=True)
class Keyset:
    """The keys of one tenant, newest first; exactly one is ``primary``."""

    tenant_id: str
    keys: tuple[KeyEntry, ...]

    def __post_init__(self) -> None:
        primaries = [k for k in self.keys if k.status == PRIMARY]
        if len(primaries) != 1:
            raise ConfigError("a PHI keyset must have exactly one primary key")
        if len({k.kid for k in self.keys}) != len(self.keys):
            raise ConfigError("a PHI keyset has two keys with the same id")

    @property
    def primary(self) -> KeyEntry:
        """The key that tokenizes new values."""
        return next(k for k in self.keys if k.status == PRIMARY)

    def key(self, kid: str) -> KeyEntry | None:
        """The key with this id, or None."""
        return next((k for k in self.keys if k.kid == kid), None)

    @classmethod
    def generate(cls, tenant_id: str) -> Keyset:
        """A new keyset with one fresh primary key."""
        if not tenant_id:
            raise ConfigError("a PHI keyset needs a tenant id")
        return cls(tenant_id, (_new_key(PRIMARY, ()),))

    def rotate(self) -> Keyset:
        """A copy with a new primary key; every older key becomes decrypt-only."""
        older = tuple(replace(k, status=DECRYPT) for k in self.keys)
        return Keyset(self.tenant_id, (_new_key(PRIMARY, older), *older))

    def to_json(self) -> dict[str, Any]:
        """The JSON form (the file format)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "tenant_id": self.tenant_id,
            "primary": self.primary.kid,
            "keys": [
                {
                    "id": k.kid,
                    "key": base64.urlsafe_b64encode(k.key).decode("ascii"),
                    "status": k.status,
                    "created_at": k.created_at,
                }
                for k in self.keys
            ],
        }

    def dumps(self) -> str:
        """The JSON text of :meth:`to_json`."""
        return json.dumps(self.to_json(), indent=2) + "\n"

    @classmethod
    def from_json(cls, data: Any, where: str = "keyset") -> Keyset:
        """Parse the JSON form; :class:`ConfigError` naming ``where`` and the problem."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise ConfigError(f"{where}: not a Velora PHI keyset")
        if data.get("version") != VERSION:
            raise ConfigError(f"{where}: unsupported keyset version")
        tenant = data.get("tenant_id")
        raw_keys = data.get("keys")
        if not isinstance(tenant, str) or not tenant or not isinstance(raw_keys, list):
            raise ConfigError(f"{where}: needs tenant_id and a list of keys")
        keys = []
        for i, item in enumerate(raw_keys):
            keys.append(_parse_key(item, f"{where}: keys[{i}]"))
        if not keys:
            raise ConfigError(f"{where}: has no keys")
        keyset = cls(tenant, tuple(keys))
        if data.get("primary") != keyset.primary.kid:
            raise ConfigError(f"{where}: 'primary' does not name the primary key")
        return keyset

    @classmethod
    def loads(cls, text: str, where: str = "keyset") -> Keyset:
        """Parse the JSON text of a keyset."""
        try:
            data = json.loads(text)
        except ValueError:
            raise ConfigError(f"{where}: not valid JSON") from None
        return cls.from_json(data, where)

    def __repr__(self) -> str:
        return f"Keyset(tenant_id={self.tenant_id!r}, keys={list(self.keys)!r})"


def _new_key(status: str, existing: tuple[KeyEntry, ...]) -> KeyEntry:
    taken = {k.kid for k in existing}
    while True:
        kid = secrets.token_hex(KID_HEX // 2)
        if kid not in taken:
            break
    now = datetime.now(UTC).replace(microsecond=0).isoformat()
    return KeyEntry(kid, secrets.token_bytes(KEY_BYTES), status, now)


def _parse_key(item: Any, where: str) -> KeyEntry:
    if not isinstance(item, Mapping):
        raise ConfigError(f"{where}: not an object")
    kid, key, status = item.get("id"), item.get("key"), item.get("status")
    if not isinstance(kid, str) or len(kid) != KID_HEX or not _is_hex(kid):
        raise ConfigError(f"{where}: 'id' must be {KID_HEX} lowercase hex digits")
    if status not in (PRIMARY, DECRYPT):
        raise ConfigError(f"{where}: 'status' must be primary or decrypt")
    try:
        material = base64.urlsafe_b64decode(str(key))
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}: 'key' is not base64url") from None
    if len(material) != KEY_BYTES:
        raise ConfigError(f"{where}: 'key' must be {KEY_BYTES} bytes (512 bits)")
    return KeyEntry(kid, material, status, str(item.get("created_at") or ""))


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


def check_permissions(path: Path) -> None:
    """Refuse a keyset file that anyone but its owner may read or write."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such keyset file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the keyset ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{path}: a keyset must be a regular file")
    if mode & 0o077:
        raise ConfigError(
            f"{path}: keyset is accessible to group or others "
            f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
        )


def load_keyset(path: Path) -> Keyset:
    """Read a keyset file after checking its permissions."""
    check_permissions(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise ConfigError(f"{path}: cannot read the keyset") from None
    return Keyset.loads(text, str(path))


def save_keyset(keyset: Keyset, path: Path, *, overwrite: bool = False) -> None:
    """Write a keyset with mode 0600, atomically; refuse to replace a file unless asked."""
    if path.exists() and not overwrite:
        raise ConfigError(f"{path}: exists; refusing to overwrite a keyset")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(keyset.dumps())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"{path}: cannot write the keyset ({exc.strerror})") from None

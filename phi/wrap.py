"""Server-mode keysets at rest: wrapped by ``VELORA_SECRETS_KEY`` before they reach Kafka.

A server-mode tenant's keyset (:class:`phi.keyset.Keyset`) lives on the control
topic as a ``PhiKeyset`` record whose ``wrapped`` field is AES-256-GCM ciphertext
of the keyset's JSON form. The key is derived by HKDF-SHA256 from
``VELORA_SECRETS_KEY`` with its own ``info`` (``velora phi keysets v1``), so it is
not the key that seals webhook secrets although the variable is the same. Text form:
``v1.`` + base64url of ``nonce (12 bytes) || ciphertext || tag``; the associated
data is ``phi_keyset:<tenant_id>``, so a wrapped keyset copied to another tenant's
record does not open. A ciphertext that does not open raises
:class:`~velora.errors.ConfigError` naming the variable, never a value.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from phi.keyset import Keyset
from velora.errors import ConfigError
from velora.settings import Secret

FORMAT = "v1."
_INFO = b"velora phi keysets v1"
_NONCE = 12


class KeysetWrapper:
    """Wrap and unwrap tenants' keysets under ``VELORA_SECRETS_KEY``."""

    def __init__(self, key: Secret) -> None:
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
            key.reveal().encode("utf-8")
        )
        self._aead = AESGCM(derived)

    def wrap(self, keyset: Keyset) -> str:
        """The text form of ``keyset`` sealed for its tenant."""
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, keyset.dumps().encode(), _aad(keyset.tenant_id))
        return FORMAT + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def unwrap(self, text: str, tenant_id: str) -> Keyset:
        """The keyset of :meth:`wrap`'s output; :class:`ConfigError` if it does not open."""
        problem = (
            f"the PHI keyset of tenant {tenant_id} does not decrypt: VELORA_SECRETS_KEY "
            "differs from the key it was written with"
        )
        if not text.startswith(FORMAT):
            raise ConfigError(problem)
        try:
            raw = base64.urlsafe_b64decode(text[len(FORMAT) :])
            plain = self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], _aad(tenant_id))
        except (InvalidTag, ValueError, binascii.Error):
            raise ConfigError(problem) from None
        keyset = Keyset.loads(plain.decode("utf-8"), f"PHI keyset of tenant {tenant_id}")
        if keyset.tenant_id != tenant_id:
            raise ConfigError(f"the PHI keyset stored for tenant {tenant_id} is another tenant's")
        return keyset


def _aad(tenant_id: str) -> bytes:
    return f"phi_keyset:{tenant_id}".encode()

"""Webhook secrets: signing secrets minted here, and every secret encrypted at rest.

- :func:`new_signing_secret` makes ``whsec_`` + base64 of 24 random bytes, the
  Standard Webhooks format. The whole string is the key of the Stripe-style
  ``Velora-Signature`` (as Stripe's libraries use it); the bytes after ``whsec_``,
  base64-decoded, are the key of ``webhook-signature`` (as the Standard Webhooks
  libraries use it). See :mod:`webhooks.signing`.
- :class:`SecretBox` encrypts signing secrets and Splunk tokens before they are
  written to the control topic: AES-256-GCM (``cryptography``), with a key derived
  by HKDF-SHA256 from ``VELORA_SECRETS_KEY``. Text form: ``v1.`` + base64url of
  ``nonce (12 bytes) || ciphertext || tag``. The associated data is
  ``<endpoint_id>:<field>``, so a ciphertext copied into another endpoint's record,
  or into another field, does not decrypt. A ciphertext that does not open (a wrong
  or changed ``VELORA_SECRETS_KEY``) raises :class:`~velora.errors.ConfigError`,
  whose message names the variable and never a value.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from velora.errors import ConfigError
from velora.settings import Secret

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret
SECRET_BYTES = 24
FORMAT = "v1."
_INFO = b"velora webhook secrets v1"
_NONCE = 12


def new_signing_secret() -> str:
    """A new endpoint signing secret: ``whsec_`` + base64 of 24 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def standard_key(secret: str) -> bytes:
    """The HMAC key of ``webhook-signature``: the base64 after ``whsec_``, decoded."""
    body = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("a webhook signing secret is not whsec_<base64>") from None


class SecretBox:
    """AES-256-GCM under a key derived from ``VELORA_SECRETS_KEY``."""

    def __init__(self, key: Secret) -> None:
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(
            key.reveal().encode("utf-8")
        )
        self._aead = AESGCM(derived)

    def encrypt(self, plaintext: str, endpoint_id: str, field: str) -> str:
        """The text form of ``plaintext`` encrypted for ``field`` of ``endpoint_id``."""
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, plaintext.encode("utf-8"), _aad(endpoint_id, field))
        return FORMAT + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def decrypt(self, text: str, endpoint_id: str, field: str) -> str:
        """The plaintext of :meth:`encrypt`'s output; :class:`ConfigError` if it does not open."""
        if not text.startswith(FORMAT):
            raise ConfigError(f"webhook {field} of {endpoint_id} is not a v1 ciphertext")
        try:
            raw = base64.urlsafe_b64decode(text[len(FORMAT) :])
            plain = self._aead.decrypt(raw[:_NONCE], raw[_NONCE:], _aad(endpoint_id, field))
        except (InvalidTag, ValueError, binascii.Error):
            raise ConfigError(
                f"webhook {field} of {endpoint_id} does not decrypt: VELORA_SECRETS_KEY "
                "differs from the key it was written with"
            ) from None
        return plain.decode("utf-8")


def _aad(endpoint_id: str, field: str) -> bytes:
    return f"{endpoint_id}:{field}".encode()

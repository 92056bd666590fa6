"""Secrets at rest: JSON values sealed with Fernet under a rotatable set of keys.

The keys come from `NOETL_CREDENTIALS_KEY`, comma-separated: the first seals, every one opens, so
a new key is rotated in by putting it first and dropped once nothing sealed with it is left.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import SecretStr

KEY_SETTING = "NOETL_CREDENTIALS_KEY"


class SecretError(Exception):
    """A secret cannot be sealed or opened. Messages never carry the secret or a key."""


class NotConfigured(SecretError):
    def __init__(self) -> None:
        super().__init__(f"credentials are not configured: set {KEY_SETTING}")


class Undecryptable(SecretError):
    """None of the keys opens the token, or what it holds is not JSON."""


def generate_key() -> str:
    """A new key for `NOETL_CREDENTIALS_KEY`."""
    return Fernet.generate_key().decode()


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class Cipher:
    """Seals and opens JSON values. Without keys it exists but refuses (`NotConfigured`), so a
    process without the setting still serves everything that needs no secret."""

    def __init__(self, keys: list[str]) -> None:
        fernets = []
        for i, key in enumerate(keys, 1):
            try:
                fernets.append(Fernet(key))
            except ValueError:
                raise ValueError(
                    f"{KEY_SETTING}: key {i} of {len(keys)} is not a Fernet key "
                    "(32 url-safe base64-encoded bytes)"
                ) from None
        self._fernet = MultiFernet(fernets) if fernets else None
        # A key of its own for digests, derived from the sealing key: a digest reveals nothing
        # of the value, and is not a plain hash that a guess could be checked against.
        self._digest_key = (
            HKDF(hashes.SHA256(), 32, salt=None, info=b"noetl digest").derive(
                base64.urlsafe_b64decode(keys[0])
            )
            if fernets
            else b""
        )

    @classmethod
    def from_setting(cls, setting: SecretStr | str | None) -> Cipher:
        value = setting.get_secret_value() if isinstance(setting, SecretStr) else setting or ""
        return cls([k.strip() for k in value.split(",") if k.strip()])

    @property
    def configured(self) -> bool:
        return self._fernet is not None

    def _require(self) -> MultiFernet:
        if self._fernet is None:
            raise NotConfigured()
        return self._fernet

    def encrypt_json(self, value: Any) -> bytes:
        """A Fernet token (URL-safe base64 ASCII) sealing `value` with the first key."""
        return self._require().encrypt(_canonical(value))

    def decrypt_json(self, token: bytes | str) -> Any:
        fernet = self._require()
        try:
            return json.loads(fernet.decrypt(token))
        except InvalidToken:
            raise Undecryptable("none of the configured keys opens this secret") from None
        except ValueError:
            raise Undecryptable("the secret does not hold JSON") from None

    def digest_json(self, value: Any) -> str:
        """A keyed digest of `value`: equal values, equal digests (under the same first key).
        For telling a retried request from a different one without keeping the secret."""
        self._require()
        return hmac.new(self._digest_key, _canonical(value), hashlib.sha256).hexdigest()

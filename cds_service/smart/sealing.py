"""Sealing session secrets before they reach the database (AES-256-GCM).

Tokens and PKCE verifiers must not sit on disk in plain text. The key is ``SMART_SESSION_KEY``,
the same on every replica; without it, it is random, made when the app is created and held only in
memory: with gunicorn's ``preload_app`` the master creates the app and every worker it forks
inherits the same key, so all workers read each other's sessions. A process with another key
(after a restart, or another replica) cannot open them, and the store treats such sessions as
expired. Each sealed value is bound to its row (associated data), so
a sealed blob moved to another session or launch does not open.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any, Final

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE_BYTES: Final = 12


class Sealer:
    """Seals JSON objects with one in-memory key; ``key_id`` names the key without revealing it."""

    def __init__(self, key: bytes | None = None) -> None:
        key = key if key is not None else AESGCM.generate_key(bit_length=256)
        self._aead = AESGCM(key)
        self.key_id = hashlib.sha256(b"hfs-cds session sealing key id\0" + key).digest()[:16]

    def seal(self, value: Mapping[str, Any], bound_to: bytes) -> bytes:
        """``value`` as JSON, encrypted and authenticated; opens only with the same ``bound_to``."""
        nonce = os.urandom(_NONCE_BYTES)  # random 96-bit nonces: safe for 2^32 seals per key
        return nonce + self._aead.encrypt(nonce, orjson.dumps(value), bound_to)

    def open(self, sealed: bytes, bound_to: bytes) -> dict[str, Any] | None:
        """The sealed JSON object, or None when it was sealed with another key or altered."""
        try:
            plain = self._aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], bound_to)
        except (InvalidTag, ValueError):
            return None
        value = orjson.loads(plain)
        return value if isinstance(value, dict) else None


__all__ = ["Sealer"]

"""
Instance tokens: one secret per running instance, handed to the daemon in its environment.

Tokens are random (256 bits), kept only in memory (a node restart restarts the daemons and
issues new ones), and looked up by their SHA-256 so that the comparison does not depend on
the secret's bytes.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

__all__ = ["Grant", "TokenBook"]


@dataclass(frozen=True)
class Grant:
    """What one token allows: one instance's store and its descriptor's key prefixes."""

    store_id: str
    service_id: str
    prefixes: tuple[bytes, ...]
    session_id: str

    def allows_key(self, key: bytes) -> bool:
        """Whether ``key`` lies under one of the prefixes."""
        return any(key.startswith(prefix) for prefix in self.prefixes)

    def allows_prefix(self, prefix: bytes) -> bool:
        """Whether every key under ``prefix`` lies under one of the prefixes."""
        return any(prefix.startswith(allowed) for allowed in self.prefixes)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


class TokenBook:
    """The live tokens."""

    def __init__(self) -> None:
        self._grants: dict[bytes, Grant] = {}
        self._by_instance: dict[tuple[str, str], bytes] = {}

    def issue(self, store_id: str, service_id: str, prefixes: tuple[str, ...]) -> str:
        """A new token for the instance (revoking any previous one)."""
        self.revoke(store_id, service_id)
        token = secrets.token_urlsafe(32)
        digest = _digest(token)
        self._grants[digest] = Grant(
            store_id,
            service_id,
            tuple(prefix.encode("utf-8") for prefix in prefixes),
            secrets.token_hex(8),
        )
        self._by_instance[(store_id, service_id)] = digest
        return token

    def revoke(self, store_id: str, service_id: str) -> None:
        """Forget the instance's token (it stopped)."""
        digest = self._by_instance.pop((store_id, service_id), None)
        if digest is not None:
            self._grants.pop(digest, None)

    def lookup(self, token: str) -> Grant | None:
        """The grant of ``token``, or ``None``."""
        if not token:
            return None
        return self._grants.get(_digest(token))

    def __len__(self) -> int:
        return len(self._grants)

"""
Authentication of peer-to-peer requests (no Twisted here).

The sender signs the canonical JSON of C{{method, path, body_sha256, origin,
destination, timestamp, nonce, key_id}}.  C{path} is the API path relative to
the receiver's announced base URL (C{/api/v1/gossip/receive}), so a reverse
proxy that mounts the daemon under a prefix does not break signatures.  The
receiver rejects a timestamp more than five minutes off its clock and any
nonce it has seen within the window; nonces are remembered exactly as long as
they could be replayed, and a full nonce memory refuses new requests rather
than forgetting live nonces.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from lattice.discovery._canonical import (
    SIGNING_DOMAIN,
    Signer,
    b64decode,
    b64encode,
    canonical_json,
)

__all__ = [
    "MAX_SKEW_MS",
    "AuthError",
    "AuthenticatedRequest",
    "NonceCache",
    "RequestHeaders",
    "request_signing_bytes",
    "sign_request",
    "verify_request",
]

MAX_SKEW_MS = 5 * 60 * 1000
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")

HEADER_ORIGIN = "X-Lattice-Origin"
HEADER_DESTINATION = "X-Lattice-Destination"
HEADER_KEY_ID = "X-Lattice-Key-Id"
HEADER_TIMESTAMP = "X-Lattice-Timestamp"
HEADER_NONCE = "X-Lattice-Nonce"
HEADER_SIGNATURE = "X-Lattice-Signature"
ALL_HEADERS = (
    HEADER_ORIGIN,
    HEADER_DESTINATION,
    HEADER_KEY_ID,
    HEADER_TIMESTAMP,
    HEADER_NONCE,
    HEADER_SIGNATURE,
)

RequestHeaders = dict[str, str]


class AuthError(Exception):
    """
    A request is not authentic; C{reason} says why (a short token for metrics).
    """

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or reason)
        self.reason = reason


@dataclass(frozen=True)
class AuthenticatedRequest:
    """
    Who sent a verified request.
    """

    origin: str
    key_id: str
    timestamp: int
    nonce: str


def request_signing_bytes(
    method: str,
    path: str,
    body: bytes,
    origin: str,
    destination: str,
    timestamp: int,
    nonce: str,
    key_id: str,
) -> bytes:
    """
    The bytes a request signature covers.
    """
    return (
        SIGNING_DOMAIN
        + b"request\x00"
        + canonical_json(
            {
                "method": method.upper(),
                "path": path,
                "body_sha256": b64encode(hashlib.sha256(body).digest()),
                "origin": origin,
                "destination": destination,
                "timestamp": timestamp,
                "nonce": nonce,
                "key_id": key_id,
            }
        )
    )


def sign_request(
    signer: Signer,
    method: str,
    path: str,
    body: bytes,
    origin: str,
    destination: str,
    timestamp: int,
    nonce: bytes,
) -> RequestHeaders:
    """
    The headers that authenticate a request.
    """
    nonce_text = b64encode(nonce)
    data = request_signing_bytes(
        method, path, body, origin, destination, timestamp, nonce_text, signer.key_id
    )
    return {
        HEADER_ORIGIN: origin,
        HEADER_DESTINATION: destination,
        HEADER_KEY_ID: signer.key_id,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_NONCE: nonce_text,
        HEADER_SIGNATURE: b64encode(signer.sign(data)),
    }


class NonceCache:
    """
    Nonces seen within the replay window, bounded.
    """

    def __init__(self, capacity: int = 200_000, window_ms: int = 2 * MAX_SKEW_MS):
        self.capacity = capacity
        self.window_ms = window_ms
        self._seen: OrderedDict[str, int] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def _expire(self, now: int) -> None:
        seen = self._seen
        while seen:
            _, expires = next(iter(seen.items()))
            if expires > now:
                break
            seen.popitem(last=False)

    def check_and_add(self, key: str, now: int) -> None:
        """
        Remember C{key}; raise L{AuthError} when it was seen or memory is full.
        """
        self._expire(now)
        if key in self._seen:
            raise AuthError("replay", "nonce already used")
        if len(self._seen) >= self.capacity:
            raise AuthError("busy", "too many requests in the replay window")
        self._seen[key] = now + self.window_ms


def verify_request(
    headers: Mapping[str, str],
    method: str,
    path: str,
    body: bytes,
    own_uuid: str,
    now: int,
    key_for: Callable[[str, str], bytes | None],
    verify: Callable[[bytes, bytes, bytes], bool],
    nonces: NonceCache,
) -> AuthenticatedRequest:
    """
    Check a request's authentication headers.

    @param key_for: C{key_for(origin, key_id)} returns the public key that may
        sign for C{origin}, or C{None}.
    @raise AuthError: it is not authentic, not for us, too old, or replayed.
    """
    values = {}
    for name in ALL_HEADERS:
        value = headers.get(name.lower())
        if value is None:
            raise AuthError("unsigned", f"missing {name}")
        values[name] = value
    origin = values[HEADER_ORIGIN]
    if values[HEADER_DESTINATION] != own_uuid:
        raise AuthError("destination", "request is addressed to another server")
    try:
        timestamp = int(values[HEADER_TIMESTAMP], 10)
    except ValueError:
        raise AuthError("malformed", "bad timestamp") from None
    if abs(now - timestamp) > MAX_SKEW_MS:
        raise AuthError("skew", "timestamp more than 5 minutes off")
    nonce = values[HEADER_NONCE]
    if not _NONCE.match(nonce):
        raise AuthError("malformed", "bad nonce")
    key_id = values[HEADER_KEY_ID]
    key = key_for(origin, key_id)
    if key is None:
        raise AuthError("unknown-key", "unknown origin or key")
    try:
        signature = b64decode(values[HEADER_SIGNATURE])
    except ValueError:
        raise AuthError("malformed", "bad signature encoding") from None
    data = request_signing_bytes(method, path, body, origin, own_uuid, timestamp, nonce, key_id)
    if not verify(key, signature, data):
        raise AuthError("signature", "bad signature")
    nonces.check_and_add(f"{origin}/{nonce}", now)
    return AuthenticatedRequest(origin, key_id, timestamp, nonce)

"""
One canonical JSON form for everything that is signed, and signed objects.

Signed bytes are produced once: C{signing_bytes(obj)} is the domain prefix
followed by the canonical JSON (the C{canonicaljson} package: sorted keys, no
insignificant whitespace, UTF-8, no floats) of the object without its
C{signature} member.  Because the form is canonical, the receiver rebuilds
exactly the bytes the sender signed from the parsed object; times are integer
epoch milliseconds, never formatted text (flaws 1 and 2 of the predecessor).
"""

from __future__ import annotations

import base64
import functools
import hashlib
from collections.abc import Mapping
from typing import Any, Protocol

import canonicaljson

__all__ = [
    "SIGNING_DOMAIN",
    "CanonicalError",
    "Signer",
    "b64decode",
    "b64encode",
    "canonical_json",
    "sha256_b64",
    "sign_object",
    "signature_of",
    "signing_bytes",
]

SIGNING_DOMAIN = b"lattice-discovery-v1\x00"


class CanonicalError(ValueError):
    """
    A value cannot be put in canonical form (a float, a non-string key, ...).
    """


class Signer(Protocol):
    """
    What signs: L{lattice.identity.NodeIdentity} satisfies it.
    """

    @property
    def key_id(self) -> str: ...

    def sign(self, data: bytes) -> bytes: ...


def _check(value: object) -> None:
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return
    if kind is dict:
        # the common case, scalars checked inline, without the abstract base
        # class checks below
        for key, item in value.items():  # type: ignore[attr-defined]
            if type(key) is not str:
                raise CanonicalError("object keys must be strings")
            item_kind = type(item)
            if item_kind is str or item_kind is bool or item is None:
                continue
            if item_kind is int and -(2**63) <= item < 2**63:
                continue
            _check(item)
        return
    if isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise CanonicalError("integer out of the signed 64-bit range")
        return
    if isinstance(value, float):
        raise CanonicalError("floats are not allowed in signed objects")
    if isinstance(value, list | tuple):
        for item in value:
            _check(item)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalError("object keys must be strings")
            _check(item)
        return
    raise CanonicalError(f"{type(value).__name__} is not a JSON value")


def canonical_json(value: object) -> bytes:
    """
    The canonical JSON bytes of C{value}.

    @raise CanonicalError: C{value} holds something without a canonical form.
    """
    _check(value)
    result: bytes = canonicaljson.encode_canonical_json(value)
    return result


def b64encode(data: bytes) -> str:
    """
    Unpadded URL-safe base64.
    """
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    """
    Decode unpadded URL-safe base64; raise C{ValueError} when malformed.
    """
    if not isinstance(text, str) or len(text) > 8192:
        raise ValueError("not a base64 string")
    padded = text + "=" * (-len(text) % 4)
    return base64.b64decode(padded, altchars=b"-_", validate=True)


def sha256_b64(data: bytes) -> str:
    """
    The SHA-256 digest of C{data}, unpadded URL-safe base64.
    """
    return b64encode(hashlib.sha256(data).digest())


def signing_bytes(obj: Mapping[str, Any]) -> bytes:
    """
    The bytes a signature over C{obj} covers: the domain prefix and the
    canonical JSON of every member except C{signature}.
    """
    payload = {key: value for key, value in obj.items() if key != "signature"}
    return SIGNING_DOMAIN + canonical_json(payload)


def sign_object(signer: Signer, obj: Mapping[str, Any]) -> dict[str, Any]:
    """
    A copy of C{obj} with a C{signature} member C{{key_id, sig}}.
    """
    payload = {key: value for key, value in obj.items() if key != "signature"}
    signature = signer.sign(signing_bytes(payload))
    return {**payload, "signature": {"key_id": signer.key_id, "sig": b64encode(signature)}}


def signature_of(obj: Mapping[str, Any]) -> tuple[str, bytes]:
    """
    The key id and raw signature carried by C{obj}.

    @raise ValueError: the signature member is missing or malformed.
    """
    signature = obj.get("signature")
    if type(signature) is not dict and not isinstance(signature, Mapping):
        raise ValueError("missing signature")
    key_id = signature.get("key_id")
    sig = signature.get("sig")
    if not isinstance(key_id, str) or not isinstance(sig, str):
        raise ValueError("malformed signature")
    # only what can be a signature is remembered (86 characters for 64 bytes)
    raw = _decoded_signature(sig) if len(sig) == 86 else b64decode(sig)
    if len(raw) != 64:
        raise ValueError("malformed signature")
    return key_id, raw


@functools.lru_cache(maxsize=65536)
def _decoded_signature(sig: str) -> bytes:
    return b64decode(sig)

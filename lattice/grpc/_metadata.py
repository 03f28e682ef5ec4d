"""gRPC metadata: conversion between header lists and handler-facing key/value pairs."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

MetadataValue = str | bytes
"""A metadata value: ``bytes`` for keys ending in ``-bin``, ASCII ``str`` otherwise."""

# Headers that belong to the gRPC protocol itself, never surfaced as metadata.
_RESERVED = frozenset(
    {
        b"content-type",
        b"te",
        b"grpc-timeout",
        b"grpc-encoding",
        b"grpc-accept-encoding",
        b"grpc-status",
        b"grpc-message",
        b"content-length",
        b"connection",
        b"host",
    }
)
_KEY = re.compile(r"[0-9a-z_.\-]+\Z")


class Metadata(Sequence[tuple[str, MetadataValue]]):
    """An immutable, ordered list of metadata pairs that may repeat keys."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, MetadataValue]] = ()) -> None:
        self._items = tuple(items)

    @overload
    def __getitem__(self, index: int) -> tuple[str, MetadataValue]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[str, MetadataValue]]: ...

    def __getitem__(
        self, index: int | slice
    ) -> tuple[str, MetadataValue] | Sequence[tuple[str, MetadataValue]]:
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[tuple[str, MetadataValue]]:
        return iter(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Metadata):
            return self._items == other._items
        if isinstance(other, tuple | list):
            return self._items == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._items)

    def __repr__(self) -> str:
        return f"Metadata({list(self._items)!r})"

    def get(self, key: str, default: MetadataValue | None = None) -> MetadataValue | None:
        """Return the first value for *key*, or *default*."""
        for k, v in self._items:
            if k == key:
                return v
        return default

    def get_all(self, key: str) -> list[MetadataValue]:
        """Return every value for *key*, in order."""
        return [v for k, v in self._items if k == key]


def _b64decode(value: bytes) -> bytes:
    return base64.b64decode(value + b"=" * (-len(value) % 4), validate=True)


def decode_metadata(headers: Iterable[tuple[bytes, bytes]]) -> Metadata:
    """
    Turn received HTTP/2 header pairs into metadata.

    Pseudo-headers and gRPC's own headers are dropped; ``-bin`` values are base64-decoded
    (padded or not, possibly several comma-separated values); undecodable pairs are dropped.
    """
    items: list[tuple[str, MetadataValue]] = []
    for name, value in headers:
        if name[:1] == b":" or name in _RESERVED:
            continue
        key = name.decode("ascii", "replace")
        if key.endswith("-bin"):
            try:
                for part in value.split(b","):
                    items.append((key, _b64decode(part.strip())))
            except (binascii.Error, ValueError):
                continue
        else:
            items.append((key, value.decode("latin-1")))
    return Metadata(items)


def encode_metadata(metadata: Iterable[tuple[str, MetadataValue]]) -> list[tuple[bytes, bytes]]:
    """
    Turn metadata into header pairs to send.

    Raises ``ValueError`` for a key that is not lowercase ``[0-9a-z_.-]``, a reserved key, a
    ``-bin`` value that is not bytes, or a text value that is not printable ASCII.
    """
    headers: list[tuple[bytes, bytes]] = []
    for key, value in metadata:
        reserved = key.encode() in _RESERVED or key.startswith("grpc-")
        if (not _KEY.match(key) or reserved) and key != "grpc-status-details-bin":
            raise ValueError(f"invalid metadata key {key!r}")
        if key.endswith("-bin"):
            if not isinstance(value, bytes):
                raise ValueError(f"metadata key {key!r} ends in -bin but its value is not bytes")
            headers.append((key.encode(), base64.b64encode(value).rstrip(b"=")))
        else:
            if not isinstance(value, str) or not value.isascii() or not value.isprintable():
                raise ValueError(f"metadata value for {key!r} must be printable ASCII text")
            headers.append((key.encode(), value.encode("ascii")))
    return headers


_UNRESERVED = frozenset(range(0x20, 0x7F)) - {ord("%")}


def percent_encode(message: str) -> bytes:
    """Encode a status message for ``grpc-message`` (UTF-8, percent-encoding outside ASCII)."""
    raw = message.encode("utf-8")
    if all(b in _UNRESERVED for b in raw):
        return raw
    return b"".join(bytes((b,)) if b in _UNRESERVED else b"%%%02X" % b for b in raw)


def percent_decode(value: bytes) -> str:
    """Decode a ``grpc-message`` value; malformed escapes are kept literally."""
    if b"%" not in value:
        return value.decode("utf-8", "replace")
    out = bytearray()
    i = 0
    while i < len(value):
        c = value[i]
        if c == 0x25 and _is_hex(value[i + 1 : i + 3]):
            out.append(int(value[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(c)
            i += 1
    return out.decode("utf-8", "replace")


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)


_UNITS = {
    ord("H"): 3600.0,
    ord("M"): 60.0,
    ord("S"): 1.0,
    ord("m"): 1e-3,
    ord("u"): 1e-6,
    ord("n"): 1e-9,
}


def parse_timeout(value: bytes) -> float | None:
    """Parse a ``grpc-timeout`` value into seconds, or ``None`` if it is malformed."""
    if not 2 <= len(value) <= 9 or not value[:-1].isdigit():
        return None
    unit = _UNITS.get(value[-1])
    if unit is None:
        return None
    return int(value[:-1]) * unit


def format_timeout(seconds: float) -> bytes:
    """Format a timeout in seconds as a ``grpc-timeout`` value (at most 8 digits)."""
    if seconds <= 0:
        return b"1n"
    if 1.0 <= seconds < 99_999.0:
        # Millisecond precision is plenty from a second up, and repeats from call to call
        # (the header's encoding is cached).
        return b"%dm" % int(seconds * 1000 + 0.999999)
    for suffix, scale in ((b"n", 1e9), (b"u", 1e6), (b"m", 1e3), (b"S", 1.0), (b"M", 1 / 60)):
        value = int(seconds * scale + 0.999999)
        if value < 100_000_000:
            return b"%d%s" % (value, suffix)
    return b"%dH" % min(int(seconds / 3600) + 1, 99_999_999)

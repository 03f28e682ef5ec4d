"""The gRPC length-prefixed message framing and per-message compression."""

from __future__ import annotations

import zlib
from struct import Struct

from lattice.grpc._status import GrpcError, StatusCode

_PREFIX = Struct(">BI")
PREFIX_SIZE = 5

SUPPORTED_ENCODINGS = (b"identity", b"gzip", b"deflate")
ACCEPT_ENCODING = b"identity,gzip,deflate"

_WBITS = {b"gzip": 31, b"deflate": 15}


def frame_message(payload: bytes, compressed: bool = False) -> bytes:
    """Prefix *payload* with the compressed flag and its 4-byte big-endian length."""
    return _PREFIX.pack(1 if compressed else 0, len(payload)) + payload


def compress(payload: bytes, encoding: bytes) -> bytes:
    """Compress *payload* with *encoding* (``gzip`` or ``deflate``)."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, _WBITS[encoding])
    return compressor.compress(payload) + compressor.flush()


def decompress(payload: bytes, encoding: bytes | None, max_size: int) -> bytes:
    """
    Decompress one message with the stream's *encoding*, refusing more than *max_size* bytes.

    Raises ``GrpcError``: INTERNAL for a compressed message without a usable encoding or for
    corrupt data, RESOURCE_EXHAUSTED when the decompressed message exceeds *max_size*.
    """
    wbits = _WBITS.get(encoding or b"")
    if wbits is None:
        raise GrpcError(
            StatusCode.INTERNAL,
            "compressed message received without a supported grpc-encoding",
        )
    decompressor = zlib.decompressobj(wbits)
    try:
        data = decompressor.decompress(payload, max_size + 1)
    except zlib.error as e:
        raise GrpcError(StatusCode.INTERNAL, f"failed to decompress message: {e}") from e
    if len(data) > max_size:
        raise GrpcError(
            StatusCode.RESOURCE_EXHAUSTED,
            f"decompressed message larger than max ({max_size} bytes)",
        )
    if not decompressor.eof:
        raise GrpcError(StatusCode.INTERNAL, "truncated compressed message")
    return data


class MessageDecoder:
    """
    Incrementally split a stream of DATA bytes into gRPC messages.

    ``feed`` returns the complete ``(compressed, payload)`` pairs seen so far and keeps any
    partial message buffered.  A length prefix over *max_size* raises ``GrpcError``
    (RESOURCE_EXHAUSTED) as soon as the prefix arrives, before the body is buffered.
    """

    __slots__ = ("_buffer", "_max_size")

    def __init__(self, max_size: int) -> None:
        self._max_size = max_size
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Number of buffered bytes belonging to an incomplete message."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[tuple[bool, bytes]]:
        """Add *data*; return the messages it completes."""
        buffer: bytes | bytearray
        if self._buffer:
            self._buffer += data
            buffer = self._buffer
        else:
            buffer = data
        messages: list[tuple[bool, bytes]] = []
        offset = 0
        end = len(buffer)
        while end - offset >= PREFIX_SIZE:
            flag, length = _PREFIX.unpack_from(buffer, offset)
            if flag > 1:
                self._buffer = bytearray()
                raise GrpcError(StatusCode.INTERNAL, f"invalid message flag {flag}")
            if length > self._max_size:
                self._buffer = bytearray()
                raise GrpcError(
                    StatusCode.RESOURCE_EXHAUSTED,
                    f"received message larger than max ({length} vs. {self._max_size})",
                )
            stop = offset + PREFIX_SIZE + length
            if stop > end:
                break
            messages.append((flag == 1, bytes(buffer[offset + PREFIX_SIZE : stop])))
            offset = stop
        if offset == end:
            if self._buffer:
                self._buffer = bytearray()
        elif buffer is not self._buffer or offset:
            self._buffer = bytearray(buffer[offset:])
        return messages

"""
A lean HTTP/2 connection (RFC 9113) for the gRPC server and client.

It implements what a gRPC peer needs and nothing more, written for speed on the one reactor
thread: the connection preface, SETTINGS with acknowledgement, frame parsing and validation
for every frame type, stream states and identifier rules, flow control in both directions,
PING, GOAWAY, RST_STREAM, header-block reassembly over CONTINUATION, and HPACK (RFC 7541).

Like ``h2``, it does no I/O: feed received bytes to :meth:`H2Connection.receive_data`, which
returns events; call ``send_*`` methods; write out :meth:`H2Connection.data_to_send`.  A
connection error raises :class:`ProtocolError` from ``receive_data`` after queueing the
GOAWAY that explains it; stream errors queue a RST_STREAM and surface as a
:class:`StreamReset` event with ``remote_reset`` false.

HPACK: decoding is done here, with the ``hpack`` package's static table and Huffman decoder.
Encoding never inserts into the peer's dynamic table (it sends a table size update to 0 at
the start of the first block), so every header field has a fixed encoding that is cached:
our headers are a handful of values repeated on every call.  Push is always disabled.

See ``docs/grpc-http2.rst`` for why this replaced ``h2`` and what it measured.
"""

from __future__ import annotations

import re
from enum import IntEnum
from struct import Struct
from typing import Final

from hpack.exceptions import HPACKDecodingError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9

# Flags.
FLAG_END_STREAM = 0x1
FLAG_ACK = 0x1
FLAG_END_HEADERS = 0x4
FLAG_PADDED = 0x8
FLAG_PRIORITY = 0x20

MAX_WINDOW: Final = 2**31 - 1
MAX_STREAM_ID: Final = 2**31 - 1
DEFAULT_WINDOW: Final = 65535
DEFAULT_MAX_FRAME: Final = 16384
MAX_MAX_FRAME: Final = 2**24 - 1

_FRAME_HEADER = Struct(">HBBBL")  # 24-bit length as 16 + 8 bits, type, flags, stream id
_U32 = Struct(">L")
_U32_U32 = Struct(">LL")
_SETTING = Struct(">HL")


class ErrorCodes(IntEnum):
    """HTTP/2 error codes (RFC 9113 section 7)."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


class SettingCodes(IntEnum):
    """HTTP/2 settings identifiers (RFC 9113 section 6.5.2)."""

    HEADER_TABLE_SIZE = 0x1
    ENABLE_PUSH = 0x2
    MAX_CONCURRENT_STREAMS = 0x3
    INITIAL_WINDOW_SIZE = 0x4
    MAX_FRAME_SIZE = 0x5
    MAX_HEADER_LIST_SIZE = 0x6


class ProtocolError(Exception):
    """The peer broke the protocol (or a send was impossible); ``error_code`` says how."""

    def __init__(self, message: str, error_code: int = ErrorCodes.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.error_code = error_code


class StreamClosedError(ProtocolError):
    """A send on a stream that is closed (reset, or already ended on our side)."""

    def __init__(self, stream_id: int) -> None:
        super().__init__(f"stream {stream_id} is closed", ErrorCodes.STREAM_CLOSED)
        self.stream_id = stream_id


class FlowControlError(ProtocolError):
    """A send larger than the peer's flow-control window (a bug in the caller)."""


class _ConnectionError(Exception):
    def __init__(self, error_code: int, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code


class _HpackError(Exception):
    error_code = ErrorCodes.COMPRESSION_ERROR


class _HeaderListTooLarge(_HpackError):
    error_code = ErrorCodes.ENHANCE_YOUR_CALM


class Settings:
    """One side's settings, as attributes (``remote_settings.max_frame_size``)."""

    __slots__ = (
        "enable_push",
        "header_table_size",
        "initial_window_size",
        "max_concurrent_streams",
        "max_frame_size",
        "max_header_list_size",
    )

    def __init__(self) -> None:
        self.header_table_size = 4096
        self.enable_push = 1
        self.max_concurrent_streams = 2**32 - 1
        self.initial_window_size = DEFAULT_WINDOW
        self.max_frame_size = DEFAULT_MAX_FRAME
        self.max_header_list_size = 2**32 - 1

    def __getitem__(self, code: int) -> int:
        name = _SETTING_NAMES.get(code)
        if name is None:
            raise KeyError(code)
        value: int = getattr(self, name)
        return value


_SETTING_NAMES: dict[int, str] = {
    SettingCodes.HEADER_TABLE_SIZE: "header_table_size",
    SettingCodes.ENABLE_PUSH: "enable_push",
    SettingCodes.MAX_CONCURRENT_STREAMS: "max_concurrent_streams",
    SettingCodes.INITIAL_WINDOW_SIZE: "initial_window_size",
    SettingCodes.MAX_FRAME_SIZE: "max_frame_size",
    SettingCodes.MAX_HEADER_LIST_SIZE: "max_header_list_size",
}


# Events.  Plain slotted classes: the attribute names follow ``h2.events``.

Headers = list[tuple[bytes, bytes]]


class Event:
    """Something the peer did."""

    __slots__ = ()


class RequestReceived(Event):
    """A request's headers (server side); ``stream_ended`` if they also end the stream."""

    __slots__ = ("headers", "stream_ended", "stream_id")

    def __init__(self, stream_id: int, headers: Headers, stream_ended: bool) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self.stream_ended = stream_ended


class ResponseReceived(Event):
    """A response's (final) headers (client side); ``stream_ended`` for Trailers-Only."""

    __slots__ = ("headers", "stream_ended", "stream_id")

    def __init__(self, stream_id: int, headers: Headers, stream_ended: bool) -> None:
        self.stream_id = stream_id
        self.headers = headers
        self.stream_ended = stream_ended


class InformationalResponseReceived(Event):
    """A 1xx response (client side)."""

    __slots__ = ("headers", "stream_id")

    def __init__(self, stream_id: int, headers: Headers) -> None:
        self.stream_id = stream_id
        self.headers = headers


class TrailersReceived(Event):
    """Trailers; they always end the stream."""

    __slots__ = ("headers", "stream_id")

    def __init__(self, stream_id: int, headers: Headers) -> None:
        self.stream_id = stream_id
        self.headers = headers


class DataReceived(Event):
    """
    Stream data.  ``flow_controlled_length`` (padding included) must be handed back to
    :meth:`H2Connection.acknowledge_received_data` once the data is consumed.
    """

    __slots__ = ("data", "flow_controlled_length", "stream_ended", "stream_id")

    def __init__(
        self, stream_id: int, data: bytes, flow_controlled_length: int, stream_ended: bool
    ) -> None:
        self.stream_id = stream_id
        self.data = data
        self.flow_controlled_length = flow_controlled_length
        self.stream_ended = stream_ended


class StreamReset(Event):
    """The stream was reset: by the peer (``remote_reset``) or by us for a stream error."""

    __slots__ = ("error_code", "remote_reset", "stream_id")

    def __init__(self, stream_id: int, error_code: int, remote_reset: bool) -> None:
        self.stream_id = stream_id
        self.error_code = error_code
        self.remote_reset = remote_reset


class WindowUpdated(Event):
    """The peer opened its window: a stream's, or the connection's (``stream_id`` 0)."""

    __slots__ = ("delta", "stream_id")

    def __init__(self, stream_id: int, delta: int) -> None:
        self.stream_id = stream_id
        self.delta = delta


class RemoteSettingsChanged(Event):
    """The peer sent SETTINGS (already applied and acknowledged)."""

    __slots__ = ("changed_settings",)

    def __init__(self, changed_settings: dict[int, int]) -> None:
        self.changed_settings = changed_settings


class SettingsAcknowledged(Event):
    """The peer acknowledged our SETTINGS; they are now in effect."""

    __slots__ = ("changed_settings",)

    def __init__(self, changed_settings: dict[int, int]) -> None:
        self.changed_settings = changed_settings


class PingReceived(Event):
    """The peer PINGed us (the ACK is already queued)."""

    __slots__ = ("ping_data",)

    def __init__(self, ping_data: bytes) -> None:
        self.ping_data = ping_data


class PingAckReceived(Event):
    """The peer answered one of our PINGs."""

    __slots__ = ("ping_data",)

    def __init__(self, ping_data: bytes) -> None:
        self.ping_data = ping_data


class ConnectionTerminated(Event):
    """The peer sent GOAWAY."""

    __slots__ = ("additional_data", "error_code", "last_stream_id")

    def __init__(self, error_code: int, last_stream_id: int, additional_data: bytes) -> None:
        self.error_code = error_code
        self.last_stream_id = last_stream_id
        self.additional_data = additional_data


# HPACK.

_STATIC: tuple[tuple[bytes, bytes], ...] = tuple(HeaderTable.STATIC_TABLE)
_STATIC_LEN = len(_STATIC)
_STATIC_FULL: dict[tuple[bytes, bytes], int] = {}
_STATIC_NAME: dict[bytes, int] = {}
for _index, _field in enumerate(_STATIC, 1):
    _STATIC_FULL.setdefault(_field, _index)
    _STATIC_NAME.setdefault(_field[0], _index)
_NEVER_INDEXED = frozenset((b"authorization", b"proxy-authorization", b"cookie", b"set-cookie"))
_CACHE_LIMIT = 4096  # entries per cache (then it starts again)
_CACHED_SIZE = 256  # only values up to this long are cached: the caches stay under ~2 MiB


def _encode_integer(value: int, prefix_bits: int, flags: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((flags | value,))
    out = bytearray((flags | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _encode_string(value: bytes) -> bytes:
    return _encode_integer(len(value), 7, 0) + value


def encode_field(name: bytes, value: bytes) -> bytes:
    """
    One header field in HPACK, never added to the dynamic table: an indexed static entry, or
    a literal without indexing (never-indexed for credentials) with a static name if any.
    """
    index = _STATIC_FULL.get((name, value))
    if index is not None:
        return bytes((0x80 | index,))
    flags = 0x10 if name in _NEVER_INDEXED else 0x00
    name_index = _STATIC_NAME.get(name)
    if name_index is not None:
        return _encode_integer(name_index, 4, flags) + _encode_string(value)
    return bytes((flags,)) + _encode_string(name) + _encode_string(value)


class HeaderEncoder:
    """A stateless HPACK encoder with a cache of encoded fields (shared per process)."""

    __slots__ = ()

    _cache: dict[tuple[bytes, bytes], bytes] = {}

    def encode(self, headers: Headers) -> bytes:
        """The header block for *headers*."""
        cache = self._cache
        parts = []
        for field in headers:
            encoded = cache.get(field)
            if encoded is None:
                encoded = encode_field(field[0], field[1])
                if len(field[1]) <= _CACHED_SIZE:
                    if len(cache) >= _CACHE_LIMIT:
                        cache.clear()
                    cache[(field[0], field[1])] = encoded
            parts.append(encoded)
        return b"".join(parts)


_HUFFMAN_CACHE: dict[bytes, bytes] = {}
# Decoded blocks that neither use nor change the dynamic table: valid on every connection.
_BLOCK_CACHE: dict[bytes, tuple[tuple[tuple[bytes, bytes], ...], int]] = {}


class HeaderDecoder:
    """
    An HPACK decoder (RFC 7541) with its dynamic table.

    ``max_allowed_table_size`` is our SETTINGS_HEADER_TABLE_SIZE; ``max_header_list_size``
    bounds the decoded size of one block (name + value + 32 per field) so that a small block
    of references to large table entries cannot expand without limit.
    """

    __slots__ = ("_entries", "_size", "max_allowed_table_size", "max_header_list_size", "max_size")

    def __init__(self, max_header_list_size: int = 65536) -> None:
        self._entries: list[tuple[bytes, bytes]] = []  # newest first
        self._size = 0
        self.max_size = 4096
        self.max_allowed_table_size = 4096
        self.max_header_list_size = max_header_list_size

    def _add(self, field: tuple[bytes, bytes]) -> None:
        size = 32 + len(field[0]) + len(field[1])
        entries = self._entries
        if size > self.max_size:
            entries.clear()
            self._size = 0
            return
        self._size += size
        entries.insert(0, field)
        while self._size > self.max_size:
            name, value = entries.pop()
            self._size -= 32 + len(name) + len(value)

    def _resize(self, new_size: int) -> None:
        if new_size > self.max_allowed_table_size:
            raise _HpackError("table size update above the allowed maximum")
        self.max_size = new_size
        entries = self._entries
        while self._size > new_size:
            name, value = entries.pop()
            self._size -= 32 + len(name) + len(value)

    def _field(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= _STATIC_LEN:
            return _STATIC[index - 1]
        index -= _STATIC_LEN + 1
        if 0 <= index < len(self._entries):
            return self._entries[index]
        raise _HpackError(f"invalid table index {index + _STATIC_LEN + 1}")

    def decode(self, data: bytes) -> tuple[Headers, int]:
        """Decode a whole header block: the fields and their list size."""
        cached = _BLOCK_CACHE.get(data)
        if cached is not None and cached[1] <= self.max_header_list_size:
            return list(cached[0]), cached[1]
        try:
            return self._decode(data)
        except IndexError:
            raise _HpackError("truncated header block") from None
        except HPACKDecodingError as e:
            raise _HpackError(str(e)) from None

    def _decode(self, data: bytes) -> tuple[Headers, int]:
        headers: Headers = []
        pos = 0
        end = len(data)
        list_size = 0
        limit = self.max_header_list_size
        stateless = True  # no reference to or change of the dynamic table
        while pos < end:
            byte = data[pos]
            if byte & 0x80:
                index = byte & 0x7F
                pos += 1
                if 0 < index <= _STATIC_LEN:
                    field = _STATIC[index - 1]
                else:
                    if index == 0x7F:
                        index, pos = _decode_integer_tail(data, pos, index)
                    if index == 0:
                        raise _HpackError("indexed field with index 0")
                    field = self._field(index)
                    stateless = False
            elif byte & 0xE0 == 0x20:
                stateless = False
                if headers:
                    raise _HpackError("table size update after the first field")
                size = byte & 0x1F
                pos += 1
                if size == 0x1F:
                    size, pos = _decode_integer_tail(data, pos, size)
                self._resize(size)
                continue
            else:
                if byte & 0x40:
                    mask = 0x3F
                    indexing = True
                else:
                    mask = 0x0F
                    indexing = False
                index = byte & mask
                pos += 1
                if index == mask:
                    index, pos = _decode_integer_tail(data, pos, index)
                if index:
                    if index > _STATIC_LEN:
                        stateless = False
                    name = self._field(index)[0]
                else:
                    name, pos = _decode_string(data, pos)
                value, pos = _decode_string(data, pos)
                field = (name, value)
                if indexing:
                    stateless = False
                    self._add(field)
            list_size += 32 + len(field[0]) + len(field[1])
            if list_size > limit:
                raise _HeaderListTooLarge("header list too large")
            headers.append(field)
        if stateless and end <= _CACHED_SIZE:
            if len(_BLOCK_CACHE) >= _CACHE_LIMIT:
                _BLOCK_CACHE.clear()
            _BLOCK_CACHE[data] = (tuple(headers), list_size)
        return headers, list_size


def _decode_integer_tail(data: bytes, pos: int, value: int) -> tuple[int, int]:
    shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise _HpackError("integer too large")


def _decode_string(data: bytes, pos: int) -> tuple[bytes, int]:
    byte = data[pos]
    length = byte & 0x7F
    pos += 1
    if length == 0x7F:
        length, pos = _decode_integer_tail(data, pos, length)
    end = pos + length
    if end > len(data):
        raise _HpackError("truncated string")
    raw = data[pos:end]
    if byte & 0x80:
        decoded = _HUFFMAN_CACHE.get(raw)
        if decoded is None:
            decoded = decode_huffman(raw)
            if length <= _CACHED_SIZE:
                if len(_HUFFMAN_CACHE) >= _CACHE_LIMIT:
                    _HUFFMAN_CACHE.clear()
                _HUFFMAN_CACHE[raw] = decoded
        return decoded, end
    return raw, end


# Header validation (RFC 9113 section 8.2 and 8.3).

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
# NUL, CR and LF are refused (they would let a value smuggle fields into HTTP/1.1 or logs).
# Surrounding whitespace, which RFC 9113 also forbids, is accepted: grpc-core and grpc-go
# clients send metadata values such as "Bearer " as they are, and HTTP trims it anyway.
_BAD_VALUE = re.compile(rb"[\x00\r\n]")
_CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
_REQUEST_PSEUDO = {b":method": 1, b":scheme": 2, b":path": 4, b":authority": 8}
_RESPONSE_PSEUDO = {b":status": 16}
_NO_PSEUDO: dict[bytes, int] = {}
_VALID_FIELDS: dict[tuple[bytes, bytes], None] = {}


def _field_problem(name: bytes, value: bytes) -> str | None:
    bare = name[1:] if name[:1] == b":" else name
    if not _TOKEN.fullmatch(bare):
        return f"invalid header name {name!r}"
    if name in _CONNECTION_SPECIFIC:
        return f"connection-specific header {name!r}"
    if name == b"te" and value != b"trailers":
        return "te header other than trailers"
    if _BAD_VALUE.search(value):
        return f"invalid value for header {name!r}"
    return None


def check_headers(headers: Headers, pseudo: dict[bytes, int]) -> tuple[str | None, int, int]:
    """
    Validate a received header list: the problem (or ``None``), the pseudo-headers seen (a
    bit set) and the content-length (-1 if absent).
    """
    seen = 0
    regular = False
    content_length = -1
    valid = _VALID_FIELDS
    for field in headers:
        name = field[0]
        if name[:1] == b":":
            if regular:
                return "pseudo-header after a regular header", seen, content_length
            bit = pseudo.get(name)
            if bit is None:
                return f"unexpected pseudo-header {name!r}", seen, content_length
            if seen & bit:
                return f"duplicate pseudo-header {name!r}", seen, content_length
            seen |= bit
        else:
            regular = True
            if name == b"content-length":
                value = field[1]
                if not value.isdigit() or (content_length >= 0 and int(value) != content_length):
                    return "invalid content-length", seen, content_length
                content_length = int(value)
        if field not in valid:
            problem = _field_problem(name, field[1])
            if problem is not None:
                return problem, seen, content_length
            if len(field[1]) <= _CACHED_SIZE:
                if len(valid) >= _CACHE_LIMIT:
                    valid.clear()
                valid[field] = None
    return None, seen, content_length


def _check_request(headers: Headers) -> tuple[str | None, int]:
    problem, seen, content_length = check_headers(headers, _REQUEST_PSEUDO)
    if problem is None:
        method = None
        for name, value in headers:
            if name == b":method":
                method = value
            elif name == b":path" and not value:
                return "empty :path", content_length
            elif name[:1] != b":":
                break
        if method == b"CONNECT":
            if seen & 6 or not seen & 8:
                problem = "CONNECT needs :authority and no :scheme or :path"
        elif seen & 7 != 7:
            problem = "missing :method, :scheme or :path"
    return problem, content_length


def _check_response(headers: Headers) -> tuple[str | None, int, bytes]:
    problem, seen, content_length = check_headers(headers, _RESPONSE_PSEUDO)
    status = b""
    if problem is None:
        if not seen:
            problem = "response without :status"
        else:
            for name, value in headers:
                if name == b":status":
                    status = value
                    break
            if len(status) != 3 or not status.isdigit():
                problem = "invalid :status"
    return problem, content_length, status


class _Stream:
    __slots__ = (
        "content_length",
        "data_length",
        "headers_received",
        "local_closed",
        "recv_unacked",
        "recv_window",
        "remote_closed",
        "send_window",
        "stream_id",
    )

    def __init__(self, stream_id: int, send_window: int, recv_window: int) -> None:
        self.stream_id = stream_id
        self.send_window = send_window
        self.recv_window = recv_window
        self.recv_unacked = 0
        self.local_closed = False
        self.remote_closed = False
        self.headers_received = False
        self.content_length = -1
        self.data_length = 0


_RESET_MEMORY = 4096
_MAX_CONTINUATIONS = 64


class H2Connection:
    """
    One HTTP/2 connection, client or server side, without I/O.

    *settings* are our initial SETTINGS (sent by :meth:`initiate_connection`; in effect once
    the peer acknowledges them).  *max_header_block* bounds a received header block
    (HEADERS plus CONTINUATION, compressed); a header list over our MAX_HEADER_LIST_SIZE is a
    stream error (RST_STREAM ENHANCE_YOUR_CALM), one four times over it a connection error.
    Inbound streams beyond our MAX_CONCURRENT_STREAMS are refused (RST_STREAM
    REFUSED_STREAM) without an event.
    """

    def __init__(
        self,
        client_side: bool,
        settings: dict[int, int] | None = None,
        *,
        max_header_block: int = 65536,
    ) -> None:
        self.client_side = client_side
        self.local_settings = Settings()
        self.remote_settings = Settings()
        self._initial_settings = dict(settings or {})
        self._pending_settings: list[dict[int, int]] = []
        self._out: list[bytes] = []
        self._buffer = b""
        self._streams: dict[int, _Stream] = {}
        self._reset_by_us: dict[int, None] = {}
        self._encoder = HeaderEncoder()
        self._decoder = HeaderDecoder()
        self._table_size_update = True
        self._max_header_block = max_header_block
        self._header_list_limit = self.local_settings.max_header_list_size
        self._inbound_stream_limit = self.local_settings.max_concurrent_streams
        self._apply_header_limits(self._initial_settings)
        # Flow control: what we may send, what the peer may send.
        self._send_window = DEFAULT_WINDOW
        self._recv_window = DEFAULT_WINDOW
        self._recv_window_max = DEFAULT_WINDOW
        self._recv_unacked = 0
        self._local_initial_window = DEFAULT_WINDOW
        self._remote_initial_window = DEFAULT_WINDOW
        self._max_outbound_frame = DEFAULT_MAX_FRAME
        self._max_inbound_frame = DEFAULT_MAX_FRAME
        # Receiving state.
        self._preface_pending = not client_side
        self._settings_expected = True
        self._continuation: int = 0
        self._continuation_flags = 0
        self._continuation_parts: list[bytes] = []
        self._continuation_size = 0
        self._continuation_count = 0
        self._continuation_dependency = -1
        self._events: list[Event] = []
        self._handlers = (
            self._on_data,
            self._on_headers,
            self._on_priority,
            self._on_rst_stream,
            self._on_settings,
            self._on_push_promise,
            self._on_ping,
            self._on_goaway,
            self._on_window_update,
            self._on_continuation,
        )
        self.highest_inbound_stream_id = 0
        self._next_stream_id = 1 if client_side else 2
        self.closed = False
        self.goaway_received = False

    # Setup and settings.

    def _apply_header_limits(self, settings: dict[int, int]) -> None:
        value = settings.get(SettingCodes.MAX_HEADER_LIST_SIZE)
        if value is not None:
            self._header_list_limit = value
            self._decoder.max_header_list_size = max(4 * value, 65536)
        value = settings.get(SettingCodes.MAX_CONCURRENT_STREAMS)
        if value is not None:
            self._inbound_stream_limit = value

    def initiate_connection(self) -> None:
        """Queue the client preface (client side) and our SETTINGS."""
        if self.client_side:
            self._out.append(PREFACE)
        self._queue_settings(self._initial_settings)

    def update_settings(self, settings: dict[int, int]) -> None:
        """Send new SETTINGS; they apply once the peer acknowledges them."""
        self._apply_header_limits(settings)
        self._queue_settings(settings)

    def _queue_settings(self, settings: dict[int, int]) -> None:
        payload = b"".join(_SETTING.pack(code, value) for code, value in settings.items())
        self._frame(SETTINGS, 0, 0, payload)
        self._pending_settings.append(dict(settings))

    def _settings_acknowledged(self) -> None:
        if not self._pending_settings:
            return
        settings = self._pending_settings.pop(0)
        local = self.local_settings
        for code, value in settings.items():
            name = _SETTING_NAMES.get(code)
            if name is not None:
                setattr(local, name, value)
            if code == SettingCodes.INITIAL_WINDOW_SIZE:
                delta = value - self._local_initial_window
                self._local_initial_window = value
                for stream in self._streams.values():
                    stream.recv_window += delta
            elif code == SettingCodes.MAX_FRAME_SIZE:
                self._max_inbound_frame = value
            elif code == SettingCodes.HEADER_TABLE_SIZE:
                self._decoder.max_allowed_table_size = value
        self._events.append(SettingsAcknowledged(settings))

    def _apply_remote_settings(self, payload: bytes) -> None:
        changed: dict[int, int] = {}
        remote = self.remote_settings
        for offset in range(0, len(payload), 6):
            code, value = _SETTING.unpack_from(payload, offset)
            if code == SettingCodes.HEADER_TABLE_SIZE:
                remote.header_table_size = value
                self._table_size_update = True
            elif code == SettingCodes.ENABLE_PUSH:
                if value > 1 or (self.client_side and value == 1):
                    raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "invalid ENABLE_PUSH")
                remote.enable_push = value
            elif code == SettingCodes.MAX_CONCURRENT_STREAMS:
                remote.max_concurrent_streams = value
            elif code == SettingCodes.INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise _ConnectionError(
                        ErrorCodes.FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE above 2**31-1"
                    )
                delta = value - self._remote_initial_window
                self._remote_initial_window = value
                remote.initial_window_size = value
                if delta:
                    for stream in self._streams.values():
                        stream.send_window += delta
                        if stream.send_window > MAX_WINDOW:
                            raise _ConnectionError(
                                ErrorCodes.FLOW_CONTROL_ERROR, "stream window above 2**31-1"
                            )
            elif code == SettingCodes.MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME <= value <= MAX_MAX_FRAME:
                    raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "invalid MAX_FRAME_SIZE")
                remote.max_frame_size = value
                self._max_outbound_frame = value
            elif code == SettingCodes.MAX_HEADER_LIST_SIZE:
                remote.max_header_list_size = value
            else:
                continue  # unknown settings are ignored
            changed[code] = value
        self._frame(SETTINGS, FLAG_ACK, 0, b"")
        self._events.append(RemoteSettingsChanged(changed))

    # Sending.

    def _frame(self, frame_type: int, flags: int, stream_id: int, payload: bytes) -> None:
        length = len(payload)
        header = _FRAME_HEADER.pack(length >> 8, length & 0xFF, frame_type, flags, stream_id)
        self._out.append(header)
        if length:
            self._out.append(payload)

    def data_to_send(self) -> bytes:
        """Everything queued for the peer, now taken."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        return data

    @property
    def max_outbound_frame_size(self) -> int:
        """The largest frame payload the peer accepts."""
        return self._max_outbound_frame

    @property
    def open_outbound_streams(self) -> int:
        """Streams we opened that are not closed yet."""
        if self.client_side:
            return len(self._streams)  # a client has no other streams: push is disabled
        return sum(1 for stream_id in self._streams if not stream_id & 1)

    @property
    def open_inbound_streams(self) -> int:
        """Streams the peer opened that are not closed yet."""
        parity = 0 if self.client_side else 1
        return sum(1 for stream_id in self._streams if stream_id & 1 == parity)

    def get_next_available_stream_id(self) -> int:
        """The identifier of the next stream we would open."""
        if self._next_stream_id > MAX_STREAM_ID:
            raise ProtocolError("stream identifiers exhausted")
        return self._next_stream_id

    def send_headers(self, stream_id: int, headers: Headers, end_stream: bool = False) -> None:
        """Send a header block: opens the stream if it is a new one of ours."""
        stream = self._streams.get(stream_id)
        if stream is None:
            if self.closed or stream_id != self._next_stream_id or stream_id > MAX_STREAM_ID:
                raise StreamClosedError(stream_id)
            stream = _Stream(stream_id, self._remote_initial_window, self._local_initial_window)
            self._streams[stream_id] = stream
            self._next_stream_id = stream_id + 2
        elif stream.local_closed:
            raise StreamClosedError(stream_id)
        block = self._encoder.encode(headers)
        if self._table_size_update:
            self._table_size_update = False
            block = b"\x20" + block
        flags = FLAG_END_STREAM if end_stream else 0
        limit = self._max_outbound_frame
        if len(block) <= limit:
            self._frame(HEADERS, flags | FLAG_END_HEADERS, stream_id, block)
        else:
            self._frame(HEADERS, flags, stream_id, block[:limit])
            for start in range(limit, len(block), limit):
                last = start + limit >= len(block)
                self._frame(
                    CONTINUATION,
                    FLAG_END_HEADERS if last else 0,
                    stream_id,
                    block[start : start + limit],
                )
        if end_stream:
            self._close_local(stream)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Send *data* (split into frames as needed) within the peer's windows."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed:
            raise StreamClosedError(stream_id)
        length = len(data)
        if length > self._send_window or length > stream.send_window:
            raise FlowControlError("data exceeds the flow-control window")
        self._send_window -= length
        stream.send_window -= length
        limit = self._max_outbound_frame
        flags = FLAG_END_STREAM if end_stream else 0
        if length <= limit:
            self._frame(DATA, flags, stream_id, data)
        else:
            view = memoryview(data)
            for start in range(0, length, limit):
                chunk = bytes(view[start : start + limit])
                last = start + limit >= length
                self._frame(DATA, flags if last else 0, stream_id, chunk)
        if end_stream:
            self._close_local(stream)

    def end_stream(self, stream_id: int) -> None:
        """Half-close our side with an empty DATA frame."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.local_closed:
            raise StreamClosedError(stream_id)
        self._frame(DATA, FLAG_END_STREAM, stream_id, b"")
        self._close_local(stream)

    def _close_local(self, stream: _Stream) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            del self._streams[stream.stream_id]

    def reset_stream(self, stream_id: int, error_code: int = ErrorCodes.NO_ERROR) -> None:
        """Send RST_STREAM (nothing if the stream is already closed)."""
        if self._streams.pop(stream_id, None) is None:
            return
        self._send_reset(stream_id, error_code)

    def _send_reset(self, stream_id: int, error_code: int) -> None:
        self._frame(RST_STREAM, 0, stream_id, _U32.pack(error_code))
        reset = self._reset_by_us
        if len(reset) >= _RESET_MEMORY:
            del reset[next(iter(reset))]
        reset[stream_id] = None

    def local_flow_control_window(self, stream_id: int) -> int:
        """How many bytes may be sent on *stream_id* now (0 if it is closed)."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        window = stream.send_window
        return window if window < self._send_window else self._send_window

    def acknowledge_received_data(self, acknowledged_size: int, stream_id: int) -> None:
        """Give back window for consumed data, sending WINDOW_UPDATE when it is worth it."""
        if acknowledged_size <= 0:
            return
        unacked = self._recv_unacked + acknowledged_size
        maximum = self._recv_window_max
        if unacked >= maximum >> 1 or (
            self._recv_window < maximum >> 2 and unacked >= min(1024, maximum >> 2)
        ):
            increment = min(unacked, MAX_WINDOW - self._recv_window)
            if increment > 0:
                self._recv_window += increment
                self._frame(WINDOW_UPDATE, 0, 0, _U32.pack(increment))
            unacked = 0
        self._recv_unacked = unacked
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_closed:
            return
        unacked = stream.recv_unacked + acknowledged_size
        maximum = self._local_initial_window
        if unacked >= maximum >> 1 or (
            stream.recv_window < maximum >> 2 and unacked >= min(1024, maximum >> 2)
        ):
            increment = min(unacked, MAX_WINDOW - stream.recv_window)
            if increment > 0:
                stream.recv_window += increment
                self._frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(increment))
            unacked = 0
        stream.recv_unacked = unacked

    def increment_flow_control_window(self, increment: int, stream_id: int | None = None) -> None:
        """Open the connection's (or a stream's) receive window by *increment*."""
        if not 1 <= increment <= MAX_WINDOW:
            raise ValueError("window increment must be between 1 and 2**31-1")
        if not stream_id:
            if self._recv_window + increment > MAX_WINDOW:
                raise FlowControlError("connection window above 2**31-1")
            self._recv_window += increment
            self._recv_window_max += increment
            self._frame(WINDOW_UPDATE, 0, 0, _U32.pack(increment))
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            raise StreamClosedError(stream_id)
        if stream.recv_window + increment > MAX_WINDOW:
            raise FlowControlError("stream window above 2**31-1")
        stream.recv_window += increment
        self._frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(increment))

    def ping(self, data: bytes) -> None:
        """Send a PING with 8 bytes of opaque data."""
        if len(data) != 8:
            raise ValueError("PING data must be 8 bytes")
        self._frame(PING, 0, 0, data)

    def send_goaway(
        self,
        last_stream_id: int | None = None,
        error_code: int = ErrorCodes.NO_ERROR,
        additional_data: bytes = b"",
    ) -> None:
        """Send GOAWAY but keep the connection working for the streams it still covers."""
        if last_stream_id is None:
            last_stream_id = 0 if self.client_side else self.highest_inbound_stream_id
        self._frame(GOAWAY, 0, 0, _U32_U32.pack(last_stream_id, error_code) + additional_data)

    def close_connection(
        self,
        error_code: int = ErrorCodes.NO_ERROR,
        additional_data: bytes = b"",
        last_stream_id: int | None = None,
    ) -> None:
        """Send a final GOAWAY: nothing more is received or sent."""
        if self.closed:
            return
        self.send_goaway(last_stream_id, error_code, additional_data)
        self.closed = True

    # Receiving.

    def receive_data(self, data: bytes) -> list[Event]:
        """
        Process bytes from the peer and return the events they make.

        Raises :class:`ProtocolError` on a connection error, with the GOAWAY already queued.
        """
        if self.closed:
            return []
        events: list[Event] = []
        self._events = events
        buffer = self._buffer + data if self._buffer else data
        pos = 0
        end = len(buffer)
        try:
            if self._preface_pending:
                if end < 24:
                    if not PREFACE.startswith(buffer):
                        raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "invalid preface")
                    self._buffer = buffer
                    return events
                if not buffer.startswith(PREFACE):
                    raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "invalid preface")
                self._preface_pending = False
                pos = 24
            handlers = self._handlers
            unpack = _FRAME_HEADER.unpack_from
            while end - pos >= 9:
                high, low, frame_type, flags, stream_id = unpack(buffer, pos)
                length = (high << 8) | low
                if length > self._max_inbound_frame:
                    raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "frame too large")
                start = pos + 9
                if end - start < length:
                    break
                pos = start + length
                payload = buffer[start:pos]
                stream_id &= MAX_STREAM_ID
                if self._settings_expected:
                    if frame_type != SETTINGS or flags & FLAG_ACK:
                        raise _ConnectionError(
                            ErrorCodes.PROTOCOL_ERROR, "the preface must start with SETTINGS"
                        )
                    self._settings_expected = False
                if self._continuation and frame_type != CONTINUATION:
                    raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "expected CONTINUATION")
                if frame_type < 10:
                    handlers[frame_type](flags, stream_id, payload)
                if self.closed:
                    pos = end
                    break
            self._buffer = buffer[pos:] if pos < end else b""
        except _ConnectionError as e:
            self._buffer = b""
            if not self.closed:
                self.close_connection(e.error_code, str(e).encode("utf-8", "replace"))
            raise ProtocolError(str(e), e.error_code) from None
        return events

    def _stream_error(self, stream_id: int, error_code: int) -> None:
        """Reset a stream for something the peer did, and tell the application."""
        stream = self._streams.pop(stream_id, None)
        self._send_reset(stream_id, error_code)
        if stream is not None:
            self._events.append(StreamReset(stream_id, error_code, False))

    def _is_idle(self, stream_id: int) -> bool:
        if stream_id & 1 == (1 if self.client_side else 0):
            return stream_id >= self._next_stream_id
        return stream_id > self.highest_inbound_stream_id

    def _credit(self, length: int) -> None:
        """Connection window for DATA nobody will consume (closed or reset streams)."""
        if length:
            self.acknowledge_received_data(length, 0)

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "DATA on stream 0")
        length = len(payload)
        data = payload
        if flags & FLAG_PADDED:
            if not length:
                raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "DATA too short for padding")
            padding = payload[0]
            if padding >= length:
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "DATA padding too long")
            data = payload[1 : length - padding]
        if length > self._recv_window:
            raise _ConnectionError(ErrorCodes.FLOW_CONTROL_ERROR, "connection window exceeded")
        self._recv_window -= length
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._is_idle(stream_id):
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "DATA on an idle stream")
            self._credit(length)
            if stream_id not in self._reset_by_us:
                self._send_reset(stream_id, ErrorCodes.STREAM_CLOSED)
            return
        if stream.remote_closed or not stream.headers_received:
            self._credit(length)
            self._stream_error(
                stream_id,
                ErrorCodes.STREAM_CLOSED if stream.remote_closed else ErrorCodes.PROTOCOL_ERROR,
            )
            return
        if length > stream.recv_window:
            self._credit(length)
            self._stream_error(stream_id, ErrorCodes.FLOW_CONTROL_ERROR)
            return
        stream.recv_window -= length
        ended = bool(flags & FLAG_END_STREAM)
        if stream.content_length >= 0:
            stream.data_length += len(data)
            if stream.data_length > stream.content_length or (
                ended and stream.data_length != stream.content_length
            ):
                self._credit(length)
                self._stream_error(stream_id, ErrorCodes.PROTOCOL_ERROR)
                return
        if ended:
            stream.remote_closed = True
            if stream.local_closed:
                del self._streams[stream_id]
        self._events.append(DataReceived(stream_id, data, length, ended))

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "HEADERS on stream 0")
        start = 0
        end = length = len(payload)
        if flags & FLAG_PADDED:
            start = 1
            end -= payload[0] if length else 0
        fixed = start + 5 if flags & FLAG_PRIORITY else start
        if length < fixed:
            raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "HEADERS too short")
        if end < fixed:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "HEADERS padding too long")
        dependency = -1
        if flags & FLAG_PRIORITY:
            dependency = _U32.unpack_from(payload, start)[0] & MAX_STREAM_ID
            start = fixed
        block = payload[start:end] if start or end != len(payload) else payload
        if flags & FLAG_END_HEADERS:
            self._headers_complete(stream_id, flags, block, dependency)
            return
        self._continuation = stream_id
        self._continuation_flags = flags
        self._continuation_parts = [block]
        self._continuation_size = len(block)
        self._continuation_count = 0
        self._continuation_dependency = dependency
        if len(block) > self._max_header_block:
            raise _ConnectionError(ErrorCodes.ENHANCE_YOUR_CALM, "header block too large")

    def _on_continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not self._continuation or stream_id != self._continuation:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "unexpected CONTINUATION")
        self._continuation_size += len(payload)
        self._continuation_count += 1
        if (
            self._continuation_size > self._max_header_block
            or self._continuation_count > _MAX_CONTINUATIONS
        ):
            raise _ConnectionError(ErrorCodes.ENHANCE_YOUR_CALM, "header block too large")
        self._continuation_parts.append(payload)
        if flags & FLAG_END_HEADERS:
            block = b"".join(self._continuation_parts)
            self._continuation = 0
            self._continuation_parts = []
            self._headers_complete(
                stream_id, self._continuation_flags, block, self._continuation_dependency
            )

    def _decode(self, block: bytes) -> tuple[Headers, int]:
        try:
            return self._decoder.decode(block)
        except _HpackError as e:
            raise _ConnectionError(e.error_code, str(e)) from None

    def _headers_complete(self, stream_id: int, flags: int, block: bytes, dependency: int) -> None:
        # Always decode: the dynamic table must follow the peer's encoder.
        headers, list_size = self._decode(block)
        end_stream = bool(flags & FLAG_END_STREAM)
        stream = self._streams.get(stream_id)
        if stream is None:
            if self.client_side:
                if stream_id & 1 == 0 or stream_id >= self._next_stream_id:
                    raise _ConnectionError(
                        ErrorCodes.PROTOCOL_ERROR, "HEADERS on a stream we did not open"
                    )
                if stream_id in self._reset_by_us:
                    return
                raise _ConnectionError(ErrorCodes.STREAM_CLOSED, "HEADERS on a closed stream")
            if stream_id & 1 == 0:
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "even stream id from a client")
            if stream_id <= self.highest_inbound_stream_id:
                if stream_id in self._reset_by_us:
                    return
                raise _ConnectionError(ErrorCodes.STREAM_CLOSED, "HEADERS on a closed stream")
            self.highest_inbound_stream_id = stream_id
            if dependency == stream_id:
                self._send_reset(stream_id, ErrorCodes.PROTOCOL_ERROR)
                return
            if len(self._streams) >= self._inbound_stream_limit:
                self._send_reset(stream_id, ErrorCodes.REFUSED_STREAM)
                return
            if list_size > self._header_list_limit:
                self._send_reset(stream_id, ErrorCodes.ENHANCE_YOUR_CALM)
                return
            problem, content_length = _check_request(headers)
            if problem is not None:
                self._send_reset(stream_id, ErrorCodes.PROTOCOL_ERROR)
                return
            stream = _Stream(stream_id, self._remote_initial_window, self._local_initial_window)
            stream.headers_received = True
            stream.content_length = content_length
            if end_stream:
                if content_length > 0:
                    self._send_reset(stream_id, ErrorCodes.PROTOCOL_ERROR)
                    return
                stream.remote_closed = True
            self._streams[stream_id] = stream
            self._events.append(RequestReceived(stream_id, headers, end_stream))
            return
        if dependency == stream_id:
            self._stream_error(stream_id, ErrorCodes.PROTOCOL_ERROR)
            return
        if stream.remote_closed:
            self._stream_error(stream_id, ErrorCodes.STREAM_CLOSED)
            return
        if list_size > self._header_list_limit:
            self._stream_error(stream_id, ErrorCodes.ENHANCE_YOUR_CALM)
            return
        if self.client_side and not stream.headers_received:
            problem, content_length, status = _check_response(headers)
            if problem is not None:
                self._stream_error(stream_id, ErrorCodes.PROTOCOL_ERROR)
                return
            if status[:1] == b"1":
                if end_stream or status == b"101":
                    self._stream_error(stream_id, ErrorCodes.PROTOCOL_ERROR)
                    return
                self._events.append(InformationalResponseReceived(stream_id, headers))
                return
            stream.headers_received = True
            stream.content_length = content_length
            if end_stream:
                if content_length > 0:
                    self._stream_error(stream_id, ErrorCodes.PROTOCOL_ERROR)
                    return
                stream.remote_closed = True
                if stream.local_closed:
                    del self._streams[stream_id]
            self._events.append(ResponseReceived(stream_id, headers, end_stream))
            return
        # Trailers.
        if not end_stream:
            self._stream_error(stream_id, ErrorCodes.PROTOCOL_ERROR)
            return
        problem = check_headers(headers, _NO_PSEUDO)[0]
        if problem is None and 0 <= stream.content_length != stream.data_length:
            problem = "content-length mismatch"
        if problem is not None:
            self._stream_error(stream_id, ErrorCodes.PROTOCOL_ERROR)
            return
        stream.remote_closed = True
        if stream.local_closed:
            del self._streams[stream_id]
        self._events.append(TrailersReceived(stream_id, headers))

    def _on_priority(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            self._stream_error(stream_id, ErrorCodes.FRAME_SIZE_ERROR)
            return
        if _U32.unpack_from(payload)[0] & MAX_STREAM_ID == stream_id:
            self._stream_error(stream_id, ErrorCodes.PROTOCOL_ERROR)

    def _on_rst_stream(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "RST_STREAM of the wrong size")
        if self._is_idle(stream_id):
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            self._events.append(StreamReset(stream_id, _U32.unpack(payload)[0], True))

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & FLAG_ACK:
            if payload:
                raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            self._settings_acknowledged()
            return
        if len(payload) % 6:
            raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "SETTINGS of the wrong size")
        self._apply_remote_settings(payload)

    def _on_push_promise(self, flags: int, stream_id: int, payload: bytes) -> None:
        raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "PUSH_PROMISE with push disabled")

    def _on_ping(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "PING of the wrong size")
        if flags & FLAG_ACK:
            self._events.append(PingAckReceived(payload))
        else:
            self._frame(PING, FLAG_ACK, 0, payload)
            self._events.append(PingReceived(payload))

    def _on_goaway(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "GOAWAY too short")
        last_stream_id, error_code = _U32_U32.unpack_from(payload)
        self.goaway_received = True
        self._events.append(
            ConnectionTerminated(error_code, last_stream_id & MAX_STREAM_ID, payload[8:])
        )

    def _on_window_update(self, flags: int, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(ErrorCodes.FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size")
        increment = _U32.unpack(payload)[0] & MAX_WINDOW
        if stream_id == 0:
            if increment == 0:
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "zero WINDOW_UPDATE")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise _ConnectionError(ErrorCodes.FLOW_CONTROL_ERROR, "window above 2**31-1")
            self._events.append(WindowUpdated(0, increment))
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._is_idle(stream_id):
                raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            return
        if increment == 0:
            self._stream_error(stream_id, ErrorCodes.PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._stream_error(stream_id, ErrorCodes.FLOW_CONTROL_ERROR)
            return
        self._events.append(WindowUpdated(stream_id, increment))

"""
Tests for ``lattice.grpc._http2``: the HTTP/2 layer driven with raw frames, then real peers.

Frames we receive are parsed with ``hyperframe`` and header blocks are built with ``hpack``'s
encoder (dynamic table and Huffman coding included): independent implementations, so the
layer is checked against someone else's reading of RFC 9113 and RFC 7541.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from typing import Any

from hpack import Decoder as ReferenceDecoder
from hpack import Encoder as ReferenceEncoder
from hyperframe.frame import (
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from lattice.grpc import (
    GrpcChannel,
    GrpcClientOptions,
    GrpcClientProtocol,
    GrpcError,
    GrpcServerFactory,
    GrpcServerOptions,
)
from lattice.grpc._framing import frame_message
from lattice.grpc._http2 import (
    PREFACE,
    ConnectionTerminated,
    DataReceived,
    ErrorCodes,
    FlowControlError,
    H2Connection,
    HeaderDecoder,
    HeaderEncoder,
    InformationalResponseReceived,
    PingAckReceived,
    ProtocolError,
    RemoteSettingsChanged,
    RequestReceived,
    ResponseReceived,
    SettingCodes,
    SettingsAcknowledged,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from lattice.grpc.testing import ECHO_SERVICE, EchoRequest, EchoResponse, EchoService
from tests.grpc._harness import Harness
from tests.grpc.test_interop import run_grpcio_client

ECHO = "/lattice.grpc.testing.Echo/"
REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/lattice.grpc.testing.Echo/UnaryEcho"),
    (b":authority", b"localhost"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
]


def raw(frame_type: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame, built by hand."""
    length = len(payload)
    return struct.pack(">HBBBL", length >> 8, length & 0xFF, frame_type, flags, stream_id) + (
        payload
    )


def settings_payload(**values: int) -> bytes:
    return b"".join(struct.pack(">HL", SettingCodes[k.upper()], v) for k, v in values.items())


def parse(data: bytes) -> list[Frame]:
    """Frames in *data*, as hyperframe reads them."""
    frames = []
    view = memoryview(data)
    while view:
        frame, length = Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9 : 9 + length])
        frames.append(frame)
        view = view[9 + length :]
    return frames


def unary_call() -> tuple[GrpcClientProtocol, StringTransport, Deferred[EchoResponse]]:
    """A client protocol on a C{StringTransport} with one UnaryEcho call started."""
    client = GrpcClientProtocol(Clock(), GrpcClientOptions())
    transport = StringTransport()
    client.makeConnection(transport)
    channel = GrpcChannel(client, "localhost")
    call = Deferred.fromCoroutine(
        channel.unary_unary(ECHO + "UnaryEcho", EchoRequest(message="x"), EchoResponse)
    )
    return client, transport, call


class Client:
    """The client half of a test: a reference HPACK encoder and hand-made frames."""

    def __init__(self, server_settings: dict[int, int] | None = None) -> None:
        self.server = H2Connection(False, server_settings)
        self.server.initiate_connection()
        self.encoder = ReferenceEncoder()
        self.decoder = ReferenceDecoder()
        self.frames: list[Frame] = []

    def handshake(self, **client_settings: int) -> list[Any]:
        events = self.send(PREFACE + raw(4, 0, 0, settings_payload(**client_settings)))
        events += self.send(raw(4, 1, 0))  # ACK of the server's settings
        return events

    def send(self, data: bytes) -> list[Any]:
        events = self.server.receive_data(data)
        self.frames += parse(self.server.data_to_send())
        return events

    def headers(
        self,
        stream_id: int,
        headers: list[tuple[bytes, bytes]] = REQUEST,
        *,
        end_stream: bool = False,
        flags: int = 0,
    ) -> bytes:
        flags |= 0x4 | (0x1 if end_stream else 0)
        return raw(1, flags, stream_id, self.encoder.encode(headers))

    def error(self) -> int:
        """The error code of the GOAWAY the server sent last."""
        goaways = [f for f in self.frames if isinstance(f, GoAwayFrame)]
        assert goaways, self.frames
        return int(goaways[-1].error_code)

    def resets(self) -> dict[int, int]:
        return {
            f.stream_id: int(f.error_code) for f in self.frames if isinstance(f, RstStreamFrame)
        }

    def connection_error(self, data: bytes) -> int:
        """Send *data*, expecting a connection error; return the GOAWAY's code."""
        try:
            self.send(data)
        except ProtocolError as e:
            self.frames += parse(self.server.data_to_send())
            code = self.error()
            assert code == e.error_code, (code, e.error_code)
            return code
        raise AssertionError(f"no connection error, sent {self.frames}")


class PrefaceAndSettingsTests(SynchronousTestCase):
    """The connection preface and the SETTINGS exchange."""

    def test_server_settings_first(self) -> None:
        """The server's first frame is its SETTINGS."""
        c = Client({SettingCodes.MAX_CONCURRENT_STREAMS: 7})
        first = parse(c.server.data_to_send())[0]
        assert isinstance(first, SettingsFrame)
        self.assertEqual(first.settings, {SettingCodes.MAX_CONCURRENT_STREAMS: 7})

    def test_bad_preface(self) -> None:
        """A wrong client preface is a connection error."""
        c = Client()
        self.assertEqual(c.connection_error(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"), 1)

    def test_preface_in_pieces(self) -> None:
        """The preface may arrive a byte at a time."""
        c = Client()
        for byte in PREFACE + raw(4, 0, 0):
            c.send(bytes([byte]))
        self.assertTrue(any(isinstance(f, SettingsFrame) and "ACK" in f.flags for f in c.frames))

    def test_settings_must_come_first(self) -> None:
        """A preface followed by anything but SETTINGS is a PROTOCOL_ERROR."""
        c = Client()
        self.assertEqual(c.connection_error(PREFACE + raw(6, 0, 0, b"12345678")), 1)

    def test_settings_acknowledged(self) -> None:
        """Received SETTINGS are applied and acknowledged."""
        c = Client()
        events = c.handshake(max_frame_size=20000, initial_window_size=1000)
        changed = next(e for e in events if isinstance(e, RemoteSettingsChanged))
        self.assertEqual(changed.changed_settings[SettingCodes.MAX_FRAME_SIZE], 20000)
        self.assertEqual(c.server.max_outbound_frame_size, 20000)
        self.assertEqual(c.server.remote_settings.initial_window_size, 1000)
        self.assertTrue(any(isinstance(f, SettingsFrame) and "ACK" in f.flags for f in c.frames))

    def test_local_settings_apply_on_ack(self) -> None:
        """Our INITIAL_WINDOW_SIZE governs received DATA only once the client has ACKed it."""
        c = Client({SettingCodes.INITIAL_WINDOW_SIZE: 100})
        c.send(PREFACE + raw(4, 0, 0))
        c.send(c.headers(1))
        c.send(raw(0, 0, 1, b"x" * 200))  # fine under the default 65535 window
        self.assertEqual(c.resets(), {})
        events = c.send(raw(4, 1, 0))
        self.assertTrue(any(isinstance(e, SettingsAcknowledged) for e in events))
        c.send(raw(0, 0, 1, b"x"))  # 65535 - 200 - (65535 - 100) < 1: now over the window
        self.assertEqual(c.resets(), {1: ErrorCodes.FLOW_CONTROL_ERROR})

    def test_settings_errors(self) -> None:
        """Malformed and out-of-range SETTINGS are connection errors with the RFC's codes."""
        cases = [
            (raw(4, 0, 0, b"\x00\x01\x00"), ErrorCodes.FRAME_SIZE_ERROR),
            (raw(4, 1, 0, b"\x00" * 6), ErrorCodes.FRAME_SIZE_ERROR),
            (raw(4, 0, 1, b""), ErrorCodes.PROTOCOL_ERROR),
            (raw(4, 0, 0, settings_payload(enable_push=2)), ErrorCodes.PROTOCOL_ERROR),
            (
                raw(4, 0, 0, settings_payload(initial_window_size=2**31)),
                ErrorCodes.FLOW_CONTROL_ERROR,
            ),
            (raw(4, 0, 0, settings_payload(max_frame_size=16383)), ErrorCodes.PROTOCOL_ERROR),
            (raw(4, 0, 0, settings_payload(max_frame_size=2**24)), ErrorCodes.PROTOCOL_ERROR),
        ]
        for data, code in cases:
            c = Client()
            c.handshake()
            self.assertEqual(c.connection_error(data), code, data)

    def test_unknown_setting_ignored(self) -> None:
        """Unknown settings identifiers are ignored."""
        c = Client()
        c.handshake()
        c.send(raw(4, 0, 0, struct.pack(">HL", 0x99, 5)))
        self.assertFalse(c.server.closed)

    def test_initial_window_change_adjusts_streams(self) -> None:
        """A new INITIAL_WINDOW_SIZE moves every open stream's send window by the difference."""
        c = Client()
        c.handshake()
        c.send(c.headers(1))
        self.assertEqual(c.server.local_flow_control_window(1), 65535)
        c.send(raw(4, 0, 0, settings_payload(initial_window_size=1000)))
        self.assertEqual(c.server.local_flow_control_window(1), 1000)
        c.send(raw(8, 0, 1, struct.pack(">L", 2**31 - 1 - 1000)))
        self.assertEqual(
            c.connection_error(raw(4, 0, 0, settings_payload(initial_window_size=1001))), 3
        )

    def test_header_table_size_update(self) -> None:
        """The first header block starts with a table size update to 0 (we never index)."""
        c = Client()
        c.handshake(header_table_size=0)
        c.send(c.headers(1, end_stream=True))
        c.server.send_headers(1, [(b":status", b"200")], end_stream=True)
        headers = parse(c.server.data_to_send())[0]
        assert isinstance(headers, HeadersFrame)
        self.assertEqual(bytes(headers.data)[:1], b"\x20")
        self.assertEqual(c.decoder.decode(headers.data, raw=True), [(b":status", b"200")])


class FrameTests(SynchronousTestCase):
    """Each frame type's rules."""

    def setUp(self) -> None:
        self.c = Client({SettingCodes.MAX_CONCURRENT_STREAMS: 2})
        self.c.handshake()

    def test_request(self) -> None:
        """HEADERS with END_STREAM is a request that ends its stream."""
        events = self.c.send(self.c.headers(1, end_stream=True))
        self.assertEqual(len(events), 1)
        event = events[0]
        assert isinstance(event, RequestReceived)
        self.assertEqual((event.stream_id, event.headers, event.stream_ended), (1, REQUEST, True))

    def test_padded_priority_headers(self) -> None:
        """Padding and the priority fields of HEADERS are stripped."""
        block = self.c.encoder.encode(REQUEST)
        payload = b"\x03" + struct.pack(">LB", 0, 15) + block + b"\x00\x00\x00"
        events = self.c.send(raw(1, 0x4 | 0x8 | 0x20, 1, payload))
        self.assertEqual(events[0].headers, REQUEST)

    def test_headers_padding_too_long(self) -> None:
        """Padding longer than the payload is a PROTOCOL_ERROR."""
        self.assertEqual(self.c.connection_error(raw(1, 0x4 | 0x8, 1, b"\x09abc")), 1)

    def test_continuation(self) -> None:
        """A header block split over CONTINUATION frames is reassembled."""
        block = self.c.encoder.encode(REQUEST)
        data = raw(1, 0, 1, block[:3]) + raw(9, 0, 1, block[3:5]) + raw(9, 0x4, 1, block[5:])
        events = self.c.send(data)
        self.assertEqual(events[0].headers, REQUEST)

    def test_continuation_interleaved(self) -> None:
        """Any other frame inside a header block is a PROTOCOL_ERROR."""
        block = self.c.encoder.encode(REQUEST)
        data = raw(1, 0, 1, block[:3]) + raw(6, 0, 0, b"12345678") + raw(9, 0x4, 1, block[3:])
        self.assertEqual(self.c.connection_error(data), 1)

    def test_continuation_other_stream(self) -> None:
        """CONTINUATION for another stream is a PROTOCOL_ERROR."""
        block = self.c.encoder.encode(REQUEST)
        data = raw(1, 0, 1, block[:3]) + raw(9, 0x4, 3, block[3:])
        self.assertEqual(self.c.connection_error(data), 1)

    def test_continuation_without_headers(self) -> None:
        """CONTINUATION out of nowhere is a PROTOCOL_ERROR."""
        self.assertEqual(self.c.connection_error(raw(9, 0x4, 1, b"\x82")), 1)

    def test_header_block_bounded(self) -> None:
        """An endless header block is refused before it exhausts memory."""
        data = raw(1, 0, 1, b"\x00" * 16000) + raw(9, 0, 1, b"\x00" * 16000) * 4
        self.assertEqual(self.c.connection_error(data), ErrorCodes.ENHANCE_YOUR_CALM)

    def test_continuation_flood(self) -> None:
        """Endless empty CONTINUATION frames are refused."""
        data = raw(1, 0, 1, b"\x82") + raw(9, 0, 1) * 100
        self.assertEqual(self.c.connection_error(data), ErrorCodes.ENHANCE_YOUR_CALM)

    def test_even_stream_from_client(self) -> None:
        """A client may not open an even-numbered stream."""
        self.assertEqual(self.c.connection_error(self.c.headers(2)), 1)

    def test_stream_ids_increase(self) -> None:
        """A new stream with a lower identifier than one already used is a connection error."""
        self.c.send(self.c.headers(5, end_stream=True))
        self.assertIn(self.c.connection_error(self.c.headers(3)), (1, 5))

    def test_data_on_idle_stream(self) -> None:
        """DATA on a stream never opened is a PROTOCOL_ERROR."""
        self.assertEqual(self.c.connection_error(raw(0, 0, 1, b"x")), 1)

    def test_data_on_stream_zero(self) -> None:
        """DATA on stream 0 is a PROTOCOL_ERROR."""
        self.assertEqual(self.c.connection_error(raw(0, 0, 0, b"x")), 1)

    def test_data_padding(self) -> None:
        """Padding is stripped from DATA but counts against flow control."""
        self.c.send(self.c.headers(1))
        events = self.c.send(raw(0, 0x8 | 0x1, 1, b"\x02abc\x00\x00"))
        event = events[0]
        assert isinstance(event, DataReceived)
        self.assertEqual((event.data, event.flow_controlled_length), (b"abc", 6))
        self.assertTrue(event.stream_ended)

    def test_data_padding_too_long(self) -> None:
        """DATA padding as long as the payload is a PROTOCOL_ERROR."""
        self.c.send(self.c.headers(1))
        self.assertEqual(self.c.connection_error(raw(0, 0x8, 1, b"\x04abc")), 1)

    def test_data_after_end_stream(self) -> None:
        """DATA on a half-closed (remote) stream is a STREAM_CLOSED stream error."""
        self.c.send(self.c.headers(1, end_stream=True))
        events = self.c.send(raw(0, 0, 1, b"late"))
        self.assertEqual(self.c.resets(), {1: ErrorCodes.STREAM_CLOSED})
        self.assertEqual([type(e) for e in events], [StreamReset])

    def test_frames_after_reset_ignored(self) -> None:
        """Frames on a stream we reset are ignored, and their DATA still frees the window."""
        self.c.send(self.c.headers(1))
        self.c.server.reset_stream(1, ErrorCodes.CANCEL)
        self.c.send(raw(0, 0, 1, b"x" * 16000) * 4)
        self.c.send(raw(0, 0, 1, b"z" * 1000) + self.c.headers(1, [(b"grpc-x", b"1")]))
        self.c.send(raw(8, 0, 1, b"\x00\x00\x00\x05") + raw(3, 0, 1, b"\x00\x00\x00\x08"))
        self.assertEqual(self.c.resets(), {1: ErrorCodes.CANCEL})
        self.assertFalse(self.c.server.closed)
        updates = [f.window_increment for f in self.c.frames if isinstance(f, WindowUpdateFrame)]
        self.assertGreaterEqual(sum(updates), 32768)

    def test_headers_on_closed_stream(self) -> None:
        """HEADERS on a stream closed normally is a STREAM_CLOSED connection error."""
        self.c.send(self.c.headers(1, end_stream=True))
        self.c.server.send_headers(1, [(b":status", b"200")], end_stream=True)
        self.assertEqual(self.c.connection_error(self.c.headers(1, end_stream=True)), 5)

    def test_trailers(self) -> None:
        """A second HEADERS with END_STREAM is trailers; without END_STREAM it is an error."""
        self.c.send(self.c.headers(1))
        events = self.c.send(self.c.headers(1, [(b"x-trailer", b"1")], end_stream=True))
        self.assertIsInstance(events[0], TrailersReceived)
        self.c.send(self.c.headers(3))
        self.c.send(self.c.headers(3, [(b"x-trailer", b"1")]))
        self.assertEqual(self.c.resets(), {3: ErrorCodes.PROTOCOL_ERROR})

    def test_rst_stream(self) -> None:
        """RST_STREAM from the peer closes the stream; on an idle one it is an error."""
        self.c.send(self.c.headers(1))
        events = self.c.send(raw(3, 0, 1, b"\x00\x00\x00\x08"))
        event = events[0]
        assert isinstance(event, StreamReset)
        self.assertEqual((event.error_code, event.remote_reset), (8, True))
        self.assertEqual(self.c.server.local_flow_control_window(1), 0)
        self.assertEqual(self.c.connection_error(raw(3, 0, 9, b"\x00\x00\x00\x08")), 1)

    def test_rst_stream_errors(self) -> None:
        """RST_STREAM of the wrong size or on stream 0 is a connection error."""
        self.c.send(self.c.headers(1))
        self.assertEqual(self.c.connection_error(raw(3, 0, 1, b"\x00\x00\x08")), 6)
        c = Client()
        c.handshake()
        self.assertEqual(c.connection_error(raw(3, 0, 0, b"\x00\x00\x00\x08")), 1)

    def test_priority(self) -> None:
        """PRIORITY is accepted and ignored; self-dependency or bad length are stream errors."""
        self.c.send(raw(2, 0, 1, struct.pack(">LB", 3, 10)))
        self.c.send(raw(2, 0, 3, struct.pack(">LB", 3, 10)))
        self.c.send(raw(2, 0, 5, b"\x00\x00"))
        self.assertEqual(
            self.c.resets(), {3: ErrorCodes.PROTOCOL_ERROR, 5: ErrorCodes.FRAME_SIZE_ERROR}
        )
        self.assertEqual(self.c.connection_error(raw(2, 0, 0, struct.pack(">LB", 3, 10))), 1)

    def test_headers_self_dependency(self) -> None:
        """HEADERS depending on their own stream is a stream error."""
        block = self.c.encoder.encode(REQUEST)
        self.c.send(raw(1, 0x4 | 0x20, 1, struct.pack(">LB", 1, 1) + block))
        self.assertEqual(self.c.resets(), {1: ErrorCodes.PROTOCOL_ERROR})

    def test_push_promise_refused(self) -> None:
        """PUSH_PROMISE is a PROTOCOL_ERROR: push is disabled (and clients cannot push)."""
        self.c.send(self.c.headers(1))
        self.assertEqual(self.c.connection_error(raw(5, 0x4, 1, b"\x00\x00\x00\x02\x82")), 1)

    def test_ping(self) -> None:
        """PING is answered with the same payload; malformed PINGs are connection errors."""
        self.c.send(raw(6, 0, 0, b"abcdefgh"))
        pong = self.c.frames[-1]
        assert isinstance(pong, PingFrame)
        self.assertEqual((pong.opaque_data, pong.flags), (b"abcdefgh", {"ACK"}))
        events = self.c.send(raw(6, 1, 0, b"lattice\x00"))
        self.assertIsInstance(events[0], PingAckReceived)
        self.assertEqual(self.c.connection_error(raw(6, 0, 0, b"short")), 6)
        c = Client()
        c.handshake()
        self.assertEqual(c.connection_error(raw(6, 0, 1, b"abcdefgh")), 1)

    def test_goaway(self) -> None:
        """GOAWAY from the peer is reported with its code, last stream and debug data."""
        events = self.c.send(raw(7, 0, 0, struct.pack(">LL", 7, 2) + b"bye"))
        event = events[0]
        assert isinstance(event, ConnectionTerminated)
        self.assertEqual(
            (event.last_stream_id, event.error_code, event.additional_data), (7, 2, b"bye")
        )
        self.assertEqual(self.c.connection_error(raw(7, 0, 0, b"\x00")), 6)

    def test_window_update_errors(self) -> None:
        """Zero and overflowing WINDOW_UPDATEs are errors of the right kind."""
        self.c.send(self.c.headers(1))
        self.c.send(self.c.headers(3))
        self.c.send(raw(8, 0, 1, b"\x00\x00\x00\x00"))
        self.c.send(raw(8, 0, 3, struct.pack(">L", 2**31 - 1)))
        self.assertEqual(
            self.c.resets(), {1: ErrorCodes.PROTOCOL_ERROR, 3: ErrorCodes.FLOW_CONTROL_ERROR}
        )
        self.assertEqual(self.c.connection_error(raw(8, 0, 0, struct.pack(">L", 2**31 - 1))), 3)
        for data, code in [(raw(8, 0, 0, b"\x00" * 4), 1), (raw(8, 0, 0, b"\x00" * 5), 6)]:
            c = Client()
            c.handshake()
            self.assertEqual(c.connection_error(data), code)

    def test_window_update_idle_stream(self) -> None:
        """WINDOW_UPDATE on an idle stream is a PROTOCOL_ERROR."""
        self.assertEqual(self.c.connection_error(raw(8, 0, 11, b"\x00\x00\x00\x01")), 1)

    def test_unknown_frame_ignored(self) -> None:
        """Frames of unknown types are ignored."""
        self.c.send(raw(0x42, 0xFF, 0, b"whatever") + raw(0x42, 0, 7, b""))
        self.assertEqual(self.c.send(self.c.headers(1))[0].stream_id, 1)

    def test_frame_too_large(self) -> None:
        """A frame over our MAX_FRAME_SIZE is a FRAME_SIZE_ERROR, before its payload arrives."""
        self.c.send(self.c.headers(1))
        self.assertEqual(self.c.connection_error(raw(0, 0, 1, b"x" * 16385)[:20]), 6)

    def test_concurrency_limit(self) -> None:
        """Streams over MAX_CONCURRENT_STREAMS are refused, not a connection error."""
        events = self.c.send(self.c.headers(1) + self.c.headers(3) + self.c.headers(5))
        self.assertEqual([e.stream_id for e in events], [1, 3])
        self.assertEqual(self.c.resets(), {5: ErrorCodes.REFUSED_STREAM})
        self.c.send(raw(3, 0, 1, b"\x00\x00\x00\x08"))
        self.assertEqual(self.c.send(self.c.headers(7))[0].stream_id, 7)


class HeaderValidationTests(SynchronousTestCase):
    """Malformed requests are stream errors (RST_STREAM PROTOCOL_ERROR)."""

    cases: dict[str, list[tuple[bytes, bytes]]] = {
        "uppercase name": [*REQUEST, (b"X-Upper", b"1")],
        "connection header": [*REQUEST, (b"connection", b"close")],
        "te not trailers": [*REQUEST[:5], (b"te", b"gzip")],
        "pseudo after regular": [*REQUEST[1:], REQUEST[0]],
        "missing path": [h for h in REQUEST if h[0] != b":path"],
        "empty path": [(b":path", b"") if h[0] == b":path" else h for h in REQUEST],
        "unknown pseudo": [(b":protocol", b"x"), *REQUEST],
        "duplicate pseudo": [REQUEST[0], *REQUEST],
        "response pseudo": [(b":status", b"200"), *REQUEST],
        "newline in value": [*REQUEST, (b"x-a", b"a\nb")],
        "nul in value": [*REQUEST, (b"x-a", b"a\x00b")],
        "bad content-length": [*REQUEST, (b"content-length", b"abc")],
    }

    def test_malformed(self) -> None:
        """Each malformed header list resets its stream and the connection carries on."""
        for name, headers in self.cases.items():
            c = Client()
            c.handshake()
            events = c.send(c.headers(1, headers))
            self.assertEqual(events, [], name)
            self.assertEqual(c.resets(), {1: ErrorCodes.PROTOCOL_ERROR}, name)
            self.assertEqual(c.send(c.headers(3))[0].stream_id, 3, name)

    def test_surrounding_whitespace_accepted(self) -> None:
        """Values with surrounding whitespace pass: gRPC clients send them (RFC 9113 leniency)."""
        c = Client()
        c.handshake()
        headers = [*REQUEST, (b"authorization", b"Bearer ")]
        self.assertEqual(c.send(c.headers(1, headers))[0].headers, headers)

    def test_trailers_with_pseudo_header(self) -> None:
        """Trailers may not carry pseudo-headers."""
        c = Client()
        c.handshake()
        c.send(c.headers(1))
        c.send(c.headers(1, [(b":path", b"/x")], end_stream=True))
        self.assertEqual(c.resets(), {1: ErrorCodes.PROTOCOL_ERROR})

    def test_content_length_mismatch(self) -> None:
        """DATA that disagrees with content-length is a stream error."""
        c = Client()
        c.handshake()
        c.send(c.headers(1, [*REQUEST, (b"content-length", b"3")]))
        c.send(raw(0, 1, 1, b"ab"))
        c.send(c.headers(3, [*REQUEST, (b"content-length", b"3")]))
        events = c.send(raw(0, 1, 3, b"abc"))
        self.assertEqual(c.resets(), {1: ErrorCodes.PROTOCOL_ERROR})
        self.assertTrue(events[0].stream_ended)

    def test_header_list_too_large(self) -> None:
        """A header list over our MAX_HEADER_LIST_SIZE resets the stream."""
        c = Client({SettingCodes.MAX_HEADER_LIST_SIZE: 1000})
        c.handshake()
        c.send(c.headers(1, [*REQUEST, (b"x-big", b"a" * 2000)]))
        self.assertEqual(c.resets(), {1: ErrorCodes.ENHANCE_YOUR_CALM})
        self.assertEqual(c.send(c.headers(3))[0].stream_id, 3)


class FlowControlTests(SynchronousTestCase):
    """Windows in both directions."""

    def test_send_within_windows(self) -> None:
        """Sends never exceed the peer's windows; WINDOW_UPDATE opens them again."""
        c = Client()
        c.handshake(initial_window_size=100)
        c.send(c.headers(1, end_stream=True))
        server = c.server
        server.send_headers(1, [(b":status", b"200")])
        self.assertEqual(server.local_flow_control_window(1), 100)
        server.send_data(1, b"x" * 100)
        self.assertEqual(server.local_flow_control_window(1), 0)
        self.assertRaises(FlowControlError, server.send_data, 1, b"y")
        events = c.send(raw(8, 0, 1, struct.pack(">L", 50)))
        self.assertIsInstance(events[0], WindowUpdated)
        self.assertEqual(server.local_flow_control_window(1), 50)

    def test_connection_window_bounds_streams(self) -> None:
        """The connection window bounds every stream's."""
        c = Client()
        c.handshake(initial_window_size=2**20)
        c.send(c.headers(1, end_stream=True))
        c.server.send_headers(1, [(b":status", b"200")])
        self.assertEqual(c.server.local_flow_control_window(1), 65535)

    def test_large_send_split_into_frames(self) -> None:
        """Data larger than the peer's MAX_FRAME_SIZE is split into frames of that size."""
        c = Client()
        c.handshake(initial_window_size=2**20)
        c.send(c.headers(1, end_stream=True))
        c.server.send_headers(1, [(b":status", b"200")])
        c.server.send_data(1, b"z" * 40000, end_stream=True)
        frames = parse(c.server.data_to_send())
        sizes = [len(f.data) for f in frames if isinstance(f, DataFrame)]
        self.assertEqual(sizes, [16384, 16384, 7232])
        self.assertEqual(frames[-1].flags, {"END_STREAM"})

    def test_inbound_stream_window_violation(self) -> None:
        """DATA beyond a stream's window is a FLOW_CONTROL_ERROR stream error."""
        c = Client({SettingCodes.INITIAL_WINDOW_SIZE: 16384})
        c.handshake()
        c.send(c.headers(1))
        c.send(raw(0, 0, 1, b"x" * 16384))
        c.send(raw(0, 0, 1, b"x"))
        self.assertEqual(c.resets(), {1: ErrorCodes.FLOW_CONTROL_ERROR})

    def test_inbound_connection_window_violation(self) -> None:
        """DATA beyond the connection window is a FLOW_CONTROL_ERROR connection error."""
        c = Client()
        c.handshake()
        c.send(c.headers(1) + c.headers(3) + c.headers(5) + c.headers(7) + c.headers(9))
        for stream_id in (1, 3, 5, 7):
            c.send(raw(0, 0, stream_id, b"x" * 16383))
        self.assertEqual(c.connection_error(raw(0, 0, 9, b"x" * 16384)), 3)

    def test_acknowledged_data_reopens_windows(self) -> None:
        """Consumed data is given back with WINDOW_UPDATE once half a window is used."""
        c = Client()
        c.handshake()
        c.send(c.headers(1))
        for _ in range(3):
            event = c.send(raw(0, 0, 1, b"x" * 16000))[0]
            c.server.acknowledge_received_data(event.flow_controlled_length, 1)
            c.frames += parse(c.server.data_to_send())
        updates = {
            f.stream_id: f.window_increment for f in c.frames if isinstance(f, WindowUpdateFrame)
        }
        self.assertEqual(updates, {0: 48000, 1: 48000})


class ClientSideTests(SynchronousTestCase):
    """The client half: responses, trailers, and what a server may not do."""

    def setUp(self) -> None:
        self.client = H2Connection(True, {SettingCodes.ENABLE_PUSH: 0})
        self.client.initiate_connection()
        self.assertTrue(self.client.data_to_send().startswith(PREFACE))
        self.encoder = ReferenceEncoder()
        self.client.receive_data(raw(4, 0, 0) + raw(4, 1, 0))
        self.client.send_headers(1, REQUEST, end_stream=True)
        self.client.data_to_send()

    def headers(self, headers: list[tuple[bytes, bytes]], flags: int = 0x4) -> bytes:
        return raw(1, flags, 1, self.encoder.encode(headers))

    def test_response_data_trailers(self) -> None:
        """1xx, response headers, DATA and trailers arrive as their events."""
        events = self.client.receive_data(
            self.headers([(b":status", b"100")])
            + self.headers([(b":status", b"200"), (b"content-type", b"application/grpc")])
            + raw(0, 0, 1, b"abc")
            + self.headers([(b"grpc-status", b"0")], 0x5)
        )
        self.assertEqual(
            [type(e) for e in events],
            [InformationalResponseReceived, ResponseReceived, DataReceived, TrailersReceived],
        )
        self.assertEqual(self.client.open_outbound_streams, 0)

    def test_missing_status(self) -> None:
        """A response without :status is a stream error."""
        events = self.client.receive_data(self.headers([(b"content-type", b"x")]))
        self.assertEqual([type(e) for e in events], [StreamReset])

    def test_server_may_not_enable_push(self) -> None:
        """A server sending ENABLE_PUSH=1 is a PROTOCOL_ERROR."""
        with self.assertRaises(ProtocolError) as caught:
            self.client.receive_data(raw(4, 0, 0, settings_payload(enable_push=1)))
        self.assertEqual(caught.exception.error_code, ErrorCodes.PROTOCOL_ERROR)

    def test_push_promise(self) -> None:
        """PUSH_PROMISE is refused: push is disabled."""
        with self.assertRaises(ProtocolError):
            self.client.receive_data(raw(5, 0x4, 1, b"\x00\x00\x00\x02\x82"))
        goaway = parse(self.client.data_to_send())[-1]
        assert isinstance(goaway, GoAwayFrame)
        self.assertEqual((goaway.error_code, goaway.last_stream_id), (1, 0))

    def test_server_initiated_stream(self) -> None:
        """HEADERS on an even stream (which only push could open) is a PROTOCOL_ERROR."""
        with self.assertRaises(ProtocolError):
            self.client.receive_data(raw(1, 0x4, 2, self.encoder.encode([(b":status", b"200")])))

    def test_stream_ids(self) -> None:
        """The client opens odd, increasing streams and counts them."""
        self.assertEqual(self.client.get_next_available_stream_id(), 3)
        self.client.send_headers(3, REQUEST)
        self.assertEqual(self.client.open_outbound_streams, 2)


class HpackTests(SynchronousTestCase):
    """Our HPACK decoder and encoder against the ``hpack`` package's."""

    @settings(max_examples=200, deadline=None, derandomize=True)
    @given(
        st.lists(
            st.lists(
                st.tuples(
                    st.sampled_from([b"content-type", b"x-a", b"grpc-status", b":path", b"te"]),
                    st.binary(max_size=40),
                ),
                max_size=6,
            ),
            max_size=6,
        ),
        st.booleans(),
    )
    def test_decode_reference_encoder(
        self, blocks: list[list[tuple[bytes, bytes]]], huffman: bool
    ) -> None:
        """Blocks from hpack's encoder (dynamic table, Huffman) decode to the same headers."""
        encoder = ReferenceEncoder()
        decoder = HeaderDecoder()
        for block in blocks:
            self.assertEqual(decoder.decode(encoder.encode(block, huffman=huffman))[0], block)

    @settings(max_examples=200, deadline=None, derandomize=True)
    @given(st.lists(st.tuples(st.binary(min_size=1, max_size=30), st.binary(max_size=300))))
    def test_encoder_reference_decoder(self, block: list[tuple[bytes, bytes]]) -> None:
        """Our stateless encoding decodes with hpack's decoder, leaving its table empty."""
        decoder = ReferenceDecoder()
        self.assertEqual(decoder.decode(HeaderEncoder().encode(block), raw=True), block)
        self.assertEqual(len(decoder.header_table.dynamic_entries), 0)

    def test_compression_errors(self) -> None:
        """Invalid indexes, late table size updates and truncation are COMPRESSION_ERRORs."""
        for block in (b"\xff\x80\x01", b"\x80", b"\x82\x20", b"\x3f\xe2\x1f", b"\x40\x05ab"):
            c = Client()
            c.handshake()
            self.assertEqual(c.connection_error(raw(1, 0x5, 1, block)), 9, block)

    def test_expansion_bounded(self) -> None:
        """Many references to a large table entry cannot expand without bound."""
        c = Client({SettingCodes.MAX_HEADER_LIST_SIZE: 16384})
        c.handshake()
        first = c.encoder.encode([*REQUEST, (b"x-big", b"a" * 3000)])
        c.send(raw(1, 0x5, 1, first))
        self.assertEqual(c.connection_error(raw(1, 0x5, 3, b"\xbe" * 1000)), 11)


def _frames() -> st.SearchStrategy[bytes]:
    any_frame = st.builds(
        raw,
        st.integers(0, 12),
        st.integers(0, 255),
        st.sampled_from([0, 1, 2, 3, 5, 2**31 + 1]),
        st.binary(max_size=40),
    )
    fixed = st.sampled_from(
        [
            Client().headers(1),
            Client().headers(3, end_stream=True),
            raw(0, 1, 1, frame_message(EchoRequest(message="x").SerializeToString())),
            raw(8, 0, 0, b"\x00\x01\x00\x00"),
            raw(4, 0, 0, settings_payload(initial_window_size=10)),
            raw(3, 0, 1, b"\x00\x00\x00\x08"),
        ]
    )
    return st.one_of(any_frame, fixed)


class ArbitraryFramesTests(SynchronousTestCase):
    """Whatever frames arrive, the layer answers (GOAWAY, RST_STREAM) and never crashes."""

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(st.lists(_frames(), max_size=12), st.integers(1, 50))
    def test_frames(self, frames: list[bytes], step: int) -> None:
        """Only ProtocolError escapes, after a GOAWAY; byte boundaries change nothing."""
        outputs = []
        for chunk_size in (None, step):
            c = Client()
            data = PREFACE + raw(4, 0, 0) + b"".join(frames)
            chunks = (
                [data]
                if chunk_size is None
                else [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
            )
            error = None
            for chunk in chunks:
                try:
                    c.send(chunk)
                except ProtocolError as e:
                    c.frames += parse(c.server.data_to_send())
                    error = e.error_code
                    self.assertEqual(c.error(), error)
                    self.assertTrue(c.server.closed)
                    break
            outputs.append((error, [f.serialize() for f in c.frames]))
        self.assertEqual(outputs[0], outputs[1])

    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(st.binary(max_size=300))
    def test_truncated_and_garbage(self, data: bytes) -> None:
        """Garbage after a valid start is a connection error or waits for more, nothing else."""
        c = Client()
        c.handshake()
        try:
            c.send(c.headers(1)[: len(data) % 40] + data)
        except ProtocolError:
            self.assertTrue(c.server.closed)


async def _listen(test: TestCase, options: GrpcServerOptions | None = None) -> int:
    factory = GrpcServerFactory(_reactor, options or GrpcServerOptions())
    factory.add_service(ECHO_SERVICE, EchoService(_reactor))
    port: IListeningPort = await serverFromString(_reactor, "tcp:0:interface=127.0.0.1").listen(
        factory
    )
    test.addCleanup(factory.drain, 1)
    test.addCleanup(port.stopListening)
    return int(port.getHost().port)  # type: ignore[attr-defined]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SkipTest(f"{name} is not installed (Debian package nghttp2-client)")
    return path


def _request_file(test: TestCase, **fields: Any) -> str:
    fd, path = tempfile.mkstemp(suffix=".grpc")
    with os.fdopen(fd, "wb") as f:
        f.write(frame_message(EchoRequest(**fields).SerializeToString()))
    test.addCleanup(os.unlink, path)
    return path


_GRPC_HEADERS = ["-H", "content-type: application/grpc", "-H", "te: trailers"]


class ThirdPartyPeerTests(TestCase):
    """nghttp2's tools and grpcio against the server, with unusual settings."""

    timeout = 120

    async def test_h2load(self) -> None:
        """h2load's concurrent streams on several connections all succeed."""
        h2load = _tool("h2load")
        port = await _listen(self, GrpcServerOptions(max_concurrent_streams=8))
        body = _request_file(self, message="load", response_size=3000)
        out, err, code = await getProcessOutputAndValue(
            h2load,
            [
                "-n",
                "600",
                "-c",
                "3",
                "-m",
                "8",
                "-d",
                body,
                *_GRPC_HEADERS,
                f"http://127.0.0.1:{port}{ECHO}UnaryEcho",
            ],
        )
        text = out.decode()
        self.assertEqual(code, 0, text + err.decode())
        self.assertIn("600 succeeded, 0 failed, 0 errored", text)
        self.assertIn("status codes: 600 2xx", text)

    async def test_nghttp_tiny_windows(self) -> None:
        """nghttp with 15-byte windows, no HPACK table and 16 KiB frames gets whole answers."""
        nghttp = _tool("nghttp")
        port = await _listen(self)
        body = _request_file(self, message="tiny", response_size=50_000)
        url = f"http://127.0.0.1:{port}{ECHO}UnaryEcho"
        out, err, code = await getProcessOutputAndValue(
            nghttp,
            ["-v", "-n", "-w", "4", "-W", "4", "-c", "0", "-d", body, *_GRPC_HEADERS, url],
        )
        text = out.decode()
        self.assertEqual(code, 0, text + err.decode())
        self.assertIn("grpc-status: 0", text)
        self.assertNotIn("recv RST_STREAM", text)
        self.assertNotIn("recv GOAWAY", text)
        received = sum(
            int(line.split("length=")[1].split(",")[0])
            for line in text.splitlines()
            if "recv DATA frame" in line
        )
        self.assertGreater(received, 50_000)

    async def test_nghttp_many_streams_small_window(self) -> None:
        """Several nghttp streams at once with small windows, big frames allowed, all answered."""
        nghttp = _tool("nghttp")
        port = await _listen(self, GrpcServerOptions(max_frame_size=65536))
        body = _request_file(self, message="m", response_size=100_000)
        url = f"http://127.0.0.1:{port}{ECHO}UnaryEcho"
        out, err, code = await getProcessOutputAndValue(
            nghttp,
            ["-n", "-s", "-m", "4", "-w", "12", "-W", "16", "-d", body, *_GRPC_HEADERS, url],
        )
        self.assertEqual(code, 0, out.decode() + err.decode())
        self.assertEqual(out.decode().count(" 200 "), 4, out.decode())

    async def test_grpcio_small_server_windows(self) -> None:
        """grpcio sends and receives 4 MiB messages through 16 KiB stream windows."""
        port = await _listen(
            self,
            GrpcServerOptions(initial_window_size=16384, connection_window_size=65535),
        )
        result = await run_grpcio_client(f"127.0.0.1:{port}", "large")
        self.assertEqual(result["size"], 4 * 1024 * 1024 - 64)

    async def test_grpcio_concurrency(self) -> None:
        """grpcio's 200 concurrent calls over 4 streams and small windows all succeed."""
        port = await _listen(
            self,
            GrpcServerOptions(max_concurrent_streams=4, initial_window_size=20000),
        )
        result = await run_grpcio_client(f"127.0.0.1:{port}", "concurrent")
        self.assertEqual(result, {"ok": 200})


class ProtocolIntegrationTests(SynchronousTestCase):
    """The server and client protocols on top of the layer, with misbehaving peers."""

    def test_rapid_reset_closes_connection(self) -> None:
        """A client opening and resetting streams too fast gets GOAWAY ENHANCE_YOUR_CALM."""
        h = Harness()
        h.pump()
        for _ in range(1100):
            stream_id = h.start(ECHO + "UnaryEcho")
            h.client.reset_stream(stream_id, ErrorCodes.CANCEL)
            h.feed(h.client.data_to_send())
            if h.transport.disconnecting:
                break
        goaways = [f for f in parse(h.transport.value()) if isinstance(f, GoAwayFrame)]
        self.assertEqual([g.error_code for g in goaways], [ErrorCodes.ENHANCE_YOUR_CALM])
        self.assertTrue(h.transport.disconnecting)

    def test_server_protocol_error_goaway(self) -> None:
        """A connection error from a client is answered with GOAWAY and the connection closed."""
        h = Harness()
        h.pump()
        h.transport.clear()
        h.feed(raw(0, 0, 0, b"x"))
        goaway = parse(h.transport.value())[-1]
        assert isinstance(goaway, GoAwayFrame)
        self.assertEqual(goaway.error_code, ErrorCodes.PROTOCOL_ERROR)
        self.assertTrue(h.transport.disconnecting)

    def test_client_protocol_error_goaway(self) -> None:
        """The client answers a server's protocol violation with GOAWAY and fails its calls."""
        client, transport, d = unary_call()
        sent = transport.value()
        self.assertTrue(sent.startswith(PREFACE))
        headers = [f for f in parse(sent[len(PREFACE) :]) if isinstance(f, HeadersFrame)]
        self.assertEqual(headers[0].flags, {"END_HEADERS"})
        transport.clear()
        client.dataReceived(raw(4, 0, 0) + raw(1, 0x5, 2, b"\x88"))
        goaway = parse(transport.value())[-1]
        assert isinstance(goaway, GoAwayFrame)
        self.assertEqual((goaway.error_code, goaway.last_stream_id), (1, 0))
        self.assertTrue(transport.disconnecting)
        client.connectionLost()
        self.failureResultOf(d, GrpcError)

    def test_client_unknown_reset_code(self) -> None:
        """A RST_STREAM with an error code HTTP/2 does not define fails the call as INTERNAL."""
        client, _, d = unary_call()
        client.dataReceived(raw(4, 0, 0) + raw(3, 0, 1, b"\x00\x00\x99\x99"))
        self.assertEqual(self.failureResultOf(d, GrpcError).value.code, 13)

    @settings(max_examples=200, deadline=None, derandomize=True)
    @given(
        st.lists(
            st.one_of(
                st.builds(
                    raw,
                    st.integers(0, 10),
                    st.integers(0, 255),
                    st.sampled_from([0, 1, 2, 3]),
                    st.binary(max_size=30),
                ),
                st.sampled_from(
                    [
                        raw(1, 0x4, 1, ReferenceEncoder().encode([(b":status", b"200")])),
                        raw(0, 0, 1, frame_message(b"")),
                        raw(1, 0x5, 1, ReferenceEncoder().encode([(b"grpc-status", b"0")])),
                        raw(7, 0, 0, struct.pack(">LL", 0, 0)),
                    ]
                ),
            ),
            max_size=10,
        )
    )
    def test_client_arbitrary_frames(self, frames: list[bytes]) -> None:
        """Whatever a server sends, the client protocol never raises and its call ends."""
        client, _, d = unary_call()
        client.dataReceived(raw(4, 0, 0) + b"".join(frames))
        client.connectionLost()
        self.assertTrue(d.called)
        d.addErrback(lambda f: f.trap(GrpcError))


class NodeClientTests(TestCase):
    """Node's built-in HTTP/2 client (nghttp2) makes gRPC-shaped calls."""

    timeout = 60

    async def test_node_http2_client(self) -> None:
        """Twenty concurrent calls through 100-byte windows all get 200, data and OK."""
        node = shutil.which("node")
        if node is None:
            raise SkipTest("node is not installed")
        port = await _listen(self)
        body = frame_message(EchoRequest(message="node", response_size=5000).SerializeToString())
        script = os.path.join(os.path.dirname(__file__), "_node_client.js")
        out, err, code = await getProcessOutputAndValue(
            node, [script, f"http://127.0.0.1:{port}", ECHO + "UnaryEcho", body.hex(), "20"]
        )
        self.assertEqual(code, 0, err.decode())
        results = json.loads(out)
        self.assertEqual(len(results), 20)
        for result in results:
            self.assertEqual((result["status"], result["grpcStatus"]), (200, "0"), result)
            self.assertGreater(result["size"], 5000)


class BackpressureTests(SynchronousTestCase):
    """A client that does not read cannot make the server queue answers without bound."""

    def test_reading_stops_while_the_transport_is_full(self) -> None:
        """While the transport's buffer is full the server stops reading; it resumes after."""
        h = Harness()
        h.pump()
        h.protocol.pauseProducing()
        self.assertEqual(h.transport.producerState, "paused")
        h.protocol.resumeProducing()
        self.assertEqual(h.transport.producerState, "producing")

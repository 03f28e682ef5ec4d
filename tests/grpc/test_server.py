"""Tests for ``lattice.grpc._server``: the server protocol driven by an in-memory client."""

from __future__ import annotations

import zlib

from h2.errors import ErrorCodes
from h2.events import ConnectionTerminated, PingReceived
from h2.settings import SettingCodes
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.static import Data

from lattice.grpc import GrpcServerFactory, GrpcServerOptions, ServerContext, StatusCode
from lattice.grpc._framing import compress, frame_message
from lattice.grpc._http2 import PREFACE
from lattice.grpc.testing import ECHO_SERVICE, EchoRequest, EchoResponse
from tests.grpc._harness import ECHO, Harness


def request(**fields: object) -> bytes:
    return EchoRequest(**fields).SerializeToString()  # type: ignore[arg-type]


class UnaryTests(SynchronousTestCase):
    """Unary calls through the whole server protocol."""

    def test_unary(self) -> None:
        """A unary call gets headers, one response and an OK status."""
        h = Harness()
        result = h.call(ECHO + "UnaryEcho", request(message="hi"))
        self.assertEqual(result.header(b":status"), b"200")
        self.assertEqual(result.header(b"content-type"), b"application/grpc")
        self.assertEqual([m.message for m in result.messages()], ["hi"])
        self.assertEqual(result.status(), 0)
        self.assertTrue(result.ended)

    def test_split_at_every_byte(self) -> None:
        """A call whose bytes arrive one at a time is answered the same way."""
        h = Harness(split=True)
        result = h.call(ECHO + "UnaryEcho", request(message="slowly", payload=b"p" * 300))
        self.assertEqual([m.message for m in result.messages()], ["slowly"])
        self.assertEqual(result.status(), 0)

    def test_many_calls_one_connection(self) -> None:
        """Sequential and interleaved calls on one connection are all answered."""
        h = Harness()
        ids = [h.start(ECHO + "UnaryEcho") for _ in range(5)]
        for i, stream_id in enumerate(ids):
            h.send(stream_id, frame_message(request(message=str(i))), end=True)
        h.pump()
        self.assertEqual(
            [h.results[s].messages()[0].message for s in ids], ["0", "1", "2", "3", "4"]
        )

    def test_metadata_both_ways(self) -> None:
        """Request metadata, including -bin values, reaches the handler and comes back."""
        h = Harness()
        result = h.call(
            ECHO + "UnaryEcho",
            request(message="md"),
            extra_headers=[(b"echo-text", b"value"), (b"echo-raw-bin", b"AAEC")],
        )
        self.assertEqual(result.header(b"echo-text"), b"value")
        self.assertEqual(result.header(b"echo-raw-bin"), b"AAEC")
        self.assertIn((b"trailer-echo-raw-bin", b"AAEC"), result.trailers)

    def test_error_status_and_details(self) -> None:
        """A handler's GrpcError becomes grpc-status, a percent-encoded message and details."""
        h = Harness()
        result = h.call(
            ECHO + "UnaryEcho", request(message="nö 100%", fail_code=5, payload=b"\x01")
        )
        self.assertEqual(result.status(), StatusCode.NOT_FOUND)
        self.assertEqual(result.header(b"grpc-message"), b"n%C3%B6 100%25")
        self.assertEqual(result.header(b"grpc-status-details-bin"), b"AQ")

    def test_handler_exception_is_unknown(self) -> None:
        """An unexpected exception in a handler is UNKNOWN and logged, not a crash."""

        async def broken(request: EchoRequest, context: ServerContext) -> EchoResponse:
            raise ZeroDivisionError("oops")

        h = Harness()
        h.factory.add_service(ECHO_SERVICE, {"UnaryEcho": broken})
        result = h.call(ECHO + "UnaryEcho", request())
        self.assertEqual(result.status(), StatusCode.UNKNOWN)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class ImmediateErrorTests(SynchronousTestCase):
    """Calls refused before a handler runs get Trailers-Only or HTTP errors."""

    def test_unknown_method(self) -> None:
        """An unknown method is UNIMPLEMENTED in a single HEADERS frame."""
        h = Harness()
        result = h.call("/no.Such/Method", request())
        self.assertEqual(result.status(), StatusCode.UNIMPLEMENTED)
        self.assertEqual(result.trailers, [])
        self.assertTrue(result.ended)

    def test_bad_content_type(self) -> None:
        """A content-type that is not application/grpc is answered with HTTP 415."""
        h = Harness()
        stream_id = h.start(ECHO + "UnaryEcho", content_type=b"text/plain")
        h.send(stream_id, b"", end=True)
        h.pump()
        self.assertEqual(h.results[stream_id].header(b":status"), b"415")

    def test_unsupported_encoding(self) -> None:
        """An unsupported grpc-encoding is UNIMPLEMENTED and lists what is accepted."""
        h = Harness()
        result = h.call(
            ECHO + "UnaryEcho", request(), extra_headers=[(b"grpc-encoding", b"snappy")]
        )
        self.assertEqual(result.status(), StatusCode.UNIMPLEMENTED)
        self.assertEqual(result.header(b"grpc-accept-encoding"), b"identity,gzip,deflate")

    def test_missing_request(self) -> None:
        """A unary call without a request message is INTERNAL."""
        h = Harness()
        result = h.call(ECHO + "UnaryEcho")
        self.assertEqual(result.status(), StatusCode.INTERNAL)


class FramingTests(SynchronousTestCase):
    """Malformed and unusual framing ends calls with errors, never a crash or a hang."""

    def test_several_messages_per_data_frame(self) -> None:
        """Messages packed into one DATA frame are all delivered, in order."""
        h = Harness()
        result = h.call(ECHO + "ClientStreamEcho", *(request(message=c) for c in "abcde"))
        self.assertEqual(result.messages()[0].message, "abcde")

    def test_message_split_across_frames(self) -> None:
        """A message split across DATA frames (even inside the prefix) is reassembled."""
        h = Harness()
        stream_id = h.start(ECHO + "ClientStreamEcho")
        data = frame_message(request(message="x" * 100)) + frame_message(request(message="y"))
        for cut in (2, 7, 50):
            h.send(stream_id, data[:cut])
            data = data[cut:]
            h.pump()
        h.send(stream_id, data, end=True)
        h.pump()
        self.assertEqual(h.results[stream_id].messages()[0].message, "x" * 100 + "y")

    def test_bad_flag(self) -> None:
        """A prefix whose compressed flag is neither 0 nor 1 is INTERNAL."""
        h = Harness()
        stream_id = h.start(ECHO + "UnaryEcho")
        h.send(stream_id, b"\x07\x00\x00\x00\x00", end=True)
        h.pump()
        self.assertEqual(h.results[stream_id].status(), StatusCode.INTERNAL)

    def test_truncated_message(self) -> None:
        """A stream that ends inside a message is INTERNAL."""
        h = Harness()
        stream_id = h.start(ECHO + "UnaryEcho")
        h.send(stream_id, b"\x00\x00\x00\x00\x10abc", end=True)
        h.pump()
        self.assertEqual(h.results[stream_id].status(), StatusCode.INTERNAL)

    def test_unparseable_message(self) -> None:
        """Bytes that are not the request protobuf are INTERNAL."""
        h = Harness()
        result = h.call(ECHO + "UnaryEcho", b"\xff\xff\xff")
        self.assertEqual(result.status(), StatusCode.INTERNAL)

    def test_oversized_prefix(self) -> None:
        """A declared length over the receive limit is RESOURCE_EXHAUSTED at once."""
        h = Harness(GrpcServerOptions(keepalive_interval=None, max_receive_message_size=1000))
        stream_id = h.start(ECHO + "ClientStreamEcho")
        h.send(stream_id, b"\x00\x00\x01\x00\x00")
        h.pump()
        result = h.results[stream_id]
        self.assertEqual(result.status(), StatusCode.RESOURCE_EXHAUSTED)
        self.assertEqual(result.reset, ErrorCodes.NO_ERROR)

    def test_oversized_response(self) -> None:
        """A response over the send limit is RESOURCE_EXHAUSTED."""
        h = Harness(GrpcServerOptions(keepalive_interval=None, max_send_message_size=1000))
        result = h.call(ECHO + "UnaryEcho", request(response_size=2000))
        self.assertEqual(result.status(), StatusCode.RESOURCE_EXHAUSTED)

    def test_two_requests_for_unary(self) -> None:
        """A second request message on a unary call is INTERNAL."""
        h = Harness()
        result = h.call(ECHO + "UnaryEcho", request(), request())
        self.assertEqual(result.status(), StatusCode.INTERNAL)


class CompressionTests(SynchronousTestCase):
    """Per-message compression."""

    def test_gzip_request_and_response(self) -> None:
        """A gzip-compressed request is decompressed and the response is gzip-compressed."""
        h = Harness()
        stream_id = h.start(
            ECHO + "UnaryEcho",
            extra_headers=[(b"grpc-encoding", b"gzip"), (b"grpc-accept-encoding", b"gzip")],
        )
        h.send(stream_id, frame_message(compress(request(message="zip"), b"gzip"), True), end=True)
        h.pump()
        result = h.results[stream_id]
        self.assertEqual(result.header(b"grpc-encoding"), b"gzip")
        self.assertEqual(result.data[0], 1)
        payload = zlib.decompress(result.data[5:], 31)
        self.assertEqual(EchoResponse.FromString(payload).message, "zip")

    def test_compressed_without_encoding(self) -> None:
        """A message flagged compressed on an identity stream is INTERNAL."""
        h = Harness()
        stream_id = h.start(ECHO + "UnaryEcho")
        h.send(stream_id, frame_message(request(), True), end=True)
        h.pump()
        self.assertEqual(h.results[stream_id].status(), StatusCode.INTERNAL)

    def test_decompression_bomb(self) -> None:
        """A message that decompresses beyond the receive limit is RESOURCE_EXHAUSTED."""
        h = Harness(GrpcServerOptions(keepalive_interval=None, max_receive_message_size=10_000))
        stream_id = h.start(ECHO + "UnaryEcho", extra_headers=[(b"grpc-encoding", b"gzip")])
        bomb = compress(request(payload=b"\x00" * 1_000_000), b"gzip")
        h.send(stream_id, frame_message(bomb, True), end=True)
        h.pump()
        self.assertEqual(h.results[stream_id].status(), StatusCode.RESOURCE_EXHAUSTED)


class StreamingTests(SynchronousTestCase):
    """Streaming calls and HTTP/2 flow control."""

    def test_server_stream(self) -> None:
        """A server-streaming handler's responses arrive in order, then OK."""
        h = Harness()
        result = h.call(ECHO + "ServerStreamEcho", request(message="s", count=4))
        self.assertEqual([m.index for m in result.messages()], [0, 1, 2, 3])
        self.assertEqual(result.status(), 0)

    def test_bidi_interleaves(self) -> None:
        """A bidirectional call answers each request before the client half-closes."""
        h = Harness()
        stream_id = h.start(ECHO + "BidiEcho")
        h.send(stream_id, frame_message(request(message="one")))
        h.pump()
        self.assertEqual([m.message for m in h.results[stream_id].messages()], ["one"])
        h.send(stream_id, frame_message(request(message="two")), end=True)
        h.pump()
        self.assertEqual([m.message for m in h.results[stream_id].messages()], ["one", "two"])
        self.assertEqual(h.results[stream_id].status(), 0)

    def test_slow_reader_backpressures_handler(self) -> None:
        """With the client's window exhausted, a streaming handler waits instead of buffering."""
        sent: list[int] = []

        async def firehose(request: EchoRequest, context: ServerContext) -> None:
            for i in range(1000):
                await context.send(EchoResponse(index=i, payload=b"z" * 1000))
                sent.append(i)

        h = Harness(auto_ack=False, client_window=4000)
        h.factory.add_service(ECHO_SERVICE, {"ServerStreamEcho": firehose})
        result = h.call(ECHO + "ServerStreamEcho", request())
        self.assertLess(len(sent), 10)
        self.assertLessEqual(len(result.data), 4000)
        for _ in range(20):
            h.client.acknowledge_received_data(len(result.data), 1)
            h.client.increment_flow_control_window(100_000)
            h.pump()
        self.assertGreater(len(sent), 10)
        self.assertLess(len(sent), 1000)

    def test_receive_window_follows_consumption(self) -> None:
        """Request bytes a handler has not read yet are not acknowledged to the client."""
        gate: Deferred[None] = Deferred()
        received: list[str] = []

        async def lazy(requests: object, context: ServerContext) -> EchoResponse:
            await gate
            async for message in requests:  # type: ignore[attr-defined]
                received.append(message.message)
            return EchoResponse()

        h = Harness()
        h.factory.add_service(ECHO_SERVICE, {"ClientStreamEcho": lazy})
        stream_id = h.start(ECHO + "ClientStreamEcho")
        h.pump()
        window = h.client.local_flow_control_window(stream_id)
        for i in range(10):
            h.send(stream_id, frame_message(request(message=str(i), payload=b"q" * 1000)))
        h.pump()
        self.assertLess(h.client.local_flow_control_window(stream_id), window - 9000)
        h.send(stream_id, b"", end=True)
        gate.callback(None)
        h.pump()
        self.assertEqual(len(received), 10)
        self.assertEqual(h.results[stream_id].status(), 0)


class LifecycleTests(SynchronousTestCase):
    """Deadlines, cancellation, keepalive, GOAWAY and draining."""

    def test_deadline(self) -> None:
        """A call past its grpc-timeout gets DEADLINE_EXCEEDED and its handler is cancelled."""
        h = Harness()
        result = h.call(
            ECHO + "UnaryEcho", request(delay_ms=5000), extra_headers=[(b"grpc-timeout", b"100m")]
        )
        self.assertIsNone(result.status())
        h.clock.advance(0.1)
        h.pump()
        self.assertEqual(result.status(), StatusCode.DEADLINE_EXCEEDED)
        self.assertEqual(h.service.cancelled, [ECHO + "UnaryEcho"])

    def test_client_reset_cancels_handler(self) -> None:
        """RST_STREAM from the client cancels the running handler."""
        h = Harness()
        stream_id = h.start(ECHO + "UnaryEcho")
        h.send(stream_id, frame_message(request(delay_ms=5000)), end=True)
        h.pump()
        h.client.reset_stream(stream_id, ErrorCodes.CANCEL)
        h.pump()
        self.assertEqual(h.service.cancelled, [ECHO + "UnaryEcho"])
        self.assertEqual(h.protocol._streams, {})

    def test_connection_lost_cancels_handlers(self) -> None:
        """Losing the connection cancels every running handler."""
        h = Harness()
        h.call(ECHO + "UnaryEcho", request(delay_ms=5000))
        h.protocol.connectionLost()
        self.assertEqual(h.service.cancelled, [ECHO + "UnaryEcho"])

    def test_settings(self) -> None:
        """The server advertises its concurrency limit, window and frame size."""
        h = Harness(GrpcServerOptions(keepalive_interval=None, max_concurrent_streams=7))
        h.pump()
        remote = h.client.remote_settings
        self.assertEqual(remote[SettingCodes.MAX_CONCURRENT_STREAMS], 7)
        self.assertEqual(remote[SettingCodes.INITIAL_WINDOW_SIZE], 1024 * 1024)

    def test_stream_limit_refuses_excess_stream(self) -> None:
        """A client exceeding MAX_CONCURRENT_STREAMS gets REFUSED_STREAM for that stream only."""
        h = Harness(GrpcServerOptions(keepalive_interval=None, max_concurrent_streams=2))
        ids = [h.start(ECHO + "UnaryEcho") for _ in range(3)]
        for stream_id in ids:
            h.send(stream_id, frame_message(request(message=str(stream_id), delay_ms=10)), end=True)
        h.pump()
        self.assertEqual(h.results[ids[2]].reset, ErrorCodes.REFUSED_STREAM)
        h.clock.advance(0.01)
        h.pump()
        self.assertEqual([h.results[i].status() for i in ids[:2]], [0, 0])
        later = h.call(ECHO + "UnaryEcho", request(message="later"))
        self.assertEqual(later.messages()[0].message, "later")

    def test_ping_answered(self) -> None:
        """A client PING is acknowledged."""
        h = Harness()
        h.pump()
        h.client.ping(b"12345678")
        h.pump()
        self.assertTrue(any(type(e).__name__ == "PingAckReceived" for e in h.events))

    def test_keepalive_timeout_closes(self) -> None:
        """An unanswered keepalive PING closes the connection after the timeout."""
        h = Harness(GrpcServerOptions(keepalive_interval=10, keepalive_timeout=2))
        h.pump()
        h.clock.advance(10)
        data = h.transport.value()
        h.transport.clear()
        self.assertTrue(any(isinstance(e, PingReceived) for e in h.client.receive_data(data)))
        h.clock.advance(2)
        self.assertTrue(h.transport.disconnecting)

    def test_keepalive_answered(self) -> None:
        """An answered keepalive PING keeps the connection and schedules the next one."""
        h = Harness(GrpcServerOptions(keepalive_interval=10, keepalive_timeout=2))
        h.pump()
        h.clock.advance(10)
        h.pump()
        h.clock.advance(5)
        self.assertFalse(h.transport.disconnecting)
        self.assertEqual(len(h.clock.getDelayedCalls()), 1)

    def test_drain(self) -> None:
        """drain() sends GOAWAY, lets the running call finish, then closes."""
        h = Harness()
        result = h.call(ECHO + "UnaryEcho", request(message="late", delay_ms=500))
        drained = h.factory.drain(timeout=5)
        h.pump()
        self.assertTrue(any(isinstance(e, ConnectionTerminated) for e in h.events))
        self.assertFalse(h.transport.disconnecting)
        h.clock.advance(0.5)
        h.pump()
        self.assertEqual([m.message for m in result.messages()], ["late"])
        self.assertTrue(h.transport.disconnecting)
        h.protocol.connectionLost()
        self.successResultOf(drained)

    def test_drain_timeout_aborts(self) -> None:
        """Calls still running when the drain timeout expires are cancelled."""
        h = Harness()
        h.call(ECHO + "UnaryEcho", request(delay_ms=50_000))
        drained = h.factory.drain(timeout=1)
        h.clock.advance(1)
        h.protocol.connectionLost()
        self.successResultOf(drained)
        self.assertEqual(h.service.cancelled, [ECHO + "UnaryEcho"])

    def test_new_stream_after_goaway_refused(self) -> None:
        """A stream opened after the server's GOAWAY is refused."""
        h = Harness()
        h.call(ECHO + "UnaryEcho", request(delay_ms=500))
        h.factory.drain(timeout=5)
        h.pump()
        late = h.start(ECHO + "UnaryEcho")
        h.send(late, frame_message(request()), end=True)
        h.pump()
        self.assertEqual(h.results[late].reset, ErrorCodes.REFUSED_STREAM)


class HttpFallbackTests(SynchronousTestCase):
    """Plain HTTP/1.1 on the gRPC port."""

    def test_http11_request(self) -> None:
        """An HTTP/1.1 request is answered by the fallback resource."""
        h = Harness()
        h.protocol.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        response = h.transport.value()
        self.assertTrue(response.startswith(b"HTTP/1.1 200 OK"))
        self.assertTrue(response.endswith(b"ok\n"))

    def test_http11_request_split(self) -> None:
        """An HTTP/1.1 request that starts like the HTTP/2 preface is still HTTP/1.1."""
        h = Harness()
        for byte in b"PRI /healthz HTTP/1.1\r\nHost: x\r\n\r\n":
            h.protocol.dataReceived(bytes([byte]))
        self.assertTrue(h.transport.value().startswith(b"HTTP/1.1 "))

    def test_resource_fallback(self) -> None:
        """A bare resource as fallback is served through a Site."""
        clock = Clock()
        resource = Data(b"plain\n", "text/plain")
        resource.isLeaf = True
        factory = GrpcServerFactory(clock, http_fallback=resource)
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(transport.value().endswith(b"plain\n"))
        protocol.connectionLost()
        clock.advance(3600)

    def test_no_fallback_closes(self) -> None:
        """Without a fallback resource an HTTP/1.1 client is disconnected."""
        factory = GrpcServerFactory(Clock())
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
        self.assertTrue(transport.disconnecting)


class ArbitraryInputTests(SynchronousTestCase):
    """Whatever bytes arrive, the server only ever answers or closes."""

    @settings(max_examples=150, deadline=None, derandomize=True)
    @given(
        st.lists(st.binary(max_size=64), max_size=8),
        st.booleans(),
    )
    def test_arbitrary_bytes(self, chunks: list[bytes], with_preface: bool) -> None:
        """Arbitrary bytes after (or instead of) the preface never raise out of the protocol."""
        h = Harness(GrpcServerOptions(keepalive_interval=None, max_receive_message_size=100))
        if with_preface:
            h.protocol.dataReceived(PREFACE)
        for chunk in chunks:
            h.protocol.dataReceived(chunk)
        h.clock.advance(3600)
        h.clock.advance(60)
        self.assertEqual(h.clock.getDelayedCalls(), [])
        h.protocol.connectionLost()

    @settings(max_examples=100, deadline=None, derandomize=True)
    @given(st.binary(max_size=200), st.integers(min_value=1, max_value=7))
    def test_arbitrary_message_bytes(self, body: bytes, step: int) -> None:
        """Arbitrary DATA on a valid call ends it with a status or a reset, never silence."""
        h = Harness()
        stream_id = h.start(ECHO + "ClientStreamEcho")
        result = h.results[stream_id]
        for i in range(0, len(body) + 1, step):
            if result.ended or result.reset is not None:
                break
            h.send(stream_id, body[i : i + step], end=i + step > len(body))
            h.pump()
        self.assertTrue(result.status() is not None or result.reset is not None)

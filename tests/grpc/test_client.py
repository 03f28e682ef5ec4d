"""Tests for ``lattice.grpc._client`` against the server, connected in memory by iosim."""

from __future__ import annotations

from typing import Any, TypeVar

from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.test.iosim import FakeTransport, IOPump, connect
from twisted.trial.unittest import SynchronousTestCase

from lattice.grpc import (
    GrpcChannel,
    GrpcClientOptions,
    GrpcClientProtocol,
    GrpcError,
    GrpcServerFactory,
    GrpcServerOptions,
    StatusCode,
)
from lattice.grpc.testing import ECHO_SERVICE, EchoRequest, EchoResponse, EchoService

ECHO = "/lattice.grpc.testing.Echo/"
T = TypeVar("T")


class ClientTests(SynchronousTestCase):
    """The client layer talks to the server layer over an in-memory connection."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.service = EchoService(self.clock)
        options = GrpcServerOptions(keepalive_interval=None, max_concurrent_streams=3)
        factory = GrpcServerFactory(self.clock, options)
        factory.add_service(ECHO_SERVICE, self.service)
        address = IPv4Address("TCP", "127.0.0.1", 1)
        server = factory.buildProtocol(address)
        self.client = GrpcClientProtocol(self.clock, GrpcClientOptions())
        self.pump: IOPump = connect(
            server,
            FakeTransport(server, isServer=True, hostAddress=address, peerAddress=address),
            self.client,
            FakeTransport(self.client, isServer=False, hostAddress=address, peerAddress=address),
        )
        self.channel = GrpcChannel(self.client, "localhost")

    def _call(self, coroutine: Any) -> Deferred[Any]:
        deferred = Deferred.fromCoroutine(coroutine)
        self.pump.flush()
        return deferred

    def test_unary(self) -> None:
        """A unary call returns the response."""
        d = self._call(
            self.channel.unary_unary(ECHO + "UnaryEcho", EchoRequest(message="hi"), EchoResponse)
        )
        self.assertEqual(self.successResultOf(d).message, "hi")

    def test_error(self) -> None:
        """A failed call raises GrpcError with code, message and details."""
        d = self._call(
            self.channel.unary_unary(
                ECHO + "UnaryEcho",
                EchoRequest(message="denied", fail_code=7, payload=b"why"),
                EchoResponse,
            )
        )
        error = self.failureResultOf(d, GrpcError).value
        self.assertEqual((error.code, error.message, error.details), (7, "denied", b"why"))

    def test_metadata(self) -> None:
        """Metadata is sent and initial and trailing metadata are received."""

        async def go() -> Any:
            call = self.channel.unary_stream(
                ECHO + "ServerStreamEcho",
                EchoRequest(count=2),
                EchoResponse,
                metadata=[("echo-k", "v"), ("echo-b-bin", b"\x00")],
            )
            indexes = [r.index async for r in call]
            return indexes, call.initial_metadata, call.trailing_metadata

        indexes, initial, trailing = self.successResultOf(self._call(go()))
        self.assertEqual(indexes, [0, 1])
        self.assertEqual(initial, [("echo-k", "v"), ("echo-b-bin", b"\x00")])
        self.assertEqual(trailing, [("trailer-echo-k", "v"), ("trailer-echo-b-bin", b"\x00")])

    def test_client_stream(self) -> None:
        """A client-streaming call sends every request."""
        requests = [EchoRequest(message=c) for c in "xyz"]
        d = self._call(self.channel.stream_unary(ECHO + "ClientStreamEcho", requests, EchoResponse))
        self.assertEqual(self.successResultOf(d).message, "xyz")

    def test_bidi(self) -> None:
        """A bidirectional call interleaves sends and receives."""

        async def go() -> list[str]:
            call = self.channel.stream_stream(ECHO + "BidiEcho", EchoResponse)
            seen = []
            for word in ("a", "b"):
                await call.send(EchoRequest(message=word))
                response = await call.receive()
                assert response is not None
                seen.append(response.message)
            call.done_sending()
            assert await call.receive() is None
            return seen

        d = Deferred.fromCoroutine(go())
        for _ in range(5):
            self.pump.flush()
        self.assertEqual(self.successResultOf(d), ["a", "b"])

    def test_deadline(self) -> None:
        """A call past its timeout fails with DEADLINE_EXCEEDED and the server cancels it."""
        d = self._call(
            self.channel.unary_unary(
                ECHO + "UnaryEcho", EchoRequest(delay_ms=5000), EchoResponse, timeout=1
            )
        )
        self.clock.advance(1)
        self.pump.flush()
        self.assertEqual(
            self.failureResultOf(d, GrpcError).value.code, StatusCode.DEADLINE_EXCEEDED
        )
        self.assertEqual(self.service.cancelled, [ECHO + "UnaryEcho"])

    def test_cancel(self) -> None:
        """Cancelling a call's Deferred resets the stream and cancels the handler."""
        d = self._call(
            self.channel.unary_unary(ECHO + "UnaryEcho", EchoRequest(delay_ms=5000), EchoResponse)
        )
        d.cancel()
        self.pump.flush()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.service.cancelled, [ECHO + "UnaryEcho"])

    def test_connection_lost(self) -> None:
        """Calls in flight when the connection drops fail with UNAVAILABLE."""
        d = self._call(
            self.channel.unary_unary(ECHO + "UnaryEcho", EchoRequest(delay_ms=5000), EchoResponse)
        )
        assert self.client.transport is not None
        self.client.transport.loseConnection()
        self.pump.flush()
        self.assertEqual(self.failureResultOf(d, GrpcError).value.code, StatusCode.UNAVAILABLE)

    def test_unimplemented(self) -> None:
        """An unknown method fails with UNIMPLEMENTED."""
        d = self._call(self.channel.unary_unary("/no.Such/Method", EchoRequest(), EchoResponse))
        self.assertEqual(self.failureResultOf(d, GrpcError).value.code, StatusCode.UNIMPLEMENTED)

    def test_large_messages(self) -> None:
        """Messages near 4 MiB cross flow-control windows in both directions."""
        size = 4 * 1024 * 1024 - 64
        d = self._call(
            self.channel.unary_unary(
                ECHO + "UnaryEcho",
                EchoRequest(payload=b"a" * size, response_size=size),
                EchoResponse,
            )
        )
        for _ in range(50):
            self.pump.flush()
        self.assertEqual(len(self.successResultOf(d).payload), size)

    def test_concurrency_limit_queues(self) -> None:
        """Calls beyond the server's MAX_CONCURRENT_STREAMS wait for a free stream."""
        self.pump.flush()
        calls = [
            self._call(
                self.channel.unary_unary(
                    ECHO + "UnaryEcho", EchoRequest(message=str(i), delay_ms=100), EchoResponse
                )
            )
            for i in range(7)
        ]
        self.assertLessEqual(len(self.client.calls), 3)
        self.assertEqual(len(self.client.pending), 4)
        for _ in range(3):
            self.clock.advance(0.1)
            self.pump.flush()
        self.assertEqual([self.successResultOf(d).message for d in calls], list("0123456"))

    def test_client_goaway_lets_calls_finish(self) -> None:
        """A client GOAWAY stops new streams but running calls still get their answers."""
        d = self._call(
            self.channel.unary_unary(
                ECHO + "UnaryEcho", EchoRequest(message="after", delay_ms=100), EchoResponse
            )
        )
        self.client.conn.send_goaway(0)
        self.client.flush()
        self.pump.flush()
        self.clock.advance(0.1)
        self.pump.flush()
        self.assertEqual(self.successResultOf(d).message, "after")

    def test_keepalive(self) -> None:
        """Client keepalive PINGs are answered; an unanswered one closes the connection."""
        self.client.options = GrpcClientOptions(keepalive_interval=30, keepalive_timeout=5)
        self.client._schedule_keepalive()
        self.clock.advance(30)
        self.pump.flush()
        self.clock.advance(5)
        self.assertFalse(self.client.closed)
        d = self._call(
            self.channel.unary_unary(ECHO + "UnaryEcho", EchoRequest(delay_ms=60_000), EchoResponse)
        )
        self.clock.advance(25)
        self.clock.advance(5)
        self.pump.flush()
        self.assertTrue(self.client.closed)
        self.assertEqual(self.failureResultOf(d, GrpcError).value.code, StatusCode.UNAVAILABLE)

    def test_close(self) -> None:
        """close() ends the connection and fires once it is gone."""
        d = self.channel.close()
        self.pump.flush()
        self.successResultOf(d)

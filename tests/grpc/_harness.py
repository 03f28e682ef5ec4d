"""An in-memory HTTP/2 client driving a ``GrpcServerProtocol`` over a ``StringTransport``."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)
from h2.settings import SettingCodes
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from lattice.grpc import GrpcServerFactory, GrpcServerOptions
from lattice.grpc._framing import MessageDecoder, frame_message
from lattice.grpc.testing import ECHO_SERVICE, EchoResponse, EchoService

ECHO = "/lattice.grpc.testing.Echo/"


@dataclass
class StreamResult:
    """Everything the client saw on one stream."""

    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    data: bytes = b""
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    ended: bool = False
    reset: int | None = None

    def status(self) -> int | None:
        """The ``grpc-status`` (from trailers, or headers for Trailers-Only)."""
        for name, value in self.trailers or self.headers:
            if name == b"grpc-status":
                return int(value)
        return None

    def header(self, key: bytes) -> bytes | None:
        for name, value in self.headers + self.trailers:
            if name == key:
                return value
        return None

    def messages(self) -> list[EchoResponse]:
        decoder = MessageDecoder(64 * 1024 * 1024)
        return [EchoResponse.FromString(payload) for _, payload in decoder.feed(self.data)]


class Harness:
    """A server protocol on a ``StringTransport`` with a scripted ``h2`` client."""

    def __init__(
        self,
        options: GrpcServerOptions | None = None,
        *,
        split: bool = False,
        auto_ack: bool = True,
        client_window: int | None = None,
    ) -> None:
        self.clock = Clock()
        self.service = EchoService(self.clock)
        root = Resource()
        root.putChild(b"healthz", Data(b"ok\n", "text/plain"))
        self.factory = GrpcServerFactory(
            self.clock,
            options or GrpcServerOptions(keepalive_interval=None),
            http_fallback=Site(root, reactor=self.clock),
        )
        self.factory.add_service(ECHO_SERVICE, self.service)
        self.protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.protocol.makeConnection(self.transport)
        self.client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.client.initiate_connection()
        if client_window is not None:
            self.client.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: client_window})
        self.split = split
        self.auto_ack = auto_ack
        self.events: list[Event] = []
        self.results: dict[int, StreamResult] = defaultdict(StreamResult)

    def feed(self, data: bytes) -> None:
        """Give raw bytes to the server (one byte at a time if ``split``)."""
        if self.split:
            for i in range(len(data)):
                self.protocol.dataReceived(data[i : i + 1])
        else:
            self.protocol.dataReceived(data)

    def pump(self) -> None:
        """Exchange bytes until neither side has anything to say."""
        for _ in range(1000):
            outgoing = self.client.data_to_send()
            if outgoing:
                self.feed(outgoing)
            incoming = self.transport.value()
            self.transport.clear()
            if not outgoing and not incoming:
                return
            if incoming:
                self._client_received(incoming)
        raise AssertionError("the connection never went quiet")

    def _client_received(self, data: bytes) -> None:
        for event in self.client.receive_data(data):
            self.events.append(event)
            if isinstance(event, ResponseReceived):
                self.results[event.stream_id].headers = list(event.headers)
            elif isinstance(event, TrailersReceived):
                self.results[event.stream_id].trailers = list(event.headers)
            elif isinstance(event, DataReceived):
                self.results[event.stream_id].data += event.data
                if self.auto_ack:
                    self.client.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
            elif isinstance(event, StreamEnded):
                self.results[event.stream_id].ended = True
            elif isinstance(event, StreamReset):
                self.results[event.stream_id].reset = event.error_code
            elif isinstance(event, ConnectionTerminated):
                # h2 treats any GOAWAY as the end of the connection; gRPC clients (and the
                # graceful drain under test) keep finishing the streams it still covers.
                self.client.state_machine.state = ConnectionState.CLIENT_OPEN

    def start(
        self,
        method: str,
        *,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
        content_type: bytes = b"application/grpc",
    ) -> int:
        """Send the request headers of a new call; return its stream id."""
        stream_id = self.client.get_next_available_stream_id()
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", method.encode()),
            (b":authority", b"localhost"),
            (b"content-type", content_type),
            (b"te", b"trailers"),
            *(extra_headers or []),
        ]
        self.client.send_headers(stream_id, headers)
        return stream_id

    def send(self, stream_id: int, data: bytes, *, end: bool = False) -> None:
        """Send raw DATA (already framed) on a stream."""
        self.client.send_data(stream_id, data, end_stream=end)

    def call(
        self,
        method: str,
        *messages: bytes,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> StreamResult:
        """Make a whole call: headers, every message framed in one DATA frame, end, pump."""
        stream_id = self.start(method, extra_headers=extra_headers)
        self.send(stream_id, b"".join(frame_message(m) for m in messages), end=True)
        self.pump()
        return self.results[stream_id]

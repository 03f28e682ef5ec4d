"""The gRPC server: a Twisted protocol on HTTP/2 that shares its port with HTTP/1.1."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, cast

from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from twisted.internet.defer import CancelledError, Deferred, DeferredList, succeed
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import Site
from zope.interface import implementer

from lattice.grpc._framing import (
    ACCEPT_ENCODING,
    SUPPORTED_ENCODINGS,
    MessageDecoder,
    compress,
    decompress,
    frame_message,
)
from lattice.grpc._http2 import (
    PREFACE,
    ConnectionTerminated,
    DataReceived,
    ErrorCodes,
    H2Connection,
    PingAckReceived,
    ProtocolError,
    RemoteSettingsChanged,
    RequestReceived,
    SettingCodes,
    StreamClosedError,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from lattice.grpc._metadata import (
    Metadata,
    MetadataValue,
    decode_metadata,
    encode_metadata,
    parse_timeout,
    percent_encode,
)
from lattice.grpc._service import MethodInfo, methods_for
from lattice.grpc._status import GrpcError, StatusCode
from lattice.tls import PeerIdentity, peer_identity

_log = Logger()

MIB = 1024 * 1024

_STATUS_200 = (b":status", b"200")
_CONTENT_TYPE = (b"content-type", b"application/grpc")
_RESPONSE_HEADERS = [_STATUS_200, _CONTENT_TYPE]
_TRAILERS_OK = [(b"grpc-status", b"0")]
_PING_DATA = b"lattice\x00"
# Streams a client may reset per second before the connection is closed (the HTTP/2 "rapid
# reset" attack opens and cancels streams to make the server start and stop work for free).
_MAX_RESETS_PER_SECOND = 1000

# Connection modes.
_SNIFFING, _H2, _HTTP, _CLOSED = range(4)


@dataclass(frozen=True, slots=True)
class GrpcServerOptions:
    """
    Tunables of a gRPC listener.

    Sizes are in bytes, times in seconds.  ``keepalive_interval`` ``None`` disables the
    server's keepalive pings; a ping unanswered for ``keepalive_timeout`` closes the connection.
    ``drain_timeout`` bounds how long :meth:`GrpcServerFactory.drain` lets calls finish.
    """

    max_receive_message_size: int = 4 * MIB
    max_send_message_size: int = 4 * MIB
    max_concurrent_streams: int = 100
    initial_window_size: int = 1 * MIB
    connection_window_size: int = 4 * MIB
    max_frame_size: int = 16384
    max_header_list_size: int = 16384
    keepalive_interval: float | None = 7200.0
    keepalive_timeout: float = 20.0
    drain_timeout: float = 10.0

    def __post_init__(self) -> None:
        for name in (
            "max_receive_message_size",
            "max_send_message_size",
            "max_concurrent_streams",
            "initial_window_size",
            "connection_window_size",
            "max_header_list_size",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if not 16384 <= self.max_frame_size <= 16777215:
            raise ValueError("max_frame_size must be between 16384 and 16777215")
        if self.initial_window_size > 2**31 - 1 or self.connection_window_size > 2**31 - 1:
            raise ValueError("window sizes must be below 2**31")
        if self.keepalive_interval is not None and self.keepalive_interval <= 0:
            raise ValueError("keepalive_interval must be positive or None")
        if self.keepalive_timeout <= 0 or self.drain_timeout < 0:
            raise ValueError("keepalive_timeout must be positive and drain_timeout >= 0")


class RequestStream:
    """The messages a client streams to a handler: ``async for`` them or ``await receive()``."""

    __slots__ = ("_context",)

    def __init__(self, context: ServerContext) -> None:
        self._context = context

    def receive(self) -> Deferred[Any]:
        """The next request message, or ``None`` once the client has half-closed."""
        return self._context._receive()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            message = await self._context._receive()
            if message is None:
                return
            yield message


class ServerContext:
    """
    One call, as its handler sees it.

    Gives the request metadata, the peer and its verified TLS identity, the deadline; lets
    the handler send initial metadata, set trailing metadata, stream responses with
    :meth:`send` (which waits for HTTP/2 flow-control window) and :meth:`abort`.
    """

    __slots__ = (
        "_decoder",
        "_finished",
        "_headers",
        "_headers_sent",
        "_info",
        "_initial_metadata",
        "_metadata",
        "_pending_ack",
        "_protocol",
        "_queue",
        "_received",
        "_request_encoding",
        "_requests_ended",
        "_reset",
        "_response_encoding",
        "_stream_id",
        "_task",
        "_timer",
        "_trailing_metadata",
        "_waiter",
        "_write_waiter",
        "deadline",
    )

    def __init__(
        self,
        protocol: GrpcServerProtocol,
        stream_id: int,
        info: MethodInfo,
        headers: list[tuple[bytes, bytes]],
        *,
        deadline: float | None,
        request_encoding: bytes | None,
        response_encoding: bytes | None,
    ) -> None:
        self._protocol = protocol
        self._stream_id = stream_id
        self._info = info
        self._headers = headers
        self._metadata: Metadata | None = None
        self.deadline = deadline
        """When the call expires, in the reactor's ``seconds()`` clock, or ``None``."""
        self._request_encoding = request_encoding
        self._response_encoding = response_encoding
        self._decoder = MessageDecoder(protocol._options.max_receive_message_size)
        self._queue: deque[Message] = deque()
        self._waiter: Deferred[Any] | None = None
        self._pending_ack = 0
        self._requests_ended = False
        self._headers_sent = False
        self._initial_metadata: list[tuple[bytes, bytes]] = []
        self._trailing_metadata: list[tuple[bytes, bytes]] = []
        self._finished = False
        self._reset = False
        self._task: Deferred[None] | None = None
        self._timer: IDelayedCall | None = None
        self._write_waiter: Deferred[None] | None = None
        self._received = 0

    # Handler-facing API.

    @property
    def method(self) -> str:
        """The full method path, ``/package.Service/Method``."""
        return self._info.path.decode("ascii")

    @property
    def invocation_metadata(self) -> Metadata:
        """The request metadata (``-bin`` values decoded to bytes)."""
        if self._metadata is None:
            self._metadata = decode_metadata(self._headers)
        return self._metadata

    @property
    def peer(self) -> IAddress:
        """The peer's address."""
        transport = self._protocol.transport
        assert transport is not None
        return transport.getPeer()

    @property
    def peer_identity(self) -> PeerIdentity | None:
        """The client certificate's verified identity, or ``None`` without mutual TLS."""
        return self._protocol.identity

    @property
    def cancelled(self) -> bool:
        """Whether the call has ended (reset by the client, expired, or finished)."""
        return self._finished

    def time_remaining(self) -> float | None:
        """Seconds until the deadline, or ``None`` if the call has none."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - self._protocol._reactor.seconds())

    def set_initial_metadata(self, metadata: Iterable[tuple[str, MetadataValue]]) -> None:
        """Add metadata to the response headers; only before the first response is sent."""
        if self._headers_sent:
            raise RuntimeError("initial metadata already sent")
        self._initial_metadata.extend(encode_metadata(metadata))

    def send_initial_metadata(self, metadata: Iterable[tuple[str, MetadataValue]] = ()) -> None:
        """Send the response headers now, with *metadata* added."""
        self.set_initial_metadata(metadata)
        if not self._finished:
            self._send_headers()
            self._protocol._flush_soon()

    def set_trailing_metadata(self, metadata: Iterable[tuple[str, MetadataValue]]) -> None:
        """Add metadata to the trailers sent when the call ends."""
        self._trailing_metadata.extend(encode_metadata(metadata))

    def abort(
        self,
        code: StatusCode,
        message: str = "",
        *,
        details: bytes | None = None,
    ) -> NoReturn:
        """End the call with *code* and *message* (raises :class:`GrpcError`)."""
        raise GrpcError(code, message, details=details)

    async def send(self, message: Message) -> None:
        """
        Send one response message of a server-streaming call.

        Waits while the client's flow-control window (or the transport) is full.  Raises
        ``CancelledError`` if the call has already ended and :class:`GrpcError`
        (RESOURCE_EXHAUSTED) for a message over the maximum send size.
        """
        if not self._info.server_streaming:
            raise RuntimeError(f"{self.method} returns one response: return it, do not send it")
        if self._finished:
            raise CancelledError()
        await self._write(self._encode(message))

    # Internals.

    def _encode(self, message: Message) -> bytes:
        payload = message.SerializeToString()
        limit = self._protocol._options.max_send_message_size
        if len(payload) > limit:
            raise GrpcError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"sent message larger than max ({len(payload)} vs. {limit})",
            )
        if self._response_encoding is not None:
            return frame_message(compress(payload, self._response_encoding), True)
        return frame_message(payload)

    def _send_headers(self) -> None:
        if self._headers_sent:
            return
        self._headers_sent = True
        headers = self._protocol._response_headers(self._response_encoding)
        if self._initial_metadata:
            headers = headers + self._initial_metadata
        self._protocol._conn.send_headers(self._stream_id, headers)

    def _write_at_once(self, data: bytes) -> bool:
        """Queue *data* if the windows allow all of it now (the caller flushes)."""
        protocol = self._protocol
        if protocol._paused or protocol._mode != _H2 or self._finished:
            return False
        conn = protocol._conn
        if len(data) > conn.local_flow_control_window(self._stream_id):
            return False
        self._send_headers()
        conn.send_data(self._stream_id, data)
        return True

    async def _write(self, data: bytes) -> None:
        protocol = self._protocol
        conn = protocol._conn
        stream_id = self._stream_id
        if self._finished or protocol._mode != _H2:
            raise CancelledError()
        self._send_headers()
        while data:
            if self._finished or protocol._mode != _H2:
                raise CancelledError()
            window = 0 if protocol._paused else conn.local_flow_control_window(stream_id)
            if window <= 0:
                waiter: Deferred[None] = Deferred()
                self._write_waiter = waiter
                protocol._blocked.add(self)
                protocol._flush_soon()
                await waiter
                continue
            chunk_limit = conn.max_outbound_frame_size
            if len(data) <= window and len(data) <= chunk_limit:
                conn.send_data(stream_id, data)
                break
            end = min(window, len(data))
            for start in range(0, end, chunk_limit):
                conn.send_data(stream_id, data[start : min(start + chunk_limit, end)])
            data = data[end:]
        protocol._flush_soon()

    def _wake_writer(self) -> None:
        waiter = self._write_waiter
        if waiter is not None:
            self._write_waiter = None
            if not waiter.called:
                waiter.callback(None)

    def _receive(self) -> Deferred[Any]:
        if self._queue:
            message = self._queue.popleft()
            if not self._queue:
                self._ack()
            return succeed(message)
        if self._requests_ended:
            return succeed(None)
        if self._finished:
            raise CancelledError()
        waiter: Deferred[Any] = Deferred()
        self._waiter = waiter
        return waiter

    def _ack(self) -> None:
        if self._pending_ack:
            self._protocol._conn.acknowledge_received_data(self._pending_ack, self._stream_id)
            self._pending_ack = 0
            self._protocol._flush_soon()

    def _data_received(self, data: bytes, flow_controlled_length: int) -> None:
        if self._finished:
            self._protocol._conn.acknowledge_received_data(flow_controlled_length, self._stream_id)
            return
        self._pending_ack += flow_controlled_length
        options = self._protocol._options
        info = self._info
        try:
            frames = self._decoder.feed(data)
            for compressed, raw in frames:
                payload = (
                    decompress(raw, self._request_encoding, options.max_receive_message_size)
                    if compressed
                    else raw
                )
                try:
                    message = info.request_type.FromString(payload)
                except DecodeError as e:
                    raise GrpcError(StatusCode.INTERNAL, f"failed to parse request: {e}") from e
                self._received += 1
                if not info.client_streaming and self._received > 1:
                    raise GrpcError(StatusCode.INTERNAL, "more than one request for a unary call")
                waiter = self._waiter
                if waiter is not None and not waiter.called:
                    self._waiter = None
                    waiter.callback(message)
                else:
                    self._waiter = None
                    self._queue.append(message)
                if self._finished:
                    return
        except GrpcError as e:
            self._fail(e)
            return
        if not self._queue:
            self._ack()

    def _end_of_requests(self) -> None:
        self._requests_ended = True
        if self._finished:
            return
        if self._decoder.pending:
            self._fail(GrpcError(StatusCode.INTERNAL, "request stream ended mid-message"))
            return
        if not self._info.client_streaming:
            if len(self._queue) != 1:
                self._fail(GrpcError(StatusCode.INTERNAL, "expected exactly one request message"))
                return
            request = self._queue.popleft()
            self._ack()
            self._start(request)
            return
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.called:
                waiter.callback(None)

    def _start(self, request: Message | None) -> None:
        self._task = Deferred.fromCoroutine(self._run(request))

    async def _run(self, request: Message | None) -> None:
        info = self._info
        try:
            argument: Any = RequestStream(self) if info.client_streaming else request
            if not info.server_streaming:
                response = await info.handler(argument, self)
                if not isinstance(response, info.response_type):
                    raise TypeError(
                        f"handler for {self.method} returned {type(response).__name__},"
                        f" not {info.response_type.__name__}"
                    )
                if self._finished:
                    return
                data = self._encode(response)
                if not self._write_at_once(data):
                    await self._write(data)
            elif info.handler_is_generator:
                responses = info.handler(argument, self)
                try:
                    async for response in responses:
                        await self.send(response)
                finally:
                    await responses.aclose()
            else:
                await info.handler(argument, self)
        except GrpcError as e:
            self._finish(e.code, e.message, e.details, e.trailing_metadata)
        except CancelledError:
            self._finish(StatusCode.CANCELLED, "Cancelled")
        except Exception as e:
            _log.failure("gRPC handler for {method} failed", method=self.method)
            self._finish(StatusCode.UNKNOWN, f"Exception calling application: {e}")
        else:
            self._finish(StatusCode.OK, "")

    def _fail(self, error: GrpcError) -> None:
        """End the call because of something the client sent, and stop the handler."""
        self._finish(error.code, error.message, error.details, error.trailing_metadata)
        self._cancel_task()

    def _cancel_task(self) -> None:
        task = self._task
        if task is not None and not task.called:
            task.cancel()

    def _finish(
        self,
        code: StatusCode,
        message: str,
        details: bytes | None = None,
        trailing_metadata: Sequence[tuple[str, MetadataValue]] = (),
    ) -> None:
        if self._finished:
            return
        self._finished = True
        protocol = self._protocol
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if not self._reset and protocol._mode == _H2:
            conn = protocol._conn
            if code == StatusCode.OK and not self._trailing_metadata and not trailing_metadata:
                trailers = _TRAILERS_OK
            else:
                trailers = [(b"grpc-status", b"%d" % code)]
                if message:
                    trailers.append((b"grpc-message", percent_encode(message)))
                if details is not None:
                    trailers.append(
                        encode_metadata([("grpc-status-details-bin", details)])[0],
                    )
                trailers.extend(self._trailing_metadata)
                if trailing_metadata:
                    try:
                        trailers.extend(encode_metadata(trailing_metadata))
                    except ValueError:
                        _log.warn(
                            "dropped invalid trailing metadata for {method}", method=self.method
                        )
            try:
                if not self._headers_sent:
                    self._headers_sent = True
                    headers = protocol._response_headers(None) + self._initial_metadata + trailers
                    conn.send_headers(self._stream_id, headers, end_stream=True)
                else:
                    conn.send_headers(self._stream_id, trailers, end_stream=True)
                if not self._requests_ended:
                    conn.reset_stream(self._stream_id, ErrorCodes.NO_ERROR)
            except (StreamClosedError, ProtocolError):
                pass
            if self._pending_ack:
                conn.acknowledge_received_data(self._pending_ack, self._stream_id)
                self._pending_ack = 0
        self._wake_writer()
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.called:
                waiter.errback(CancelledError())
        protocol._stream_done(self)

    def _reset_by_peer(self) -> None:
        """The client reset the stream or went away: stop the handler, send nothing."""
        self._reset = True
        self._finish(StatusCode.CANCELLED, "")
        self._cancel_task()

    def _deadline_exceeded(self) -> None:
        self._timer = None
        self._finish(StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        self._cancel_task()


@implementer(IPushProducer)
class GrpcServerProtocol(Protocol):
    """
    One client connection: gRPC over HTTP/2, or HTTP/1.1 handed to the fallback resource.

    HTTP/2 is chosen by ALPN ``h2`` under TLS, or by the client's connection preface in
    cleartext (prior knowledge).  Anything else goes to the factory's HTTP/1.1 site.
    """

    identity: PeerIdentity | None = None

    def __init__(self, factory: GrpcServerFactory) -> None:
        self._factory = factory
        self._reactor = factory.reactor
        self._options = factory.options
        self._methods = factory._methods
        self._mode = _SNIFFING
        self._sniffed = b""
        self._conn: H2Connection = H2Connection(False)
        self._streams: dict[int, ServerContext] = {}
        self._blocked: set[ServerContext] = set()
        self._paused = False
        self._receiving = False
        self._http: IProtocol | None = None
        self._draining = False
        self._last_stream_id = 2**31 - 1
        self._keepalive_call: IDelayedCall | None = None
        self._ping_timeout_call: IDelayedCall | None = None
        self._response_headers_by_encoding: dict[bytes | None, list[tuple[bytes, bytes]]] = {}
        self._resets = 0
        self._resets_since = 0.0
        self.closed: Deferred[None] = Deferred()

    # Connection-level plumbing.

    def connectionMade(self) -> None:
        self._factory._connections.add(self)

    def dataReceived(self, data: bytes) -> None:
        if self._mode == _H2:
            self._h2_received(data)
        elif self._mode == _HTTP:
            assert self._http is not None
            self._http.dataReceived(data)
        elif self._mode == _SNIFFING:
            self._sniff(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        mode, self._mode = self._mode, _CLOSED
        self._factory._connections.discard(self)
        for call in (self._keepalive_call, self._ping_timeout_call):
            if call is not None and call.active():
                call.cancel()
        if mode == _HTTP and self._http is not None:
            self._http.connectionLost(reason)
        for stream in list(self._streams.values()):
            stream._reset_by_peer()
        self._streams.clear()
        if not self.closed.called:
            self.closed.callback(None)

    def _sniff(self, data: bytes) -> None:
        negotiated = getattr(self.transport, "negotiatedProtocol", None)
        if negotiated == b"h2":
            self._start_h2(data)
            return
        if negotiated == b"http/1.1":
            self._start_http(data)
            return
        buffered = self._sniffed + data
        if len(buffered) >= len(PREFACE) or not PREFACE.startswith(buffered):
            self._sniffed = b""
            if buffered.startswith(PREFACE):
                self._start_h2(buffered)
            else:
                self._start_http(buffered)
        else:
            self._sniffed = buffered

    def _start_http(self, data: bytes) -> None:
        site = self._factory.http_fallback
        transport = self.transport
        assert transport is not None
        if site is None:
            self._mode = _CLOSED
            transport.loseConnection()
            return
        http = site.buildProtocol(transport.getPeer())
        if http is None:
            self._mode = _CLOSED
            transport.loseConnection()
            return
        self._http = http
        self._mode = _HTTP
        http.makeConnection(transport)
        http.dataReceived(data)

    def _start_h2(self, data: bytes) -> None:
        self._mode = _H2
        transport = self.transport
        assert transport is not None
        options = self._options
        self.identity = peer_identity(transport)
        conn = self._conn = H2Connection(
            False,
            {
                SettingCodes.MAX_CONCURRENT_STREAMS: options.max_concurrent_streams,
                SettingCodes.INITIAL_WINDOW_SIZE: options.initial_window_size,
                SettingCodes.MAX_FRAME_SIZE: options.max_frame_size,
                SettingCodes.MAX_HEADER_LIST_SIZE: options.max_header_list_size,
                SettingCodes.ENABLE_PUSH: 0,
            },
        )
        conn.initiate_connection()
        if options.connection_window_size > 65535:
            conn.increment_flow_control_window(options.connection_window_size - 65535)
        self._flush()
        cast(IConsumer, transport).registerProducer(self, True)
        self._schedule_keepalive()
        self._h2_received(data)

    def _flush(self) -> None:
        data = self._conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def _flush_soon(self) -> None:
        if not self._receiving:
            self._flush()

    # IPushProducer: the transport's buffer is full, stop sending.  Reading stops too: a
    # client that does not read what we send must not make us queue answers (PING and
    # SETTINGS acknowledgements, resets) without bound; TCP then pushes back on it.

    def pauseProducing(self) -> None:
        self._paused = True
        if self.transport is not None and self._mode == _H2:
            cast(IPushProducer, self.transport).pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self.transport is not None and self._mode == _H2:
            cast(IPushProducer, self.transport).resumeProducing()
        self._wake_writers(None)

    def stopProducing(self) -> None:
        self._paused = True

    def _wake_writers(self, stream_id: int | None) -> None:
        if not self._blocked:
            return
        if stream_id:
            stream = self._streams.get(stream_id)
            if stream is not None and stream in self._blocked:
                self._blocked.discard(stream)
                stream._wake_writer()
            return
        blocked, self._blocked = self._blocked, set()
        for stream in blocked:
            stream._wake_writer()

    # HTTP/2 events.

    def _h2_received(self, data: bytes) -> None:
        self._receiving = True
        try:
            try:
                events = self._conn.receive_data(data)
            except ProtocolError as e:
                _log.info("HTTP/2 protocol error from {peer}: {error}", peer=self._peer(), error=e)
                self._flush()
                self._close()
                return
            for event in events:
                if isinstance(event, DataReceived):
                    stream = self._streams.get(event.stream_id)
                    if stream is None:
                        self._conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                    else:
                        stream._data_received(event.data, event.flow_controlled_length)
                        if event.stream_ended:
                            stream._end_of_requests()
                elif isinstance(event, RequestReceived):
                    self._request_received(event)
                elif isinstance(event, TrailersReceived):
                    stream = self._streams.get(event.stream_id)
                    if stream is not None:
                        stream._end_of_requests()
                elif isinstance(event, StreamReset):
                    stream = self._streams.get(event.stream_id)
                    if stream is not None:
                        stream._reset_by_peer()
                    if event.remote_reset and self._count_reset():
                        return
                elif isinstance(event, WindowUpdated):
                    self._wake_writers(event.stream_id)
                elif isinstance(event, RemoteSettingsChanged):
                    self._wake_writers(None)
                elif isinstance(event, PingAckReceived):
                    self._ping_acknowledged()
                elif isinstance(event, ConnectionTerminated):
                    self._draining = True
                    if event.error_code != ErrorCodes.NO_ERROR or not self._streams:
                        self._close()
                        return
                    # The client opens no more streams, but those it has are still to be
                    # answered.
        finally:
            self._receiving = False
        self._flush()

    def _count_reset(self) -> bool:
        """Count a stream reset by the client; close the connection if they come too fast."""
        now = self._reactor.seconds()
        if now - self._resets_since >= 1.0:
            self._resets_since = now
            self._resets = 0
        self._resets += 1
        if self._resets <= _MAX_RESETS_PER_SECOND:
            return False
        _log.info("{peer} resets streams too fast, closing", peer=self._peer())
        self._close(error_code=ErrorCodes.ENHANCE_YOUR_CALM)
        return True

    def _response_headers(self, encoding: bytes | None) -> list[tuple[bytes, bytes]]:
        headers = self._response_headers_by_encoding.get(encoding)
        if headers is None:
            if encoding is None:
                headers = list(_RESPONSE_HEADERS)
            else:
                headers = [
                    *_RESPONSE_HEADERS,
                    (b"grpc-encoding", encoding),
                    (b"grpc-accept-encoding", ACCEPT_ENCODING),
                ]
            self._response_headers_by_encoding[encoding] = headers
        return headers

    def _request_received(self, event: RequestReceived) -> None:
        stream_id = event.stream_id
        conn = self._conn
        if (self._draining and stream_id > self._last_stream_id) or len(
            self._streams
        ) >= self._options.max_concurrent_streams:
            conn.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        headers = event.headers
        path = method = content_type = timeout = encoding = accept = None
        for name, value in headers:
            if name == b":path":
                path = value
            elif name == b":method":
                method = value
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-timeout":
                timeout = value
            elif name == b"grpc-encoding":
                encoding = value
            elif name == b"grpc-accept-encoding":
                accept = value
        if method != b"POST":
            self._http_error(stream_id, b"405", not event.stream_ended)
            return
        if content_type is None or not content_type.startswith(b"application/grpc"):
            self._http_error(stream_id, b"415", not event.stream_ended)
            return
        info = self._methods.get(path or b"")
        if info is None:
            self._trailers_only(
                stream_id,
                StatusCode.UNIMPLEMENTED,
                f"Method not found: {(path or b'').decode('ascii', 'replace')}",
                not event.stream_ended,
            )
            return
        if encoding == b"identity":
            encoding = None
        if encoding is not None and encoding not in SUPPORTED_ENCODINGS:
            self._trailers_only(
                stream_id,
                StatusCode.UNIMPLEMENTED,
                f"Unsupported grpc-encoding {encoding.decode('ascii', 'replace')}",
                not event.stream_ended,
                [(b"grpc-accept-encoding", ACCEPT_ENCODING)],
            )
            return
        response_encoding = None
        if encoding is not None and (accept is None or encoding in accept):
            response_encoding = encoding
        deadline = None
        seconds = None
        if timeout is not None:
            seconds = parse_timeout(timeout)
            if seconds is not None:
                deadline = self._reactor.seconds() + seconds
        stream = ServerContext(
            self,
            stream_id,
            info,
            headers,
            deadline=deadline,
            request_encoding=encoding,
            response_encoding=response_encoding,
        )
        self._streams[stream_id] = stream
        if seconds is not None:
            stream._timer = self._reactor.callLater(seconds, stream._deadline_exceeded)
        if info.client_streaming:
            stream._start(None)
        if event.stream_ended and not stream._finished:
            stream._end_of_requests()

    def _http_error(self, stream_id: int, status: bytes, open_remote: bool) -> None:
        self._conn.send_headers(stream_id, [(b":status", status)], end_stream=True)
        if open_remote:
            self._reset_quietly(stream_id)

    def _trailers_only(
        self,
        stream_id: int,
        code: StatusCode,
        message: str,
        open_remote: bool,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        headers = [
            *_RESPONSE_HEADERS,
            (b"grpc-status", b"%d" % code),
            (b"grpc-message", percent_encode(message)),
        ]
        if extra:
            headers.extend(extra)
        self._conn.send_headers(stream_id, headers, end_stream=True)
        if open_remote:
            self._reset_quietly(stream_id)

    def _reset_quietly(self, stream_id: int) -> None:
        """Tell the client to stop sending on a stream already answered (RST_STREAM NO_ERROR)."""
        with contextlib.suppress(StreamClosedError):
            self._conn.reset_stream(stream_id, ErrorCodes.NO_ERROR)

    def _stream_done(self, stream: ServerContext) -> None:
        self._streams.pop(stream._stream_id, None)
        self._blocked.discard(stream)
        self._flush_soon()
        if self._draining and not self._streams and self._mode == _H2:
            self._close()

    # Keepalive and shutdown.

    def _schedule_keepalive(self) -> None:
        interval = self._options.keepalive_interval
        if interval is not None and self._mode == _H2:
            self._keepalive_call = self._reactor.callLater(interval, self._send_keepalive)

    def _send_keepalive(self) -> None:
        self._keepalive_call = None
        self._conn.ping(_PING_DATA)
        self._flush_soon()
        self._ping_timeout_call = self._reactor.callLater(
            self._options.keepalive_timeout, self._keepalive_timed_out
        )

    def _ping_acknowledged(self) -> None:
        call = self._ping_timeout_call
        if call is not None:
            self._ping_timeout_call = None
            if call.active():
                call.cancel()
            self._schedule_keepalive()

    def _keepalive_timed_out(self) -> None:
        self._ping_timeout_call = None
        _log.info("keepalive ping to {peer} timed out, closing", peer=self._peer())
        self._close(abort=True)

    def _peer(self) -> str:
        return str(self.transport.getPeer()) if self.transport is not None else "?"

    def _close(self, abort: bool = False, error_code: int = ErrorCodes.NO_ERROR) -> None:
        """Send a final GOAWAY (if HTTP/2) and close the connection."""
        transport = self.transport
        if self._mode == _H2:
            self._conn.close_connection(error_code)
            self._flush()
        self._mode = _CLOSED
        if transport is not None:
            if abort:
                cast(ITCPTransport, transport).abortConnection()
            else:
                transport.loseConnection()

    def drain(self) -> None:
        """
        Start a graceful shutdown: GOAWAY now, close once in-flight calls have finished.

        The connection keeps accepting frames for the streams that are still running.
        """
        if self._mode == _H2:
            if self._draining:
                return
            self._draining = True
            self._last_stream_id = self._conn.highest_inbound_stream_id
            self._conn.send_goaway(self._last_stream_id)
            self._flush()
            if not self._streams:
                self._close()
        elif self.transport is not None and self._mode != _CLOSED:
            self.transport.loseConnection()

    def abort(self) -> None:
        """Close the connection now, cancelling every call."""
        if self.transport is not None and self._mode != _CLOSED:
            self._close(abort=True)


class GrpcServerFactory(Factory):
    """
    Builds :class:`GrpcServerProtocol` connections for one listener.

    Register services with :meth:`add_service`; give *http_fallback* (a ``twisted.web``
    resource, served by a ``Site`` on *reactor*, or a ``Site`` or any other factory of
    HTTP/1.1 protocols) to answer plain HTTP on the same port.
    Wrap in ``TLSMemoryBIOFactory`` (see ``lattice.tls``) for TLS.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        options: GrpcServerOptions = GrpcServerOptions(),
        *,
        http_fallback: IProtocolFactory | IResource | None = None,
    ) -> None:
        self.reactor = reactor
        self.options = options
        if IResource.providedBy(http_fallback):
            http_fallback = Site(http_fallback, reactor=reactor)
        self.http_fallback: IProtocolFactory | None = http_fallback
        self._methods: dict[bytes, MethodInfo] = {}
        self._connections: set[GrpcServerProtocol] = set()

    def add_service(
        self,
        service: ServiceDescriptor,
        implementation: object | Mapping[str, Callable[..., Any]],
    ) -> None:
        """
        Serve the methods of *service* (a protobuf ``ServiceDescriptor``).

        *implementation* maps method names to ``async def`` handlers, or is an object with
        snake_case methods (``UnaryEcho`` -> ``unary_echo``).  Handlers are called as
        ``handler(request, context)``; *request* is a :class:`RequestStream` for
        client-streaming methods.  Unary-response handlers return the response; streaming
        ones call ``await context.send(response)`` or are async generators.
        """
        self._methods.update(methods_for(service, implementation))

    def buildProtocol(self, addr: IAddress | None) -> GrpcServerProtocol:
        protocol = GrpcServerProtocol(self)
        protocol.factory = self
        return protocol

    @property
    def connection_count(self) -> int:
        """Number of open connections."""
        return len(self._connections)

    def drain(self, timeout: float | None = None) -> Deferred[None]:
        """
        Gracefully close every connection: GOAWAY, let running calls finish, then close.

        Connections still open after *timeout* (default ``options.drain_timeout``) are
        aborted, cancelling their calls.  The Deferred fires when all are closed.
        """
        return Deferred.fromCoroutine(self._drain(timeout))

    async def _drain(self, timeout: float | None) -> None:  # noqa: ASYNC109
        if timeout is None:
            timeout = self.options.drain_timeout
        connections = list(self._connections)
        closed = DeferredList([c.closed for c in connections])
        for connection in connections:
            connection.drain()
        timer = self.reactor.callLater(timeout, self._abort_all, connections)
        try:
            await closed
        finally:
            if timer.active():
                timer.cancel()

    def _abort_all(self, connections: list[GrpcServerProtocol]) -> None:
        for connection in connections:
            connection.abort()

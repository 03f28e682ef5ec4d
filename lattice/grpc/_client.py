"""The gRPC client: calls over one HTTP/2 connection, for Twisted code."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar, cast

from google.protobuf.message import DecodeError, Message
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IReactorTime,
    IStreamClientEndpoint,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from lattice.grpc._framing import ACCEPT_ENCODING, MessageDecoder, decompress, frame_message
from lattice.grpc._http2 import (
    ConnectionTerminated,
    DataReceived,
    ErrorCodes,
    H2Connection,
    PingAckReceived,
    ProtocolError,
    RemoteSettingsChanged,
    ResponseReceived,
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
    format_timeout,
    percent_decode,
)
from lattice.grpc._status import GrpcError, StatusCode, status_from_wire

_log = Logger()

T = TypeVar("T", bound=Message)
MIB = 1024 * 1024

_HTTP_TO_GRPC = {
    400: StatusCode.INTERNAL,
    401: StatusCode.UNAUTHENTICATED,
    403: StatusCode.PERMISSION_DENIED,
    404: StatusCode.UNIMPLEMENTED,
    429: StatusCode.UNAVAILABLE,
    502: StatusCode.UNAVAILABLE,
    503: StatusCode.UNAVAILABLE,
    504: StatusCode.UNAVAILABLE,
}
_RESET_TO_GRPC: dict[int, StatusCode] = {
    ErrorCodes.NO_ERROR: StatusCode.INTERNAL,
    ErrorCodes.REFUSED_STREAM: StatusCode.UNAVAILABLE,
    ErrorCodes.CANCEL: StatusCode.CANCELLED,
    ErrorCodes.ENHANCE_YOUR_CALM: StatusCode.RESOURCE_EXHAUSTED,
    ErrorCodes.INADEQUATE_SECURITY: StatusCode.PERMISSION_DENIED,
}


@dataclass(frozen=True, slots=True)
class GrpcClientOptions:
    """
    Tunables of a client connection (sizes in bytes, times in seconds).

    With *keepalive_interval* set, the client PINGs the server that often and closes the
    connection (failing its calls with UNAVAILABLE) if a PING is unanswered for
    *keepalive_timeout*.  gRPC servers limit how often clients may ping (grpc-go's default
    minimum is 5 minutes), so keep it long.
    """

    max_receive_message_size: int = 4 * MIB
    max_send_message_size: int = 4 * MIB
    initial_window_size: int = 1 * MIB
    connection_window_size: int = 4 * MIB
    user_agent: str = "lattice-grpc"
    keepalive_interval: float | None = None
    keepalive_timeout: float = 20.0


class ClientCall(Generic[T]):
    """
    One call in progress.

    Stream requests with :meth:`send` then :meth:`done_sending`; read responses with
    :meth:`receive` or ``async for``.  :meth:`receive` returns ``None`` after the last
    response of a successful call and raises :class:`GrpcError` for a failed one.
    ``initial_metadata`` and ``trailing_metadata`` are filled in as they arrive.
    """

    __slots__ = (
        "__weakref__",
        "_decoder",
        "_done",
        "_done_waiter",
        "_encoding",
        "_error",
        "_initial_headers",
        "_initial_metadata",
        "_opened",
        "_pending_ack",
        "_protocol",
        "_queue",
        "_request_headers",
        "_response_type",
        "_sending_done",
        "_stream_id",
        "_timer",
        "_trailing_headers",
        "_trailing_metadata",
        "_unary",
        "_waiter",
        "_write_waiter",
        "code",
        "details",
    )

    def __init__(
        self,
        protocol: GrpcClientProtocol,
        headers: list[tuple[bytes, bytes]],
        response_type: type[T],
    ) -> None:
        self._protocol = protocol
        self._request_headers = headers
        self._stream_id = 0
        self._opened: Deferred[None] | None = None
        self._response_type = response_type
        self._decoder = MessageDecoder(protocol.options.max_receive_message_size)
        self._queue: deque[T] = deque()
        self._waiter: Deferred[None] | None = None
        self._write_waiter: Deferred[None] | None = None
        self._pending_ack = 0
        self._encoding: bytes | None = None
        self._error: GrpcError | None = None
        self._done = False
        self._sending_done = False
        self._timer: IDelayedCall | None = None
        self._unary = False
        self._done_waiter: Deferred[None] | None = None
        self._initial_headers: list[tuple[bytes, bytes]] | None = None
        self._initial_metadata: Metadata | None = None
        self._trailing_headers: list[tuple[bytes, bytes]] | None = None
        self._trailing_metadata: Metadata | None = None
        self.code: StatusCode | None = None
        self.details: str | None = None

    @property
    def initial_metadata(self) -> Metadata | None:
        """The response headers' metadata, once they have arrived."""
        if self._initial_metadata is None and self._initial_headers is not None:
            self._initial_metadata = decode_metadata(self._initial_headers)
        return self._initial_metadata

    @property
    def trailing_metadata(self) -> Metadata | None:
        """The trailers' metadata, once they have arrived."""
        if self._trailing_metadata is None and self._trailing_headers is not None:
            self._trailing_metadata = decode_metadata(self._trailing_headers)
        return self._trailing_metadata

    async def send(self, message: Message) -> None:
        """Send one request message, waiting for flow-control window."""
        if self._sending_done:
            raise RuntimeError("done_sending() was already called")
        payload = message.SerializeToString()
        limit = self._protocol.options.max_send_message_size
        if len(payload) > limit:
            raise GrpcError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"message larger than max ({len(payload)} vs. {limit})",
            )
        await self._send_framed(frame_message(payload))

    async def _send_framed(self, data: bytes) -> None:
        protocol = self._protocol
        conn = protocol.conn
        if not self._stream_id and not self._done:
            self._opened = Deferred()
            await self._opened
        while data:
            if self._done:
                raise self._error or GrpcError(StatusCode.CANCELLED, "call already ended")
            window = conn.local_flow_control_window(self._stream_id)
            if window <= 0:
                waiter: Deferred[None] = Deferred()
                self._write_waiter = waiter
                protocol.flush()
                await waiter
                continue
            end = min(window, len(data))
            step = conn.max_outbound_frame_size
            for start in range(0, end, step):
                conn.send_data(self._stream_id, data[start : min(start + step, end)])
            data = data[end:]
        protocol.flush()

    def done_sending(self) -> None:
        """Half-close: tell the server no more requests will come."""
        if self._sending_done:
            return
        self._sending_done = True
        if not self._done and self._stream_id:
            with contextlib.suppress(StreamClosedError):
                self._protocol.conn.end_stream(self._stream_id)
            self._protocol.flush()

    async def receive(self) -> T | None:
        """The next response, ``None`` at the end of a successful call."""
        while True:
            if self._queue:
                message = self._queue.popleft()
                if not self._queue:
                    self._ack()
                return message
            if self._done:
                if self._error is not None:
                    raise self._error
                return None
            waiter: Deferred[None] = Deferred()
            self._waiter = waiter
            try:
                await waiter
            except CancelledError:
                self.cancel()
                raise

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T]:
        while True:
            message = await self.receive()
            if message is None:
                return
            yield message

    def cancel(self) -> None:
        """Cancel the call: RST_STREAM(CANCEL) to the server, CANCELLED locally."""
        if self._done:
            return
        self._reset_stream()
        self._end(GrpcError(StatusCode.CANCELLED, "Cancelled by the client"))

    def _reset_stream(self) -> None:
        if self._stream_id:
            with contextlib.suppress(StreamClosedError, ProtocolError):
                self._protocol.conn.reset_stream(self._stream_id, ErrorCodes.CANCEL)
            self._protocol.flush()

    def _open(self, stream_id: int, unary_request: bytes | None = None) -> None:
        """Send the request headers now that the server allows another stream."""
        self._stream_id = stream_id
        protocol = self._protocol
        protocol.calls[stream_id] = self  # type: ignore[assignment]
        conn = protocol.conn
        conn.send_headers(stream_id, self._request_headers, end_stream=self._sending_done)
        if (
            unary_request is not None
            and not self._sending_done
            and conn.local_flow_control_window(stream_id) >= len(unary_request)
        ):
            conn.send_data(stream_id, unary_request, end_stream=True)
            self._sending_done = True
        opened, self._opened = self._opened, None
        if opened is not None:
            opened.callback(None)

    # Protocol-facing.

    def _ack(self) -> None:
        if self._pending_ack:
            with contextlib.suppress(StreamClosedError, ProtocolError):
                self._protocol.conn.acknowledge_received_data(self._pending_ack, self._stream_id)
            self._pending_ack = 0
            self._protocol.flush()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.called:
                waiter.callback(None)

    def _wake_writer(self) -> None:
        waiter = self._write_waiter
        if waiter is not None:
            self._write_waiter = None
            if not waiter.called:
                waiter.callback(None)

    def _headers(self, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        status = content_type = None
        for name, value in headers:
            if name == b":status":
                status = value
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-encoding":
                self._encoding = None if value == b"identity" else value
        if status != b"200":
            code = _HTTP_TO_GRPC.get(int(status or b"0") if (status or b"").isdigit() else 0)
            self._fail(GrpcError(code or StatusCode.UNKNOWN, f"HTTP status {status!r}"))
            return
        if end:
            self._trailers(headers)
            return
        if content_type is None or not content_type.startswith(b"application/grpc"):
            self._fail(GrpcError(StatusCode.UNKNOWN, f"bad content-type {content_type!r}"))
            return
        self._initial_headers = headers

    def _data(self, data: bytes, flow_controlled_length: int) -> None:
        self._pending_ack += flow_controlled_length
        if self._done:
            self._ack()
            return
        try:
            for compressed, raw in self._decoder.feed(data):
                payload = (
                    decompress(raw, self._encoding, self._protocol.options.max_receive_message_size)
                    if compressed
                    else raw
                )
                try:
                    self._queue.append(self._response_type.FromString(payload))
                except DecodeError as e:
                    raise GrpcError(StatusCode.INTERNAL, f"failed to parse response: {e}") from e
                if self._unary and len(self._queue) > 1:
                    raise GrpcError(StatusCode.INTERNAL, "more than one response for a unary call")
        except GrpcError as e:
            self._fail(e)
            return
        if self._queue:
            self._wake()
        else:
            self._ack()

    def _trailers(self, headers: list[tuple[bytes, bytes]]) -> None:
        code = message = None
        for name, value in headers:
            if name == b"grpc-status":
                code = value
            elif name == b"grpc-message":
                message = value
        self._trailing_headers = headers
        if self._initial_headers is None:
            self._initial_headers = []
        if code is None:
            self._end(GrpcError(StatusCode.INTERNAL, "response ended without grpc-status"))
            return
        if code == b"0":
            status = StatusCode.OK
        else:
            status = status_from_wire(code.decode("ascii", "replace"))
        text = percent_decode(message) if message is not None else ""
        if status == StatusCode.OK:
            self.code, self.details = status, text
            self._end(None)
        else:
            trailing = self.trailing_metadata
            assert trailing is not None
            details = trailing.get("grpc-status-details-bin")
            self._end(
                GrpcError(
                    status,
                    text,
                    details=details if isinstance(details, bytes) else None,
                    trailing_metadata=trailing,
                )
            )

    def _stream_ended(self) -> None:
        if not self._done:
            self._end(GrpcError(StatusCode.INTERNAL, "stream ended without trailers"))

    def _reset(self, error_code: int) -> None:
        if not self._done:
            code = _RESET_TO_GRPC.get(error_code, StatusCode.INTERNAL)
            self._end(GrpcError(code, f"stream reset by the server ({error_code})"))

    def _fail(self, error: GrpcError) -> None:
        """Something the server sent is unacceptable: reset the stream, fail the call."""
        if self._done:
            return
        self._reset_stream()
        self._end(error)

    def _deadline_exceeded(self) -> None:
        self._timer = None
        self._fail(GrpcError(StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))

    def _end(self, error: GrpcError | None) -> None:
        if self._done:
            return
        self._done = True
        if error is not None:
            self._error = error
            self.code, self.details = error.code, error.message
            self._queue.clear()
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        protocol = self._protocol
        if self._stream_id:
            if not self._sending_done:
                self._reset_stream()
            self._ack()
            protocol.calls.pop(self._stream_id, None)
        protocol.start_pending()
        opened, self._opened = self._opened, None
        if opened is not None:
            opened.callback(None)
        done, self._done_waiter = self._done_waiter, None
        if done is not None:
            done.callback(None)
        self._wake()
        self._wake_writer()

    async def _unary_response(self) -> T:
        """The one response of a unary-response call, once the call has ended."""
        if not self._done:
            waiter: Deferred[None] = Deferred()
            self._done_waiter = waiter
            try:
                await waiter
            except CancelledError:
                self.cancel()
                raise
        if self._error is not None:
            raise self._error
        queue = self._queue
        if not queue:
            raise GrpcError(StatusCode.INTERNAL, "no response message for a unary call")
        return queue.popleft()


class GrpcClientProtocol(Protocol):
    """The HTTP/2 connection under a :class:`GrpcChannel`."""

    def __init__(self, reactor: IReactorTime, options: GrpcClientOptions) -> None:
        self.reactor = reactor
        self.options = options
        self.conn = H2Connection(
            True,
            {
                SettingCodes.INITIAL_WINDOW_SIZE: options.initial_window_size,
                SettingCodes.ENABLE_PUSH: 0,
                SettingCodes.MAX_HEADER_LIST_SIZE: 65536,
            },
        )
        self.calls: dict[int, ClientCall[Message]] = {}
        self.pending: deque[ClientCall[Message]] = deque()
        self.closed = False
        self.going_away: GrpcError | None = None
        self.lost: Deferred[None] = Deferred()
        self._keepalive: IDelayedCall | None = None
        self._ping_timeout: IDelayedCall | None = None
        self._header_prefixes: dict[tuple[str, bytes, bytes], tuple[tuple[bytes, bytes], ...]] = {}

    def connectionMade(self) -> None:
        conn = self.conn
        conn.initiate_connection()
        if self.options.connection_window_size > 65535:
            conn.increment_flow_control_window(self.options.connection_window_size - 65535)
        self.flush()
        self._schedule_keepalive()

    def _schedule_keepalive(self) -> None:
        interval = self.options.keepalive_interval
        if interval is not None and not self.closed:
            self._keepalive = self.reactor.callLater(interval, self._send_keepalive)

    def _send_keepalive(self) -> None:
        self._keepalive = None
        self.conn.ping(b"lattice\x01")
        self.flush()
        self._ping_timeout = self.reactor.callLater(
            self.options.keepalive_timeout, self._keepalive_timed_out
        )

    def _keepalive_timed_out(self) -> None:
        self._ping_timeout = None
        _log.info("keepalive ping to the server timed out, closing")
        if self.transport is not None:
            cast(ITCPTransport, self.transport).abortConnection()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def dataReceived(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as e:
            _log.info("HTTP/2 protocol error from the server: {error}", error=e)
            self.flush()
            if self.transport is not None:
                self.transport.loseConnection()
            return
        for event in events:
            if isinstance(event, DataReceived):
                call = self.calls.get(event.stream_id)
                if call is None:
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                else:
                    call._data(event.data, event.flow_controlled_length)
                    if event.stream_ended:
                        call._stream_ended()
            elif isinstance(event, ResponseReceived):
                call = self.calls.get(event.stream_id)
                if call is not None:
                    call._headers(event.headers, event.stream_ended)
            elif isinstance(event, TrailersReceived):
                call = self.calls.get(event.stream_id)
                if call is not None:
                    call._trailers(event.headers)
            elif isinstance(event, StreamReset):
                call = self.calls.get(event.stream_id)
                if call is not None:
                    call._reset(event.error_code)
            elif isinstance(event, WindowUpdated | RemoteSettingsChanged):
                for call in list(self.calls.values()):
                    call._wake_writer()
                self.start_pending()
            elif isinstance(event, PingAckReceived):
                timeout, self._ping_timeout = self._ping_timeout, None
                if timeout is not None and timeout.active():
                    timeout.cancel()
                    self._schedule_keepalive()
            elif isinstance(event, ConnectionTerminated):
                self.going_away = GrpcError(StatusCode.UNAVAILABLE, "server sent GOAWAY")
                last = event.last_stream_id
                for stream_id, call in list(self.calls.items()):
                    if stream_id > last:
                        call._end(self.going_away)
                pending, self.pending = self.pending, deque()
                for call in pending:
                    call._end(self.going_away)
        self.flush()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        for timer in (self._keepalive, self._ping_timeout):
            if timer is not None and timer.active():
                timer.cancel()
        error = GrpcError(StatusCode.UNAVAILABLE, f"connection lost: {reason.getErrorMessage()}")
        pending, self.pending = self.pending, deque()
        for call in [*self.calls.values(), *pending]:
            call._end(error)
        self.lost.callback(None)

    def start_pending(self) -> None:
        """Open queued calls while the server's MAX_CONCURRENT_STREAMS allows."""
        conn = self.conn
        pending = self.pending
        while pending and not self.closed:
            limit = conn.remote_settings.max_concurrent_streams
            if conn.open_outbound_streams >= limit:
                return
            call = pending.popleft()
            if not call._done:
                call._open(conn.get_next_available_stream_id())
                self.flush()

    def start_call(
        self,
        method: str,
        response_type: type[T],
        *,
        timeout: float | None,
        metadata: Iterable[tuple[str, MetadataValue]],
        authority: bytes,
        scheme: bytes,
        unary_request: bytes | None = None,
    ) -> ClientCall[T]:
        """
        Open a call (or queue it behind the server's stream limit).  With *unary_request*
        (a framed message), the call is unary-response and that request is sent with the
        headers when the stream opens at once within the flow-control window.
        """
        if self.closed:
            raise GrpcError(StatusCode.UNAVAILABLE, "connection closed")
        if self.going_away is not None:
            raise self.going_away
        key = (method, authority, scheme)
        prefix = self._header_prefixes.get(key)
        if prefix is None:
            prefix = (
                (b":method", b"POST"),
                (b":scheme", scheme),
                (b":path", method.encode("ascii")),
                (b":authority", authority),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
                (b"grpc-accept-encoding", ACCEPT_ENCODING),
                (b"user-agent", self.options.user_agent.encode("ascii")),
            )
            if len(self._header_prefixes) >= 256:
                self._header_prefixes.clear()
            self._header_prefixes[key] = prefix
        headers = list(prefix)
        if timeout is not None:
            headers.append((b"grpc-timeout", format_timeout(timeout)))
        if isinstance(metadata, tuple):
            if metadata:
                headers.extend(_encode_metadata_cached(metadata))
        else:
            headers.extend(encode_metadata(metadata))
        call: ClientCall[T] = ClientCall(self, headers, response_type)
        call._unary = unary_request is not None
        if timeout is not None:
            call._timer = self.reactor.callLater(timeout, call._deadline_exceeded)
        conn = self.conn
        if not self.pending and (
            conn.open_outbound_streams < conn.remote_settings.max_concurrent_streams
        ):
            call._open(conn.get_next_available_stream_id(), unary_request)
        else:
            self.pending.append(call)  # type: ignore[arg-type]
            self.start_pending()
        return call


_METADATA_CACHE: dict[tuple[tuple[str, MetadataValue], ...], list[tuple[bytes, bytes]]] = {}


def _encode_metadata_cached(
    metadata: tuple[tuple[str, MetadataValue], ...],
) -> list[tuple[bytes, bytes]]:
    """``encode_metadata`` for a tuple, remembered: callers pass the same few constants."""
    try:
        encoded = _METADATA_CACHE.get(metadata)
    except TypeError:  # unhashable values
        return encode_metadata(metadata)
    if encoded is None:
        encoded = encode_metadata(metadata)
        if len(_METADATA_CACHE) >= 256:
            _METADATA_CACHE.clear()
        _METADATA_CACHE[metadata] = encoded
    return encoded


class GrpcChannel:
    """
    A client connection to one gRPC server.

    Build it with :func:`connect_channel`.  *method* arguments are full paths
    (``/package.Service/Method``, see :func:`lattice.grpc.method_path`); *timeout* is in
    seconds and becomes ``grpc-timeout`` plus a local deadline (DEADLINE_EXCEEDED).
    Cancelling the Deferred of a call (or :meth:`ClientCall.cancel`) resets its stream.
    """

    def __init__(self, protocol: GrpcClientProtocol, authority: str, scheme: str = "http") -> None:
        self.protocol = protocol
        self._authority = authority.encode("ascii")
        self._scheme = scheme.encode("ascii")

    def start(
        self,
        method: str,
        response_type: type[T],
        *,
        timeout: float | None = None,
        metadata: Iterable[tuple[str, MetadataValue]] = (),
    ) -> ClientCall[T]:
        """Open a call of any shape; send, half-close and receive on the returned call."""
        call = self.protocol.start_call(
            method,
            response_type,
            timeout=timeout,
            metadata=metadata,
            authority=self._authority,
            scheme=self._scheme,
        )
        self.protocol.flush()
        return call

    async def unary_unary(
        self,
        method: str,
        request: Message,
        response_type: type[T],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (gRPC's per-call timeout)
        metadata: Iterable[tuple[str, MetadataValue]] = (),
    ) -> T:
        """Call a unary method and return its response (raises :class:`GrpcError`)."""
        protocol = self.protocol
        payload = request.SerializeToString()
        limit = protocol.options.max_send_message_size
        if len(payload) > limit:
            raise GrpcError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"message larger than max ({len(payload)} vs. {limit})",
            )
        data = frame_message(payload)
        call = protocol.start_call(
            method,
            response_type,
            timeout=timeout,
            metadata=metadata,
            authority=self._authority,
            scheme=self._scheme,
            unary_request=data,
        )
        try:
            if not call._sending_done:
                await call._send_framed(data)
                call.done_sending()
            protocol.flush()
            return await call._unary_response()
        except CancelledError:
            call.cancel()
            raise

    def unary_stream(
        self,
        method: str,
        request: Message,
        response_type: type[T],
        *,
        timeout: float | None = None,
        metadata: Iterable[tuple[str, MetadataValue]] = (),
    ) -> ClientCall[T]:
        """Call a server-streaming method; iterate the returned call for the responses."""
        call = self.start(method, response_type, timeout=timeout, metadata=metadata)
        Deferred.fromCoroutine(_send_one(call, request)).addErrback(lambda _: None)
        return call

    async def stream_unary(
        self,
        method: str,
        requests: AsyncIterator[Message] | Iterable[Message],
        response_type: type[T],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (gRPC's per-call timeout)
        metadata: Iterable[tuple[str, MetadataValue]] = (),
    ) -> T:
        """Call a client-streaming method with *requests*; return the response."""
        call = self.start(method, response_type, timeout=timeout, metadata=metadata)
        try:
            if isinstance(requests, AsyncIterator):
                async for request in requests:
                    await call.send(request)
            else:
                for request in requests:
                    await call.send(request)
            call.done_sending()
            return await _single_response(call)
        except CancelledError:
            call.cancel()
            raise

    def stream_stream(
        self,
        method: str,
        response_type: type[T],
        *,
        timeout: float | None = None,
        metadata: Iterable[tuple[str, MetadataValue]] = (),
    ) -> ClientCall[T]:
        """Open a bidirectional call: ``send``/``done_sending`` and iterate responses."""
        return self.start(method, response_type, timeout=timeout, metadata=metadata)

    def close(self) -> Deferred[None]:
        """Close the connection (GOAWAY); the Deferred fires once it is closed."""
        protocol = self.protocol
        if not protocol.closed and protocol.transport is not None:
            with contextlib.suppress(ProtocolError):
                protocol.conn.close_connection()
            protocol.flush()
            protocol.transport.loseConnection()
        return protocol.lost


async def _send_one(call: ClientCall[T], request: Message) -> None:
    try:
        await call.send(request)
    except GrpcError as e:
        call._fail(e)
        return
    call.done_sending()


async def _single_response(call: ClientCall[T]) -> T:
    response = await call.receive()
    if response is None:
        raise GrpcError(StatusCode.INTERNAL, "no response message for a unary call")
    extra = await call.receive()
    if extra is not None:
        raise GrpcError(StatusCode.INTERNAL, "more than one response for a unary call")
    return response


class _SingleProtocolFactory(Factory):
    # One factory per connection attempt: "Starting factory" lines would say nothing.
    noisy = False

    def __init__(self, protocol: GrpcClientProtocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: IAddress | None) -> GrpcClientProtocol:
        return self._protocol


async def connect_channel(
    reactor: IReactorTime,
    endpoint: IStreamClientEndpoint,
    authority: str,
    options: GrpcClientOptions = GrpcClientOptions(),
    *,
    scheme: str = "http",
) -> GrpcChannel:
    """
    Connect to a gRPC server at *endpoint* and return a channel.

    For TLS, pass an endpoint wrapped with ``wrapClientTLS`` whose options offer ALPN ``h2``
    (see :func:`lattice.tls.client_tls_options`) and *scheme* ``"https"``.
    """
    protocol = GrpcClientProtocol(reactor, options)
    await endpoint.connect(_SingleProtocolFactory(protocol))
    return GrpcChannel(protocol, authority, scheme)

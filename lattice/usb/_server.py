"""
The USB/IP listener: the wire boundary between clients and the registry.

One connection carries one operation request.  OP_REQ_DEVLIST is answered
and the connection closed; an accepted OP_REQ_IMPORT switches the connection
to the URB phase, where CMD_SUBMITs run concurrently across endpoints and in
order within one (a parked interrupt IN never holds up control transfers),
and CMD_UNLINK follows the kernel stub: a URB still pending is answered with
RET_UNLINK -ECONNRESET and never with a RET_SUBMIT.
"""

from __future__ import annotations

import contextlib
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IReactorTime,
    ISSLTransport,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from lattice.usb._device import (
    Completion,
    Setup,
    SpecialRequest,
    TransferType,
    UsbDevice,
    classify_special,
)
from lattice.usb._policy import PolicyError, normalize_identity
from lattice.usb._protocol import (
    OP_REQ_DEVLIST,
    RET_SUBMIT_HEADER,
    Errno,
    OpStatus,
    ProtocolError,
    Unlink,
    Urb,
    UrbParser,
    UrbResult,
    encode_devlist_reply,
    encode_import_reply,
    encode_ret_submit,
    encode_ret_unlink,
    parse_op_request,
)
from lattice.usb._registry import DeviceRegistry, Export

__all__ = ["Identify", "UrbObserver", "UsbipProtocol", "UsbipServerFactory", "plain_identity"]

URB_SHORT_NOT_OK = 0x0001

_RET_HEADER = RET_SUBMIT_HEADER.pack
_ENODEV = int(Errno.ENODEV)
_EIO = int(Errno.EIO)
_EOVERFLOW = int(Errno.EOVERFLOW)
_EREMOTEIO = int(Errno.EREMOTEIO)

Identify = Callable[[Any], str | None]


def plain_identity(transport: Any) -> str | None:
    """
    The identity of a client on the plain listener: its IP address.
    """
    host = getattr(transport.getPeer(), "host", None)
    if not isinstance(host, str):
        return None
    try:
        return normalize_identity(host)
    except PolicyError:
        return None


class UrbObserver:
    """
    Receives one call per completed URB and per byte count (for metrics).
    """

    def urb_completed(self, status: int, bytes_in: int, bytes_out: int) -> None:
        """
        A URB completed with C{status} (or was unlinked).
        """


@dataclass
class _Lane:
    """
    The URBs of one endpoint (ep0 IN and OUT share a lane), run one at a time.
    """

    queue: deque[Urb] = field(default_factory=deque)
    busy: bool = False
    current: int | None = None
    looping: bool = False


@dataclass(frozen=True)
class KeepAlive:
    """
    TCP settings that notice a silent client: keepalive probes after
    C{idle} seconds, and C{user_timeout} for data the peer never acknowledges.
    """

    idle: float = 5.0
    interval: float = 1.0
    count: int = 3

    @property
    def user_timeout_ms(self) -> int:
        """
        TCP_USER_TIMEOUT in milliseconds.
        """
        return int((self.idle + self.interval * self.count) * 1000)


def configure_socket(transport: Any, keepalive: KeepAlive) -> None:
    """
    TCP_NODELAY, SO_KEEPALIVE and the Linux keepalive and user timeouts.
    """
    if not ITCPTransport.providedBy(transport):
        return
    transport.setTcpNoDelay(True)
    transport.setTcpKeepAlive(True)
    handle = getattr(transport, "getHandle", lambda: None)()
    if not isinstance(handle, socket.socket):
        return
    options = [
        ("TCP_KEEPIDLE", max(1, int(keepalive.idle))),
        ("TCP_KEEPINTVL", max(1, int(keepalive.interval))),
        ("TCP_KEEPCNT", max(1, keepalive.count)),
        ("TCP_USER_TIMEOUT", keepalive.user_timeout_ms),
    ]
    for name, value in options:
        option = getattr(socket, name, None)
        if option is not None:
            with contextlib.suppress(OSError):
                handle.setsockopt(socket.IPPROTO_TCP, option, value)


class UsbipProtocol(Protocol):
    """
    One client connection.
    """

    _log = Logger()
    factory: UsbipServerFactory

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._phase = "op"
        self._parser: UrbParser | None = None
        self._export: Export | None = None
        self._devid = -1
        self._busid = ""
        self._device: UsbDevice | None = None
        self._observe: Callable[[int, int, int], None] = UrbObserver().urb_completed
        self._lanes: dict[int, _Lane] = {}
        self._inflight: dict[int, Urb] = {}
        self._timeout: IDelayedCall | None = None
        self.identity = ""
        self.address = ""
        self.connected_at = 0.0
        self._socket: socket.socket | None = None
        self._backlog = True

    @property
    def _t(self) -> Any:
        # Twisted types Protocol.transport as Optional[ITransport]; this
        # connection's transport is a TCP (or TLS) transport once connected.
        return self.transport

    # -- Holder ------------------------------------------------------------

    def device_gone(self) -> None:
        """
        The device was unplugged: every in-flight URB fails with -ENODEV,
        then the connection closes (vhci then detaches the port).
        """
        export, self._export = self._export, None
        pending = list(self._inflight.values())
        self._inflight.clear()
        self._lanes.clear()
        for urb in pending:
            self._reply(urb, UrbResult.error(Errno.ENODEV))
        if export is not None:
            self._phase = "closed"
        self._close()

    def disconnect(self) -> None:
        """
        Drop the connection.
        """
        self._close()

    # -- connection --------------------------------------------------------

    def connectionMade(self) -> None:
        self._observe = self.factory.observer.urb_completed
        configure_socket(self.transport, self.factory.keepalive)
        peer = self._t.getPeer()
        host = getattr(peer, "host", None)
        port = getattr(peer, "port", None)
        self.address = f"{host}:{port}" if host is not None else str(peer)
        self.connected_at = self.factory.clock.seconds()
        self._timeout = self.factory.clock.callLater(self.factory.op_timeout, self._op_timed_out)
        self.factory.connections.add(self)

    def _op_timed_out(self) -> None:
        self._timeout = None
        self._log.info("USB/IP client {address} sent no request in time", address=self.address)
        self._t.abortConnection()

    def _cancel_timeout(self) -> None:
        if self._timeout is not None:
            if self._timeout.active():
                self._timeout.cancel()
            self._timeout = None

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        self._cancel_timeout()
        self.factory.connections.discard(self)
        self._phase = "closed"
        export, self._export = self._export, None
        pending = list(self._inflight)
        self._inflight.clear()
        device = export.device if export is not None else None
        if device is not None:
            for lane in self._lanes.values():
                if lane.current in pending:
                    device.cancel(lane.current)
        self._lanes.clear()
        if export is not None:
            for _ in pending:
                self.factory.observer.urb_completed(Errno.ECONNRESET, 0, 0)
            self.factory.registry.release(export, self)

    def _write(self, data: bytes) -> None:
        """
        Send one complete reply.

        With write-through on (see L{_write_through}) the reply goes straight
        to the socket when nothing is queued before it: Twisted's buffered
        write would send it one reactor iteration later, which is most of a
        URB's round trip.  Whatever the socket does not take (a partial send,
        EAGAIN) is queued in Twisted's buffer, and every later reply queues
        behind it until Twisted reports the buffer drained, so replies keep
        their order.
        """
        sock = self._socket
        if sock is not None and not self._backlog:
            try:
                sent = sock.send(data)
            except OSError:
                # EAGAIN, or an error Twisted reports on its own next read or write.
                sent = 0
            if sent == len(data):
                return
            self._backlog = True
            if sent:
                data = data[sent:]
        self._t.write(data)

    # IPullProducer, registered so that Twisted says when its buffer drained.

    def resumeProducing(self) -> None:
        """
        Twisted's write buffer is empty: replies may go straight to the socket.
        """
        self._backlog = False

    def stopProducing(self) -> None:
        """
        The connection is gone: no more writes to its socket.
        """
        self._socket = None

    def _write_through(self) -> None:
        """
        Turn write-through on if this connection's transport is a plain TCP
        connection: the transport object itself owns the socket (so nothing
        between this protocol and the socket transforms or counts the bytes:
        no TLS layer, no protocol wrapper) and TLS was never started on it.
        """
        transport = self._t
        if not self.factory.direct_send:
            return
        if not isinstance(transport, tcp.Connection) or ISSLTransport.providedBy(transport):
            return
        handle = transport.getHandle()
        if not callable(getattr(handle, "send", None)):
            return
        self._socket = handle
        transport.registerProducer(self, False)
        # registerProducer() just called resumeProducing() (or, on a lost
        # connection, stopProducing()), but the import reply is still in
        # Twisted's buffer: replies queue behind it until Twisted reports the
        # buffer drained.
        self._backlog = True

    def _close(self) -> None:
        """
        Close after what was written (a registered pull producer would keep
        the connection open, so it is unregistered first).
        """
        if self._socket is not None:
            self._socket = None
            self._t.unregisterProducer()
        self._t.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        try:
            if self._phase == "urb":
                parser = self._parser
                assert parser is not None
                for message in parser.feed(data):
                    if self._phase != "urb":
                        return
                    if type(message) is Urb:
                        self._submit(message)
                    else:
                        assert isinstance(message, Unlink)
                        self._unlink(message)
            elif self._phase == "op":
                self._buffer += data
                self._operation()
            elif self._phase == "importing":
                self._buffer += data
                if len(self._buffer) > 1024 * 1024:
                    raise ProtocolError("too much data before the import reply")
        except ProtocolError as e:
            self._log.info(
                "USB/IP client {address}: {error}; closing", address=self.address, error=str(e)
            )
            self._phase = "closed"
            # Nothing more goes to this socket, not even a late completion.
            self._socket = None
            self._t.abortConnection()

    # -- operation phase ---------------------------------------------------

    def _operation(self) -> None:
        parsed = parse_op_request(self._buffer)
        if parsed is None:
            if len(self._buffer) > 64:
                raise ProtocolError("oversized operation request")
            return
        request, used = parsed
        del self._buffer[:used]
        self._cancel_timeout()
        identity = self.factory.identify(self.transport)
        if identity is None:
            raise ProtocolError("client has no usable identity")
        self.identity = identity
        registry = self.factory.registry
        if request.code == OP_REQ_DEVLIST:
            self._phase = "closed"
            self._t.write(encode_devlist_reply(registry.visible_to(identity)))
            self._close()
            return
        busid = request.busid or ""
        status, export = registry.check_import(identity, busid)
        if export is None:
            self._log.info(
                "USB/IP import of {busid} by {identity} refused: {status}",
                busid=busid,
                identity=identity,
                status=status.name,
            )
            self._phase = "closed"
            self._t.write(encode_import_reply(status))
            self._close()
            return
        self._phase = "importing"
        Deferred.fromCoroutine(self._import(export)).addErrback(
            lambda f: self._log.failure("USB/IP import failed", f)
        )

    async def _import(self, export: Export) -> None:
        status = await self.factory.registry.acquire(export, self)
        if self._phase != "importing":
            # The client left while the device was being opened.
            self.factory.registry.release(export, self)
            return
        if status is not OpStatus.OK:
            self.factory.registry.release(export, self)
            self._phase = "closed"
            self._t.write(encode_import_reply(status))
            self._close()
            return
        self._export = export
        self._devid = export.info.devid
        self._busid = export.info.busid
        self._device = device = export.device
        self._parser = UrbParser(
            lambda address: device.endpoint_type(address) is TransferType.ISOCHRONOUS
        )
        self._phase = "urb"
        self._t.write(encode_import_reply(OpStatus.OK, export.info))
        self._write_through()
        leftover = bytes(self._buffer)
        self._buffer.clear()
        if leftover:
            self.dataReceived(leftover)

    # -- URB phase ---------------------------------------------------------

    def _submit(self, urb: Urb) -> None:
        if urb.devid != self._devid:
            raise ProtocolError(f"URB for devid 0x{urb.devid:08x}, not the imported device")
        inflight = self._inflight
        if urb.seqnum in inflight:
            raise ProtocolError(f"sequence number {urb.seqnum} reused while in flight")
        inflight[urb.seqnum] = urb
        key = 0 if urb.endpoint == 0 else urb.address
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane()
        if lane.busy or lane.looping or lane.queue:
            lane.queue.append(urb)
            if not lane.busy:
                self._run(lane)
        else:
            self._start(lane, urb)

    def _start(self, lane: _Lane, urb: Urb) -> None:
        device = self._device
        assert device is not None
        try:
            completion = device.submit(urb) if urb.endpoint else self._control(urb)
        except Exception:
            self._log.failure("USB transfer failed on {busid}", busid=self._busid)
            completion = UrbResult(_EIO)
        if type(completion) is UrbResult:
            self._finish(urb, completion)
            return
        assert isinstance(completion, Deferred)
        lane.busy = True
        lane.current = urb.seqnum
        completion.addCallbacks(
            self._completed,
            self._crashed,
            callbackArgs=(lane, urb),
            errbackArgs=(lane, urb),
        )

    def _run(self, lane: _Lane) -> None:
        if lane.looping:
            return
        lane.looping = True
        try:
            while not lane.busy and lane.queue:
                urb = lane.queue.popleft()
                if urb.seqnum in self._inflight:  # else unlinked while queued
                    self._start(lane, urb)
        finally:
            lane.looping = False

    def _completed(self, result: UrbResult, lane: _Lane, urb: Urb) -> None:
        lane.busy = False
        lane.current = None
        self._finish(urb, result)
        if self._phase == "urb" and lane.queue:
            self._run(lane)

    def _crashed(self, failure: Failure, lane: _Lane, urb: Urb) -> None:
        self._log.failure("USB transfer crashed", failure)
        self._completed(UrbResult.error(Errno.EIO), lane, urb)

    def _control(self, urb: Urb) -> Completion:
        """
        A control transfer: the four requests that change host-side state
        are performed by the device's backend, the rest go to the device.
        """
        device = self._device
        assert device is not None
        setup = Setup.parse(urb.setup)
        special = classify_special(setup)
        if special is None:
            return device.submit(urb)
        if special is SpecialRequest.SET_CONFIGURATION:
            return device.set_configuration(setup.value & 0xFF)
        if special is SpecialRequest.SET_INTERFACE:
            return device.set_interface(setup.index & 0xFF, setup.value & 0xFF)
        if special is SpecialRequest.CLEAR_HALT:
            return device.clear_halt(setup.index & 0xFF)
        return device.reset()

    def _finish(self, urb: Urb, result: UrbResult) -> None:
        if self._inflight.pop(urb.seqnum, None) is None:
            return  # unlinked: RET_UNLINK already said so
        if result.iso_packets is not None or result.status == _ENODEV:
            self._reply(urb, result)
            if result.status == _ENODEV and self._export is not None:
                self.factory.registry.drop(self._export.info.busid, "device reports ENODEV")
            return
        # The common case, kept flat: it runs once per transfer.  The reply
        # goes out before the metrics are counted: the client is waiting for
        # it, the counters are not.
        status = result.status
        is_in = urb.is_in
        if is_in:
            data = result.data
            size = len(data)
            if size > urb.length:
                data = data[: urb.length]
                size = urb.length
                status = status or _EOVERFLOW
            elif size < urb.length and urb.transfer_flags & URB_SHORT_NOT_OK:
                status = status or _EREMOTEIO
            reply = _RET_HEADER(3, urb.seqnum, 0, 0, 0, status, size, result.start_frame, 0, 0)
            if size:
                reply += data
        else:
            size = result.actual_length
            reply = _RET_HEADER(3, urb.seqnum, 0, 0, 0, status, size, result.start_frame, 0, 0)
        self._write(reply)
        if is_in:
            self._observe(status, size, 0)
        else:
            self._observe(status, 0, size)

    def _reply(self, urb: Urb, result: UrbResult) -> None:
        if urb.is_in:
            data = result.data
            size = len(data)
            if size > urb.length and result.iso_packets is None:
                result.data = data[: urb.length]
                size = urb.length
                result.status = result.status or _EOVERFLOW
            elif size < urb.length and urb.transfer_flags & URB_SHORT_NOT_OK:
                result.status = result.status or _EREMOTEIO
            self._observe(result.status, size, 0)
        else:
            self._observe(result.status, 0, result.actual_length)
        self._write(encode_ret_submit(urb.seqnum, urb, result))

    def _unlink(self, message: Unlink) -> None:
        urb = self._inflight.pop(message.victim, None)
        if urb is None:
            # Already completed (its RET_SUBMIT went out) or never existed.
            self._write(encode_ret_unlink(message.seqnum, 0))
            return
        self._write(encode_ret_unlink(message.seqnum, Errno.ECONNRESET))
        self.factory.observer.urb_completed(Errno.ECONNRESET, 0, 0)
        export = self._export
        if export is None:
            return
        key = 0 if urb.endpoint == 0 else urb.address
        lane = self._lanes.get(key)
        if lane is not None and lane.current == urb.seqnum:
            export.device.cancel(urb.seqnum)


class UsbipServerFactory(Factory[UsbipProtocol]):
    """
    Builds L{UsbipProtocol}s sharing one registry.

    @param identify: the client identity of a transport (the peer address on
        the plain listener, the certificate fingerprint on the TLS one).
    """

    noisy = False

    def __init__(
        self,
        registry: DeviceRegistry,
        clock: IReactorTime,
        identify: Identify = plain_identity,
        keepalive: KeepAlive | None = None,
        observer: UrbObserver | None = None,
        op_timeout: float = 30.0,
        direct_send: bool = True,
    ):
        self.registry = registry
        self.clock = clock
        self.identify = identify
        self.keepalive = keepalive or KeepAlive()
        self.observer = observer or UrbObserver()
        self.op_timeout = op_timeout
        self.direct_send = direct_send
        self.connections: set[UsbipProtocol] = set()

    def buildProtocol(self, addr: IAddress | None) -> UsbipProtocol:
        protocol = UsbipProtocol()
        protocol.factory = self
        return protocol

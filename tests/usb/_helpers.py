"""Shared helpers for the USB tests: wire messages and an in-memory server."""

from __future__ import annotations

import errno
import struct
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import tcp
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface import directlyProvides

from lattice.usb import (
    ApprovalBook,
    DeviceRegistry,
    EmulatedBackend,
    ExportPolicy,
    UsbipProtocol,
    UsbipServerFactory,
)

DEVID = 0x00010002  # bus 1, device 2: the emulated echo device (1-1)
KBD_DEVID = 0x00010003  # the emulated keyboard (1-2)

GET_DEVICE_DESCRIPTOR = bytes.fromhex("8006000100001200")


def op_devlist() -> bytes:
    """OP_REQ_DEVLIST."""
    return bytes.fromhex("0111800500000000")


def op_import(busid: str) -> bytes:
    """OP_REQ_IMPORT for C{busid}."""
    return bytes.fromhex("0111800300000000") + busid.encode().ljust(32, b"\0")


def cmd_submit(
    seqnum: int,
    direction: int,
    ep: int,
    length: int,
    setup: bytes = bytes(8),
    data: bytes = b"",
    devid: int = DEVID,
    flags: int = 0,
) -> bytes:
    """A CMD_SUBMIT, field by field."""
    return (
        struct.pack(">IIIII", 1, seqnum, devid, direction, ep)
        + struct.pack(">IIiii", flags, length, 0, 0, 0)
        + setup
        + data
    )


def cmd_unlink(seqnum: int, victim: int, devid: int = DEVID) -> bytes:
    """A CMD_UNLINK."""
    return struct.pack(">IIIII", 2, seqnum, devid, 0, 0) + struct.pack(">I", victim) + bytes(24)


def setup_packet(request_type: int, request: int, value: int, index: int, length: int) -> bytes:
    """An 8-byte little-endian setup packet."""
    return struct.pack("<BBHHH", request_type, request, value, index, length)


@dataclass
class Reply:
    """One RET_SUBMIT or RET_UNLINK as the client sees it."""

    command: int
    seqnum: int
    status: int
    actual: int
    data: bytes


def parse_replies(raw: bytes, directions: dict[int, int]) -> list[Reply]:
    """Split a reply stream; C{directions} says which seqnums were IN."""
    replies = []
    offset = 0
    while offset + 48 <= len(raw):
        command, seqnum = struct.unpack(">II", raw[offset : offset + 8])
        status, actual = struct.unpack(">iI", raw[offset + 20 : offset + 28])
        offset += 48
        data = b""
        if command == 3 and directions.get(seqnum) == 1:
            data = raw[offset : offset + actual]
            offset += actual
        replies.append(Reply(command, seqnum, status, actual if command == 3 else 0, data))
    assert offset == len(raw), "trailing bytes in reply stream"
    return replies


@dataclass
class ScriptedSocket:
    """
    The socket under a real C{tcp.Server}: it records what was sent.  Each
    C{send} takes at most the next scripted allowance: a number of bytes
    (0 raises EAGAIN), or an C{OSError} to raise; with no script left it
    takes everything.
    """

    sent: bytearray = field(default_factory=bytearray)
    script: list[int | OSError] = field(default_factory=list)
    sends: int = 0

    def send(self, data: bytes | memoryview) -> int:
        """Take what the script allows."""
        self.sends += 1
        allowance = self.script.pop(0) if self.script else len(data)
        if isinstance(allowance, OSError):
            raise allowance
        if allowance == 0:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        taken = bytes(data[:allowance])
        self.sent += taken
        return len(taken)

    def recv(self, size: int) -> bytes:
        """Nothing to read: the tests call C{dataReceived} themselves."""
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    def setblocking(self, flag: bool) -> None:
        """Twisted makes its sockets non-blocking."""

    def fileno(self) -> int:
        """A descriptor number for the reactor's bookkeeping."""
        return 1000

    def setsockopt(self, level: int, option: int, value: int) -> None:
        """Socket options are accepted and ignored."""

    def shutdown(self, how: int) -> None:
        """Half-closes are ignored."""

    def close(self) -> None:
        """Closing needs nothing."""


def scripted_tcp_server(
    protocol: Any,
) -> tuple[tcp.Server, ScriptedSocket, MemoryReactorClock]:
    """
    A real Twisted C{tcp.Server} for C{protocol} over a L{ScriptedSocket} (not connected
    yet: the caller calls C{makeConnection}), with its socket and reactor.
    """
    sock = ScriptedSocket()
    reactor = MemoryReactorClock()
    transport = tcp.Server(
        sock,  # type: ignore[arg-type]
        protocol,
        ("127.0.0.1", 40000),
        None,  # type: ignore[arg-type]
        1,
        reactor,
    )
    return transport, sock, reactor


class Harness:
    """A server factory over emulated devices, with StringTransport clients."""

    def __init__(
        self,
        approved: tuple[str, ...] = ("127.0.0.1",),
        require_approval: bool = True,
        policy: ExportPolicy | None = None,
    ):
        self.clock = Clock()
        self.backend = EmulatedBackend()
        self.echo, self.keyboard = self.backend.devices
        self.approvals = ApprovalBook(require_approval, frozenset(approved))
        self.registry = DeviceRegistry(
            self.backend, policy or ExportPolicy(auto_share=True), self.approvals, self.clock
        )
        self.registry.rescan()
        self.factory = UsbipServerFactory(self.registry, self.clock)

    def connect(self, host: str = "127.0.0.1") -> tuple[UsbipProtocol, StringTransport]:
        """A new client connection from C{host}."""
        protocol = self.factory.buildProtocol(IPv4Address("TCP", host, 40000))
        assert isinstance(protocol, UsbipProtocol)
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 40000))
        protocol.makeConnection(transport)
        return protocol, transport

    def imported(
        self, busid: str = "1-1", host: str = "127.0.0.1"
    ) -> tuple[UsbipProtocol, StringTransport]:
        """A connection that imported C{busid}; the transport is cleared after the reply."""
        protocol, transport = self.connect(host)
        protocol.dataReceived(op_import(busid))
        reply = transport.value()
        assert reply[:8] == bytes.fromhex("0111000300000000"), reply[:8].hex()
        transport.clear()
        return protocol, transport

    def tcp_imported(
        self, busid: str = "1-1", tls: bool = False
    ) -> tuple[UsbipProtocol, tcp.Server, ScriptedSocket, MemoryReactorClock]:
        """
        A connection on a real Twisted C{tcp.Server} over a L{ScriptedSocket}
        that imported C{busid}; the import reply is still in Twisted's buffer.
        With C{tls}, the transport is marked as Twisted's C{startTLS} marks it.
        """
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert isinstance(protocol, UsbipProtocol)
        transport, sock, reactor = scripted_tcp_server(protocol)
        if tls:
            directlyProvides(transport, ISSLTransport)
        protocol.makeConnection(transport)
        protocol.dataReceived(op_import(busid))
        assert sock.sent == b"", "the import reply was written through"
        return protocol, transport, sock, reactor

    def close(self, protocol: UsbipProtocol, transport: StringTransport) -> None:
        """The client's connection ends."""
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        transport.loseConnection()
        protocol.connectionLost(Failure(ConnectionDone()))

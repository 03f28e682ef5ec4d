"""
Raw sockets against the USB/IP listener: what the kernel's vhci client does
that the other clients here do not (pipelining, CMD_UNLINK), and garbage.
"""

from __future__ import annotations

import socket
import struct

from twisted.internet.threads import deferToThread

from tests.usb._helpers import (
    DEVID,
    GET_DEVICE_DESCRIPTOR,
    KBD_DEVID,
    Reply,
    cmd_submit,
    cmd_unlink,
    op_import,
)

from ._usbip import UsbServiceTestCase


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def read_replies(sock: socket.socket, count: int, directions: dict[int, int]) -> list[Reply]:
    """Read C{count} RET_SUBMIT/RET_UNLINK messages."""
    replies = []
    for _ in range(count):
        header = _recv_exactly(sock, 48)
        command, seqnum = struct.unpack(">II", header[:8])
        status, actual = struct.unpack(">iI", header[20:28])
        data = b""
        if command == 3 and directions.get(seqnum) == 1 and actual:
            data = _recv_exactly(sock, actual)
        replies.append(Reply(command, seqnum, status, actual if command == 3 else 0, data))
    return replies


def imported(port: int, busid: str) -> socket.socket:
    """A blocking socket that imported C{busid}."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(op_import(busid))
    reply = _recv_exactly(sock, 8 + 312)
    assert reply[:8] == bytes.fromhex("0111000300000000"), reply[:8].hex()
    return sock


class RawSocketTests(UsbServiceTestCase):
    """The URB phase over a real TCP connection."""

    async def test_pipelined(self) -> None:
        """Five submits in one segment (control, bulk OUT/IN twice) are answered in order."""

        def run() -> list[Reply]:
            with imported(self.port, "1-1") as sock:
                sock.sendall(
                    cmd_submit(1, 1, 0, 18, GET_DEVICE_DESCRIPTOR)
                    + cmd_submit(2, 0, 1, 4, data=b"abcd")
                    + cmd_submit(3, 1, 1, 512)
                    + cmd_submit(4, 0, 1, 2, data=b"ef")
                    + cmd_submit(5, 1, 1, 512)
                )
                return read_replies(sock, 5, {1: 1, 3: 1, 5: 1})

        replies = await deferToThread(run)
        self.assertEqual([r.seqnum for r in replies], [1, 2, 3, 4, 5])
        self.assertEqual([r.data for r in replies[2::2]], [b"abcd", b"ef"])

    async def test_unlink_pending_and_completed(self) -> None:
        """A parked URB unlinks with -ECONNRESET and no RET_SUBMIT; a done one with 0."""

        def run() -> list[Reply]:
            with imported(self.port, "1-2") as sock:
                sock.sendall(cmd_submit(1, 1, 1, 8, devid=KBD_DEVID))  # parks: nobody types
                sock.sendall(cmd_submit(2, 1, 0, 18, GET_DEVICE_DESCRIPTOR, devid=KBD_DEVID))
                first = read_replies(sock, 1, {2: 1})
                sock.sendall(cmd_unlink(3, 1, devid=KBD_DEVID))
                sock.sendall(cmd_unlink(4, 2, devid=KBD_DEVID))
                # A control transfer afterwards proves nothing else was queued.
                sock.sendall(cmd_submit(5, 1, 0, 18, GET_DEVICE_DESCRIPTOR, devid=KBD_DEVID))
                return first + read_replies(sock, 3, {5: 1})

        replies = await deferToThread(run)
        self.assertEqual(
            [(r.command, r.seqnum, r.status) for r in replies],
            [(3, 2, 0), (4, 3, -104), (4, 4, 0), (3, 5, 0)],
        )

    async def test_garbage_closes_only_that_connection(self) -> None:
        """An unknown command closes its connection; another client's transfers go on."""

        def run() -> tuple[bytes, list[Reply]]:
            with imported(self.port, "1-2") as bystander, imported(self.port, "1-1") as sock:
                sock.sendall(struct.pack(">IIIII", 9, 1, DEVID, 0, 0) + bytes(28))
                try:
                    closed = sock.recv(1)
                except ConnectionResetError:  # aborted: a reset is a close too
                    closed = b""
                bystander.sendall(cmd_submit(1, 1, 0, 18, GET_DEVICE_DESCRIPTOR, devid=KBD_DEVID))
                return closed, read_replies(bystander, 1, {1: 1})

        closed, [reply] = await deferToThread(run)
        self.assertEqual(closed, b"")
        self.assertEqual(reply.status, 0)
        await self.settle(lambda: self.service.registry.exports["1-1"].holder is None)

    async def test_truncated_then_gone(self) -> None:
        """Half a header then a disconnect releases the device."""

        def run() -> None:
            with imported(self.port, "1-1") as sock:
                sock.sendall(cmd_submit(1, 0, 1, 100, data=b"x" * 10)[:30])

        await deferToThread(run)
        await self.settle(lambda: self.service.registry.exports["1-1"].holder is None)

    async def test_submit_with_import(self) -> None:
        """A CMD_SUBMIT sent in the same segment as the import is answered after its reply."""

        def run() -> tuple[bytes, list[Reply]]:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                sock.sendall(op_import("1-1") + cmd_submit(1, 1, 0, 18, GET_DEVICE_DESCRIPTOR))
                header = _recv_exactly(sock, 8 + 312)[:8]
                return header, read_replies(sock, 1, {1: 1})

        header, [reply] = await deferToThread(run)
        self.assertEqual(header, bytes.fromhex("0111000300000000"))
        self.assertEqual((reply.seqnum, reply.data[:2]), (1, b"\x12\x01"))

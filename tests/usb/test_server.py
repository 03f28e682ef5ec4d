"""Tests for ``lattice.usb._server``: the USB/IP connection state machine."""

from __future__ import annotations

import errno
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import main, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import SynchronousTestCase

from lattice.usb import ExportPolicy, KeyboardDevice, UsbipProtocol, approval_id

from ._helpers import (
    GET_DEVICE_DESCRIPTOR,
    KBD_DEVID,
    Harness,
    Reply,
    ScriptedSocket,
    cmd_submit,
    cmd_unlink,
    op_devlist,
    op_import,
    parse_replies,
    scripted_tcp_server,
    setup_packet,
)


def import_status(reply: bytes) -> int:
    """The status word of an OP_REP_IMPORT."""
    return int(struct.unpack(">I", reply[4:8])[0])


class DevlistTests(SynchronousTestCase):
    """OP_REQ_DEVLIST."""

    def test_approved_client_sees_devices(self) -> None:
        """An approved client gets every exported device, and the connection closes."""
        harness = Harness()
        protocol, transport = harness.connect()
        protocol.dataReceived(op_devlist())
        reply = transport.value()
        self.assertEqual(struct.unpack(">I", reply[8:12]), (2,))
        self.assertEqual(reply[0x10C:0x10F], b"1-1")
        self.assertTrue(transport.disconnecting)

    def test_unapproved_client_sees_nothing(self) -> None:
        """A client nobody approved gets an empty list."""
        protocol, transport = Harness().connect("10.0.0.9")
        protocol.dataReceived(op_devlist())
        self.assertEqual(transport.value(), bytes.fromhex("011100050000000000000000"))

    def test_request_in_pieces(self) -> None:
        """A request split byte by byte is still answered once complete."""
        protocol, transport = Harness().connect()
        for byte in op_devlist():
            protocol.dataReceived(bytes([byte]))
        self.assertEqual(struct.unpack(">I", transport.value()[8:12]), (2,))

    def test_hubs_never_exported(self) -> None:
        """A hub is not listed even with auto_share and no filters."""
        harness = Harness()
        hub = KeyboardDevice(1, 9)
        object.__setattr__(hub.info, "device_class", 9)
        harness.backend.plug(hub)
        harness.registry.rescan()
        self.assertNotIn("1-8", harness.registry.exports)

    def test_device_clients_hide_devices(self) -> None:
        """A device restricted to other clients is not listed."""
        policy = ExportPolicy.from_settings(True, [], ["1209:0002=10.9.9.9"])
        protocol, transport = Harness(policy=policy).connect()
        protocol.dataReceived(op_devlist())
        self.assertEqual(struct.unpack(">I", transport.value()[8:12]), (1,))


class ImportTests(SynchronousTestCase):
    """OP_REQ_IMPORT and the approval model."""

    def attempt(self, harness: Harness, busid: str, host: str = "127.0.0.1") -> int:
        protocol, transport = harness.connect(host)
        protocol.dataReceived(op_import(busid))
        return import_status(transport.value())

    def test_accepted(self) -> None:
        """An approved client imports a free device: status 0 and the device block."""
        harness = Harness()
        protocol, transport = harness.connect()
        protocol.dataReceived(op_import("1-1"))
        reply = transport.value()
        self.assertEqual(import_status(reply), 0)
        self.assertEqual(len(reply), 320)
        self.assertFalse(transport.disconnecting)
        self.assertIs(harness.registry.exports["1-1"].holder, protocol)

    def test_unknown_client_pending(self) -> None:
        """An unknown client gets "request failed" and a pending approval is recorded."""
        harness = Harness()
        self.assertEqual(self.attempt(harness, "1-1", "10.0.0.7"), 1)
        [pending] = harness.registry.pending()
        self.assertEqual((pending.identity, pending.busid), ("10.0.0.7", "1-1"))
        self.assertEqual(pending.id, approval_id("10.0.0.7"))

    def test_unknown_client_learns_nothing(self) -> None:
        """An unknown client asking for a bus id that does not exist also gets "request failed"."""
        self.assertEqual(self.attempt(Harness(), "9-9", "10.0.0.7"), 1)

    def test_empty_approval_list_denies_everyone(self) -> None:
        """require_approval with nobody approved refuses every client (fail closed)."""
        self.assertEqual(self.attempt(Harness(approved=()), "1-1"), 1)

    def test_approval_off_accepts(self) -> None:
        """With require_approval off any client may import."""
        harness = Harness(approved=(), require_approval=False)
        self.assertEqual(self.attempt(harness, "1-1", "192.0.2.1"), 0)

    def test_approve_then_import(self) -> None:
        """After the operator approves the pending id, the same client's import succeeds."""
        harness = Harness()
        self.attempt(harness, "1-1", "10.0.0.7")
        self.successResultOf(
            Deferred.fromCoroutine(harness.registry.approve(approval_id("10.0.0.7")))
        )
        self.assertEqual(self.attempt(harness, "1-1", "10.0.0.7"), 0)

    def test_denied_client(self) -> None:
        """A denied client is refused and not recorded as pending again."""
        harness = Harness()
        self.attempt(harness, "1-1", "10.0.0.7")
        self.successResultOf(Deferred.fromCoroutine(harness.registry.deny(approval_id("10.0.0.7"))))
        self.assertEqual(self.attempt(harness, "1-1", "10.0.0.7"), 1)
        self.assertEqual(harness.registry.pending(), [])

    def test_not_found(self) -> None:
        """An approved client asking for an unknown bus id gets "device not found"."""
        self.assertEqual(self.attempt(Harness(), "3-3"), 4)

    def test_busy(self) -> None:
        """A device held by one client answers "device busy" to the next."""
        harness = Harness()
        harness.imported("1-1")
        self.assertEqual(self.attempt(harness, "1-1"), 2)

    def test_released_on_disconnect(self) -> None:
        """When the holder disconnects the device is importable again at once."""
        harness = Harness()
        protocol, transport = harness.imported("1-1")
        harness.close(protocol, transport)
        self.assertIsNone(harness.registry.exports["1-1"].holder)
        self.assertEqual(self.attempt(harness, "1-1"), 0)

    def test_open_failure(self) -> None:
        """A device that cannot be opened answers "device in error state" and stays free."""
        harness = Harness()
        self.patch(harness.echo, "open", lambda: fail(OSError("LIBUSB_ERROR_ACCESS")))
        self.assertEqual(self.attempt(harness, "1-1"), 3)
        self.assertIsNone(harness.registry.exports["1-1"].holder)
        self.flushLoggedErrors(OSError)

    def test_op_timeout(self) -> None:
        """A client that sends no request is dropped after the operation timeout."""
        harness = Harness()
        _, transport = harness.connect()
        harness.clock.advance(harness.factory.op_timeout)
        self.assertTrue(transport.disconnecting)

    def test_data_before_reply_is_kept(self) -> None:
        """A CMD_SUBMIT in the same segment as the import is served after the reply."""
        harness = Harness()
        protocol, transport = harness.connect()
        protocol.dataReceived(op_import("1-1") + cmd_submit(1, 1, 0, 18, GET_DEVICE_DESCRIPTOR))
        [reply] = parse_replies(transport.value()[320:], {1: 1})
        self.assertEqual(reply.data[:2], b"\x12\x01")


class UrbTests(SynchronousTestCase):
    """The URB phase: submits, special requests, unlinks."""

    def test_control_in(self) -> None:
        """GET_DESCRIPTOR(device) returns the 18-byte descriptor."""
        harness = Harness()
        protocol, transport = harness.imported()
        protocol.dataReceived(cmd_submit(1, 1, 0, 18, GET_DEVICE_DESCRIPTOR))
        [reply] = parse_replies(transport.value(), {1: 1})
        self.assertEqual((reply.command, reply.seqnum, reply.status), (3, 1, 0))
        self.assertEqual(reply.data[8:12], bytes.fromhex("09120100"))

    def test_one_write_per_reply(self) -> None:
        """A reply with data is handed to the transport in a single write."""
        harness = Harness()
        protocol, transport = harness.imported()
        writes: list[bytes] = []
        original = transport.write

        def write(data: bytes) -> None:
            writes.append(data)
            original(data)

        transport.write = write  # type: ignore[method-assign]
        protocol.dataReceived(cmd_submit(1, 1, 0, 18, GET_DEVICE_DESCRIPTOR))
        self.assertEqual([len(w) for w in writes], [48 + 18])

    def test_pipelined(self) -> None:
        """Several submits in one segment are all answered, in order."""
        harness = Harness()
        protocol, transport = harness.imported()
        stream = (
            cmd_submit(1, 1, 0, 18, GET_DEVICE_DESCRIPTOR)
            + cmd_submit(2, 0, 1, 3, data=b"abc")
            + cmd_submit(3, 1, 1, 512)
            + cmd_submit(4, 0, 1, 2, data=b"de")
            + cmd_submit(5, 1, 1, 512)
        )
        protocol.dataReceived(stream)
        replies = parse_replies(transport.value(), {1: 1, 3: 1, 5: 1})
        self.assertEqual([r.seqnum for r in replies], [1, 2, 3, 4, 5])
        self.assertEqual([r.data for r in replies[2::2]], [b"abc", b"de"])

    def test_parked_interrupt_does_not_block_control(self) -> None:
        """A parked interrupt IN leaves control transfers flowing; it completes when data comes."""
        harness = Harness()
        protocol, transport = harness.imported("1-2")
        protocol.dataReceived(cmd_submit(1, 1, 1, 8, devid=KBD_DEVID))
        protocol.dataReceived(cmd_submit(2, 1, 0, 18, GET_DEVICE_DESCRIPTOR, devid=KBD_DEVID))
        [reply] = parse_replies(transport.value(), {1: 1, 2: 1})
        self.assertEqual(reply.seqnum, 2)
        transport.clear()
        keyboard = harness.keyboard
        assert isinstance(keyboard, KeyboardDevice)
        keyboard.type_text("a")
        [reply] = parse_replies(transport.value(), {1: 1})
        self.assertEqual((reply.seqnum, reply.data), (1, bytes([0, 0, 4, 0, 0, 0, 0, 0])))

    def test_same_endpoint_serialised(self) -> None:
        """Two IN transfers on one endpoint complete in submission order."""
        harness = Harness()
        protocol, transport = harness.imported()
        protocol.dataReceived(cmd_submit(1, 1, 1, 512) + cmd_submit(2, 1, 1, 512))
        protocol.dataReceived(cmd_submit(3, 0, 1, 1, data=b"x"))
        protocol.dataReceived(cmd_submit(4, 0, 1, 1, data=b"y"))
        replies = parse_replies(transport.value(), {1: 1, 2: 1})
        self.assertEqual(
            [(r.seqnum, r.data) for r in replies if r.seqnum in (1, 2)], [(1, b"x"), (2, b"y")]
        )

    def test_unlink_pending(self) -> None:
        """Unlinking a parked URB answers -ECONNRESET and its RET_SUBMIT never comes."""
        harness = Harness()
        protocol, transport = harness.imported()
        protocol.dataReceived(cmd_submit(1, 1, 2, 64))
        protocol.dataReceived(cmd_unlink(2, 1))
        [reply] = parse_replies(transport.value(), {})
        self.assertEqual((reply.command, reply.seqnum, reply.status), (4, 2, -104))
        transport.clear()
        protocol.dataReceived(cmd_submit(3, 0, 2, 2, data=b"hi"))
        protocol.dataReceived(cmd_submit(4, 1, 2, 64))
        replies = parse_replies(transport.value(), {4: 1})
        self.assertEqual([(r.seqnum, r.data) for r in replies], [(3, b""), (4, b"hi")])

    def test_unlink_queued(self) -> None:
        """Unlinking a URB queued behind another on its endpoint also suppresses it."""
        harness = Harness()
        protocol, transport = harness.imported()
        protocol.dataReceived(cmd_submit(1, 1, 2, 64) + cmd_submit(2, 1, 2, 64))
        protocol.dataReceived(cmd_unlink(3, 2))
        protocol.dataReceived(cmd_submit(4, 0, 2, 1, data=b"a"))
        protocol.dataReceived(cmd_submit(5, 0, 2, 1, data=b"b"))
        replies = parse_replies(transport.value(), {1: 1, 2: 1})
        self.assertNotIn(2, [r.seqnum for r in replies if r.command == 3])
        self.assertIn((1, b"a"), [(r.seqnum, r.data) for r in replies])

    def test_unlink_completed(self) -> None:
        """Unlinking a URB that already completed answers status 0."""
        harness = Harness()
        protocol, transport = harness.imported()
        protocol.dataReceived(cmd_submit(1, 1, 0, 18, GET_DEVICE_DESCRIPTOR))
        protocol.dataReceived(cmd_unlink(2, 1))
        replies = parse_replies(transport.value(), {1: 1})
        self.assertEqual([(r.command, r.seqnum, r.status) for r in replies], [(3, 1, 0), (4, 2, 0)])

    def test_stall_and_clear_halt(self) -> None:
        """A halted endpoint STALLs (-EPIPE) until CLEAR_FEATURE(ENDPOINT_HALT) is performed."""
        harness = Harness()
        protocol, transport = harness.imported()
        protocol.dataReceived(cmd_submit(1, 0, 0, 0, setup_packet(0x40, 0x04, 0, 0x81, 0)))
        protocol.dataReceived(cmd_submit(2, 1, 1, 64))
        protocol.dataReceived(cmd_submit(3, 0, 0, 0, setup_packet(0x02, 0x01, 0, 0x81, 0)))
        protocol.dataReceived(cmd_submit(4, 0, 1, 1, data=b"z"))
        protocol.dataReceived(cmd_submit(5, 1, 1, 64))
        replies = parse_replies(transport.value(), {2: 1, 5: 1})
        self.assertEqual([r.status for r in replies], [0, -32, 0, 0, 0])
        self.assertEqual(replies[-1].data, b"z")

    def test_set_configuration_performed(self) -> None:
        """SET_CONFIGURATION(0) unconfigures: data endpoints then answer -ENOENT."""
        harness = Harness()
        protocol, transport = harness.imported()
        protocol.dataReceived(cmd_submit(1, 0, 0, 0, setup_packet(0x00, 0x09, 0, 0, 0)))
        protocol.dataReceived(cmd_submit(2, 1, 1, 64))
        protocol.dataReceived(cmd_submit(3, 0, 0, 0, setup_packet(0x00, 0x09, 1, 0, 0)))
        protocol.dataReceived(cmd_submit(4, 0, 1, 1, data=b"q"))
        replies = parse_replies(transport.value(), {2: 1})
        self.assertEqual([r.status for r in replies], [0, -2, 0, 0])
        self.assertEqual(harness.echo.configuration, 1)

    def test_unknown_request_stalls(self) -> None:
        """A request the device does not know (DEVICE_QUALIFIER on full speed) STALLs."""
        harness = Harness()
        protocol, transport = harness.imported("1-2")
        setup = setup_packet(0x80, 0x06, 0x0600, 0, 10)
        protocol.dataReceived(cmd_submit(1, 1, 0, 10, setup, devid=KBD_DEVID))
        [reply] = parse_replies(transport.value(), {1: 1})
        self.assertEqual(reply.status, -32)

    def test_short_not_ok(self) -> None:
        """A short IN with URB_SHORT_NOT_OK completes with -EREMOTEIO."""
        harness = Harness()
        protocol, transport = harness.imported()
        protocol.dataReceived(cmd_submit(1, 0, 1, 2, data=b"ab"))
        protocol.dataReceived(cmd_submit(2, 1, 1, 64, flags=1))
        replies = parse_replies(transport.value(), {2: 1})
        self.assertEqual((replies[1].status, replies[1].data), (-121, b"ab"))

    def test_wrong_devid_closes(self) -> None:
        """A URB for another devid is a protocol error: the connection is aborted."""
        harness = Harness()
        protocol, transport = harness.imported()
        protocol.dataReceived(cmd_submit(1, 1, 0, 18, GET_DEVICE_DESCRIPTOR, devid=0x20002))
        self.assertTrue(transport.disconnecting)

    def test_device_removed(self) -> None:
        """Unplugging fails in-flight URBs with -ENODEV, closes, and drops the device."""
        harness = Harness()
        protocol, transport = harness.imported()
        protocol.dataReceived(cmd_submit(1, 1, 1, 64))
        harness.backend.unplug("1-1")
        harness.registry.rescan()
        [reply] = parse_replies(transport.value(), {1: 1})
        self.assertEqual((reply.seqnum, reply.status), (1, -19))
        self.assertTrue(transport.disconnecting)
        self.assertNotIn("1-1", harness.registry.exports)

    def test_disconnect_cancels_parked(self) -> None:
        """A disconnect ends parked transfers and frees the device for the next client."""
        harness = Harness()
        protocol, transport = harness.imported()
        protocol.dataReceived(cmd_submit(1, 1, 1, 64))
        harness.close(protocol, transport)
        protocol2, transport2 = harness.imported()
        protocol2.dataReceived(cmd_submit(1, 0, 1, 1, data=b"n") + cmd_submit(2, 1, 1, 64))
        replies = parse_replies(transport2.value(), {2: 1})
        self.assertEqual(replies[1].data, b"n")


class MalformedInputTests(SynchronousTestCase):
    """Garbage never harms the server or other clients."""

    @settings(derandomize=True, max_examples=200)
    @given(st.binary(min_size=1, max_size=400), st.booleans())
    def test_garbage_after_import(self, garbage: bytes, truncate: bool) -> None:
        """Arbitrary bytes in the URB phase either parse or abort this connection only."""
        harness = Harness()
        bystander, bystander_transport = harness.imported("1-2")
        protocol, transport = harness.imported("1-1")
        try:
            protocol.dataReceived(garbage)
        finally:
            harness.close(protocol, transport)
        self.assertIsNone(harness.registry.exports["1-1"].holder)
        bystander.dataReceived(cmd_submit(1, 1, 0, 18, GET_DEVICE_DESCRIPTOR, devid=KBD_DEVID))
        [reply] = parse_replies(bystander_transport.value(), {1: 1})
        self.assertEqual(reply.status, 0)
        self.assertFalse(bystander_transport.disconnecting)

    @settings(derandomize=True, max_examples=200)
    @given(st.binary(min_size=1, max_size=100))
    def test_garbage_request(self, garbage: bytes) -> None:
        """Arbitrary bytes as an operation request never raise out of the protocol."""
        harness = Harness()
        protocol, transport = harness.connect()
        protocol.dataReceived(garbage)
        harness.close(protocol, transport)
        self.assertEqual([e.holder for e in harness.registry.exports.values()], [None, None])


IMPORT_REPLY_SIZE = 8 + 312

#: An interrupt OUT of 64 bytes (echo device endpoint 0x02) and its IN (0x82).
PAYLOAD = bytes(range(64))


def echo_pair(seqnum: int) -> bytes:
    """Interrupt OUT C{seqnum} then interrupt IN C{seqnum + 1} of L{PAYLOAD}."""
    return cmd_submit(seqnum, 0, 2, 64, data=PAYLOAD) + cmd_submit(seqnum + 1, 1, 2, 64)


def urb_replies(sent: bytes | bytearray, directions: dict[int, int]) -> list[Reply]:
    """The replies after the import reply in what a scripted socket took."""
    assert sent[:8] == bytes.fromhex("0111000300000000"), bytes(sent[:8]).hex()
    return parse_replies(bytes(sent[IMPORT_REPLY_SIZE:]), directions)


class WriteThroughTests(SynchronousTestCase):
    """
    On a plain TCP transport, replies go straight to the socket while
    Twisted's write buffer is empty, and queue behind it in order otherwise.
    """

    def flushed(self) -> tuple[UsbipProtocol, tcp.Server, ScriptedSocket]:
        """An imported echo device whose import reply Twisted has sent."""
        protocol, transport, sock, _ = Harness().tcp_imported()
        transport.doWrite()
        self.assertEqual(len(sock.sent), IMPORT_REPLY_SIZE)
        return protocol, transport, sock

    def test_replies_queue_behind_import_reply(self) -> None:
        """A URB answered before Twisted sent the import reply is sent after it, by Twisted."""
        _, transport, sock, reactor = Harness().tcp_imported()
        transport.protocol.dataReceived(echo_pair(1))
        self.assertEqual(sock.sent, b"")
        self.assertIn(transport, reactor.getWriters())
        transport.doWrite()
        replies = urb_replies(sock.sent, {2: 1})
        self.assertEqual([(r.seqnum, r.data) for r in replies], [(1, b""), (2, PAYLOAD)])

    def test_reply_written_through(self) -> None:
        """With Twisted's buffer empty, each reply is one send on the socket, at once."""
        protocol, transport, sock = self.flushed()
        sends = sock.sends
        protocol.dataReceived(echo_pair(1))
        self.assertEqual(sock.sends, sends + 2)
        self.assertEqual(transport.dataBuffer, b"")
        self.assertFalse(transport._tempDataBuffer)
        replies = urb_replies(sock.sent, {2: 1})
        self.assertEqual([(r.seqnum, r.data) for r in replies], [(1, b""), (2, PAYLOAD)])

    def test_partial_send_keeps_order(self) -> None:
        """
        After a partial send the rest of that reply and every later reply go
        through Twisted's buffer, in order, until it drained; then replies
        are written through again.
        """
        protocol, transport, sock = self.flushed()
        sock.script = [10]
        protocol.dataReceived(echo_pair(1))
        # The OUT reply's first 10 bytes went out; the IN reply did not try
        # the socket although it would have taken everything.
        self.assertEqual(len(sock.sent), IMPORT_REPLY_SIZE + 10)
        transport.doWrite()
        protocol.dataReceived(echo_pair(3))
        replies = urb_replies(sock.sent, {2: 1, 4: 1})
        self.assertEqual([r.seqnum for r in replies], [1, 2, 3, 4])
        self.assertEqual([r.data for r in replies[1::2]], [PAYLOAD, PAYLOAD])
        self.assertEqual(transport.dataBuffer, b"")

    def test_eagain_queues_whole_reply(self) -> None:
        """A send that would block leaves the whole reply to Twisted, which sends it later."""
        protocol, transport, sock = self.flushed()
        sock.script = [0]
        protocol.dataReceived(cmd_submit(1, 0, 2, 64, data=PAYLOAD))
        self.assertEqual(len(sock.sent), IMPORT_REPLY_SIZE)
        transport.doWrite()
        [reply] = urb_replies(sock.sent, {})
        self.assertEqual((reply.seqnum, reply.status, reply.actual), (1, 0, 64))

    def test_send_error_left_to_twisted(self) -> None:
        """A send error queues the reply; Twisted's own write then reports the lost connection."""
        protocol, transport, sock = self.flushed()
        reset = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        sock.script = [reset, reset]
        protocol.dataReceived(cmd_submit(1, 0, 2, 64, data=PAYLOAD))
        self.assertEqual(len(sock.sent), IMPORT_REPLY_SIZE)
        self.assertIs(transport.doWrite(), main.CONNECTION_LOST)

    @settings(derandomize=True, max_examples=60)
    @given(
        st.lists(
            st.tuples(
                st.lists(st.integers(min_value=0, max_value=200), max_size=3),
                st.booleans(),
            ),
            min_size=1,
            max_size=12,
        )
    )
    def test_stream_intact(self, steps: list[tuple[list[int], bool]]) -> None:
        """
        Whatever the socket takes and whenever Twisted flushes, the client
        gets every reply whole and in order.
        """
        protocol, transport, sock = self.flushed()
        directions: dict[int, int] = {}
        for index, (allowances, flush) in enumerate(steps):
            sock.script = list(allowances)
            seqnum = 2 * index + 1
            directions[seqnum + 1] = 1
            protocol.dataReceived(echo_pair(seqnum))
            if flush:
                transport.doWrite()
        sock.script = []
        while transport.dataBuffer or transport._tempDataBuffer:
            transport.doWrite()
        replies = urb_replies(sock.sent, directions)
        self.assertEqual([r.seqnum for r in replies], list(range(1, 2 * len(steps) + 1)))
        self.assertEqual({r.data for r in replies if r.seqnum % 2 == 0}, {PAYLOAD})

    def test_unlink_written_through(self) -> None:
        """RET_UNLINK goes straight out too, and the unlinked URB is never answered."""
        harness = Harness()
        protocol, transport, sock, _ = harness.tcp_imported("1-2")
        transport.doWrite()
        protocol.dataReceived(cmd_submit(1, 1, 1, 8, devid=KBD_DEVID))
        protocol.dataReceived(cmd_unlink(2, 1, devid=KBD_DEVID))
        keyboard = harness.keyboard
        assert isinstance(keyboard, KeyboardDevice)
        keyboard.type_text("a")
        [reply] = urb_replies(sock.sent, {1: 1})
        self.assertEqual((reply.command, reply.seqnum, reply.status), (4, 2, -104))

    def test_tls_transport_not_bypassed(self) -> None:
        """On a connection that started TLS, replies only ever go through the transport."""
        protocol, transport, sock, _ = Harness().tcp_imported(tls=True)
        transport.doWrite()
        sends = sock.sends
        protocol.dataReceived(echo_pair(1))
        self.assertEqual(sock.sends, sends)
        self.assertTrue(transport._tempDataBuffer)

    def test_wrapped_transport_not_bypassed(self) -> None:
        """Under a protocol wrapper (as under the TLS layer) replies go through the wrapper."""
        harness = Harness()
        wrapper_factory = WrappingFactory(harness.factory)
        wrapper = wrapper_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert wrapper is not None
        transport, sock, _ = scripted_tcp_server(wrapper)
        wrapper.makeConnection(transport)
        wrapper.dataReceived(op_import("1-1"))
        transport.doWrite()
        sends = sock.sends
        wrapper.dataReceived(echo_pair(1))
        self.assertEqual(sock.sends, sends)
        transport.doWrite()
        self.assertEqual([r.seqnum for r in urb_replies(sock.sent, {2: 1})], [1, 2])

    def test_direct_send_off(self) -> None:
        """A factory built with C{direct_send=False} (the TLS listener's) never writes through."""
        harness = Harness()
        harness.factory.direct_send = False
        protocol, transport, sock, _ = harness.tcp_imported()
        transport.doWrite()
        sends = sock.sends
        protocol.dataReceived(echo_pair(1))
        self.assertEqual(sock.sends, sends)

    def test_close_waits_for_buffer(self) -> None:
        """Closing unregisters the write-through producer: Twisted closes after its buffer."""
        harness = Harness()
        protocol, transport, sock, _ = harness.tcp_imported()
        transport.doWrite()
        sock.script = [5]
        protocol.dataReceived(echo_pair(1))
        protocol.disconnect()
        self.assertIsNone(transport.producer)
        # Twisted's answer: all sent, now close.
        self.assertIs(transport.doWrite(), main.CONNECTION_DONE)
        self.assertEqual([r.seqnum for r in urb_replies(sock.sent, {2: 1})], [1, 2])

    def test_nothing_sent_after_protocol_error(self) -> None:
        """After garbage closed the connection, a late completion does not reach the socket."""
        harness = Harness()
        protocol, transport, sock, _ = harness.tcp_imported("1-2")
        transport.doWrite()
        protocol.dataReceived(cmd_submit(1, 1, 1, 8, devid=KBD_DEVID))
        protocol.dataReceived(b"\xff" * 48)
        keyboard = harness.keyboard
        assert isinstance(keyboard, KeyboardDevice)
        keyboard.type_text("a")
        self.assertEqual(len(sock.sent), IMPORT_REPLY_SIZE)

"""Tests for ``lattice.usb._protocol``: USB/IP byte layouts and incremental parsing."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lattice.usb._protocol import (
    DeviceInfo,
    Errno,
    IsoPacket,
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

INFO = DeviceInfo(
    busid="1-1",
    busnum=1,
    devnum=2,
    speed=3,
    vendor_id=0x1209,
    product_id=0x0001,
    bcd_device=0x0100,
    device_class=0,
    device_subclass=0,
    device_protocol=0,
    configuration_value=1,
    num_configurations=1,
    interfaces=((0xFF, 0, 0), (3, 1, 1)),
    path="/sys/devices/x/1-1",
)


def cmd_submit(
    seqnum: int,
    direction: int,
    ep: int,
    length: int,
    setup: bytes = bytes(8),
    data: bytes = b"",
    devid: int = 0x00010002,
    flags: int = 0,
    npackets: int = 0,
) -> bytes:
    """A CMD_SUBMIT assembled field by field from the spec's table."""
    header = (
        (1).to_bytes(4, "big")
        + seqnum.to_bytes(4, "big")
        + devid.to_bytes(4, "big")
        + direction.to_bytes(4, "big")
        + ep.to_bytes(4, "big")
        + flags.to_bytes(4, "big")
        + length.to_bytes(4, "big")
        + (0).to_bytes(4, "big")
        + npackets.to_bytes(4, "big", signed=True)
        + (0).to_bytes(4, "big")
        + setup
    )
    assert len(header) == 48
    return header + data


def cmd_unlink(seqnum: int, victim: int, devid: int = 0x00010002) -> bytes:
    """A CMD_UNLINK assembled from the spec's table."""
    return struct.pack(">IIIII", 2, seqnum, devid, 0, 0) + struct.pack(">I", victim) + bytes(24)


class OpPhaseTests(SynchronousTestCase):
    """Operation-phase requests and replies."""

    def test_devlist_request(self) -> None:
        """An 8-byte OP_REQ_DEVLIST parses, and fewer bytes ask for more."""
        raw = bytes.fromhex("0111800500000000")
        self.assertIsNone(parse_op_request(raw[:7]))
        request, used = parse_op_request(raw) or (None, 0)
        assert request is not None
        self.assertEqual((request.code, used), (0x8005, 8))

    def test_import_request(self) -> None:
        """OP_REQ_IMPORT carries a NUL-padded 32-byte bus id."""
        raw = bytes.fromhex("0111800300000000") + b"1-1.4".ljust(32, b"\0")
        self.assertIsNone(parse_op_request(raw[:39]))
        request, used = parse_op_request(raw) or (None, 0)
        assert request is not None
        self.assertEqual((request.busid, used), ("1-1.4", 40))

    def test_unknown_code(self) -> None:
        """An unknown operation code is a protocol error."""
        self.assertRaises(ProtocolError, parse_op_request, bytes.fromhex("0111800700000000"))

    def test_device_block_layout(self) -> None:
        """usbip_usb_device is 312 bytes with the bus id at 0x100 and the ids after it."""
        block = INFO.pack()
        self.assertEqual(len(block), 312)
        self.assertEqual(block[:18], b"/sys/devices/x/1-1")
        self.assertEqual(block[0x100:0x104], b"1-1\0")
        busnum, devnum, speed, vid, pid, bcd = struct.unpack(">IIIHHH", block[0x120:0x132])
        self.assertEqual((busnum, devnum, speed, vid, pid, bcd), (1, 2, 3, 0x1209, 1, 0x100))
        self.assertEqual(block[0x132:], bytes([0, 0, 0, 1, 1, 2]))

    def test_devlist_reply(self) -> None:
        """OP_REP_DEVLIST: header, count, device block, then one 4-byte entry per interface."""
        reply = encode_devlist_reply([INFO])
        self.assertEqual(reply[:12], bytes.fromhex("01110005 00000000 00000001".replace(" ", "")))
        self.assertEqual(reply[0x10C:0x10F], b"1-1")
        self.assertEqual(reply[12 + 312 :], bytes([0xFF, 0, 0, 0, 3, 1, 1, 0]))

    def test_import_reply_ok(self) -> None:
        """A successful OP_REP_IMPORT is followed by the device block without interfaces."""
        reply = encode_import_reply(OpStatus.OK, INFO)
        self.assertEqual(len(reply), 8 + 312)
        self.assertEqual(reply[:8], bytes.fromhex("0111000300000000"))
        self.assertEqual(reply[0x108:0x10B], b"1-1")

    def test_import_reply_refused(self) -> None:
        """A refusal is the 8-byte header with the status alone."""
        self.assertEqual(encode_import_reply(OpStatus.DEV_BUSY), bytes.fromhex("0111000300000002"))


class UrbParserTests(SynchronousTestCase):
    """The URB-phase parser."""

    def test_out_submit_with_payload(self) -> None:
        """An OUT CMD_SUBMIT is complete only with its payload."""
        raw = cmd_submit(7, 0, 1, 5, data=b"hello")
        parser = UrbParser(lambda a: False)
        self.assertEqual(parser.feed(raw[:50]), [])
        [urb] = parser.feed(raw[50:])
        assert isinstance(urb, Urb)
        self.assertEqual((urb.seqnum, urb.endpoint, urb.address, urb.data), (7, 1, 0x01, b"hello"))
        self.assertEqual(parser.buffered, 0)

    def test_in_submit_has_no_payload(self) -> None:
        """An IN CMD_SUBMIT is just the header, whatever its length says."""
        [urb] = UrbParser(lambda a: False).feed(cmd_submit(1, 1, 2, 512))
        assert isinstance(urb, Urb)
        self.assertEqual((urb.address, urb.length, urb.data), (0x82, 512, b""))

    def test_setup_is_kept_verbatim(self) -> None:
        """The setup packet is passed through as the last 8 header bytes."""
        setup = bytes.fromhex("8006000100001200")
        [urb] = UrbParser(lambda a: False).feed(cmd_submit(1, 1, 0, 18, setup=setup))
        assert isinstance(urb, Urb)
        self.assertEqual(urb.setup, setup)

    def test_unlink(self) -> None:
        """CMD_UNLINK names its victim in the first union word."""
        [message] = UrbParser(lambda a: False).feed(cmd_unlink(9, 4))
        self.assertEqual(message, Unlink(9, 0x00010002, 4))

    def test_number_of_packets_ignored_for_non_iso(self) -> None:
        """A non-ISO endpoint takes no ISO descriptors, even with number_of_packets -1."""
        raw = cmd_submit(1, 0, 1, 2, data=b"ab", npackets=-1) + cmd_unlink(2, 1)
        messages = UrbParser(lambda a: False).feed(raw)
        self.assertEqual(len(messages), 2)

    def test_iso_descriptors(self) -> None:
        """On an ISO endpoint the packet descriptors follow the OUT payload."""
        descriptors = struct.pack(">IIIi", 0, 3, 0, 0) + struct.pack(">IIIi", 3, 3, 0, 0)
        raw = cmd_submit(1, 0, 3, 6, data=b"abcdef", npackets=2) + descriptors
        parser = UrbParser(lambda a: a == 0x03)
        self.assertEqual(parser.feed(raw[:-1]), [])
        [urb] = parser.feed(raw[-1:])
        assert isinstance(urb, Urb)
        self.assertEqual(urb.iso_packets, [IsoPacket(0, 3), IsoPacket(3, 3)])

    def test_unknown_command(self) -> None:
        """A RET_SUBMIT from a client is not a command: protocol error."""
        raw = struct.pack(">IIIII", 3, 1, 0, 0, 0) + bytes(28)
        self.assertRaises(ProtocolError, UrbParser(lambda a: False).feed, raw)

    def test_too_long(self) -> None:
        """A transfer longer than 16 MiB is refused before buffering it."""
        raw = cmd_submit(1, 0, 1, 64 * 1024 * 1024)
        self.assertRaises(ProtocolError, UrbParser(lambda a: False).feed, raw)

    @settings(derandomize=True, max_examples=150)
    @given(
        st.lists(
            st.tuples(
                st.integers(0, 2**32 - 1),
                st.integers(0, 1),
                st.integers(0, 15),
                st.binary(max_size=300),
            ),
            max_size=8,
        ),
        st.lists(st.integers(1, 97), min_size=1, max_size=20),
    )
    def test_any_split(self, urbs: list[tuple[int, int, int, bytes]], cuts: list[int]) -> None:
        """However the stream is cut, the same messages come out in order."""
        stream = b"".join(
            cmd_submit(s, d, e, len(p), data=p if d == 0 else b"") for s, d, e, p in urbs
        )
        parser = UrbParser(lambda a: False)
        out: list[Urb | Unlink] = []
        offset = 0
        for cut in cuts * (len(stream) // max(1, sum(cuts)) + 1):
            out += parser.feed(stream[offset : offset + cut])
            offset += cut
            if offset >= len(stream):
                break
        out += parser.feed(stream[offset:])
        self.assertEqual(
            [(m.seqnum, m.direction, m.endpoint) for m in out if isinstance(m, Urb)],
            [(s, d, e) for s, d, e, _ in urbs],
        )
        self.assertEqual(
            [m.data for m in out if isinstance(m, Urb)],
            [p if d == 0 else b"" for _, d, _, p in urbs],
        )


class ReplyTests(SynchronousTestCase):
    """RET_SUBMIT and RET_UNLINK encoding."""

    def urb(self, direction: int, length: int = 64) -> Urb:
        return Urb(5, 0x10002, direction, 1, 0, length, 0, 0, 0, bytes(8), b"")

    def test_ret_submit_in(self) -> None:
        """An IN reply carries actual_length and the data; devid, direction, ep are 0."""
        reply = encode_ret_submit(5, self.urb(1), UrbResult(data=b"abc"))
        self.assertEqual(
            reply[:48],
            struct.pack(">IIIII", 3, 5, 0, 0, 0) + struct.pack(">iIiii", 0, 3, 0, 0, 0) + bytes(8),
        )
        self.assertEqual(reply[48:], b"abc")

    def test_ret_submit_out(self) -> None:
        """An OUT reply reports how much was taken and carries no data."""
        reply = encode_ret_submit(5, self.urb(0), UrbResult(actual_length=64))
        self.assertEqual(len(reply), 48)
        self.assertEqual(struct.unpack(">iI", reply[20:28]), (0, 64))

    def test_ret_submit_error(self) -> None:
        """The status is a negative errno."""
        reply = encode_ret_submit(5, self.urb(1), UrbResult.error(Errno.EPIPE))
        self.assertEqual(reply[20:24], bytes.fromhex("ffffffe0"))

    def test_ret_submit_iso(self) -> None:
        """An ISO reply has number_of_packets, packed data and the descriptors."""
        packets = [IsoPacket(0, 4, 2, 0), IsoPacket(4, 4, 1, 0)]
        reply = encode_ret_submit(5, self.urb(1), UrbResult(data=b"abc", iso_packets=packets))
        self.assertEqual(struct.unpack(">i", reply[32:36]), (2,))
        self.assertEqual(reply[48:51], b"abc")
        self.assertEqual(reply[51:], struct.pack(">IIIiIIIi", 0, 4, 2, 0, 4, 4, 1, 0))

    def test_ret_unlink(self) -> None:
        """RET_UNLINK: the unlink's own seqnum and the status, 48 bytes."""
        reply = encode_ret_unlink(9, Errno.ECONNRESET)
        self.assertEqual(len(reply), 48)
        self.assertEqual(struct.unpack(">IIi", reply[:8] + reply[20:24]), (4, 9, -104))

"""Tests for ``lattice.usb._emulated``: descriptors and behaviour of the emulated devices."""

from __future__ import annotations

import struct

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from lattice.usb import EchoDevice, KeyboardDevice, TransferType, Urb, UrbResult, _emulated
from lattice.usb._descriptors import endpoint_types, iter_descriptors


def control(device: _emulated.EmulatedDevice, setup: bytes, data: bytes = b"") -> UrbResult:
    """Run a control transfer synchronously."""
    direction = 1 if setup[0] & 0x80 else 0
    length = struct.unpack("<H", setup[6:8])[0]
    result = device.submit(Urb(1, 0, direction, 0, 0, length, 0, 0, 0, setup, data))
    assert isinstance(result, UrbResult)
    return result


def get_descriptor(
    device: _emulated.EmulatedDevice, kind: int, index: int = 0, length: int = 255
) -> bytes:
    """GET_DESCRIPTOR."""
    setup = struct.pack("<BBHHH", 0x80, 6, (kind << 8) | index, 0x0409 if kind == 3 else 0, length)
    return control(device, setup).data


class DescriptorTests(SynchronousTestCase):
    """The emulated devices describe themselves like real ones."""

    def test_echo_device_descriptor(self) -> None:
        """USB 2.0, vendor 1209:0001, three strings, one configuration."""
        raw = get_descriptor(EchoDevice(), 1)
        fields = struct.unpack("<BBHBBBBHHHBBBB", raw)
        self.assertEqual(fields[:3], (18, 1, 0x0200))
        self.assertEqual(fields[7:9], (0x1209, 0x0001))
        self.assertEqual(fields[10:], (1, 2, 3, 1))

    def test_echo_configuration(self) -> None:
        """The configuration holds one vendor interface with bulk and interrupt endpoints."""
        device = EchoDevice()
        device.open()
        raw = get_descriptor(device, 2)
        self.assertEqual(struct.unpack("<H", raw[2:4])[0], len(raw))
        self.assertEqual(len(list(iter_descriptors(raw))), 1 + 1 + 4)
        self.assertEqual(
            endpoint_types(raw),
            {
                0x01: TransferType.BULK,
                0x81: TransferType.BULK,
                0x02: TransferType.INTERRUPT,
                0x82: TransferType.INTERRUPT,
            },
        )

    def test_strings(self) -> None:
        """String 0 lists English; string 2 is the product name in UTF-16LE."""
        device = EchoDevice()
        self.assertEqual(get_descriptor(device, 3, 0), bytes([4, 3, 0x09, 0x04]))
        self.assertEqual(get_descriptor(device, 3, 2)[2:].decode("utf-16-le"), "Lattice echo")

    def test_qualifier_high_speed_only(self) -> None:
        """A high-speed device has a qualifier; a full-speed one STALLs (normal)."""
        self.assertEqual(len(get_descriptor(EchoDevice(), 6)), 10)
        setup = struct.pack("<BBHHH", 0x80, 6, 0x0600, 0, 10)
        self.assertEqual(control(KeyboardDevice(), setup).status, -32)

    def test_keyboard_hid(self) -> None:
        """The keyboard is a HID boot keyboard with the 63-byte report descriptor."""
        keyboard = KeyboardDevice()
        keyboard.open()
        self.assertEqual(keyboard.info.interfaces, ((3, 1, 1),))
        setup = struct.pack("<BBHHH", 0x81, 6, 0x2200, 0, 255)
        self.assertEqual(len(control(keyboard, setup).data), 63)
        self.assertEqual(keyboard.endpoint_type(0x81), TransferType.INTERRUPT)

    def test_wlength_truncates(self) -> None:
        """A shorter wLength gets the start of the descriptor."""
        self.assertEqual(len(get_descriptor(EchoDevice(), 2, length=9)), 9)


class EchoTests(SynchronousTestCase):
    """The echo device's data path."""

    def urb(self, seqnum: int, address: int, length: int, data: bytes = b"") -> Urb:
        return Urb(
            seqnum, 0, 1 if address & 0x80 else 0, address & 0xF, 0, length, 0, 0, 0, bytes(8), data
        )

    def test_backpressure(self) -> None:
        """Past the buffer limit OUT transfers wait until IN drains, and can be cancelled."""
        self.patch(_emulated, "ECHO_BUFFER_LIMIT", 10)
        echo = EchoDevice()
        echo.open()
        echo.submit(self.urb(1, 0x01, 11, b"x" * 11))
        waiting = echo.submit(self.urb(2, 0x01, 1, b"y"))
        cancelled = echo.submit(self.urb(3, 0x01, 1, b"z"))
        assert isinstance(waiting, Deferred) and isinstance(cancelled, Deferred)
        echo.cancel(3)
        self.assertEqual(self.successResultOf(cancelled).status, -104)
        self.assertNoResult(waiting)
        echo.submit(self.urb(4, 0x81, 512))
        self.assertEqual(self.successResultOf(waiting).actual_length, 1)

    def test_keyboard_typing(self) -> None:
        """type_text queues press and release reports; shift for capitals."""
        keyboard = KeyboardDevice()
        keyboard.open()
        keyboard.type_text("A1")
        reports = list(keyboard.reports)
        self.assertEqual(reports[0], bytes([2, 0, 4, 0, 0, 0, 0, 0]))
        self.assertEqual(reports[2], bytes([0, 0, 0x1E, 0, 0, 0, 0, 0]))
        self.assertEqual(reports[1], bytes(8))

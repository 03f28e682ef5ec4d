"""
The PyPI ``usbip`` package's host API (a third-party URB-phase client)
against Lattice's emulated devices: control, bulk and interrupt transfers.
"""

from __future__ import annotations

import importlib
import socket
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest

from lattice.usb import EmulatedBackend, KeyboardDevice

from ._usbip import UsbServiceTestCase

reactor: Any = _reactor

usbip: Any
try:
    usbip = importlib.import_module("usbip")
except ImportError:  # pragma: no cover - the test extra installs it
    usbip = None


def _transport(port: int) -> Any:
    class NoDelayUSBIP(usbip.USBIP):  # type: ignore[misc]
        def connect(self) -> socket.socket:
            sock: socket.socket = super().connect()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(10)
            return sock

    return NoDelayUSBIP("127.0.0.1", port)


class PyPIHostTests(UsbServiceTestCase):
    """Transfers through ``usbip.open()`` (blocking; run in a thread)."""

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        if usbip is None:
            raise SkipTest("the PyPI usbip package is not installed (pip install usbip)")
        return super().setUp()

    def keyboard(self) -> KeyboardDevice:
        backend = self.service.backend
        assert isinstance(backend, EmulatedBackend)
        device = backend.devices[1]
        assert isinstance(device, KeyboardDevice)
        return device

    async def test_list_devices(self) -> None:
        """The host API's DEVLIST parser sees both devices and their interfaces."""
        devices = await deferToThread(usbip.host.list_devices, _transport(self.port))
        self.assertEqual(
            [(d["busid"], d["idVendor"], d["interfaces"]) for d in devices],
            [("1-1", 0x1209, [(0xFF, 0, 0)]), ("1-2", 0x1209, [(3, 1, 1)])],
        )

    async def test_echo_transfers(self) -> None:
        """Control (both directions), bulk and interrupt round trips on the echo device."""

        def run() -> dict[str, Any]:
            with usbip.open(0x1209, 0x0001, busid="1-1", transport=_transport(self.port)) as h:
                result: dict[str, Any] = {"descriptor": h.device_descriptor}
                result["strings"] = bytes(h.control(0x80, 6, 0x0302, 0x0409, 255))
                h.control(0x40, 0x01, 0, 0, b"control data")
                result["control"] = bytes(h.control(0xC0, 0x02, 0, 0, 64))
                payload = bytes(range(256)) * 256
                result["bulk_out"] = h.bulk_out(0x01, payload)
                result["bulk_in"] = bytes(h.bulk_in(0x81, len(payload)))
                result["payload"] = payload
                h.interrupt_out(0x02, b"ping")
                result["interrupt"] = bytes(h.interrupt_in(0x82, 64))
                return result

        result = await deferToThread(run)
        self.assertEqual(result["descriptor"].idProduct, 0x0001)
        self.assertEqual(result["strings"][2:].decode("utf-16-le"), "Lattice echo")
        self.assertEqual(result["control"], b"control data")
        self.assertEqual(result["bulk_out"], 65536)
        self.assertEqual(result["bulk_in"], result["payload"])
        self.assertEqual(result["interrupt"], b"ping")
        self.assertGreater(self.service.metrics.urb_count("ok"), 5)

    async def test_stall_and_clear_halt(self) -> None:
        """A halted endpoint STALLs for the host API, and its clear_halt() recovers it."""

        def run() -> tuple[bool, bytes]:
            with usbip.open(0x1209, 0x0001, busid="1-1", transport=_transport(self.port)) as h:
                h.control(0x40, 0x04, 0, 0x81, b"")
                try:
                    h.bulk_in(0x81, 64)
                    stalled = False
                except usbip.Stall:
                    stalled = True
                h.clear_halt(0x81)
                h.bulk_out(0x01, b"after")
                return stalled, bytes(h.bulk_in(0x81, 64))

        stalled, data = await deferToThread(run)
        self.assertTrue(stalled)
        self.assertEqual(data, b"after")

    async def test_keyboard(self) -> None:
        """HID class requests and a parked interrupt IN completed by typing."""

        def run() -> tuple[bytes, bytes, bytes, int]:
            with usbip.open(0x1209, 0x0002, busid="1-2", transport=_transport(self.port)) as h:
                report = bytes(h.control(0x81, 6, 0x2200, 0, 256))
                h.control(0x21, 0x0A, 0, 0, b"")  # SET_IDLE
                h.control(0x21, 0x09, 0x0200, 0, b"\x02")  # SET_REPORT: caps lock LED
                leds = self.keyboard().leds  # answered, so set; reset when the client leaves
                reactor.callFromThread(self.keyboard().type_text, "Hi")
                press = bytes(h.interrupt_in(0x81, 8))
                release = bytes(h.interrupt_in(0x81, 8))
                return report, press, release, leds

        report, press, release, leds = await deferToThread(run)
        self.assertEqual(len(report), 63)
        self.assertEqual(press, bytes([2, 0, 0x0B, 0, 0, 0, 0, 0]))
        self.assertEqual(release, bytes(8))
        self.assertEqual(leds, 2)

"""
Debian's stock ``usbip`` tool against Lattice's USB/IP server (emulated devices).

``usbip attach`` cannot finish here: there is no vhci-hcd in this kernel.  An
accepted import therefore ends with ``open vhci_driver`` (the tool got
status 0 and the device block, then failed locally); a refusal ends with
``Attach Request for BUSID failed - <reason>``.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from lattice.usb import approval_id

from ._usbip import UsbServiceTestCase, raw_import, require_usbip

ACCEPTED = "open vhci_driver"


class StockListTests(UsbServiceTestCase):
    """``usbip list -r`` parses our OP_REP_DEVLIST."""

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        require_usbip()
        return super().setUp()

    async def test_list(self) -> None:
        """Both emulated devices are listed with their ids and interface classes."""
        out, err, code = await self.usbip("list", "-r", "127.0.0.1")
        self.assertEqual(code, 0, err)
        self.assertIn("1-1: ", out)
        self.assertIn("(1209:0001)", out)
        self.assertIn("1-2: ", out)
        self.assertIn("(1209:0002)", out)
        self.assertIn("Human Interface Device / Boot Interface Subclass / Keyboard (03/01/01)", out)
        self.assertIn("Vendor Specific Class", out)


class StockAttachTests(UsbServiceTestCase):
    """``usbip attach`` with an approved client."""

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        require_usbip()
        return super().setUp()

    async def test_accepted(self) -> None:
        """The import is accepted (the tool only fails at the local vhci step)."""
        _, err, code = await self.usbip("attach", "-r", "127.0.0.1", "-b", "1-1")
        self.assertEqual(code, 1)
        self.assertIn(ACCEPTED, err)
        self.assertNotIn("Attach Request", err)

    async def test_released_after_tool_exits(self) -> None:
        """When the tool's connection closes the device is free and importable again."""
        await self.usbip("attach", "-r", "127.0.0.1", "-b", "1-1")
        registry = self.service.registry
        await self.settle(lambda: registry.exports["1-1"].holder is None)
        _, err, _ = await self.usbip("attach", "-r", "127.0.0.1", "-b", "1-1")
        self.assertIn(ACCEPTED, err)

    async def test_not_found(self) -> None:
        """An unknown bus id is reported as "Device not found"."""
        _, err, code = await self.usbip("attach", "-r", "127.0.0.1", "-b", "7-7")
        self.assertEqual(code, 1)
        self.assertIn("Attach Request for 7-7 failed - Device not found", err)

    async def test_busy_then_released(self) -> None:
        """A held device is "Device busy (exported)"; once its holder goes it is importable."""
        sock, header = await deferToThread(raw_import, self.port, "1-1")
        try:
            self.assertEqual(header, bytes.fromhex("0111000300000000"))
            _, err, _ = await self.usbip("attach", "-r", "127.0.0.1", "-b", "1-1")
            self.assertIn("Attach Request for 1-1 failed - Device busy (exported)", err)
        finally:
            sock.close()
        registry = self.service.registry
        await self.settle(lambda: registry.exports["1-1"].holder is None)
        _, err, _ = await self.usbip("attach", "-r", "127.0.0.1", "-b", "1-1")
        self.assertIn(ACCEPTED, err)

    async def test_socket_options(self) -> None:
        """An accepted connection has TCP_NODELAY, keepalive and a user timeout set."""
        sock, _ = await deferToThread(raw_import, self.port, "1-2")
        self.addCleanup(sock.close)
        await self.settle(lambda: bool(self.service.factory.connections))
        [connection] = self.service.factory.connections
        transport: Any = connection.transport
        handle = transport.getHandle()
        self.assertEqual(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)
        self.assertEqual(handle.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), 1)
        self.assertEqual(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE), 5)
        self.assertEqual(handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT), 8000)


class StockApprovalTests(UsbServiceTestCase):
    """The approval model as the stock tool sees it: nobody approved yet."""

    approved = ()

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        require_usbip()
        return super().setUp()

    async def test_unapproved_list_is_empty(self) -> None:
        """An unapproved client's list shows no device."""
        out, err, _ = await self.usbip("list", "-r", "127.0.0.1")
        self.assertNotIn("1-1", out + err)
        self.assertNotIn("1209", out + err)

    async def test_pending_then_approved(self) -> None:
        """An unknown client gets "Request Failed"; after approval its attach is accepted."""
        _, err, code = await self.usbip("attach", "-r", "127.0.0.1", "-b", "1-1")
        self.assertEqual(code, 1)
        self.assertIn("Attach Request for 1-1 failed - Request Failed", err)
        [pending] = self.service.registry.pending()
        self.assertEqual((pending.identity, pending.busid), ("127.0.0.1", "1-1"))
        await self.service.registry.approve(approval_id("127.0.0.1"))
        _, err, _ = await self.usbip("attach", "-r", "127.0.0.1", "-b", "1-1")
        self.assertIn(ACCEPTED, err)
        self.assertTrue((self.state_dir / "usb-approvals.json").exists())

    async def test_denied(self) -> None:
        """A denied client keeps getting "Request Failed"."""
        await self.usbip("attach", "-r", "127.0.0.1", "-b", "1-1")
        await self.service.registry.deny(approval_id("127.0.0.1"))
        _, err, _ = await self.usbip("attach", "-r", "127.0.0.1", "-b", "1-1")
        self.assertIn("Request Failed", err)
        self.assertEqual(self.service.registry.pending(), [])


class HardwareTests(TestCase):
    """What needs hardware or a USB/IP-capable kernel."""

    def test_vhci_attach_with_os_driver(self) -> None:
        """A completed attach with usbhid on top: needs hardware or a USB/IP-capable kernel."""
        raise SkipTest("needs hardware or a USB/IP-capable kernel (vhci-hcd); none here")

    def test_usbip_win2(self) -> None:
        """usbip-win2 on Windows: needs hardware or a USB/IP-capable kernel (a Windows host)."""
        raise SkipTest("needs hardware or a USB/IP-capable kernel (Windows with usbip-win2)")

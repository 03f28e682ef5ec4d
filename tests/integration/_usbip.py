"""Helpers for the real-peer USB/IP tests: an in-process USB service on port 0."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from lattice.config import UsbConfig
from lattice.readiness import Readiness
from lattice.usb import UsbService

USBIP = shutil.which("usbip") or "/usr/sbin/usbip"


def require_usbip() -> None:
    """Skip unless Debian's usbip tool is installed."""
    if not Path(USBIP).exists():
        raise SkipTest("Debian's usbip tool is not installed (apt-get install usbip)")


class UsbServiceTestCase(TestCase):
    """Runs a UsbService with emulated devices on the real reactor, port 0."""

    approved: tuple[str, ...] = ("127.0.0.1",)
    require_approval = True
    extra: dict[str, Any] = {}

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        self.state_dir = Path(self.mktemp())
        self.state_dir.mkdir(parents=True)
        self.failures: list[str] = []
        self.service = self.make_service()
        self.service.startService()
        self.addCleanup(self.service.stopService)
        return self.service._readiness.when_ready()

    def make_service(self) -> UsbService:
        config = UsbConfig(
            enabled=True,
            listen="tcp:0:interface=127.0.0.1",
            backend="emulated",
            auto_share=True,
            require_approval=self.require_approval,
            approved_clients=self.approved,
            **self.extra,
        )
        return UsbService(
            config,
            reactor,
            state_dir=self.state_dir,
            readiness=Readiness(),
            fail=self.failures.append,
            metrics=CollectorRegistry(),
        )

    @property
    def port(self) -> int:
        assert self.service.listener.port is not None
        address: Any = self.service.listener.port.getHost()
        return int(address.port)

    async def usbip(self, *args: str, port: int | None = None) -> tuple[str, str, int]:
        """Run the stock tool against the service; returns stdout, stderr, status."""
        out, err, code = await getProcessOutputAndValue(
            USBIP, ("--tcp-port", str(port or self.port), *args), env={}
        )
        return out.decode(), err.decode(), code

    async def settle(self, condition: Any, limit: float = 5.0) -> None:
        """Let the reactor run until C{condition()} holds (real peers take real time)."""
        waited = 0.0
        while not condition():
            if waited >= limit:
                self.fail("condition not reached in time")
            await deferLater(reactor, 0.01, lambda: None)
            waited += 0.01


def raw_import(port: int, busid: str) -> tuple[socket.socket, bytes]:
    """Import C{busid} over a blocking socket; returns it and the 8-byte reply header."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(bytes.fromhex("0111800300000000") + busid.encode().ljust(32, b"\0"))
    header = b""
    while len(header) < 8:
        chunk = sock.recv(8 - len(header))
        if not chunk:
            break
        header += chunk
    return sock, header

"""
End to end: ``twistd -n lattice`` with the USB proxy (emulated devices), the
stock ``usbip`` tool and the ``lattice usb`` CLI over the admin socket;
approvals survive a restart.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from lattice.usb import approval_id

from ._daemon import Daemon, child_environment, short_directory
from ._usbip import USBIP, require_usbip

LATTICE = str(Path(sys.executable).parent / "lattice")


class DaemonUsbTests(TestCase):
    """The daemon serves USB/IP; the CLI approves; the approval persists."""

    timeout = 60

    def setUp(self) -> None:
        require_usbip()

    def write_config(self, directory: Path) -> Path:
        config = directory / "lattice.ini"
        config.write_text(
            "[node]\nstate_dir = state\n"
            "[telemetry]\nlisten = tcp:0:interface=127.0.0.1\n"
            "[usb]\nenabled = true\nbackend = emulated\nauto_share = true\n"
            "listen = tcp:0:interface=127.0.0.1\n"
        )
        return config

    async def tool(self, port: int, *args: str) -> str:
        _, err, _ = await getProcessOutputAndValue(USBIP, ("--tcp-port", str(port), *args), env={})
        return str(err.decode())

    async def cli(self, config: Path, *args: str) -> tuple[str, str, int]:
        out, err, code = await getProcessOutputAndValue(
            LATTICE, ["--config", str(config), "usb", *args], env=child_environment()
        )
        return out.decode(), err.decode(), code

    async def test_approve_with_cli_and_restart(self) -> None:
        """Refused, pending, approved with the CLI, accepted, and still approved after a restart."""
        directory = short_directory(self)
        config = self.write_config(directory)
        daemon = Daemon(directory, config)
        self.addCleanup(daemon.cleanup)
        status = await daemon.ready()
        self.assertIn("2 devices exported, 0 clients", status)
        port = daemon.port_of(status, "usb")

        err = await self.tool(port, "attach", "-r", "127.0.0.1", "-b", "1-1")
        self.assertIn("Attach Request for 1-1 failed - Request Failed", err)

        out, err, code = await self.cli(config, "list")
        self.assertEqual(code, 0, err)
        pending = approval_id("127.0.0.1")
        self.assertIn(f"lattice usb approve {pending}", out)
        self.assertTrue(
            any(
                re.search(
                    r"usb: listening on [^;]*; 2 devices exported, 0 clients, 1 pending", line
                )
                for line in daemon.receiver.lines()
            ),
            daemon.receiver.lines(),
        )

        out, err, code = await self.cli(config, "approve", pending)
        self.assertEqual((code, out), (0, f"approved 127.0.0.1 (id {pending})\n"), err)
        err = await self.tool(port, "attach", "-r", "127.0.0.1", "-b", "1-1")
        self.assertIn("open vhci_driver", err)

        self.assertEqual(await daemon.stop(), 0, daemon.protocol.output.decode())
        self.assertNotIn(b"Traceback", daemon.protocol.output)

        again = Daemon(short_directory(self), config)  # same state, new notify socket
        self.addCleanup(again.cleanup)
        port = again.port_of(await again.ready(), "usb")
        err = await self.tool(port, "attach", "-r", "127.0.0.1", "-b", "1-2")
        self.assertIn("open vhci_driver", err)
        self.assertEqual(await again.stop(), 0)

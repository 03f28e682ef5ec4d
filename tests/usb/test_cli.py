"""Tests for ``lattice usb ...`` (``lattice.usb._cli``) with a stand-in admin surface."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from lattice import cli
from lattice.usb._cli import format_listing

STATE: dict[str, Any] = {
    "backend": "emulated",
    "require_approval": True,
    "devices": [
        {
            "busid": "1-1",
            "vid": "1209",
            "pid": "0001",
            "description": "Lattice Lattice echo",
            "exported": True,
            "holder": {
                "client": "127.0.0.1",
                "id": "12345678",
                "address": "127.0.0.1:5",
                "since": 0,
            },
            "allowed_clients": [],
        },
        {
            "busid": "1-2",
            "vid": "1209",
            "pid": "0002",
            "description": "Lattice Lattice keyboard",
            "exported": True,
            "holder": None,
            "allowed_clients": ["10.0.0.6"],
        },
    ],
    "pending": [
        {
            "id": "abcdef01",
            "client": "10.0.0.7",
            "busid": "1-1",
            "attempts": 2,
            "first_seen": 0,
            "last_seen": 0,
        }
    ],
    "approved": ["127.0.0.1"],
    "denied": [],
}


class FormatTests(SynchronousTestCase):
    """The text of ``lattice usb list``."""

    def test_listing(self) -> None:
        """Devices with their holders, and pending approvals with the command to approve."""
        text = format_listing(STATE)
        self.assertIn("1-1      1209:0001", text)
        self.assertIn("held by 127.0.0.1 (id 12345678, 127.0.0.1:5)", text)
        self.assertIn("[free]  only for: 10.0.0.6", text)
        self.assertIn("abcdef01  10.0.0.7  wants 1-1  (2 attempts", text)
        self.assertIn("lattice usb approve abcdef01", text)
        self.assertIn("approved clients: 127.0.0.1", text)


class CommandTests(SynchronousTestCase):
    """The commands call the admin surface and print its answer."""

    def setUp(self) -> None:
        self.config = Path(self.mktemp())
        self.config.write_text("[node]\nstate_dir = /nonexistent\n[usb]\nenabled = true\n")
        self.calls: list[tuple[str, str]] = []
        self.answer: tuple[int, object] = (200, STATE)
        self.patch(cli, "admin_request", self.fake_request)

    def fake_request(self, config: Any, method: str, path: str, body: object = None) -> Any:
        self.calls.append((method, path))
        return self.answer

    def run_cli(self, *argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = cli.main(["--config", str(self.config), "usb", *argv])
        return code, out.getvalue(), err.getvalue()

    def test_list(self) -> None:
        """``usb list`` GETs /usb/ and prints the listing."""
        code, out, _ = self.run_cli("list")
        self.assertEqual((code, self.calls), (0, [("GET", "/usb/")]))
        self.assertIn("pending approvals:", out)

    def test_approve(self) -> None:
        """``usb approve ID`` POSTs to /usb/approve/ID."""
        self.answer = (200, {"approved": "10.0.0.7", "id": "abcdef01"})
        code, out, _ = self.run_cli("approve", "abcdef01")
        self.assertEqual((code, self.calls), (0, [("POST", "/usb/approve/abcdef01")]))
        self.assertEqual(out, "approved 10.0.0.7 (id abcdef01)\n")

    def test_deny_unknown(self) -> None:
        """An unknown id is one clear line and exit status 1."""
        self.answer = (404, {"error": "no pending approval or client 'x'"})
        code, _, err = self.run_cli("deny", "x")
        self.assertEqual(code, 1)
        self.assertEqual(err, "lattice: no pending approval or client 'x'\n")

    def test_disabled(self) -> None:
        """With [usb] disabled the command says so without calling the node."""
        self.config.write_text("[node]\nstate_dir = /nonexistent\n")
        code, _, err = self.run_cli("list")
        self.assertEqual((code, self.calls), (1, []))
        self.assertIn("[usb] enabled = false", err)

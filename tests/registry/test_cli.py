"""Tests for ``lattice service ...`` against a scripted admin surface."""

from __future__ import annotations

import argparse
import io
from contextlib import redirect_stdout
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from lattice.config import LatticeConfig, RegistryConfig
from lattice.registry._cli import add_service_commands, format_listing


class CommandError(Exception):
    pass


STATE = {
    "node_id": "node-a",
    "tags": ["gateway"],
    "instances": [
        {
            "store": "local",
            "service": "lattice.irc-gateway",
            "desired": True,
            "why": "consent FollowMesh; policy Global matches every node",
            "state": "ready",
            "pid": 42,
            "bound_port": 6667,
            "restarts": 1,
            "consent": "FollowMesh",
            "last_exit": "killed by SIGKILL",
            "errors": [],
        },
        {
            "store": "local",
            "service": "evil",
            "desired": False,
            "why": "not in the registry",
            "state": "stopped",
            "consent": "Manual",
            "errors": ["unknown service (no descriptor; known: lattice.irc-gateway)"],
        },
    ],
    "descriptors": [{"id": "lattice.irc-gateway"}],
}


class ServiceCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.calls: list[tuple[str, str, object]] = []
        self.answers: list[tuple[int, object]] = []
        self.config = LatticeConfig(registry=RegistryConfig(enabled=True))
        parser = argparse.ArgumentParser()
        commands = parser.add_subparsers(dest="command", required=True)
        add_service_commands(commands, lambda args: self.config, self.request, CommandError)
        self.parser = parser

    def request(self, config: Any, method: str, path: str, body: object) -> tuple[int, object]:
        self.calls.append((method, path, body))
        return self.answers.pop(0)

    def run_command(self, *argv: str) -> str:
        args = self.parser.parse_args(list(argv))
        out = io.StringIO()
        with redirect_stdout(out):
            self.assertEqual(args.handler(args), 0)
        return out.getvalue()

    def test_listing(self) -> None:
        """The listing says, per instance, desired, running and why, with errors."""
        text = format_listing(STATE)
        self.assertIn(
            "local/lattice.irc-gateway: desired=yes running=ready pid 42 port 6667 restarts 1",
            text,
        )
        self.assertIn("why: consent FollowMesh", text)
        self.assertIn("invalid configuration: unknown service", text)

    def test_list(self) -> None:
        """``service list`` asks the admin surface."""
        self.answers.append((200, STATE))
        self.assertIn(
            "installed services: lattice.irc-gateway", self.run_command("service", "list")
        )
        self.assertEqual(self.calls, [("GET", "/services/", None)])

    def test_consent(self) -> None:
        """``service consent`` posts the mode."""
        self.answers.append((200, {"service": "lattice.irc-gateway", "consent": "Block"}))
        out = self.run_command("service", "consent", "lattice.irc-gateway", "block")
        self.assertEqual(out, "lattice.irc-gateway: consent Block\n")
        self.assertEqual(
            self.calls,
            [("POST", "/services/consent/lattice.irc-gateway", {"consent": "block"})],
        )

    def test_port(self) -> None:
        """``service port`` sets or removes a local override."""
        self.answers.append((200, {"store": "mesh-b", "service": "s", "port": 6668}))
        self.answers.append((200, {"store": "local", "service": "s", "port": None}))
        self.run_command("service", "port", "s", "6668", "--store", "mesh-b")
        self.run_command("service", "port", "s", "none")
        self.assertEqual([call[2] for call in self.calls], [{"port": 6668}, {"port": None}])
        self.assertEqual(self.calls[0][1], "/services/port/mesh-b/s")

    def test_errors(self) -> None:
        """Admin errors and a disabled registry are clear command errors."""
        self.answers.append((400, {"error": "unknown consent 'yes'"}))
        args = self.parser.parse_args(["service", "consent", "s", "yes"])
        self.assertRaises(CommandError, args.handler, args)
        self.config = LatticeConfig()
        args = self.parser.parse_args(["service", "list"])
        error = self.assertRaises(CommandError, args.handler, args)
        self.assertIn("[registry] enabled = false", str(error))

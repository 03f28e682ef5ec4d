"""
End to end: a real node (``twistd -n lattice``) with the registry, the real ``lattice-irc``
daemon it spawns, ``etcdctl`` as the admin tool writing the registry, the ``lattice service``
CLI for consent, and a real IRC client library from PyPI (jaraco's ``irc``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase

from tests.integration._daemon import Daemon, child_environment, short_directory
from tests.integration._irc import IrcClient, message

ENTRY = {"enabled": True, "policy": "TaggedNodes(gateway)", "port": 0, "channels": ["#general"]}
READY = re.compile(rb"lattice\.irc-gateway stdout\] LATTICE-READY port=(\d+)")


def _config(directory: Path) -> Path:
    config = directory / "lattice.ini"
    config.write_text(
        "[node]\nstate_dir = state\ntags = gateway\n"
        "[telemetry]\nenabled = false\n"
        "[kv]\nenabled = true\nlisten = tcp:0:interface=127.0.0.1\n"
        "[registry]\nenabled = true\nrestart_min = 0.2s\nkill_timeout = 3s\n"
        "[log]\nlevel = info\n"
    )
    return config


class RegistryIrcTests(TestCase):
    """The whole registry story with the IRC gateway."""

    timeout = 90

    async def _command(self, *argv: str, config: Path) -> tuple[int, str, str]:
        if argv[0] == "etcdctl":
            program, args = shutil.which("etcdctl") or "etcdctl", list(argv[1:])
            env = {"ETCDCTL_API": "3", "PATH": os.environ.get("PATH", "")}
        else:
            program = str(Path(sys.executable).parent / "lattice")
            args = ["--config", str(config), *argv]
            env = child_environment()
        out, err, code = await getProcessOutputAndValue(program, args, env=env)
        return code, out.decode(), err.decode()

    async def _list(self, config: Path) -> list[dict[str, Any]]:
        code, out, err = await self._command("service", "list", "--json", config=config)
        self.assertEqual(code, 0, err)
        instances: list[dict[str, Any]] = json.loads(out)["instances"]
        return instances

    def _ready_ports(self, daemon: Daemon) -> list[int]:
        return [int(port) for port in READY.findall(daemon.protocol.output)]

    async def _wait_ready(self, daemon: Daemon, count: int) -> int:
        """The port of the ``count``-th readiness line the node logged for the daemon."""
        protocol = daemon.protocol
        if len(self._ready_ports(daemon)) < count:
            arrived: Deferred[None] = Deferred()
            original = protocol.outReceived

            def received(data: bytes) -> None:
                original(data)
                if len(self._ready_ports(daemon)) >= count and not arrived.called:
                    protocol.outReceived = original  # type: ignore[method-assign]
                    arrived.callback(None)

            protocol.outReceived = received  # type: ignore[method-assign]
            await arrived
        return self._ready_ports(daemon)[count - 1]

    async def test_irc_gateway(self) -> None:
        """Consent firewall, LSP-backed channels, history across restarts, crash recovery."""
        if shutil.which("etcdctl") is None:
            raise SkipTest("etcdctl (Debian etcd-client) is not installed")
        directory = short_directory(self)
        config = _config(directory)
        daemon = Daemon(directory, config)
        self.addCleanup(daemon.cleanup)
        status = await daemon.ready()
        kv_port = daemon.port_of(status, "kv")
        endpoints = f"--endpoints=127.0.0.1:{kv_port}"
        lsp_socket = directory / "state" / "lsp.sock"
        self.assertEqual(lsp_socket.stat().st_mode & 0o777, 0o600)

        # 1. The mesh suggests the service (etcdctl is the admin tool) ...
        code, _, err = await self._command(
            "etcdctl",
            endpoints,
            "put",
            "/services/lattice.irc-gateway/config",
            json.dumps(ENTRY),
            config=config,
        )
        self.assertEqual(code, 0, err)
        await daemon.protocol.wait_for_output(b"consent Manual (default)")
        # ... and without consent nothing starts.
        [row] = await self._list(config)
        self.assertEqual((row["desired"], row["state"]), (False, "stopped"))
        self.assertIn("Manual", row["why"])

        # 2. The local operator consents: the daemon starts and reports its dynamic port.
        code, out, err = await self._command(
            "service", "consent", "lattice.irc-gateway", "FollowMesh", config=config
        )
        self.assertEqual(code, 0, err)
        port = await self._wait_ready(daemon, 1)
        [row] = await self._list(config)
        self.assertEqual((row["desired"], row["state"], row["bound_port"]), (True, "ready", port))
        code, out, err = await self._command(
            "etcdctl", endpoints, "get", "--prefix", "/nodes/", config=config
        )
        self.assertEqual(code, 0, err)
        advert = json.loads(out.splitlines()[1])
        self.assertEqual(advert["status"], "Running")
        self.assertEqual(advert["endpoints"], [f"tcp://127.0.0.1:{port}"])

        # 3. Two real IRC clients in one channel see each other's messages.
        alice, bob = IrcClient(port, "alice"), IrcClient(port, "bob")
        self.addCleanup(alice.close)
        self.addCleanup(bob.close)
        for client in (alice, bob):
            await client.wait_for(lambda e: e[0] == "welcome")
            client.join("#general")
        await alice.wait_for(lambda e: e[0] == "join" and e[1] == "bob")
        alice.say("#general", "hello from alice")
        await bob.wait_for(message("alice", "hello from alice"))
        bob.say("#general", "hi alice")
        await alice.wait_for(message("bob", "hi alice"))

        # 4. The daemon crashes (SIGKILL): the node restarts it and stays up; history survives.
        pid = row["pid"]
        os.kill(pid, signal.SIGKILL)
        new_port = await self._wait_ready(daemon, 2)
        [row] = await self._list(config)
        self.assertEqual((row["state"], row["restarts"]), ("ready", 1))
        self.assertIn("killed by SIGKILL", row["last_exit"])
        carol = IrcClient(new_port, "carol")
        self.addCleanup(carol.close)
        await carol.wait_for(lambda e: e[0] == "welcome")
        carol.join("#general")
        await carol.wait_for(message("alice", "hello from alice"))
        await carol.wait_for(message("bob", "hi alice"))

        # 5. Block beats the policy: the daemon is stopped and its advertisement withdrawn.
        code, _, err = await self._command(
            "service", "consent", "lattice.irc-gateway", "Block", config=config
        )
        self.assertEqual(code, 0, err)
        await daemon.protocol.wait_for_output(b"Stopped local/lattice.irc-gateway")
        code, out, err = await self._command(
            "etcdctl", endpoints, "get", "--prefix", "/nodes/", config=config
        )
        self.assertEqual(out.strip(), "")

        # The node stops cleanly.
        self.assertEqual(await daemon.stop(), 0)

"""
Debian's pebble (an ACME test CA) and pebble-challtestsrv (its mock DNS), run as child
processes on loopback for the integration tests.

challtestsrv answers every A query with 127.0.0.1 (and no AAAA), so pebble validates
HTTP-01 challenges of any name against 127.0.0.1 on the configured HTTP port: the
node's challenge listener.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any

from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from lattice.tls.testing import TestingCA

PEBBLE = shutil.which("pebble")
CHALLTESTSRV = shutil.which("pebble-challtestsrv")
SKIP = (
    None
    if PEBBLE and CHALLTESTSRV
    else "pebble and pebble-challtestsrv are not installed (Debian package: apt-get install pebble)"
)

STARTUP_TIMEOUT = 15.0


def free_port() -> int:
    """
    A loopback port free for both TCP and UDP right now.

    The one exception to "listen on port 0 and read the port back": pebble and
    pebble-challtestsrv are Go programs that take their listen addresses only from
    their configuration, cannot inherit a bound socket, and log the configured
    address rather than the bound one, so port 0 cannot be learned back.  The port
    is found by binding port 0 and released just before the child binds it.
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return int(port)
    raise RuntimeError("no free loopback port for both TCP and UDP")


class _Child(ProcessProtocol):
    """
    A child process: its output is logged line by line, and C{wait_for} fires when a
    line contains a marker.
    """

    _log = Logger()

    def __init__(self, name: str):
        self.name = name
        self.lines: list[str] = []
        self._buffer = b""
        self._markers: list[tuple[str, Deferred[str]]] = []
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        *complete, self._buffer = self._buffer.split(b"\n")
        for raw in complete:
            line = raw.decode("utf-8", "replace").rstrip()
            self.lines.append(line)
            self._log.debug("{name}: {line}", name=self.name, line=line)
            for marker, waiter in list(self._markers):
                if marker in line:
                    self._markers.remove((marker, waiter))
                    waiter.callback(line)

    errReceived = outReceived

    def wait_for(self, marker: str) -> Deferred[str]:
        waiter: Deferred[str] = Deferred()
        self._markers.append((marker, waiter))
        return waiter

    def processEnded(self, reason: Failure) -> None:
        for _, waiter in self._markers:
            waiter.errback(
                RuntimeError(f"{self.name} exited early:\n" + "\n".join(self.lines[-20:]))
            )
        self._markers = []
        self.ended.callback(None)


class Pebble:
    """
    A pebble CA and its mock DNS server.  C{http_port} is where pebble connects to
    validate HTTP-01 challenges; C{validity} (seconds) shortens issued certificates.
    """

    def __init__(self, reactor: Any, directory: Path, http_port: int, validity: int | None = None):
        self._reactor = reactor
        self.directory = directory.absolute()
        self.http_port = http_port
        self.validity = validity
        self.port = 0
        self.directory_url = ""
        self.ca_bundle = self.directory / "pebble-ca.crt"
        self._certificate = self._key = ""
        self._children: list[_Child] = []

    def reserve(self) -> None:
        """
        Choose the CA's port and HTTPS certificate, so that C{directory_url} and
        C{ca_bundle} are known before it starts.
        """
        if self.port:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        ca = TestingCA("pebble WFE test CA")
        ca.write(self.directory, "pebble-ca")
        leaf = ca.issue("localhost", dns_names=("localhost",), ip_addresses=("127.0.0.1",))
        self._certificate, self._key = leaf.write(self.directory, "pebble-wfe")
        self.port = free_port()
        self.directory_url = f"https://127.0.0.1:{self.port}/dir"

    async def start(self) -> None:
        """
        Start challtestsrv, then pebble; fires once pebble answers on its port.
        """
        assert PEBBLE and CHALLTESTSRV
        self.reserve()
        certificate, key = self._certificate, self._key
        dns_port, management_port = free_port(), free_port()
        dns = self._spawn(
            "pebble-challtestsrv",
            [
                CHALLTESTSRV,
                "-dns01",
                f"127.0.0.1:{dns_port}",
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                f"127.0.0.1:{management_port}",
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
            ],
            {},
        )
        await self._within(dns.wait_for("Starting management server"), dns)

        settings: dict[str, Any] = {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": "",
            "certificate": certificate,
            "privateKey": key,
            "httpPort": self.http_port,
            "tlsPort": self.http_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if self.validity is not None:
            settings["certificateValidityPeriod"] = self.validity
        config = self.directory / "pebble-config.json"
        config.write_text(json.dumps({"pebble": settings}))
        environment = {
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_VA_ALWAYS_VALID": "0",
            "PEBBLE_AUTHZREUSE": "0",
            "PEBBLE_WFE_NONCEREJECT": "0",
        }
        pebble = self._spawn(
            "pebble",
            [PEBBLE, "-config", str(config), "-dnsserver", f"127.0.0.1:{dns_port}"],
            environment,
        )
        await self._within(pebble.wait_for("ACME directory available at"), pebble)
        await self._until_listening(pebble)

    def _spawn(self, name: str, argv: list[str], environment: dict[str, str]) -> _Child:
        child = _Child(name)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **environment}
        self._reactor.spawnProcess(child, argv[0], argv, env=env, path=str(self.directory))
        self._children.append(child)
        return child

    async def _within(self, waiter: Deferred[str], child: _Child) -> None:
        def timed_out(result: object, timeout: float) -> None:
            raise RuntimeError(
                f"{child.name} did not start within {timeout}s:\n" + "\n".join(child.lines[-20:])
            )

        waiter.addTimeout(STARTUP_TIMEOUT, self._reactor, timed_out)
        await waiter

    async def _until_listening(self, child: _Child) -> None:
        # pebble logs its address just before it listens; wait for the socket.
        endpoint = TCP4ClientEndpoint(self._reactor, "127.0.0.1", self.port, timeout=1)
        for _ in range(200):
            try:
                protocol: Any = await endpoint.connect(Factory.forProtocol(Protocol))
            except error.ConnectError:
                await deferLater(self._reactor, 0.02, lambda: None)
                continue
            assert protocol.transport is not None
            protocol.transport.loseConnection()
            return
        raise RuntimeError(f"pebble does not listen on {self.port}:\n" + "\n".join(child.lines))

    async def stop(self) -> None:
        """
        Stop both children (SIGTERM, then SIGKILL after five seconds).
        """
        for child in reversed(self._children):
            transport = child.transport
            if transport is None or child.ended.called:
                continue
            try:
                transport.signalProcess("TERM")
            except error.ProcessExitedAlready:
                continue
            kill = self._reactor.callLater(5, _kill, child)
            await child.ended
            if kill.active():
                kill.cancel()
        self._children = []


def _kill(child: _Child) -> None:
    if child.transport is not None:
        with contextlib.suppress(error.ProcessExitedAlready):
            child.transport.signalProcess("KILL")

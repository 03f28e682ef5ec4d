"""
The TLS listener with stock clients: Debian's ``usbip`` through a
client-side ``stunnel`` that presents a client certificate.

The server terminates TLS itself, so the identity it approves is the
client certificate's SHA-256 fingerprint, not stunnel's address.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest

from lattice.tls.testing import TestingCA
from lattice.usb import approval_id

from ._usbip import UsbServiceTestCase, require_usbip

STUNNEL = shutil.which("stunnel4") or shutil.which("stunnel") or ""


def _free_port() -> int:
    # stunnel cannot report a port it picked, so one is chosen here
    # (and the start is retried if another process takes it first).
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class StockTlsTests(UsbServiceTestCase):
    """usbip -> stunnel (client certificate) -> Lattice's TLS listener."""

    approved = ()

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        require_usbip()
        if not STUNNEL:
            raise SkipTest("stunnel is not installed (apt-get install stunnel4)")
        self.pki = Path(self.mktemp())
        self.pki.mkdir(parents=True)
        ca = TestingCA()
        self.ca_path = ca.write(self.pki)
        server = ca.issue("localhost", dns_names=("localhost",), ip_addresses=("127.0.0.1",))
        self.server_cert, self.server_key = server.write(self.pki, "server")
        client = ca.issue("usb-client", client=True)
        self.client_cert, self.client_key = client.write(self.pki, "client")
        self.client_identity = "sha256:" + client.certificate.fingerprint(hashes.SHA256()).hex()
        self.extra = {
            "tls_listen": "tcp:0:interface=127.0.0.1",
            "tls_certificate": Path(self.server_cert),
            "tls_key": Path(self.server_key),
            "tls_client_ca": Path(self.ca_path),
        }
        return super().setUp()

    @property
    def tls_port(self) -> int:
        listener = self.service.tls_listener
        assert listener is not None and listener.port is not None
        address: Any = listener.port.getHost()
        return int(address.port)

    async def stunnel(self) -> int:
        """Start a client-mode stunnel to the TLS listener; return its local port."""
        for _ in range(5):
            port = _free_port()
            config = self.pki / f"stunnel-{port}.conf"
            config.write_text(
                "foreground = yes\n"
                "pid =\n"
                "[usbip]\n"
                "client = yes\n"
                f"accept = 127.0.0.1:{port}\n"
                f"connect = 127.0.0.1:{self.tls_port}\n"
                f"cert = {self.client_cert}\n"
                f"key = {self.client_key}\n"
                f"CAfile = {self.ca_path}\n"
                "verifyChain = yes\n"
                "checkIP = 127.0.0.1\n"
            )
            process: Any = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                [STUNNEL, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            self.addCleanup(self._stop, process)
            for _ in range(200):
                if process.poll() is not None:
                    break
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        return port
                except OSError:
                    await deferLater(reactor, 0.02, lambda: None)
        self.fail("stunnel did not start")

    def _stop(self, process: Any) -> None:
        process.terminate()
        process.wait(timeout=5)
        process.stderr.close()

    async def test_fingerprint_approval(self) -> None:
        """The client certificate's fingerprint is pending, then approved, then imports."""
        port = await self.stunnel()
        out, _, _ = await self.usbip("list", "-r", "127.0.0.1", port=port)
        self.assertNotIn("1209", out)
        _, err, _ = await self.usbip("attach", "-r", "127.0.0.1", "-b", "1-1", port=port)
        self.assertIn("Attach Request for 1-1 failed - Request Failed", err)
        [pending] = self.service.registry.pending()
        self.assertEqual(pending.identity, self.client_identity)
        await self.service.registry.approve(approval_id(self.client_identity))
        out, err, code = await self.usbip("list", "-r", "127.0.0.1", port=port)
        self.assertEqual(code, 0, err)
        self.assertIn("(1209:0001)", out)
        _, err, _ = await self.usbip("attach", "-r", "127.0.0.1", "-b", "1-1", port=port)
        self.assertIn("open vhci_driver", err)

    async def test_plain_listener_identity_differs(self) -> None:
        """Approving the certificate does not approve the same machine on the plain listener."""
        await self.service.registry.approve(self.client_identity)
        _, err, _ = await self.usbip("attach", "-r", "127.0.0.1", "-b", "1-1")
        self.assertIn("Request Failed", err)

    async def test_no_client_certificate(self) -> None:
        """A TLS client without a certificate is refused during the handshake."""
        import ssl

        def attempt() -> str:
            context = ssl.create_default_context(cafile=self.ca_path)
            with socket.create_connection(("127.0.0.1", self.tls_port), timeout=5) as raw:
                try:
                    with context.wrap_socket(raw, server_hostname="localhost") as tls:
                        tls.sendall(bytes.fromhex("0111800500000000"))
                        return "answered" if tls.recv(12) else "closed"
                except (ssl.SSLError, ConnectionError) as e:
                    return f"refused: {e}"

        from twisted.internet.threads import deferToThread

        result = await deferToThread(attempt)
        self.assertNotEqual(result, "answered")

"""
The node's C{[tls]} certificate serves the public listeners of the KV store
and of discovery (issue 8's shared configuration), on the real reactor.
"""

from __future__ import annotations

import hashlib
import re
import ssl
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from lattice.config import config_from_string
from lattice.service import make_lattice_service
from tests.integration._daemon import short_directory

reactor: Any = _reactor


def _port(detail: str) -> int:
    match = re.search(r"127\.0\.0\.1:(\d+)", detail)
    assert match is not None, detail
    return int(match.group(1))


def _served_fingerprint(port: int, alpn: list[str]) -> str:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(alpn)
    import socket

    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw) as wrapped,
    ):
        der = wrapped.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


class SharedCertificateTests(TestCase):
    """
    KV and discovery serve the certificate of the node's [tls] service.
    """

    timeout = 60

    async def _shared(self) -> None:
        directory = short_directory(self)
        config = config_from_string(
            f"[node]\nstate_dir = {directory}/state\n"
            "[telemetry]\nenabled = false\n"
            "[tls]\nenabled = true\nmode = self-signed\n"
            "[kv]\nenabled = true\nlisten = tcp:0:interface=127.0.0.1\n"
            "[discovery]\nenabled = true\nlisten = tcp:0:interface=127.0.0.1\n"
            "allow_private_addresses = true\n",
            environ={},
        )
        root = make_lattice_service(config, reactor, environ={})
        root.startService()
        self.addCleanup(root.stopService)
        await root.readiness.when_ready()
        states = root.readiness.snapshot()
        certificates = root.getServiceNamed("tls")
        expected = certificates.info.fingerprint_sha256.replace(":", "").lower()

        kv = await deferToThread(_served_fingerprint, _port(states["kv"].detail), ["h2"])
        discovery = await deferToThread(
            _served_fingerprint, _port(states["discovery"].detail), ["http/1.1"]
        )
        self.assertEqual(kv, expected)
        self.assertEqual(discovery, expected)

    def test_kv_and_discovery(self) -> Deferred[None]:
        """
        A TLS client of either listener sees the [tls] certificate.
        """
        return Deferred.fromCoroutine(self._shared())

"""Tests for ``lattice.tls``: contexts, reload, identity, and real TLS listeners."""

from __future__ import annotations

import os
from pathlib import Path

from OpenSSL import SSL
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    clientFromString,
    connectProtocol,
    serverFromString,
    wrapClientTLS,
)
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, TLSVersion, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from lattice.grpc import GrpcServerFactory, ServerContext, connect_channel
from lattice.grpc.testing import ECHO_SERVICE, EchoRequest, EchoResponse, EchoService
from lattice.tls import (
    PeerIdentity,
    ReloadingServerContext,
    TlsConfigurationError,
    TlsServerOptions,
    client_tls_options,
    load_server_context,
)
from lattice.tls.testing import TestingCA, replace_atomically
from tests.grpc.test_interop import run_grpcio_client

ECHO = "/lattice.grpc.testing.Echo/"


def _files(directory: Path, ca: TestingCA, name: str = "server") -> TlsServerOptions:
    cert, key = ca.issue("localhost", dns_names=("localhost",), ip_addresses=("127.0.0.1",)).write(
        directory, name
    )
    return TlsServerOptions(certificate=cert, private_key=key)


class LoadTests(SynchronousTestCase):
    """Building server contexts from files."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).resolve()
        self.dir.mkdir()
        self.ca = TestingCA()

    def test_load(self) -> None:
        """A matching certificate and key load."""
        load_server_context(_files(self.dir, self.ca))

    def test_mismatched_key(self) -> None:
        """A key that does not belong to the certificate is refused."""
        options = _files(self.dir, self.ca)
        other = self.ca.issue("other")
        replace_atomically(Path(options.private_key), other.key_pem)
        with self.assertRaises(TlsConfigurationError) as e:
            load_server_context(options)
        self.assertIn("does not match", str(e.exception))

    def test_missing_file(self) -> None:
        """An unreadable certificate file is refused with its path."""
        options = TlsServerOptions(certificate=str(self.dir / "nope.crt"), private_key="x")
        with self.assertRaises(TlsConfigurationError) as e:
            load_server_context(options)
        self.assertIn("nope.crt", str(e.exception))

    def test_garbage_certificate(self) -> None:
        """A file that is not PEM is refused."""
        options = _files(self.dir, self.ca)
        replace_atomically(Path(options.certificate), b"garbage")
        self.assertRaises(TlsConfigurationError, load_server_context, options)

    def test_bad_minimum_version(self) -> None:
        """Only TLS 1.2 and 1.3 are accepted as minimum versions."""
        self.assertRaises(ValueError, TlsServerOptions, "a", "b", minimum_version="1.0")


class ReloadTests(SynchronousTestCase):
    """Watching certificate files."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).resolve()
        self.dir.mkdir()
        self.ca = TestingCA()
        self.clock = Clock()
        self.options = _files(self.dir, self.ca)
        self.reloading = ReloadingServerContext(self.clock, self.options)

    def test_unchanged(self) -> None:
        """Nothing is reloaded while the files are unchanged."""
        self.assertFalse(self.reloading.check())

    def test_atomic_rename_reloads(self) -> None:
        """After an atomic rename the next poll installs a new context."""
        old = self.reloading.context
        self.reloading.start()
        self.addCleanup(self.reloading.stop)
        _files(self.dir, self.ca)
        self.clock.advance(self.options.reload_interval)
        self.assertIsNot(self.reloading.context, old)

    def test_service_lifecycle(self) -> None:
        """As a service it polls only while running."""
        self.reloading.startService()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.reloading.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_path_objects(self) -> None:
        """Options accept pathlib paths as well as strings."""
        options = TlsServerOptions(
            certificate=Path(self.options.certificate), private_key=Path(self.options.private_key)
        )
        load_server_context(options)

    def test_broken_replacement_keeps_old(self) -> None:
        """A mismatched new certificate keeps the old context and logs an error."""
        old = self.reloading.context
        replace_atomically(Path(self.options.certificate), self.ca.issue("x").certificate_pem)
        with capturedLogs() as events:
            self.assertFalse(self.reloading.check())
        self.assertIs(self.reloading.context, old)
        self.assertTrue(any(e["log_level"].name == "error" for e in events))

    def test_unreadable_replacement_keeps_old(self) -> None:
        """A deleted key file keeps the old context."""
        old = self.reloading.context
        os.unlink(self.options.private_key)
        with capturedLogs():
            self.assertFalse(self.reloading.check())
        self.assertIs(self.reloading.context, old)

    def test_repaired_after_failure(self) -> None:
        """Once broken files are repaired, the next change is picked up."""
        replace_atomically(Path(self.options.certificate), b"broken")
        with capturedLogs():
            self.reloading.check()
        _files(self.dir, self.ca)
        self.assertTrue(self.reloading.check())


class IdentityTests(SynchronousTestCase):
    """Peer identities from certificates."""

    def test_fields(self) -> None:
        """CN, DNS and IP SANs and the SHA-256 fingerprint are extracted."""
        issued = TestingCA().issue(
            "node-1", dns_names=("a.example", "b.example"), ip_addresses=("10.0.0.1",)
        )
        identity = PeerIdentity.from_certificate(issued.certificate)
        self.assertEqual(identity.common_name, "node-1")
        self.assertEqual(identity.dns_names, ("a.example", "b.example"))
        self.assertEqual(identity.ip_addresses, ("10.0.0.1",))
        self.assertEqual(len(identity.fingerprint_sha256), 64)


class _Collect(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.reason: Failure | None = None
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(
            b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.reason = reason
        self.done.callback(self.data)


class TlsListenerTests(TestCase):
    """Real TLS listeners on loopback, with grpcio and Twisted clients."""

    timeout = 60

    def setUp(self) -> None:
        self.dir = Path(self.mktemp()).resolve()
        self.dir.mkdir()

    async def _listen(self, **tls: object) -> str:
        self.ca = TestingCA()
        self.ca_path = self.ca.write(self.dir)
        self.client_ca = TestingCA("Client CA")
        client_ca_path = self.client_ca.write(self.dir, "client-ca")
        base = _files(self.dir, self.ca)
        self.options = TlsServerOptions(
            certificate=base.certificate,
            private_key=base.private_key,
            client_ca=client_ca_path if tls.pop("mutual", False) else None,
            **tls,  # type: ignore[arg-type]
        )
        self.reloading = ReloadingServerContext(_reactor, self.options)
        self.identities: list[PeerIdentity | None] = []

        async def whoami(request: EchoRequest, context: ServerContext) -> EchoResponse:
            self.identities.append(context.peer_identity)
            return EchoResponse(message=request.message)

        factory = GrpcServerFactory(_reactor, http_fallback=self._site())
        factory.add_service(ECHO_SERVICE, EchoService(_reactor))
        factory.add_service(ECHO_SERVICE, {"UnaryEcho": whoami})
        port: IListeningPort = await serverFromString(_reactor, "tcp:0:interface=127.0.0.1").listen(
            self.reloading.wrap(factory)
        )
        self.addCleanup(port.stopListening)
        self.addCleanup(factory.drain, 1)
        self.port = port.getHost().port  # type: ignore[attr-defined]
        return f"127.0.0.1:{self.port}"

    def _site(self) -> Site:
        root = Resource()
        root.putChild(b"healthz", Data(b"ok\n", "text/plain"))
        return Site(root)

    def _client_files(self) -> tuple[str, str, str]:
        cert, key = self.client_ca.issue("client-7", dns_names=("c7.example",), client=True).write(
            self.dir, "client"
        )
        return self.ca_path, cert, key

    async def test_grpcio_over_tls(self) -> None:
        """grpcio negotiates h2 over TLS; without mutual TLS there is no peer identity."""
        target = await self._listen()
        result = await run_grpcio_client(target, "peer", (self.ca_path, "-", "-"))
        self.assertEqual(result["code"], "OK")
        self.assertEqual(self.identities, [None])

    async def test_mutual_tls_accepted(self) -> None:
        """A client certificate from the client CA is accepted and its identity exposed."""
        target = await self._listen(mutual=True)
        result = await run_grpcio_client(target, "peer", self._client_files())
        self.assertEqual(result["code"], "OK")
        [identity] = self.identities
        assert identity is not None
        self.assertEqual(identity.common_name, "client-7")
        self.assertEqual(identity.dns_names, ("c7.example",))

    async def test_mutual_tls_refused(self) -> None:
        """A client without a certificate is refused."""
        target = await self._listen(mutual=True)
        result = await run_grpcio_client(target, "peer", (self.ca_path, "-", "-"))
        self.assertEqual(result["code"], "UNAVAILABLE")
        self.assertEqual(self.identities, [])

    async def test_rotation(self) -> None:
        """After rotation new connections get the new certificate; old ones keep working."""
        await self._listen()
        endpoint = clientFromString(_reactor, f"tcp:127.0.0.1:{self.port}")
        options = client_tls_options("localhost", ca=self.ca_path)
        old_channel = await connect_channel(
            _reactor,
            wrapClientTLS(options, endpoint),  # type: ignore[arg-type]
            "localhost",
            scheme="https",
        )
        self.addCleanup(old_channel.close)
        await old_channel.unary_unary(ECHO + "UnaryEcho", EchoRequest(message="1"), EchoResponse)

        new_ca = TestingCA("Rotated CA")
        new_ca_path = new_ca.write(self.dir, "new-ca")
        _files(self.dir, new_ca)
        self.assertTrue(self.reloading.check())

        result = await run_grpcio_client(f"127.0.0.1:{self.port}", "peer", (new_ca_path, "-", "-"))
        self.assertEqual(result["code"], "OK")
        response = await old_channel.unary_unary(
            ECHO + "UnaryEcho", EchoRequest(message="still here"), EchoResponse
        )
        self.assertEqual(response.message, "still here")

    async def test_http11_over_tls(self) -> None:
        """A client negotiating http/1.1 by ALPN reaches the HTTP fallback on the same port."""
        await self._listen()
        endpoint = wrapClientTLS(
            client_tls_options("localhost", ca=self.ca_path, alpn=(b"http/1.1",)),  # type: ignore[arg-type]
            clientFromString(_reactor, f"tcp:127.0.0.1:{self.port}"),
        )
        collector = _Collect()
        await connectProtocol(endpoint, collector)
        response = await collector.done
        self.assertTrue(response.startswith(b"HTTP/1.1 200 OK"), response)
        self.assertTrue(response.endswith(b"ok\n"))

    async def test_minimum_version(self) -> None:
        """A TLS 1.3 minimum refuses a client limited to TLS 1.2."""
        await self._listen(minimum_version="1.3")
        options = optionsForClientTLS(
            "localhost",
            trustRoot=Certificate.loadPEM(self.ca.certificate_pem),
            extraCertificateOptions={"lowerMaximumSecurityTo": TLSVersion.TLSv1_2},
        )
        endpoint = wrapClientTLS(options, clientFromString(_reactor, f"tcp:127.0.0.1:{self.port}"))
        collector = _Collect()
        await connectProtocol(endpoint, collector)
        response = await collector.done
        self.assertEqual(response, b"")
        assert collector.reason is not None
        self.assertTrue(collector.reason.check(SSL.Error))

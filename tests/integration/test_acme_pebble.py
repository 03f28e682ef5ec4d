"""
The certificate service and the ACME client against Debian's pebble (a real ACME CA)
and pebble-challtestsrv (its DNS) on loopback, with real HTTP-01 validation of the
node's challenge listener.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import stat
from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from lattice.acme import AcmeError, CertificateService, ChallengeStore, well_known_resource
from lattice.acme._client import connect
from lattice.acme._store import load_or_create_key
from lattice.admin import QuietSite
from lattice.config import TlsConfig
from lattice.readiness import Readiness
from tests.acme._contract import AcmeClientContract
from tests.acme._pebble import SKIP, Pebble

reactor: Any = _reactor
DOMAINS = ("node.lattice.test", "alt.lattice.test")


def _port(port: IListeningPort) -> int:
    address = port.getHost()
    assert isinstance(address, IPv4Address)
    return address.port


async def _listen(resource: Resource) -> IListeningPort:
    endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port: IListeningPort = await endpoint.listen(QuietSite(resource))
    return port


async def _challenge_listener(store: ChallengeStore) -> IListeningPort:
    """
    A port-80 stand-in that mounts the challenge resource, as the discovery public
    listener can.
    """
    root = Resource()
    root.putChild(b".well-known", well_known_resource(store))
    return await _listen(root)


def _served_fingerprint(port: int) -> str:
    """
    Connect with TLS (blocking; run in a thread) and return the SHA-256 of the
    certificate the server presents.
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=DOMAINS[0]) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


class _PebbleCase(TestCase):
    skip = SKIP
    timeout = 60

    def pebble(self, http_port: int, validity: int | None = None) -> Pebble:
        pebble = Pebble(reactor, Path(self.mktemp()), http_port, validity)
        pebble.reserve()
        self.addCleanup(lambda: Deferred.fromCoroutine(pebble.stop()))
        return pebble

    def make_service(
        self,
        state_dir: Path,
        pebble: Pebble,
        challenges: ChallengeStore | None = None,
        **settings: Any,
    ) -> CertificateService:
        config = TlsConfig(
            enabled=True,
            mode="acme",
            domains=DOMAINS,
            acme_directory=pebble.directory_url,
            acme_contact=("mailto:ops@lattice.test",),
            acme_agree_terms=True,
            acme_ca_bundle=pebble.ca_bundle,
            acme_timeout=10.0,
            acme_order_timeout=20.0,
            **settings,
        )
        self.failures: list[str] = []
        service = CertificateService(
            config,
            reactor,
            state_dir=state_dir,
            readiness=Readiness(),
            fail=self.failures.append,
            challenges=challenges,
        )
        self.addCleanup(lambda: service.stopService() if service.running else None)
        return service

    async def serve_tls(self, service: CertificateService) -> int:
        """
        A TLS listener using the service's context, as the public listeners do.
        """
        context = service.server_context(alpn=(b"http/1.1",))
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        port = await endpoint.listen(context.wrap(Factory.forProtocol(Protocol)))
        self.addCleanup(port.stopListening)
        return _port(port)


class FirstIssuanceTests(_PebbleCase):
    """
    First start in acme mode: issuance with real HTTP-01 validation on the service's
    own challenge listener, retried while the CA is not up yet.
    """

    def test_first_issuance(self) -> Deferred[None]:
        """
        The service serves a temporary certificate and retries while the CA is down,
        then obtains a certificate with HTTP-01 on [tls] acme_http_listen, persists it
        0600 next to a 0600 account key, and a restart reuses both without an order.
        """
        return Deferred.fromCoroutine(self._first_issuance())

    async def _first_issuance(self) -> None:
        state = Path(self.mktemp())
        pebble = self.pebble(http_port=0)  # the CA's address is known, it is not up yet
        service = self.make_service(
            state,
            pebble,
            acme_http_listen="tcp:0:interface=127.0.0.1",
            acme_retry_min=0.2,
            acme_retry_max=0.5,
        )
        service.startService()
        self.assertEqual(self.failures, [])
        self.assertEqual(service.source, "temporary self-signed (ACME issuance pending)")
        assert service.info is not None
        tls_port = await self.serve_tls(service)
        temporary = await deferToThread(_served_fingerprint, tls_port)
        self.assertEqual(temporary, service.info.fingerprint_sha256)

        with self.assertRaises(AcmeError) as caught:
            await service.renew_now()
        self.assertIn("cannot read the ACME directory", str(caught.exception))
        self.assertGreaterEqual(service.failures, 1)
        self.assertIn("cannot read the ACME directory", service.last_error or "")

        # Start the CA, validating HTTP-01 against the service's challenge listener.
        assert service.http_listener is not None and service.http_listener.port is not None
        pebble.http_port = _port(service.http_listener.port)
        installed = service.when_installed()
        await pebble.start()
        info = await installed

        self.assertEqual(service.source, "acme")
        self.assertIn("Pebble", info.issuer)
        self.assertTrue(info.covers(DOMAINS))
        self.assertEqual(service.failures, 0)
        path = state / "tls" / "acme" / "certificate.pem"
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        account = state / "tls" / "acme" / "account.key"
        self.assertEqual(stat.S_IMODE(account.stat().st_mode), 0o600)
        assert service.next_renewal is not None
        self.assertLessEqual(info.not_before + info.lifetime * 0.6, service.next_renewal)
        self.assertLessEqual(service.next_renewal, info.not_before + info.lifetime * 2 / 3)
        served = await deferToThread(_served_fingerprint, tls_port)
        self.assertEqual(served, info.fingerprint_sha256)
        account_key = account.read_bytes()
        await service.stopService()

        again = self.make_service(state, pebble)
        again.startService()
        self.assertEqual(again.source, "acme")
        self.assertEqual(again.info, info)
        self.assertFalse(again.status()["renewing"])
        assert again.next_renewal is not None
        self.assertLessEqual(info.not_before + info.lifetime * 0.6, again.next_renewal)
        self.assertLessEqual(again.next_renewal, info.not_before + info.lifetime * 2 / 3)
        self.assertEqual(account.read_bytes(), account_key)


class RenewalTests(_PebbleCase):
    """
    Renewal of short-lived certificates, and failed renewals.
    """

    def test_renewal(self) -> Deferred[None]:
        """
        A 6-second certificate is renewed at about two thirds of its lifetime, and a
        client connecting after the renewal sees the new certificate.
        """
        return Deferred.fromCoroutine(self._renewal())

    async def _renewal(self) -> None:
        store = ChallengeStore()
        listener = await _challenge_listener(store)
        self.addCleanup(listener.stopListening)
        pebble = self.pebble(_port(listener), validity=6)
        await pebble.start()
        service = self.make_service(Path(self.mktemp()), pebble, challenges=store)
        installed = service.when_installed()
        service.startService()
        tls_port = await self.serve_tls(service)
        first = await installed
        self.assertEqual(service.source, "acme")
        served = await deferToThread(_served_fingerprint, tls_port)
        self.assertEqual(served, first.fingerprint_sha256)
        assert service.next_renewal is not None
        self.assertLessEqual(service.next_renewal, first.not_before + first.lifetime * 2 / 3)

        second = await service.when_installed()
        self.assertNotEqual(second.serial, first.serial)
        self.assertGreaterEqual(second.not_before, first.not_before)
        served = await deferToThread(_served_fingerprint, tls_port)
        self.assertEqual(served, second.fingerprint_sha256)

    def test_unanswerable_challenge(self) -> Deferred[None]:
        """
        When the challenge cannot be answered, the renewal fails with the CA's reason,
        a retry is scheduled, and the old certificate keeps serving (file and listener).
        """
        return Deferred.fromCoroutine(self._unanswerable())

    async def _unanswerable(self) -> None:
        store = ChallengeStore()
        listener = await _challenge_listener(store)
        pebble = self.pebble(_port(listener))
        await pebble.start()
        state = Path(self.mktemp())
        service = self.make_service(state, pebble, challenges=store, acme_retry_min=3600.0)
        installed = service.when_installed()
        service.startService()
        tls_port = await self.serve_tls(service)
        first = await installed
        path = state / "tls" / "acme" / "certificate.pem"
        on_disk = path.read_bytes()

        # The port-80 listener goes away: pebble's validation cannot connect.
        stopped = listener.stopListening()
        assert stopped is not None
        await stopped
        with self.assertRaises(AcmeError) as caught:
            await service.renew_now()
        message = str(caught.exception)
        self.assertIn("validation failed", message)
        self.assertIn(DOMAINS[0], message)
        self.assertIn("connection", message.lower())
        self.assertEqual(service.failures, 1)
        self.assertEqual(service.last_error, message)
        self.assertEqual(service.status()["last_error"], message)
        self.assertEqual(service.info, first)
        self.assertEqual(len(store), 0)
        assert service.next_renewal is not None
        self.assertGreater(service.next_renewal, reactor.seconds() + 2000)
        self.assertEqual(path.read_bytes(), on_disk)
        served = await deferToThread(_served_fingerprint, tls_port)
        self.assertEqual(served, first.fingerprint_sha256)


class PebbleAcmeClientContractTests(AcmeClientContract, _PebbleCase):
    """
    The real ACME client against pebble keeps the contract the fake keeps.
    """

    def setUp(self) -> Deferred[None]:  # type: ignore[override]
        return Deferred.fromCoroutine(self._set_up())

    async def _set_up(self) -> None:
        self.store = ChallengeStore()
        listener = await _challenge_listener(self.store)
        self.addCleanup(listener.stopListening)
        pebble = self.pebble(_port(listener))
        await pebble.start()
        key, _ = load_or_create_key(Path(self.mktemp() + ".key"))
        self.names = DOMAINS
        self.call = deferToThread
        self.client = await deferToThread(
            connect,
            pebble.directory_url,
            key,
            contact=("mailto:ops@lattice.test",),
            agree_terms=True,
            ca_bundle=pebble.ca_bundle,
            timeout=10.0,
            order_timeout=20.0,
        )

"""
The certificate service: start-up per mode, issuance, renewal scheduling, backoff,
persistence and installation, with a memory clock and the fake ACME CA.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from prometheus_client import CollectorRegistry
from treq.testing import StubTreq
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lattice.acme import CertificateService
from lattice.acme._certs import RENEWAL_JITTER, parse_bundle, self_signed_bundle
from lattice.acme._store import write_atomically
from lattice.acme.testing import FakeAcmeCA, SynchronousThreadPool, ThreadlessReactor
from lattice.admin import AdminSurface
from lattice.config import TlsConfig
from lattice.readiness import Readiness
from lattice.tls.testing import TestingCA

NOW = 1_800_000_000.0
DAY = 86400.0
LIFETIME = 90 * DAY
DOMAINS = ("node.example", "alt.example")


def _served_fingerprint(context: Any) -> str:
    certificate = SSL.Connection(context.context, None).get_certificate()
    assert certificate is not None
    return parse_fingerprint(certificate)


def parse_fingerprint(certificate: Any) -> str:
    from cryptography.hazmat.primitives import hashes

    return str(certificate.to_cryptography().fingerprint(hashes.SHA256()).hex())


class _Case(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = ThreadlessReactor()
        self.reactor.advance(NOW)
        self.state = Path(self.mktemp())
        self.state.mkdir(mode=0o700)
        self.ca = FakeAcmeCA(now=self.reactor.seconds, lifetime=LIFETIME)
        self.failures: list[str] = []
        self.readiness = Readiness()

    def service(self, **settings: Any) -> CertificateService:
        defaults: dict[str, Any] = {
            "enabled": True,
            "mode": "acme",
            "domains": DOMAINS,
            "acme_directory": "https://ca.example/dir",
            "acme_retry_min": 60.0,
            "acme_retry_max": 3600.0,
        }
        defaults.update(settings)
        service = CertificateService(
            TlsConfig(**defaults),
            self.reactor,
            state_dir=self.state,
            readiness=Readiness(),
            fail=self.failures.append,
            client_factory=self.ca.client,
            threadpool=SynchronousThreadPool(),  # type: ignore[arg-type]
            random=lambda: 0.5,
            metrics=CollectorRegistry(),
        )
        self.ca.validate = lambda challenge: service.challenges.get(challenge.token)
        return service

    def started(self, **settings: Any) -> CertificateService:
        service = self.service(**settings)
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        return service


class AcmeStartTests(_Case):
    """
    First start and restarts in acme mode.
    """

    def test_temporary_then_issued(self) -> None:
        """
        With no certificate, a temporary self-signed one is written (so listeners can
        start) and issuance runs at once; the issued chain replaces it, 0600.
        """
        service = self.service()
        service.startService()
        path = self.state / "tls" / "acme" / "certificate.pem"
        # The first attempt ran at once with the synchronous pool.
        self.reactor.advance(0)
        self.assertEqual(self.failures, [])
        self.assertEqual(len(self.ca.orders), 1)
        self.assertEqual(service.source, "acme")
        info = parse_bundle(path.read_bytes())
        self.assertEqual(info, service.info)
        self.assertFalse(info.self_issued)
        self.assertTrue(info.covers(DOMAINS))
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertEqual(len(service.challenges), 0)
        service.stopService()

    def test_temporary_certificate_before_issuance(self) -> None:
        """
        Right after start, before the first attempt, the temporary certificate is on
        disk and a context can be made from it.
        """
        service = self.started()
        assert service.info is not None
        self.assertTrue(service.info.self_issued)
        self.assertEqual(service.source, "temporary self-signed (ACME issuance pending)")
        self.assertEqual(service.next_renewal, NOW)
        context = service.server_context()
        self.assertEqual(_served_fingerprint(context), service.info.fingerprint_sha256)

    def test_restart_reuses(self) -> None:
        """
        A restart with a valid ACME certificate orders nothing and schedules the
        renewal at two thirds of the lifetime (minus jitter).
        """
        first = self.started()
        self.reactor.advance(0)
        first.stopService()
        assert first.info is not None
        second = self.started()
        self.reactor.advance(0)
        self.assertEqual(len(self.ca.orders), 1)
        self.assertEqual(second.info, first.info)
        self.assertEqual(second.source, "acme")
        expected = first.info.not_before + LIFETIME * (2 / 3 - RENEWAL_JITTER * 0.5)
        self.assertEqual(second.next_renewal, expected)

    def test_domains_changed(self) -> None:
        """
        A certificate that does not cover the configured names is replaced at once.
        """
        first = self.started()
        self.reactor.advance(0)
        first.stopService()
        service = self.started(domains=(*DOMAINS, "new.example"))
        self.reactor.advance(0)
        assert service.info is not None
        self.assertTrue(service.info.covers(("new.example",)))
        self.assertEqual(len(self.ca.orders), 2)

    def test_missing_settings(self) -> None:
        """
        acme mode without directory or domains fails start-up, naming both settings.
        """
        service = self.service(acme_directory="", domains=())
        service.startService()
        self.assertEqual(len(self.failures), 1)
        self.assertIn("[tls] acme_directory", self.failures[0])
        self.assertIn("[tls] domains", self.failures[0])


class RenewalTests(_Case):
    """
    Renewal scheduling, backoff and installation.
    """

    def test_renewal_at_two_thirds(self) -> None:
        """
        Nothing happens before the renewal time; at it, a new certificate is obtained,
        persisted and installed into the running contexts.
        """
        service = self.started()
        self.reactor.advance(0)
        context = service.server_context()
        first = service.info
        assert first is not None and service.next_renewal is not None
        self.assertEqual(_served_fingerprint(context), first.fingerprint_sha256)
        self.reactor.advance(service.next_renewal - self.reactor.seconds() - 1)
        self.assertEqual(len(self.ca.orders), 1)
        self.reactor.advance(1)
        self.assertEqual(len(self.ca.orders), 2)
        second = service.info
        assert second is not None
        self.assertNotEqual(second.serial, first.serial)
        self.assertEqual(_served_fingerprint(context), second.fingerprint_sha256)
        path = self.state / "tls" / "acme" / "certificate.pem"
        self.assertEqual(parse_bundle(path.read_bytes()), second)

    def test_failure_keeps_certificate_and_backs_off(self) -> None:
        """
        Failed renewals keep the old certificate, record the error, and retry after
        retry_min, doubling up to retry_max (less a quarter at most, here an eighth);
        a success resets the count.
        """
        service = self.started()
        self.reactor.advance(0)
        context = service.server_context()
        first = service.info
        assert first is not None and service.next_renewal is not None
        path = self.state / "tls" / "acme" / "certificate.pem"
        on_disk = path.read_bytes()
        for _ in range(8):
            self.ca.fail_next("urn:ietf:params:acme:error:serverInternal :: boom")
        self.reactor.advance(service.next_renewal - self.reactor.seconds())
        delays = []
        for attempt in range(1, 8):
            self.assertEqual(service.failures, attempt)
            self.assertIn("boom", service.last_error or "")
            self.assertEqual(service.info, first)
            self.assertEqual(path.read_bytes(), on_disk)
            self.assertEqual(_served_fingerprint(context), first.fingerprint_sha256)
            assert service.next_renewal is not None
            delay = service.next_renewal - self.reactor.seconds()
            delays.append(delay)
            self.reactor.advance(delay)
        self.assertEqual(delays, [52.5, 105.0, 210.0, 420.0, 840.0, 1680.0, 3150.0])
        self.assertEqual(service.failures, 8)
        self.reactor.advance(service.next_renewal - self.reactor.seconds())
        self.assertEqual(service.failures, 0)
        self.assertIsNone(service.last_error)
        assert service.info is not None
        self.assertNotEqual(service.info.serial, first.serial)

    def test_unanswered_challenge(self) -> None:
        """
        A challenge the node does not answer fails the attempt with an error naming
        the domain, and its token is withdrawn.
        """
        service = self.started()
        self.ca.validate = lambda challenge: None
        failures: list[Failure] = []
        service.renew_now().addErrback(failures.append)
        self.assertEqual(len(failures), 1)
        self.assertIn("validation failed: node.example", service.last_error or "")
        self.assertEqual(len(service.challenges), 0)
        self.assertEqual(service.source, "temporary self-signed (ACME issuance pending)")

    def test_connect_failure(self) -> None:
        """
        A CA that cannot be reached is a failed attempt like any other.
        """
        self.ca.fail_next("cannot read the ACME directory: refused", when="connect")
        service = self.started()
        self.reactor.advance(0)
        self.assertEqual(service.failures, 1)
        self.assertIn("refused", service.last_error or "")
        assert service.next_renewal is not None
        self.assertEqual(service.next_renewal - self.reactor.seconds(), 52.5)

    def test_renew_now(self) -> None:
        """
        renew_now obtains a new certificate and reschedules the next renewal.
        """
        service = self.started()
        self.reactor.advance(0)
        first = service.info
        results: list[Any] = []
        service.renew_now().addCallback(results.append)
        self.assertEqual(len(results), 1)
        self.assertNotEqual(results[0], first)
        self.assertEqual(service.info, results[0])

    def test_stop_cancels_timer(self) -> None:
        """
        A stopped service leaves no timer behind.
        """
        service = self.started()
        self.reactor.advance(0)
        service.stopService()
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class SelfSignedTests(_Case):
    """
    self-signed mode: generated once, reused.
    """

    def test_generated_once(self) -> None:
        """
        The first start writes a 0600 bundle; the next start reuses it.
        """
        first = self.started(mode="self-signed", domains=())
        path = self.state / "tls" / "self-signed.pem"
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        assert first.info is not None
        self.assertEqual(set(first.info.names), {"localhost", "127.0.0.1", "::1"})
        first.stopService()
        second = self.started(mode="self-signed", domains=())
        self.assertEqual(second.info, first.info)
        self.assertEqual(self.ca.connections, 0)

    def test_regenerated_when_old(self) -> None:
        """
        A self-signed certificate past two thirds of its lifetime is regenerated.
        """
        path = self.state / "tls" / "self-signed.pem"
        path.parent.mkdir()
        write_atomically(path, self_signed_bundle(["localhost"], NOW - 300 * DAY, 365 * DAY))
        old = parse_bundle(path.read_bytes())
        service = self.started(mode="self-signed", domains=("localhost",))
        self.assertNotEqual(service.info, old)


class FilesModeTests(_Case):
    """
    files mode: the operator's files.
    """

    def test_files(self) -> None:
        """
        The configured files are described, and contexts are made from them.
        """
        ca = TestingCA()
        certificate, key = ca.issue("files.example", dns_names=("files.example",)).write(
            self.state, "server"
        )
        service = self.started(mode="files", certificate=Path(certificate), private_key=Path(key))
        assert service.info is not None
        self.assertEqual(service.info.names, ("files.example",))
        self.assertIsNone(service.next_renewal)
        context = service.server_context()
        self.assertEqual(_served_fingerprint(context), service.info.fingerprint_sha256)

    def test_missing_file(self) -> None:
        """
        A missing certificate file fails start-up with the setting and path.
        """
        service = self.service(mode="files", certificate=self.state / "nope.pem")
        service.startService()
        self.assertEqual(
            self.failures, [f"[tls] certificate = {self.state / 'nope.pem'}: no such file"]
        )


class AdminTests(_Case):
    """
    GET /tls/ and POST /tls/renew on the admin surface.
    """

    def test_status_and_renew(self) -> None:
        """
        The status names the certificate and next renewal; renew answers with the new one.
        """
        admin = AdminSurface()
        service = CertificateService(
            TlsConfig(enabled=True, mode="self-signed"),
            self.reactor,
            state_dir=self.state,
            readiness=self.readiness,
            fail=self.failures.append,
            admin=admin,
            threadpool=SynchronousThreadPool(),  # type: ignore[arg-type]
        )
        service.startService()
        self.addCleanup(service.stopService)
        client: Any = StubTreq(admin.root)
        response = self.successResultOf(client.get("http://node/tls/"))
        self.assertEqual(response.code, 200)
        status = json.loads(self.successResultOf(response.content()))
        assert service.info is not None
        self.assertEqual(status["certificate"]["serial"], service.info.serial)
        self.assertEqual(status["next_renewal"], service.next_renewal)
        self.assertEqual(status["mode"], "self-signed")
        response = self.successResultOf(client.post("http://node/tls/renew"))
        self.assertEqual(response.code, 200)
        body = json.loads(self.successResultOf(response.content()))
        self.assertEqual(body["renewed"]["serial"], service.info.serial)
        self.assertTrue(self.readiness.ready)

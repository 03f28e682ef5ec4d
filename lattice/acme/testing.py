"""
Test doubles for the certificate service: an in-memory ACME CA whose clients follow
L{AcmeClientLike} (verified against pebble by the same contract tests), a thread pool
that runs work at once, and a memory reactor that accepts calls from "threads".
"""

from __future__ import annotations

import datetime
import secrets
import threading
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from lattice.acme._client import AcmeError, Http01Challenge, PendingOrder

__all__ = ["FakeAcmeCA", "FakeAcmeClient", "SynchronousThreadPool", "ThreadlessReactor"]

Validator = Callable[[Http01Challenge], "str | None"]


class FakeAcmeCA:
    """
    An ACME CA in memory.

    It issues certificates valid for C{lifetime} seconds from C{now()}, signed by its
    own CA key.  C{validate} plays the CA's HTTP-01 validation: given a challenge it
    returns what the node serves for its token (C{None}: nothing); the default
    accepts every challenge.  Queue failures with L{fail_next}.
    """

    def __init__(
        self,
        now: Callable[[], float],
        lifetime: float = 90 * 86400.0,
        validate: Validator | None = None,
    ):
        self.now = now
        self.lifetime = lifetime
        self.validate = validate
        self.orders: list[PendingOrder] = []
        self.issued: list[x509.Certificate] = []
        self.connections = 0
        self.connect_errors: list[str] = []
        self.order_errors: list[str] = []
        self.cancelled = False
        self._lock = threading.Lock()
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fake ACME CA")])
        start = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=365 * 100))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )

    def fail_next(self, reason: str, *, when: str = "order") -> None:
        """
        Make the next connection (C{when="connect"}) or order (C{"order"}) fail.
        """
        (self.connect_errors if when == "connect" else self.order_errors).append(reason)

    def client(self) -> FakeAcmeClient:
        """
        A client factory: a new client with its own account on this CA.
        """
        with self._lock:
            self.connections += 1
            if self.connect_errors:
                raise AcmeError(self.connect_errors.pop(0))
            return FakeAcmeClient(self, f"fake://account/{self.connections}")

    def _issue(self, csr: x509.CertificateSigningRequest, names: tuple[str, ...]) -> str:
        start = datetime.datetime.fromtimestamp(self.now(), datetime.UTC)
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.certificate.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(seconds=self.lifetime))
            .add_extension(san, critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        with self._lock:
            self.issued.append(certificate)
        return (
            certificate.public_bytes(serialization.Encoding.PEM)
            + self.certificate.public_bytes(serialization.Encoding.PEM)
        ).decode("ascii")


class FakeAcmeClient:
    """
    A client of L{FakeAcmeCA}, following L{lattice.acme.AcmeClientLike}.
    """

    def __init__(self, ca: FakeAcmeCA, account_url: str):
        self._ca = ca
        self._account_url = account_url

    @property
    def account_url(self) -> str:
        return self._account_url

    def cancel(self) -> None:
        self._ca.cancelled = True

    def begin_order(self, csr_pem: bytes) -> PendingOrder:
        csr = x509.load_pem_x509_csr(csr_pem)
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(san.get_values_for_type(x509.DNSName)) + tuple(
            str(ip) for ip in san.get_values_for_type(x509.IPAddress)
        )
        thumbprint = secrets.token_urlsafe(32)
        found = []
        for name in names:
            token = secrets.token_urlsafe(32)
            found.append(Http01Challenge(name, token, f"{token}.{thumbprint}"))
        order = PendingOrder(
            url=f"fake://order/{len(self._ca.orders) + 1}",
            names=names,
            challenges=tuple(found),
            handle=csr,
        )
        self._ca.orders.append(order)
        return order

    def finish_order(self, order: PendingOrder) -> str:
        if self._ca.order_errors:
            raise AcmeError(self._ca.order_errors.pop(0))
        validate = self._ca.validate
        if validate is not None:
            problems = []
            for challenge in order.challenges:
                answer = validate(challenge)
                if answer != challenge.key_authorization:
                    got = "nothing" if answer is None else repr(answer)
                    problems.append(
                        f"{challenge.domain}: urn:ietf:params:acme:error:unauthorized :: "
                        f"expected the key authorization at "
                        f"/.well-known/acme-challenge/{challenge.token}, got {got}"
                    )
            if problems:
                raise AcmeError("validation failed: " + " | ".join(problems))
        csr: Any = order.handle
        return self._ca._issue(csr, order.names)


class SynchronousThreadPool:
    """
    A stand-in for C{ThreadPool} that runs each call at once, in the calling thread.
    """

    started = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False

    def callInThreadWithCallback(
        self,
        onResult: Callable[[bool, object], object],
        func: Callable[..., object],
        *args: object,
        **kw: object,
    ) -> None:
        try:
            result = func(*args, **kw)
        except BaseException as e:
            onResult(False, Failure(e))
        else:
            onResult(True, result)


class ThreadlessReactor(MemoryReactorClock):
    """
    A C{MemoryReactorClock} whose C{callFromThread} calls at once (with
    L{SynchronousThreadPool} there is no other thread).
    """

    def callFromThread(self, f: Callable[..., object], *args: object, **kw: object) -> None:
        f(*args, **kw)

"""
Certificates as the certificate service handles them: parsing the served PEM bundle,
keys and CSRs for ACME orders, self-signed certificates, and the renewal and retry
schedule.  Pure: no Twisted, no I/O.

The served bundle is one PEM file: the certificate, its chain, then the private key.
One file can be replaced by one atomic rename, so a TLS context that reloads it never
sees a new certificate next to an old key.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "RENEWAL_FRACTION",
    "RENEWAL_JITTER",
    "CertificateError",
    "CertificateInfo",
    "generate_key_pem",
    "make_csr_pem",
    "parse_bundle",
    "renewal_time",
    "retry_delay",
    "self_signed_bundle",
]

# Renew at two thirds of the lifetime, earlier by up to this fraction of the lifetime
# (random), so that many nodes issued at the same moment do not renew at the same moment.
RENEWAL_FRACTION = 2 / 3
RENEWAL_JITTER = 0.05

# Names used when a self-signed certificate has no configured domain.
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


class CertificateError(ValueError):
    """
    A certificate bundle cannot be used; the message says why.
    """


@dataclass(frozen=True)
class CertificateInfo:
    """
    What the operator (and the renewal schedule) needs to know about a certificate.

    Times are Unix timestamps.  C{self_issued} is true when the issuer is the subject:
    a self-signed certificate, never one an ACME CA issued.
    """

    subject: str
    issuer: str
    names: tuple[str, ...]
    not_before: float
    not_after: float
    serial: str
    fingerprint_sha256: str
    self_issued: bool

    @property
    def lifetime(self) -> float:
        """
        Seconds from C{not_before} to C{not_after}.
        """
        return self.not_after - self.not_before

    def covers(self, names: Sequence[str]) -> bool:
        """
        Whether every one of C{names} is a subject alternative name (exact match).
        """
        own = {_normal_name(n) for n in self.names}
        return all(_normal_name(n) in own for n in names)

    def as_json(self) -> dict[str, object]:
        """
        A JSON-ready form (times as Unix timestamps and ISO 8601 UTC).
        """
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "names": list(self.names),
            "not_before": self.not_before,
            "not_after": self.not_after,
            "not_before_iso": _iso(self.not_before),
            "not_after_iso": _iso(self.not_after),
            "serial": self.serial,
            "fingerprint_sha256": self.fingerprint_sha256,
            "self_issued": self.self_issued,
        }

    @classmethod
    def from_certificate(cls, certificate: x509.Certificate) -> CertificateInfo:
        """
        Describe a C{cryptography} certificate.
        """
        try:
            san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            names: list[str] = []
        else:
            names = list(san.get_values_for_type(x509.DNSName))
            names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
        return cls(
            subject=certificate.subject.rfc4514_string(),
            issuer=certificate.issuer.rfc4514_string(),
            names=tuple(names),
            not_before=certificate.not_valid_before_utc.timestamp(),
            not_after=certificate.not_valid_after_utc.timestamp(),
            serial=f"{certificate.serial_number:x}",
            fingerprint_sha256=certificate.fingerprint(hashes.SHA256()).hex(),
            self_issued=certificate.issuer == certificate.subject,
        )


def _iso(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _normal_name(name: str) -> str:
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.lower().rstrip(".")


def parse_bundle(data: bytes) -> CertificateInfo:
    """
    Check a served bundle (certificate, chain, private key; PEM) and describe its
    certificate.

    @raise CertificateError: no certificate, no key, or a key that does not belong
        to the certificate.
    """
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise CertificateError(f"no PEM certificate: {e}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise CertificateError(f"no unencrypted PEM private key: {e}") from None
    leaf = certificates[0]
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if key.public_key().public_bytes(encoding, public) != leaf.public_key().public_bytes(
        encoding, public
    ):
        raise CertificateError("the private key does not belong to the certificate")
    return CertificateInfo.from_certificate(leaf)


def generate_key_pem() -> bytes:
    """
    A new ECDSA P-256 private key (PKCS#8 PEM).
    """
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _general_names(names: Sequence[str]) -> list[x509.GeneralName]:
    result: list[x509.GeneralName] = []
    for name in names:
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            result.append(x509.DNSName(name))
    return result


def _load_key(key_pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError("expected an ECDSA private key")
    return key


def make_csr_pem(key_pem: bytes, names: Sequence[str]) -> bytes:
    """
    A certificate signing request (PEM) for C{names} (DNS names or IP addresses),
    signed with C{key_pem}.
    """
    if not names:
        raise CertificateError("a certificate needs at least one name")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
        .sign(_load_key(key_pem), hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def self_signed_bundle(names: Sequence[str], now: float, lifetime: float) -> bytes:
    """
    A new key and a self-signed certificate for C{names}, valid from C{now} (a Unix
    timestamp, backdated by five minutes for clock skew) for C{lifetime} seconds, as a
    served bundle.
    """
    names = list(names) or list(LOCAL_NAMES)
    key_pem = generate_key_pem()
    key = _load_key(key_pem)
    start = datetime.datetime.fromtimestamp(now, datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - datetime.timedelta(minutes=5))
        .not_valid_after(start + datetime.timedelta(seconds=lifetime))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(_general_names(names)), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM) + key_pem


def renewal_time(info: CertificateInfo, random: Callable[[], float]) -> float:
    """
    When to renew: two thirds into the certificate's lifetime, earlier by a random
    part (C{random()} in [0, 1)) of L{RENEWAL_JITTER} of the lifetime.
    """
    lifetime = max(info.lifetime, 0.0)
    return info.not_before + lifetime * (RENEWAL_FRACTION - RENEWAL_JITTER * random())


def retry_delay(
    failures: int, minimum: float, maximum: float, random: Callable[[], float]
) -> float:
    """
    The wait before the next attempt after C{failures} consecutive failures (>= 1):
    C{minimum} doubled per further failure, at most C{maximum}, then shortened by up
    to a quarter at random so that failed nodes do not retry in step.
    """
    exponent = min(max(failures, 1) - 1, 40)
    base = min(maximum, minimum * 2.0**exponent)
    return base * (1.0 - 0.25 * random())

"""The verified identity of a TLS peer, as handlers see it."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import ITransport


@dataclass(frozen=True, slots=True)
class PeerIdentity:
    """
    A certificate presented by a TLS peer and verified against the configured CA.

    *common_name* is the subject CN (``None`` if absent), *dns_names*, *ip_addresses* and
    *uris* are the subjectAltName entries, *fingerprint_sha256* is the lowercase hex SHA-256
    of the DER certificate.
    """

    common_name: str | None
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    uris: tuple[str, ...]
    fingerprint_sha256: str

    @classmethod
    def from_certificate(cls, certificate: x509.Certificate) -> PeerIdentity:
        """Extract the identity from a ``cryptography`` certificate."""
        cns = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        common_name = str(cns[0].value) if cns else None
        try:
            san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            dns: list[str] = []
            ips: list[str] = []
            uris: list[str] = []
        else:
            dns = san.get_values_for_type(x509.DNSName)
            ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
            uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        return cls(
            common_name=common_name,
            dns_names=tuple(dns),
            ip_addresses=tuple(ips),
            uris=tuple(uris),
            fingerprint_sha256=certificate.fingerprint(hashes.SHA256()).hex(),
        )


def peer_identity(transport: ITransport | None) -> PeerIdentity | None:
    """
    Return the verified client identity of a TLS *transport*, or ``None``.

    ``None`` for a cleartext transport, or when the peer sent no certificate (which only
    happens when the server context does not require one).
    """
    get_certificate = getattr(transport, "getPeerCertificate", None)
    if get_certificate is None:
        return None
    try:
        certificate = get_certificate()
    except (AttributeError, SSL.Error):
        return None
    if certificate is None:
        return None
    return PeerIdentity.from_certificate(certificate.to_cryptography())

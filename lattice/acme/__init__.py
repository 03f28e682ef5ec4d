"""
Certificates for the public TLS listeners: the C{tls} service (files, self-signed, or
ACME with HTTP-01 through certbot's C{acme} library in a thread pool), renewal with
backoff, and installation into running TLS contexts.
"""

from lattice.acme._certs import CertificateError, CertificateInfo
from lattice.acme._client import AcmeClientLike, AcmeError, Http01Challenge, PendingOrder
from lattice.acme._http01 import ChallengeResource, ChallengeStore, well_known_resource
from lattice.acme.service import CertificateService, ClientFactory, SetupError

__all__ = [
    "AcmeClientLike",
    "AcmeError",
    "CertificateError",
    "CertificateInfo",
    "CertificateService",
    "ChallengeResource",
    "ChallengeStore",
    "ClientFactory",
    "Http01Challenge",
    "PendingOrder",
    "SetupError",
    "well_known_resource",
]

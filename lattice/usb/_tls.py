"""
The TLS listener's pieces: client identity from the certificate, and a
context that is loaded when the service starts (constructors do no I/O).
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IReactorTime
from zope.interface import implementer

from lattice.config import UsbConfig
from lattice.tls import ReloadingServerContext, TlsServerOptions, peer_identity

__all__ = ["LateServerContext", "tls_identity"]


def tls_identity(transport: Any) -> str | None:
    """
    The identity of a client on the TLS listener: C{sha256:} and the hex
    SHA-256 fingerprint of its verified certificate.
    """
    identity = peer_identity(transport)
    if identity is None:
        return None
    return "sha256:" + identity.fingerprint_sha256


@implementer(IOpenSSLServerConnectionCreator)
class LateServerContext:
    """
    Hands connections to a L{ReloadingServerContext} built by L{load}.
    """

    def __init__(self) -> None:
        self.context: ReloadingServerContext | None = None

    def load(self, reactor: IReactorTime, config: UsbConfig) -> None:
        """
        Load the certificate, key and client CA (raising
        L{lattice.tls.TlsConfigurationError} or C{ValueError} when unusable)
        and start following the files.
        """
        missing = [
            key
            for key in ("tls_certificate", "tls_key", "tls_client_ca")
            if getattr(config, key) is None
        ]
        if missing:
            raise ValueError(f"tls_listen needs {', '.join(missing)}")
        assert config.tls_certificate is not None and config.tls_key is not None
        options = TlsServerOptions(
            certificate=config.tls_certificate,
            private_key=config.tls_key,
            client_ca=config.tls_client_ca,
            alpn=(),
        )
        self.context = ReloadingServerContext(reactor, options)
        self.context.start()

    def stop(self) -> None:
        """
        Stop following the files.
        """
        if self.context is not None:
            self.context.stop()

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        if self.context is None:
            raise RuntimeError("the USB TLS listener's certificate is not loaded")
        return self.context.serverConnectionForTLS(tlsProtocol)

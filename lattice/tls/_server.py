"""TLS server contexts from PEM files, with ALPN, client certificates and hot reload."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from OpenSSL import SSL, crypto
from twisted.application.service import Service
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
)
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

_log = Logger()

_VERSIONS = {
    "1.2": SSL.TLS1_2_VERSION,
    "1.3": SSL.TLS1_3_VERSION,
}


class TlsConfigurationError(Exception):
    """The certificate, key, chain or CA files cannot be used."""


@dataclass(frozen=True, slots=True)
class TlsServerOptions:
    """
    Where a TLS listener finds its credentials, and its policy.

    *certificate* and *private_key* are PEM files; *chain* optionally holds intermediate
    certificates sent after the certificate; *client_ca* (PEM, one or more CA certificates)
    makes a client certificate signed by one of them mandatory.  *minimum_version* is
    ``"1.2"`` or ``"1.3"``.  *alpn* lists the protocols offered, in preference order.
    The files are checked for changes every *reload_interval* seconds.
    """

    certificate: str | os.PathLike[str]
    private_key: str | os.PathLike[str]
    chain: str | os.PathLike[str] | None = None
    client_ca: str | os.PathLike[str] | None = None
    minimum_version: str = "1.2"
    alpn: tuple[bytes, ...] = (b"h2", b"http/1.1")
    reload_interval: float = 10.0

    def __post_init__(self) -> None:
        if self.minimum_version not in _VERSIONS:
            raise ValueError(
                f"minimum_version must be one of {sorted(_VERSIONS)}, not {self.minimum_version!r}"
            )
        if not 0 < self.reload_interval <= 30:
            raise ValueError("reload_interval must be in (0, 30] seconds")

    def files(self) -> tuple[str, ...]:
        """Every file the context is built from."""
        return tuple(
            os.fspath(p)
            for p in (self.certificate, self.private_key, self.chain, self.client_ca)
            if p is not None
        )


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise TlsConfigurationError(f"cannot read {what} {path}: {e.strerror}") from e


def _certificates(path: str | os.PathLike[str], what: str) -> list[x509.Certificate]:
    try:
        certificates = x509.load_pem_x509_certificates(_read(path, what))
    except ValueError as e:
        raise TlsConfigurationError(f"{what} {path} holds no valid PEM certificate: {e}") from e
    return certificates


def _select_alpn(protocols: Sequence[bytes]) -> object:
    def select(connection: SSL.Connection, offered: list[bytes]) -> Any:
        for protocol in protocols:
            if protocol in offered:
                return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS

    return select


def _verify(
    connection: SSL.Connection, certificate: crypto.X509, errno: int, depth: int, ok: int
) -> bool:
    return bool(ok)


def load_server_context(options: TlsServerOptions) -> SSL.Context:
    """
    Build an OpenSSL context from *options*' files.

    Raises :class:`TlsConfigurationError` if a file is unreadable or malformed or the key does
    not match the certificate.
    """
    certificates = _certificates(options.certificate, "certificate")
    try:
        key = load_pem_private_key(_read(options.private_key, "private key"), password=None)
    except (ValueError, TypeError) as e:
        raise TlsConfigurationError(
            f"private key {options.private_key} is not an unencrypted PEM key: {e}"
        ) from e
    chain = certificates[1:]
    if options.chain:
        chain += _certificates(options.chain, "certificate chain")

    context = SSL.Context(SSL.TLS_METHOD)
    context.set_min_proto_version(_VERSIONS[options.minimum_version])
    context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE)
    try:
        context.use_certificate(crypto.X509.from_cryptography(certificates[0]))
        context.use_privatekey(crypto.PKey.from_cryptography_key(key))  # type: ignore[arg-type]
        context.check_privatekey()
    except (SSL.Error, TypeError) as e:
        raise TlsConfigurationError(
            f"private key {options.private_key} does not match certificate"
            f" {options.certificate}: {e}"
        ) from e
    for extra in chain:
        context.add_extra_chain_cert(crypto.X509.from_cryptography(extra))
    if options.client_ca:
        cas = _certificates(options.client_ca, "client CA")
        store = context.get_cert_store()
        assert store is not None
        for ca in cas:
            store.add_cert(crypto.X509.from_cryptography(ca))
        context.set_client_ca_list([crypto.X509.from_cryptography(ca).get_subject() for ca in cas])
        context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verify)
        context.set_session_id(b"lattice")
    if options.alpn:
        context.set_alpn_select_callback(_select_alpn(options.alpn))  # type: ignore[arg-type]
    return context


def _signature(paths: Sequence[str]) -> tuple[object, ...]:
    signature: list[object] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            signature.append(None)
        else:
            signature.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(signature)


@implementer(IOpenSSLServerConnectionCreator)
class ReloadingServerContext(Service):
    """
    A TLS server context that follows its certificate files.

    Every new connection uses the newest context that loaded successfully; connections
    already established keep theirs.  :meth:`start` polls the files (every
    ``reload_interval`` seconds); after a change (typically an atomic rename) the files are
    loaded again, and if that fails the old context stays in use and an error is logged.
    Building one loads the files and raises :class:`TlsConfigurationError` on failure, so a
    broken configuration fails startup.  As an ``IService``, it watches the files while
    running (``startService``/``stopService`` call :meth:`start`/:meth:`stop`).
    """

    def __init__(self, reactor: IReactorTime, options: TlsServerOptions) -> None:
        self._reactor = reactor
        self.options = options
        self._signature = _signature(options.files())
        self.context = load_server_context(options)
        self._poll: LoopingCall | None = None

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self.context, None)

    def startService(self) -> None:
        super().startService()
        self.start()

    def stopService(self) -> None:
        super().stopService()
        self.stop()

    def start(self) -> None:
        """Start watching the files."""
        if self._poll is None:
            self._poll = LoopingCall(self.check)
            self._poll.clock = self._reactor
            self._poll.start(self.options.reload_interval, now=False)

    def stop(self) -> None:
        """Stop watching the files."""
        if self._poll is not None:
            if self._poll.running:
                self._poll.stop()
            self._poll = None

    def check(self) -> bool:
        """Reload now if a file changed; return whether a new context was installed."""
        signature = _signature(self.options.files())
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            context = load_server_context(self.options)
        except TlsConfigurationError as e:
            _log.error(
                "TLS files changed but cannot be used, keeping the previous certificate: {error}",
                error=str(e),
            )
            return False
        self.context = context
        _log.info("TLS certificate reloaded from {path}", path=os.fspath(self.options.certificate))
        return True

    def wrap(self, factory: IProtocolFactory) -> TLSMemoryBIOFactory:
        """Wrap a protocol factory so that its connections are served over this TLS context."""
        return TLSMemoryBIOFactory(self, False, factory)


def client_tls_options(
    hostname: str,
    *,
    ca: str | None = None,
    certificate: str | None = None,
    private_key: str | None = None,
    alpn: Sequence[bytes] = (b"h2",),
) -> object:
    """
    Client TLS options for ``wrapClientTLS``: verify *hostname* against *ca* (PEM file; the
    platform's trust store if ``None``), present *certificate*/*private_key* if given, and
    offer *alpn*.
    """
    trust = Certificate.loadPEM(_read(ca, "CA")) if ca else None
    client = None
    if certificate and private_key:
        load_pem: Any = PrivateCertificate.loadPEM
        client = load_pem(
            _read(certificate, "certificate") + b"\n" + _read(private_key, "private key")
        )
    return optionsForClientTLS(
        hostname,
        trustRoot=trust,
        clientCertificate=client,
        acceptableProtocols=list(alpn),
    )

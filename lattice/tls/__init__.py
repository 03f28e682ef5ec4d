"""
TLS for Lattice's listeners: server contexts from PEM files with ALPN, mandatory client
certificates and their verified identity, a minimum version, and hot certificate reload.
"""

from lattice.tls._identity import PeerIdentity, peer_identity
from lattice.tls._server import (
    ReloadingServerContext,
    TlsConfigurationError,
    TlsServerOptions,
    client_tls_options,
    load_server_context,
)

__all__ = [
    "PeerIdentity",
    "ReloadingServerContext",
    "TlsConfigurationError",
    "TlsServerOptions",
    "client_tls_options",
    "load_server_context",
    "peer_identity",
]

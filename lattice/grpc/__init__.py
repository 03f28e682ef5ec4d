"""
gRPC for Lattice, served and called natively on Twisted over its own HTTP/2 layer.

See ``docs/grpc.rst``.

The names are imported on first use, so that a daemon that only calls (the LSP client)
does not load the server, and the reverse.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lattice._lazy import lazy_attributes

if TYPE_CHECKING:
    from lattice.grpc._client import (
        ClientCall,
        GrpcChannel,
        GrpcClientOptions,
        GrpcClientProtocol,
        connect_channel,
    )
    from lattice.grpc._metadata import Metadata, MetadataValue
    from lattice.grpc._server import (
        GrpcServerFactory,
        GrpcServerOptions,
        GrpcServerProtocol,
        RequestStream,
        ServerContext,
    )
    from lattice.grpc._service import CallShape, method_path
    from lattice.grpc._status import GrpcError, StatusCode

_HOMES = {
    "ClientCall": "_client",
    "GrpcChannel": "_client",
    "GrpcClientOptions": "_client",
    "GrpcClientProtocol": "_client",
    "connect_channel": "_client",
    "Metadata": "_metadata",
    "MetadataValue": "_metadata",
    "GrpcServerFactory": "_server",
    "GrpcServerOptions": "_server",
    "GrpcServerProtocol": "_server",
    "RequestStream": "_server",
    "ServerContext": "_server",
    "CallShape": "_service",
    "method_path": "_service",
    "GrpcError": "_status",
    "StatusCode": "_status",
}

__all__ = [
    "CallShape",
    "ClientCall",
    "GrpcChannel",
    "GrpcClientOptions",
    "GrpcClientProtocol",
    "GrpcError",
    "GrpcServerFactory",
    "GrpcServerOptions",
    "GrpcServerProtocol",
    "Metadata",
    "MetadataValue",
    "RequestStream",
    "ServerContext",
    "StatusCode",
    "connect_channel",
    "method_path",
]


__getattr__, __dir__ = lazy_attributes(__name__, _HOMES, globals())

"""
gRPC for Lattice, served and called natively on Twisted over its own HTTP/2 layer.

See ``docs/grpc.rst``.
"""

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

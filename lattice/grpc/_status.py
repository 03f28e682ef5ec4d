"""gRPC status codes and the exception handlers raise to end a call with one."""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum

from lattice.grpc._metadata import MetadataValue


class StatusCode(IntEnum):
    """The canonical gRPC status codes (``grpc/doc/statuscodes.md``)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


def status_from_wire(value: str | None) -> StatusCode:
    """Parse a ``grpc-status`` header value; anything unparseable is UNKNOWN."""
    if value is None:
        return StatusCode.UNKNOWN
    try:
        return StatusCode(int(value))
    except ValueError:
        return StatusCode.UNKNOWN


class GrpcError(Exception):
    """
    A call ended with a non-OK status.

    Server handlers raise it to end a call with *code* and *message*; the client layer raises
    it when a call fails.  *details* is sent as ``grpc-status-details-bin`` (by convention an
    encoded ``google.rpc.Status``); *trailing_metadata* is added to the trailers.
    """

    def __init__(
        self,
        code: StatusCode,
        message: str = "",
        *,
        details: bytes | None = None,
        trailing_metadata: Sequence[tuple[str, MetadataValue]] = (),
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.details = details
        self.trailing_metadata = tuple(trailing_metadata)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

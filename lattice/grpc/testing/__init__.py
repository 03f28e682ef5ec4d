"""
Testing support for ``lattice.grpc``: the ``lattice.grpc.testing.Echo`` service.

``echo.proto`` (in ``protos/lattice/grpc/testing/``) has one method of each call shape;
:class:`EchoService` implements it and is what the interoperability tests and the
``grpc_fairness`` benchmark serve.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from lattice.grpc._server import GrpcServerFactory, RequestStream, ServerContext
from lattice.grpc._status import GrpcError, StatusCode
from lattice.grpc.testing.echo_pb2 import DESCRIPTOR, EchoRequest, EchoResponse

ECHO_SERVICE = DESCRIPTOR.services_by_name["Echo"]

__all__ = ["ECHO_SERVICE", "EchoRequest", "EchoResponse", "EchoService", "echo_factory"]


class EchoService:
    """
    Handlers for ``Echo``.

    Each request is echoed back; ``fail_code`` makes the call fail with that status (and
    ``details`` carried in ``grpc-status-details-bin``), ``delay_ms`` waits first,
    ``response_size`` sends a payload of that many bytes, and request metadata whose key
    starts with ``echo-`` is returned as initial metadata and, prefixed ``trailer-``, as
    trailing metadata.  ``waiting_event`` and ``cancelled_event``, if set, fire once when a
    delayed call starts waiting and when one is cancelled.
    """

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor
        self.cancelled: list[str] = []
        self.cancelled_event: Deferred[str] | None = None
        self.waiting_event: Deferred[str] | None = None

    async def _prepare(self, request: EchoRequest, context: ServerContext) -> EchoResponse:
        echoed = [(k, v) for k, v in context.invocation_metadata if k.startswith("echo-")]
        if echoed:
            context.set_initial_metadata(echoed)
            context.set_trailing_metadata([("trailer-" + k, v) for k, v in echoed])
        if request.delay_ms:
            if self.waiting_event is not None:
                event, self.waiting_event = self.waiting_event, None
                event.callback(context.method)
            try:
                await deferLater(self._reactor, request.delay_ms / 1000)
            except BaseException:
                self.cancelled.append(context.method)
                if self.cancelled_event is not None:
                    event, self.cancelled_event = self.cancelled_event, None
                    event.callback(context.method)
                raise
        if request.fail_code:
            raise GrpcError(
                StatusCode(request.fail_code),
                request.message,
                details=request.payload or None,
            )
        payload = b"x" * request.response_size if request.response_size else request.payload
        return EchoResponse(message=request.message, payload=payload)

    async def unary_echo(self, request: EchoRequest, context: ServerContext) -> EchoResponse:
        """Echo one request."""
        simple = not (request.delay_ms or request.fail_code or request.response_size)
        if simple and not context.invocation_metadata:
            return EchoResponse(message=request.message, payload=request.payload)
        return await self._prepare(request, context)

    async def server_stream_echo(
        self, request: EchoRequest, context: ServerContext
    ) -> AsyncIterator[EchoResponse]:
        """Echo one request ``count`` times."""
        response = await self._prepare(request, context)
        for index in range(request.count):
            response.index = index
            yield response

    async def client_stream_echo(
        self, requests: RequestStream, context: ServerContext
    ) -> EchoResponse:
        """Concatenate the messages of every request."""
        parts = []
        last = EchoRequest()
        async for request in requests:
            last = request
            parts.append(request.message)
        response = await self._prepare(last, context)
        response.message = "".join(parts)
        return response

    async def bidi_echo(self, requests: RequestStream, context: ServerContext) -> None:
        """Answer each request as it arrives, ``count`` times (at least once)."""
        async for request in requests:
            response = await self._prepare(request, context)
            for index in range(max(1, request.count)):
                response.index = index
                await context.send(response)


def echo_factory(reactor: IReactorTime, **kwargs: object) -> GrpcServerFactory:
    """A server factory serving :class:`EchoService` (keyword arguments go to the factory)."""
    factory = GrpcServerFactory(reactor, **kwargs)  # type: ignore[arg-type]
    factory.add_service(ECHO_SERVICE, EchoService(reactor))
    return factory

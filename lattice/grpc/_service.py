"""Registration of handlers from protobuf service descriptors."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass


class CallShape(Enum):
    """The four gRPC call shapes."""

    UNARY_UNARY = "unary_unary"
    UNARY_STREAM = "unary_stream"
    STREAM_UNARY = "stream_unary"
    STREAM_STREAM = "stream_stream"

    @classmethod
    def of(cls, method: MethodDescriptor) -> CallShape:
        """The shape of a protobuf method."""
        if method.client_streaming:
            return cls.STREAM_STREAM if method.server_streaming else cls.STREAM_UNARY
        return cls.UNARY_STREAM if method.server_streaming else cls.UNARY_UNARY


@dataclass(frozen=True, slots=True)
class MethodInfo:
    """Everything the server needs per method, computed once at registration."""

    path: bytes
    shape: CallShape
    request_type: type[Message]
    response_type: type[Message]
    handler: Callable[..., Any]
    client_streaming: bool
    server_streaming: bool
    handler_is_generator: bool


def snake_case(name: str) -> str:
    """``UnaryEcho`` -> ``unary_echo``: the attribute name a handler is looked up under."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def method_path(method: MethodDescriptor) -> str:
    """The HTTP/2 ``:path`` of a method: ``/package.Service/Method``."""
    return f"/{method.containing_service.full_name}/{method.name}"


def methods_for(
    service: ServiceDescriptor,
    implementation: object | Mapping[str, Callable[..., Any]],
) -> dict[bytes, MethodInfo]:
    """
    Bind the methods of *service* to handlers.

    *implementation* is either a mapping from method name (``UnaryEcho``) to handler, or an
    object whose attributes are the snake_case method names (``unary_echo``).  Methods with no
    handler are left out (and so answer UNIMPLEMENTED).  A handler must be an ``async def``
    coroutine function, or for methods with streamed responses may be an async generator.
    """
    infos: dict[bytes, MethodInfo] = {}
    for method in service.methods:
        if isinstance(implementation, Mapping):
            handler = implementation.get(method.name)
        else:
            handler = getattr(implementation, snake_case(method.name), None)
        if handler is None:
            continue
        shape = CallShape.of(method)
        is_generator = inspect.isasyncgenfunction(handler)
        if not (inspect.iscoroutinefunction(handler) or is_generator):
            raise TypeError(f"handler for {method.full_name} must be async def, got {handler!r}")
        if is_generator and not method.server_streaming:
            raise TypeError(f"handler for {method.full_name} returns one message, not a stream")
        path = method_path(method).encode("ascii")
        infos[path] = MethodInfo(
            path=path,
            shape=shape,
            request_type=GetMessageClass(method.input_type),
            response_type=GetMessageClass(method.output_type),
            handler=handler,
            client_streaming=method.client_streaming,
            server_streaming=method.server_streaming,
            handler_is_generator=is_generator,
        )
    return infos

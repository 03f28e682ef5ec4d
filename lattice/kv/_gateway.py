"""
etcd's HTTP/JSON gateway on the KV port: ``POST /v3/<route>`` with a JSON request.

etcd serves its gRPC API a second time, translated by grpc-gateway, to HTTP/1.1 clients on
the same port: ``curl`` examples in etcd's documentation, ``etcd3gw`` (OpenStack's tooz),
and scripts that cannot load gRPC.  This is that translation, in front of the same service
implementations the gRPC listener uses, so tenants, authentication, quotas and limits are
the same.  What etcd 3.4's gateway does, and so what this does:

- routes under ``/v3/`` (and ``/v3beta/``, which etcd 3.4 still serves), all ``POST``;
- JSON in protobuf's mapping with the ``.proto`` field names: 64-bit integers as strings,
  bytes in base64, enums by name, fields at their default value left out; a body that is
  not JSON, or a field of the wrong type, is refused (``INVALID_ARGUMENT``, naming it), but
  unknown fields are ignored and a unary call takes the body's first object, as etcd's
  gateway does (clients may send fields of newer etcd versions);
- the token from ``etcdctl``'s ``Authenticate`` in the ``Authorization`` header (or in
  ``Grpc-Metadata-Token``);
- an error is ``{"error", "code", "message"}`` with the gRPC status mapped to an HTTP one
  (``FAILED_PRECONDITION`` is 412, as grpc-gateway v1 maps it);
- streaming methods (``watch``, ``lease/keepalive``, ``maintenance/snapshot``) answer with a
  chunked stream of ``{"result": ...}`` objects, one per line and chunk, and an error as
  ``{"error": {"grpc_code", "http_code", "message", "http_status"}}``; their requests are
  the JSON objects of the body, one after another.  A watch goes on after the body ended,
  until the client closes the connection.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from http import HTTPStatus
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from lattice.grpc import GrpcError, Metadata, StatusCode
from lattice.grpc._service import MethodInfo, methods_for
from lattice.kv._errors import KVError
from lattice.kv._proto import rpc_pb2
from lattice.tls import PeerIdentity, peer_identity

__all__ = ["ROUTES", "Gateway"]

_log = Logger()

# route (after the version prefix) -> (service, method), as etcd 3.4's rpc.proto annotates
# them (HashKV shares Hash's route there; it also has the route later versions gave it).
ROUTES: Mapping[str, tuple[str, str]] = {
    "kv/range": ("KV", "Range"),
    "kv/put": ("KV", "Put"),
    "kv/deleterange": ("KV", "DeleteRange"),
    "kv/txn": ("KV", "Txn"),
    "kv/compaction": ("KV", "Compact"),
    "watch": ("Watch", "Watch"),
    "lease/grant": ("Lease", "LeaseGrant"),
    "lease/revoke": ("Lease", "LeaseRevoke"),
    "kv/lease/revoke": ("Lease", "LeaseRevoke"),
    "lease/keepalive": ("Lease", "LeaseKeepAlive"),
    "lease/timetolive": ("Lease", "LeaseTimeToLive"),
    "kv/lease/timetolive": ("Lease", "LeaseTimeToLive"),
    "lease/leases": ("Lease", "LeaseLeases"),
    "kv/lease/leases": ("Lease", "LeaseLeases"),
    "cluster/member/add": ("Cluster", "MemberAdd"),
    "cluster/member/remove": ("Cluster", "MemberRemove"),
    "cluster/member/update": ("Cluster", "MemberUpdate"),
    "cluster/member/list": ("Cluster", "MemberList"),
    "cluster/member/promote": ("Cluster", "MemberPromote"),
    "maintenance/alarm": ("Maintenance", "Alarm"),
    "maintenance/status": ("Maintenance", "Status"),
    "maintenance/defragment": ("Maintenance", "Defragment"),
    "maintenance/hash": ("Maintenance", "Hash"),
    "maintenance/hashkv": ("Maintenance", "HashKV"),
    "maintenance/snapshot": ("Maintenance", "Snapshot"),
    "maintenance/transfer-leadership": ("Maintenance", "MoveLeader"),
    "auth/enable": ("Auth", "AuthEnable"),
    "auth/disable": ("Auth", "AuthDisable"),
    "auth/authenticate": ("Auth", "Authenticate"),
    "auth/user/add": ("Auth", "UserAdd"),
    "auth/user/get": ("Auth", "UserGet"),
    "auth/user/list": ("Auth", "UserList"),
    "auth/user/delete": ("Auth", "UserDelete"),
    "auth/user/changepw": ("Auth", "UserChangePassword"),
    "auth/user/grant": ("Auth", "UserGrantRole"),
    "auth/user/revoke": ("Auth", "UserRevokeRole"),
    "auth/role/add": ("Auth", "RoleAdd"),
    "auth/role/get": ("Auth", "RoleGet"),
    "auth/role/list": ("Auth", "RoleList"),
    "auth/role/delete": ("Auth", "RoleDelete"),
    "auth/role/grant": ("Auth", "RoleGrantPermission"),
    "auth/role/revoke": ("Auth", "RoleRevokePermission"),
}

# grpc-gateway v1's HTTPStatusFromCode, which etcd 3.4 uses.
_HTTP_STATUS: Mapping[StatusCode, int] = {
    StatusCode.OK: 200,
    StatusCode.CANCELLED: 408,
    StatusCode.UNKNOWN: 500,
    StatusCode.INVALID_ARGUMENT: 400,
    StatusCode.DEADLINE_EXCEEDED: 504,
    StatusCode.NOT_FOUND: 404,
    StatusCode.ALREADY_EXISTS: 409,
    StatusCode.PERMISSION_DENIED: 403,
    StatusCode.UNAUTHENTICATED: 401,
    StatusCode.RESOURCE_EXHAUSTED: 429,
    StatusCode.FAILED_PRECONDITION: 412,
    StatusCode.ABORTED: 409,
    StatusCode.OUT_OF_RANGE: 400,
    StatusCode.UNIMPLEMENTED: 501,
    StatusCode.INTERNAL: 500,
    StatusCode.UNAVAILABLE: 503,
    StatusCode.DATA_LOSS: 500,
}

_JSON = b"application/json"


def to_json(message: Message) -> bytes:
    """One message as etcd's gateway writes it (compact, ``.proto`` field names)."""
    return json.dumps(
        json_format.MessageToDict(message, preserving_proto_field_name=True),
        separators=(",", ":"),
    ).encode()


def parse_body(body: bytes, request_type: type[Message]) -> list[Message]:
    """
    The request messages of a body: the JSON objects it holds, one after another
    (whitespace between them); an empty body is one empty request.

    :raises ValueError: the body is not JSON, or an object is not a ``request_type``
        (the message names the field).
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the request body is not UTF-8") from None
    decoder = json.JSONDecoder()
    messages: list[Message] = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            break
        try:
            value, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as e:
            raise ValueError(f"the request body is not JSON: {e}") from None
        except RecursionError:
            raise ValueError("the request body is nested too deeply") from None
        if not isinstance(value, dict):
            raise ValueError(f"a request must be a JSON object, not {type(value).__name__}")
        message = request_type()
        try:
            _check_values(value, message.DESCRIPTOR)
            json_format.ParseDict(value, message, ignore_unknown_fields=True)
        except json_format.ParseError as e:
            # nested messages repeat their prefix: keep the message readable
            text = str(e)
            raise ValueError(text if len(text) <= 300 else text[:300] + "...") from None
        except RecursionError:
            raise ValueError("the request is nested too deeply") from None
        messages.append(message)
    return messages or [request_type()]


_BASE64 = re.compile(r"[A-Za-z0-9+/_-]*={0,2}\Z")


def _check_values(value: dict[str, Any], descriptor: Any) -> None:
    """
    Refuse what protobuf's parser lets through when it ignores unknown fields but etcd's
    refuses: bytes that are not base64 (the parser drops the characters it does not
    know) and enum names that do not exist, in ``value`` and the messages it holds.
    """
    for name, item in value.items():
        field = descriptor.fields_by_name.get(name) or descriptor.fields_by_camelcase_name.get(name)
        if field is None or item is None:
            continue
        items = item if isinstance(item, list) else [item]
        for one in items:
            if field.type == FieldDescriptor.TYPE_BYTES:
                if not isinstance(one, str) or not _BASE64.match(one) or len(one) % 4 == 1:
                    raise ValueError(f"{name} is not base64: {str(one)[:40]!r}")
            elif field.type == FieldDescriptor.TYPE_ENUM and isinstance(one, str):
                if one not in field.enum_type.values_by_name:
                    raise ValueError(
                        f"unknown value {one[:40]!r} for enum {field.enum_type.full_name}"
                    )
            elif field.type == FieldDescriptor.TYPE_MESSAGE and isinstance(one, dict):
                _check_values(one, field.message_type)


def _metadata(request: Request) -> Metadata:
    """The call's metadata: the token (``Authorization``) and ``Grpc-Metadata-*`` headers."""
    items: list[tuple[str, str | bytes]] = []
    for name, values in request.requestHeaders.getAllRawHeaders():
        lowered = name.lower()
        for value in values:
            text = value.decode("latin-1")
            if lowered == b"authorization":
                items.append(("token", text.strip()))
            elif lowered.startswith(b"grpc-metadata-"):
                items.append((lowered[len(b"grpc-metadata-") :].decode("latin-1"), text))
    return Metadata(items)


def _status_of(error: BaseException) -> tuple[StatusCode, str]:
    if isinstance(error, GrpcError):
        return error.code, error.message
    if isinstance(error, KVError):
        return StatusCode[error.code], error.message
    return StatusCode.UNKNOWN, "lattice: internal error"


@implementer(IPushProducer)
class _Context:
    """
    The call as the service implementations see it (``lattice.kv._api.CallContext``).

    For a streamed answer it is also the response's producer: while the client does not
    read, the transport pauses it and :meth:`send` waits (as HTTP/2 flow control makes
    the gRPC side wait), so a slow reader holds up its own stream, not the node's memory.
    """

    def __init__(self, request: Request) -> None:
        self._request = request
        self._resumed: Deferred[None] | None = None
        self.wrote = False
        self.finished = False
        self.invocation_metadata = _metadata(request)
        self.peer_identity: PeerIdentity | None = peer_identity(request.channel.transport)

    async def send(self, message: Message) -> None:
        while self._resumed is not None and not self.finished:
            await self._resumed
        if self.finished:
            raise CancelledError()
        self.write_chunk(b'{"result":' + to_json(message) + b"}\n")

    def pauseProducing(self) -> None:
        if self._resumed is None:
            self._resumed = Deferred()

    def resumeProducing(self) -> None:
        resumed, self._resumed = self._resumed, None
        if resumed is not None:
            resumed.callback(None)

    def stopProducing(self) -> None:
        self.finished = True
        self.resumeProducing()

    def write_chunk(self, data: bytes, status: int = 200) -> None:
        """Write one chunk; the first sets the response's ``status``."""
        if not self.wrote:
            self.wrote = True
            self._request.setResponseCode(status)
            self._request.setHeader(b"content-type", _JSON)
        # One write is one HTTP chunk: clients (etcd3gw) read one message per chunk.
        self._request.write(data)


async def _requests(messages: Iterable[Message]) -> AsyncIterator[Message]:
    for message in messages:
        yield message


class Gateway(Resource):
    """
    ``/v3/...`` (put under the KV port's HTTP/1.1 site twice, as ``v3`` and ``v3beta``):
    the routes of :data:`ROUTES`, served by ``implementations`` (service name -> object
    with the snake_case methods, as given to the gRPC factory).
    """

    isLeaf = True

    def __init__(self, implementations: Mapping[str, object]) -> None:
        super().__init__()
        methods: dict[str, MethodInfo] = {}
        for name, implementation in implementations.items():
            service = rpc_pb2.DESCRIPTOR.services_by_name[name]
            for info in methods_for(service, implementation).values():
                methods[info.path.decode("ascii")] = info
        self._routes: dict[str, MethodInfo | None] = {
            route: methods.get(f"/etcdserverpb.{service}/{method}")
            for route, (service, method) in ROUTES.items()
        }

    def render(self, request: Request) -> Any:
        route = "/".join(segment.decode("latin-1") for segment in request.postpath or [])
        if route not in self._routes:
            return self._error(request, StatusCode.NOT_FOUND, f"no such route: /{route}")
        if request.method != b"POST":
            request.setHeader(b"allow", b"POST")
            request.setResponseCode(405)
            return _error_body(StatusCode.UNIMPLEMENTED, f"use POST for /{route}")
        info = self._routes[route]
        if info is None:
            return self._error(
                request, StatusCode.UNIMPLEMENTED, f"/{route} is not served by this backend"
            )
        assert request.content is not None
        try:
            messages = parse_body(request.content.read(), info.request_type)
        except ValueError as e:
            return self._error(request, StatusCode.INVALID_ARGUMENT, str(e))
        context = _Context(request)
        if info.server_streaming:
            request.registerProducer(context, True)
        call = Deferred.fromCoroutine(self._call(info, messages, context, request))

        def gone(reason: Failure) -> None:
            context.stopProducing()
            call.cancel()

        request.notifyFinish().addErrback(gone)
        return NOT_DONE_YET

    async def _call(
        self, info: MethodInfo, messages: list[Message], context: _Context, request: Request
    ) -> None:
        try:
            argument: Any = _requests(messages) if info.client_streaming else messages[0]
            result: Any = None
            if info.handler_is_generator:
                async for message in info.handler(argument, context):
                    await context.send(message)
            else:
                result = await info.handler(argument, context)
        except CancelledError:
            return
        except Exception as e:
            code, message = _status_of(e)
            if code is StatusCode.UNKNOWN:
                _log.failure("KV gateway call {path} failed", Failure(), path=info.path)
            if context.finished:
                return
            if info.server_streaming:
                context.write_chunk(_stream_error(code, message), _HTTP_STATUS.get(code, 500))
            else:
                request.setResponseCode(_HTTP_STATUS.get(code, 500))
                request.setHeader(b"content-type", _JSON)
                request.write(_error_body(code, message))
            _finish(request, info)
            return
        if context.finished:
            return
        if not info.server_streaming:
            request.setHeader(b"content-type", _JSON)
            request.write(to_json(result))
        elif not context.wrote:
            # a stream that ended without a message: an empty, successful answer
            request.setHeader(b"content-type", _JSON)
        _finish(request, info)

    def _error(self, request: Request, code: StatusCode, message: str) -> bytes:
        request.setResponseCode(_HTTP_STATUS.get(code, 500))
        request.setHeader(b"content-type", _JSON)
        return _error_body(code, message)


def _finish(request: Request, info: MethodInfo) -> None:
    if info.server_streaming:
        request.unregisterProducer()
    request.finish()


def _error_body(code: StatusCode, message: str) -> bytes:
    return json.dumps(
        {"error": message, "code": code.value, "message": message}, separators=(",", ":")
    ).encode()


def _stream_error(code: StatusCode, message: str) -> bytes:
    status = _HTTP_STATUS.get(code, 500)
    body = {
        "error": {
            "grpc_code": code.value,
            "http_code": status,
            "message": message,
            "http_status": HTTPStatus(status).phrase,
        }
    }
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"

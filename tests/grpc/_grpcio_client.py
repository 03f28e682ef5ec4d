"""
A stock grpcio client, run in a subprocess by the interoperability tests.

Usage: ``python -m tests.grpc._grpcio_client TARGET SCENARIO [CA CERT KEY]``.  Prints one JSON
object with what the scenario observed and exits 0 (failures of the call under test are
reported in the JSON, not by the exit status).
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from lattice.grpc.testing.echo_pb2 import EchoRequest, EchoResponse

ECHO = "/lattice.grpc.testing.Echo/"
SCENARIOS: dict[str, Callable[[grpc.Channel], dict[str, Any]]] = {}


def scenario(function: Callable[[grpc.Channel], dict[str, Any]]) -> Callable[..., Any]:
    SCENARIOS[function.__name__] = function
    return function


def _stub(channel: grpc.Channel, kind: str, method: str) -> Any:
    factory = getattr(channel, kind)
    return factory(
        ECHO + method,
        request_serializer=EchoRequest.SerializeToString,
        response_deserializer=EchoResponse.FromString,
    )


def _error(e: grpc.RpcError) -> dict[str, Any]:
    return {
        "code": e.code().name,
        "details": e.details(),
        "trailers": [
            [k, v.hex() if isinstance(v, bytes) else v] for k, v in (e.trailing_metadata() or ())
        ],
    }


@scenario
def unary(channel: grpc.Channel) -> dict[str, Any]:
    response = _stub(channel, "unary_unary", "UnaryEcho")(EchoRequest(message="hi"), timeout=10)
    return {"message": response.message}


@scenario
def server_stream(channel: grpc.Channel) -> dict[str, Any]:
    call = _stub(channel, "unary_stream", "ServerStreamEcho")
    return {"indexes": [r.index for r in call(EchoRequest(message="s", count=5), timeout=10)]}


@scenario
def client_stream(channel: grpc.Channel) -> dict[str, Any]:
    call = _stub(channel, "stream_unary", "ClientStreamEcho")
    response = call(iter([EchoRequest(message=c) for c in "abcd"]), timeout=10)
    return {"message": response.message}


@scenario
def bidi(channel: grpc.Channel) -> dict[str, Any]:
    call = _stub(channel, "stream_stream", "BidiEcho")
    requests = [EchoRequest(message=str(i), count=2) for i in range(3)]
    return {"responses": [[r.message, r.index] for r in call(iter(requests), timeout=10)]}


@scenario
def metadata(channel: grpc.Channel) -> dict[str, Any]:
    call = _stub(channel, "unary_unary", "UnaryEcho")
    _, state = call.with_call(
        EchoRequest(message="md"),
        metadata=[("echo-text", "hello"), ("echo-blob-bin", b"\x00\xff\x10")],
        timeout=10,
    )
    convert = lambda md: [[k, v.hex() if isinstance(v, bytes) else v] for k, v in md]  # noqa: E731
    return {
        "initial": convert(state.initial_metadata()),
        "trailing": convert(state.trailing_metadata()),
    }


@scenario
def deadline(channel: grpc.Channel) -> dict[str, Any]:
    try:
        _stub(channel, "unary_unary", "UnaryEcho")(EchoRequest(delay_ms=10_000), timeout=0.3)
    except grpc.RpcError as e:
        return _error(e)
    return {"code": "OK"}


@scenario
def cancel(channel: grpc.Channel) -> dict[str, Any]:
    future = _stub(channel, "unary_unary", "UnaryEcho").future(
        EchoRequest(delay_ms=10_000), timeout=20
    )
    # Wait until the server has seen the call: its stdin line says the handler is running.
    sys.stdin.readline()
    future.cancel()
    try:
        future.result()
    except grpc.FutureCancelledError:
        return {"code": "CANCELLED"}
    return {"code": "OK"}


@scenario
def large(channel: grpc.Channel) -> dict[str, Any]:
    call = _stub(channel, "unary_unary", "UnaryEcho")
    size = 4 * 1024 * 1024 - 64
    response = call(EchoRequest(payload=b"x" * size, response_size=size), timeout=30)
    result: dict[str, Any] = {"size": len(response.payload)}
    try:
        call(EchoRequest(payload=b"x" * (4 * 1024 * 1024 + 10)), timeout=30)
    except grpc.RpcError as e:
        result["too_large"] = _error(e)
    return result


@scenario
def details(channel: grpc.Channel) -> dict[str, Any]:
    try:
        _stub(channel, "unary_unary", "UnaryEcho")(
            EchoRequest(message="nö such thing 100%", fail_code=5, payload=b"\x08\x05"),
            timeout=10,
        )
    except grpc.RpcError as e:
        return _error(e)
    return {"code": "OK"}


@scenario
def gzip(channel: grpc.Channel) -> dict[str, Any]:
    call = _stub(channel, "unary_unary", "UnaryEcho")
    response = call(
        EchoRequest(message="zipped", payload=b"z" * 10_000),
        timeout=10,
        compression=grpc.Compression.Gzip,
    )
    return {"message": response.message, "size": len(response.payload)}


@scenario
def unimplemented(channel: grpc.Channel) -> dict[str, Any]:
    try:
        channel.unary_unary("/no.Such/Method")(b"", timeout=10)
    except grpc.RpcError as e:
        return _error(e)
    return {"code": "OK"}


@scenario
def concurrent(channel: grpc.Channel) -> dict[str, Any]:
    call = _stub(channel, "unary_unary", "UnaryEcho")
    futures = [call.future(EchoRequest(message=str(i)), timeout=10) for i in range(200)]
    return {"ok": sum(f.result().message == str(i) for i, f in enumerate(futures))}


@scenario
def slow(channel: grpc.Channel) -> dict[str, Any]:
    try:
        response = _stub(channel, "unary_unary", "UnaryEcho")(
            EchoRequest(message="slow", delay_ms=600), timeout=10
        )
    except grpc.RpcError as e:
        return _error(e)
    return {"code": "OK", "message": response.message}


@scenario
def peer(channel: grpc.Channel) -> dict[str, Any]:
    try:
        response = _stub(channel, "unary_unary", "UnaryEcho")(
            EchoRequest(message="peer"), timeout=10
        )
    except grpc.RpcError as e:
        return _error(e)
    return {"code": "OK", "message": response.message}


def main() -> None:
    target, name = sys.argv[1], sys.argv[2]
    if len(sys.argv) > 3:
        ca, cert, key = (Path(p).read_bytes() if p != "-" else None for p in sys.argv[3:6])
        credentials = grpc.ssl_channel_credentials(ca, key, cert)
        channel = grpc.secure_channel(
            target, credentials, options=[("grpc.ssl_target_name_override", "localhost")]
        )
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        result = SCENARIOS[name](channel)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    threading.stack_size(4 * 1024 * 1024)
    main()

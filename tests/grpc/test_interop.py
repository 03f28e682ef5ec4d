"""Interoperability with grpcio's Python client, run in a subprocess against a real listener."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString, connectProtocol, serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorProcess
from twisted.internet.protocol import ProcessProtocol, Protocol, connectionDone
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from lattice.grpc import GrpcServerFactory, GrpcServerOptions
from lattice.grpc.testing import ECHO_SERVICE, EchoService

ROOT = Path(__file__).resolve().parent.parent.parent


class _ClientProcess(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.errors = b""
        self.done: Deferred[int] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    def errReceived(self, data: bytes) -> None:
        self.errors += data

    def processEnded(self, reason: Failure) -> None:
        self.done.callback(getattr(reason.value, "exitCode", 0) or 0)


async def run_grpcio_client(
    target: str,
    scenario: str,
    tls: tuple[str, str, str] | None = None,
    *,
    release: Deferred[Any] | None = None,
) -> dict[str, Any]:
    """Run a grpcio client scenario; if *release* is given, write a line to it when it fires."""
    reactor: IReactorProcess = _reactor
    process = _ClientProcess()
    args = [sys.executable, "-m", "tests.grpc._grpcio_client", target, scenario, *(tls or ())]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    transport = reactor.spawnProcess(process, sys.executable, args, env=env, path=str(ROOT))
    if release is not None:
        release.addCallback(lambda _: transport.write(b"go\n"))
    code = await process.done
    if code != 0 or not process.output:
        raise AssertionError(
            f"grpcio client {scenario} failed ({code}):\n{process.errors.decode()}"
        )
    result: dict[str, Any] = json.loads(process.output)
    return result


class HttpGet(Protocol):
    """Sends ``GET /healthz`` and collects the response until the connection closes."""

    def __init__(self) -> None:
        self.data = b""
        self.reason: Failure | None = None
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(
            b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.reason = reason
        self.done.callback(self.data)


class InteropTests(TestCase):
    """A stock grpcio client uses Lattice's server without noticing."""

    timeout = 60

    async def _listen(self, options: GrpcServerOptions | None = None) -> str:
        self.service = EchoService(_reactor)
        root = Resource()
        root.putChild(b"healthz", Data(b"ok\n", "text/plain"))
        factory = GrpcServerFactory(
            _reactor, options or GrpcServerOptions(), http_fallback=Site(root)
        )
        factory.add_service(ECHO_SERVICE, self.service)
        self.factory = factory
        port: IListeningPort = await serverFromString(_reactor, "tcp:0:interface=127.0.0.1").listen(
            factory
        )
        # Cleanups run last-in first-out: stop accepting (grpcio reconnects
        # after a GOAWAY), then drain what is connected.
        self.addCleanup(factory.drain, 1)
        self.addCleanup(port.stopListening)
        return f"127.0.0.1:{port.getHost().port}"  # type: ignore[attr-defined]

    async def test_unary(self) -> None:
        """A unary call returns the echoed message."""
        result = await run_grpcio_client(await self._listen(), "unary")
        self.assertEqual(result, {"message": "hi"})

    async def test_server_stream(self) -> None:
        """A server-streaming call yields every response in order."""
        result = await run_grpcio_client(await self._listen(), "server_stream")
        self.assertEqual(result, {"indexes": [0, 1, 2, 3, 4]})

    async def test_client_stream(self) -> None:
        """A client-streaming call delivers every request to the handler."""
        result = await run_grpcio_client(await self._listen(), "client_stream")
        self.assertEqual(result, {"message": "abcd"})

    async def test_bidi(self) -> None:
        """A bidirectional call answers each request."""
        result = await run_grpcio_client(await self._listen(), "bidi")
        expected = [[str(i), j] for i in range(3) for j in range(2)]
        self.assertEqual(result, {"responses": expected})

    async def test_metadata(self) -> None:
        """Text and binary metadata travel both ways, as initial and trailing metadata."""
        result = await run_grpcio_client(await self._listen(), "metadata")
        self.assertEqual(result["initial"], [["echo-text", "hello"], ["echo-blob-bin", "00ff10"]])
        self.assertEqual(
            result["trailing"],
            [["trailer-echo-text", "hello"], ["trailer-echo-blob-bin", "00ff10"]],
        )

    async def test_deadline(self) -> None:
        """An expired deadline is DEADLINE_EXCEEDED and cancels the handler."""
        target = await self._listen()
        cancelled: Deferred[str] = Deferred()
        self.service.cancelled_event = cancelled
        result = await run_grpcio_client(target, "deadline")
        self.assertEqual(result["code"], "DEADLINE_EXCEEDED")
        self.assertEqual(await cancelled, "/lattice.grpc.testing.Echo/UnaryEcho")

    async def test_cancel(self) -> None:
        """A client cancelling a running call cancels the server's handler."""
        target = await self._listen()
        waiting: Deferred[str] = Deferred()
        cancelled: Deferred[str] = Deferred()
        self.service.waiting_event = waiting
        self.service.cancelled_event = cancelled
        result = await run_grpcio_client(target, "cancel", release=waiting)
        self.assertEqual(result["code"], "CANCELLED")
        self.assertEqual(await cancelled, "/lattice.grpc.testing.Echo/UnaryEcho")

    async def test_large_messages(self) -> None:
        """4 MiB messages pass both ways; bigger ones are RESOURCE_EXHAUSTED."""
        result = await run_grpcio_client(await self._listen(), "large")
        self.assertEqual(result["size"], 4 * 1024 * 1024 - 64)
        self.assertEqual(result["too_large"]["code"], "RESOURCE_EXHAUSTED")

    async def test_error_details(self) -> None:
        """Status code, UTF-8 message and binary details reach the client intact."""
        result = await run_grpcio_client(await self._listen(), "details")
        self.assertEqual(result["code"], "NOT_FOUND")
        self.assertEqual(result["details"], "nö such thing 100%")
        self.assertIn(["grpc-status-details-bin", "0805"], result["trailers"])

    async def test_gzip(self) -> None:
        """A gzip-compressed call is understood and answered."""
        result = await run_grpcio_client(await self._listen(), "gzip")
        self.assertEqual(result, {"message": "zipped", "size": 10_000})

    async def test_unimplemented(self) -> None:
        """An unknown method is UNIMPLEMENTED."""
        result = await run_grpcio_client(await self._listen(), "unimplemented")
        self.assertEqual(result["code"], "UNIMPLEMENTED")

    async def test_drain(self) -> None:
        """A graceful drain lets a running call finish before the connection closes."""
        target = await self._listen()
        waiting: Deferred[str] = Deferred()
        self.service.waiting_event = waiting
        drained: list[Deferred[None]] = []
        waiting.addCallback(lambda _: drained.append(self.factory.drain(5)))
        result = await run_grpcio_client(target, "slow")
        self.assertEqual(result, {"code": "OK", "message": "slow"})
        await drained[0]
        self.assertEqual(self.factory.connection_count, 0)

    async def test_keepalive(self) -> None:
        """grpcio answers the server's keepalive pings during a call."""
        options = GrpcServerOptions(keepalive_interval=0.05, keepalive_timeout=2)
        result = await run_grpcio_client(await self._listen(options), "slow")
        self.assertEqual(result, {"code": "OK", "message": "slow"})

    async def test_http11_same_port(self) -> None:
        """Plain HTTP/1.1 on the gRPC port reaches the fallback resource."""
        host, port = (await self._listen()).split(":")
        collector = HttpGet()
        await connectProtocol(clientFromString(_reactor, f"tcp:{host}:{port}"), collector)
        response = await collector.done
        self.assertTrue(response.startswith(b"HTTP/1.1 200 OK"), response)
        self.assertTrue(response.endswith(b"ok\n"))

    async def test_go_client(self) -> None:
        """etcdctl (grpc-go) connects, calls, and understands the UNIMPLEMENTED answer."""
        etcdctl = shutil.which("etcdctl")
        if etcdctl is None:
            raise SkipTest("etcdctl is not installed")
        target = await self._listen()
        _out, err, code = await getProcessOutputAndValue(
            etcdctl,
            ["--endpoints", target, "--command-timeout=10s", "get", "foo"],
            env=dict(os.environ, ETCDCTL_API="3"),
        )
        self.assertEqual(code, 1)
        self.assertIn(b"code = Unimplemented desc = Method not found: /etcdserverpb.KV/Range", err)

    async def test_concurrent_calls(self) -> None:
        """Two hundred concurrent calls succeed on a connection allowing ten streams."""
        target = await self._listen(GrpcServerOptions(max_concurrent_streams=10))
        result = await run_grpcio_client(target, "concurrent")
        self.assertEqual(result, {"ok": 200})

"""
Tests for L{lattice.kv._gateway}: etcd's JSON gateway in front of the KV services, driven
with an in-memory request (the integration tests run it against real clients and etcd).
"""

from __future__ import annotations

import base64
import json
from io import BytesIO
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers
from twisted.web.server import NOT_DONE_YET

from lattice.kv._api import services
from lattice.kv._gateway import Gateway, parse_body
from lattice.kv._proto import rpc_pb2 as pb
from tests.kv.test_api import ApiTestCase


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class _Channel:
    transport = None


class FakeRequest:
    """The parts of a C{twisted.web} request the gateway uses, recording what it writes."""

    def __init__(
        self,
        route: str,
        body: bytes,
        method: bytes = b"POST",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.method = method
        self.postpath = [segment.encode() for segment in route.split("/")]
        self.content = BytesIO(body)
        self.requestHeaders = Headers(
            {k.encode(): [v.encode()] for k, v in (headers or {}).items()}
        )
        self.channel = _Channel()
        self.code = 200
        self.headers: dict[bytes, bytes] = {}
        self.written: list[bytes] = []
        self.finished = False
        self.producer: Any = None
        self._finished: list[Deferred[None]] = []

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def write(self, data: bytes) -> None:
        assert not self.finished
        self.written.append(data)

    def finish(self) -> None:
        self.finished = True
        for waiting in self._finished:
            waiting.callback(None)

    def notifyFinish(self) -> Deferred[None]:
        waiting: Deferred[None] = Deferred()
        self._finished.append(waiting)
        return waiting

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def lose(self) -> None:
        """The client goes away."""
        for waiting in self._finished:
            waiting.errback(Failure(ConnectionError("gone")))

    def lines(self) -> list[Any]:
        return [json.loads(line) for line in b"".join(self.written).splitlines() if line]


class ParseBodyTests(SynchronousTestCase):
    """Request bodies as etcd's gateway reads them."""

    def test_objects(self) -> None:
        """An empty body is one empty request; several objects are several requests."""
        self.assertEqual(parse_body(b"", pb.RangeRequest), [pb.RangeRequest()])
        self.assertEqual(
            parse_body(b' {"key": "YQ=="}\n{"keys_only": true} ', pb.RangeRequest),
            [pb.RangeRequest(key=b"a"), pb.RangeRequest(keys_only=True)],
        )
        self.assertEqual(
            parse_body(b'{"key": "YQ==", "rangeEnd": "Yg==", "future": 1}', pb.RangeRequest),
            [pb.RangeRequest(key=b"a", range_end=b"b")],
        )

    def test_refused(self) -> None:
        """What is not a request is refused with a message naming the problem."""
        for body, words in (
            (b"{", "not JSON"),
            (b"[1]", "JSON object"),
            (b"\xff", "UTF-8"),
            (b'{"key": "a!!"}', "key is not base64"),
            (b'{"limit": "many"}', "limit"),
            (b'{"sort_order": "SIDEWAYS"}', "unknown value 'SIDEWAYS'"),
            (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, "nested too deeply"),
        ):
            error = self.assertRaises(ValueError, parse_body, body, pb.RangeRequest)
            self.assertIn(words, str(error), body)
        nested = b'{"compare": [{"key": "YQ==", "result": "MAYBE"}]}'
        error = self.assertRaises(ValueError, parse_body, nested, pb.TxnRequest)
        self.assertIn("unknown value 'MAYBE'", str(error))


class GatewayTests(ApiTestCase):
    """Routes, errors, streams and their flow control over the real services."""

    def setUp(self) -> None:
        super().setUp()
        self.gateway = Gateway(services(self.api))

    def request(self, route: str, body: Any = None, **headers: str) -> FakeRequest:
        data = body if isinstance(body, bytes) else json.dumps(body or {}).encode()
        request = FakeRequest(route, data, headers=headers)
        result = self.gateway.render(request)  # type: ignore[arg-type]
        if result is not NOT_DONE_YET:
            request.written.append(result)
            request.finish()
        return request

    def test_unary(self) -> None:
        """A put and a range answer etcd's JSON; errors carry the mapped status."""
        put = self.request("kv/put", {"key": b64(b"k"), "value": b64(b"v")})
        self.assertEqual((put.code, put.finished), (200, True))
        answer = self.request("kv/range", {"key": b64(b"k")}).lines()[0]
        self.assertEqual(answer["kvs"][0]["value"], b64(b"v"))
        self.assertEqual(answer["header"]["revision"], "2")
        missing = self.request("kv/put", {"value": b64(b"v")})
        self.assertEqual(
            (missing.code, missing.lines()[0]),
            (400, {"error": "etcdserver: key is not provided", "code": 3,
                   "message": "etcdserver: key is not provided"}),
        )  # fmt: skip
        future = self.request("kv/compaction", {"revision": "99"})
        self.assertEqual((future.code, future.lines()[0]["code"]), (400, 11))

    def test_routes(self) -> None:
        """Unknown routes are 404, other methods 405, both in JSON."""
        self.assertEqual(self.request("kv/nothing").code, 404)
        request = FakeRequest("kv/range", b"", method=b"GET")
        self.gateway.render(request)  # type: ignore[arg-type]
        self.assertEqual((request.code, request.headers[b"allow"]), (405, b"POST"))

    def test_watch_flow_control(self) -> None:
        """
        While the client does not read (the transport paused the response), the watch
        writes nothing more; resumed, the queued events follow, in order.
        """
        watch = self.request("watch", {"create_request": {"key": b64(b"w")}})
        self.assertTrue(watch.lines()[0]["result"]["created"])
        watch.producer.pauseProducing()
        for value in (b"1", b"2", b"3"):
            self.put(b"w", value)
        self.assertEqual(len(watch.lines()), 1)
        watch.producer.resumeProducing()
        values = [
            base64.b64decode(event["kv"]["value"])
            for line in watch.lines()[1:]
            for event in line["result"]["events"]
        ]
        self.assertEqual(values, [b"1", b"2", b"3"])
        self.assertFalse(watch.finished)
        self.assertEqual(len(self.api.watch_streams), 1)
        watch.lose()
        self.assertEqual(len(self.api.watch_streams), 0)

    def test_stream_error(self) -> None:
        """A stream refused before its first message answers the error's HTTP status."""
        self.request("auth/user/add", {"name": "root", "password": "pw"})
        self.request("auth/user/grant", {"user": "root", "role": "root"})
        self.assertEqual(self.request("auth/enable").code, 200)
        snapshot = self.request("maintenance/snapshot")
        self.assertEqual(snapshot.code, 400)
        self.assertEqual(
            snapshot.lines(),
            [
                {
                    "error": {
                        "grpc_code": 3,
                        "http_code": 400,
                        "message": "etcdserver: user name is empty",
                        "http_status": "Bad Request",
                    }
                }
            ],
        )
        self.assertTrue(snapshot.finished)

    def test_token(self) -> None:
        """The Authorization header carries the token."""
        self.request("auth/user/add", {"name": "root", "password": "pw"})
        self.request("auth/user/grant", {"user": "root", "role": "root"})
        self.request("auth/enable")
        token = self.request("auth/authenticate", {"name": "root", "password": "pw"})
        headers = {"Authorization": token.lines()[0]["token"]}
        put = self.request("kv/put", {"key": b64(b"k")}, **headers)
        self.assertEqual(put.code, 200)
        self.assertEqual(self.request("kv/put", {"key": b64(b"k")}).code, 400)

"""Tests for lattice.kv._upstream: failover, error mapping, tenant prefixes and shared watches."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from google.protobuf.message import Message
from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lattice.grpc import GrpcError, Metadata, StatusCode
from lattice.kv import _api
from lattice.kv._api import Limits
from lattice.kv._metrics import KVMetrics
from lattice.kv._proto import rpc_pb2 as pb
from lattice.kv._quota import Quotas
from lattice.kv._upstream import (
    UpstreamApi,
    UpstreamEndpoint,
    UpstreamKV,
    UpstreamLease,
    UpstreamPool,
    WatchMux,
    _UpstreamWatchStream,
    parse_endpoint,
)
from lattice.tls import PeerIdentity
from tests.kv.test_api import SlowContext

T = TypeVar("T")

Handler = Callable[[str, Message, Sequence[tuple[str, str]]], Message]


class FakeChannel:
    """A member: answers unary calls with ``handler`` (which may raise GrpcError)."""

    def __init__(self, name: str, handler: Handler) -> None:
        self.name = name
        self.handler = handler
        self.closed = False
        self.calls: list[tuple[str, Message, tuple[tuple[str, str], ...]]] = []

    async def unary_unary(
        self,
        method: str,
        request: Message,
        response_type: type[Any],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
        metadata: Sequence[tuple[str, str]] = (),
    ) -> Any:
        copy = type(request)()
        copy.CopyFrom(request)
        self.calls.append((method, copy, tuple(metadata)))
        return self.handler(method, request, metadata)

    def stream_stream(self, *args: Any, **kwargs: Any) -> Any:
        raise GrpcError(StatusCode.UNAVAILABLE, "no streams in this fake")

    def close(self) -> Deferred[None]:
        self.closed = True
        return Deferred()


def raising(code: StatusCode, message: str) -> Handler:
    def handler(method: str, request: Message, metadata: Sequence[tuple[str, str]]) -> Message:
        raise GrpcError(code, message)

    return handler


def answering(response: Message) -> Handler:
    def handler(method: str, request: Message, metadata: Sequence[tuple[str, str]]) -> Message:
        return response

    return handler


class Cluster:
    """Fake members by endpoint; a member set to ``None`` refuses connections."""

    def __init__(self, **members: Handler | None) -> None:
        self.members = members
        self.channels: dict[str, FakeChannel] = {}
        self.states: list[tuple[bool, bool]] = []

    async def connect(self, endpoint: UpstreamEndpoint) -> FakeChannel:
        handler = self.members[endpoint.host]
        if handler is None:
            raise ConnectionRefusedError(endpoint.url)
        channel = self.channels[endpoint.host] = FakeChannel(endpoint.host, handler)
        return channel

    def pool(self, clock: Clock) -> UpstreamPool:
        return UpstreamPool(
            clock,
            [f"http://{name}:2379" for name in self.members],
            self.connect,
            timeout=1.0,
            on_state=lambda lin, reachable, detail: self.states.append((lin, reachable)),
        )


class Context:
    def __init__(self, cn: str | None = None) -> None:
        self.peer_identity = PeerIdentity(cn, (), (), (), "00" * 32) if cn is not None else None
        self.invocation_metadata = Metadata([])
        self.sent: list[Any] = []

    async def send(self, message: Any) -> None:
        self.sent.append(message)


class UpstreamTestCase(SynchronousTestCase):
    def run_coroutine(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.successResultOf(Deferred.fromCoroutine(coroutine))

    def fail_coroutine(self, coroutine: Coroutine[Any, Any, Any]) -> GrpcError:
        error = self.failureResultOf(Deferred.fromCoroutine(coroutine), GrpcError).value
        assert isinstance(error, GrpcError)
        return error


class ParseEndpointTests(SynchronousTestCase):
    """Client URLs of members."""

    def test_urls(self) -> None:
        """http, https and bare host:port URLs parse; other schemes are refused."""
        self.assertEqual(parse_endpoint("http://10.0.0.1:2379").port, 2379)
        https = parse_endpoint("https://etcd.example:12379")
        self.assertEqual((https.scheme, https.host, https.port), ("https", "etcd.example", 12379))
        self.assertEqual(parse_endpoint("127.0.0.1:22379").scheme, "http")
        self.assertRaises(ValueError, parse_endpoint, "unix:///x")


class UpstreamPoolTests(UpstreamTestCase):
    """Failover between members and the mapping of upstream failures."""

    def test_failover_on_refused_connection(self) -> None:
        """A member refusing connections passes the call to the next one, which becomes current."""
        cluster = Cluster(a=None, b=answering(pb.RangeResponse(count=7)))
        pool = cluster.pool(Clock())
        response = self.run_coroutine(pool.call("/x", pb.RangeRequest(key=b"k"), pb.RangeResponse))
        self.assertEqual(response.count, 7)
        self.assertEqual(pool.current, 1)
        self.assertEqual(cluster.states[-1], (True, True))

    def test_linearizable_calls_require_a_leader(self) -> None:
        """Linearizable calls carry etcd's require-leader metadata; serializable ones do not."""
        cluster = Cluster(a=answering(pb.RangeResponse()))
        pool = cluster.pool(Clock())
        self.run_coroutine(pool.call("/x", pb.RangeRequest(), pb.RangeResponse))
        self.run_coroutine(pool.call("/x", pb.RangeRequest(), pb.RangeResponse, linearizable=False))
        calls = cluster.channels["a"].calls
        self.assertEqual([c[2] for c in calls], [(("hasleader", "true"),), ()])

    def test_no_leader_anywhere(self) -> None:
        """When no member has a leader, a linearizable call fails with the seed's error."""
        no_leader = raising(StatusCode.UNAVAILABLE, "etcdserver: no leader")
        cluster = Cluster(a=no_leader, b=no_leader, c=None)
        pool = cluster.pool(Clock())
        error = self.fail_coroutine(pool.call("/x", pb.PutRequest(key=b"k"), pb.PutResponse))
        self.assertEqual(error.code, StatusCode.UNAVAILABLE)
        self.assertTrue(error.message.startswith("linearizability unavailable"))
        # "no leader" is refused before proposal: both members were tried.
        self.assertEqual(len(cluster.channels["a"].calls), 1)
        self.assertEqual(len(cluster.channels["b"].calls), 1)
        self.assertEqual(cluster.states[-1], (False, True))

    def test_ambiguous_write_is_not_retried(self) -> None:
        """A write that timed out upstream may still apply: it is not sent to another member."""
        cluster = Cluster(
            a=raising(StatusCode.UNAVAILABLE, "etcdserver: request timed out"),
            b=answering(pb.PutResponse()),
        )
        pool = cluster.pool(Clock())
        error = self.fail_coroutine(pool.call("/x", pb.PutRequest(key=b"k"), pb.PutResponse))
        self.assertEqual(error.code, StatusCode.UNAVAILABLE)
        self.assertIn("linearizability unavailable", error.message)
        self.assertNotIn("b", cluster.channels)

    def test_reads_retry_elsewhere(self) -> None:
        """An idempotent read that timed out on one member is retried on the next."""
        cluster = Cluster(
            a=raising(StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"),
            b=answering(pb.RangeResponse(count=1)),
        )
        pool = cluster.pool(Clock())
        response = self.run_coroutine(
            pool.call("/x", pb.RangeRequest(), pb.RangeResponse, idempotent=True)
        )
        self.assertEqual(response.count, 1)

    def test_serializable_reads_without_members(self) -> None:
        """Serializable reads with no member reachable fail UNAVAILABLE and report it."""
        cluster = Cluster(a=None, b=None)
        pool = cluster.pool(Clock())
        error = self.fail_coroutine(
            pool.call("/x", pb.RangeRequest(), pb.RangeResponse, linearizable=False)
        )
        self.assertEqual(error.code, StatusCode.UNAVAILABLE)
        self.assertIn("no member reachable", error.message)
        self.assertEqual(cluster.states[-1], (False, False))

    def test_call_errors_pass_through(self) -> None:
        """Errors of the call itself are the cluster's answer and pass through unchanged."""
        cluster = Cluster(
            a=raising(StatusCode.INVALID_ARGUMENT, "etcdserver: key not found"),
            b=answering(pb.PutResponse()),
        )
        pool = cluster.pool(Clock())
        error = self.fail_coroutine(pool.call("/x", pb.PutRequest(), pb.PutResponse))
        self.assertEqual(
            (error.code, error.message), (StatusCode.INVALID_ARGUMENT, "etcdserver: key not found")
        )


def make_api(cluster: Cluster, **limits: Any) -> UpstreamApi:
    clock = Clock()
    return UpstreamApi(
        cluster.pool(clock),
        Quotas(0, 0, clock.seconds),
        Limits(**limits),
        KVMetrics(CollectorRegistry(), lambda: 0, lambda: 0),
        clock,
    )


class UpstreamServiceTests(UpstreamTestCase):
    """Lattice's boundary (tenants, lease bounds) in front of the cluster."""

    def test_tenant_prefix(self) -> None:
        """Keys go upstream under the tenant's prefix and come back without it."""
        seen: list[Message] = []

        def handler(method: str, request: Message, metadata: Sequence[tuple[str, str]]) -> Message:
            seen.append(request)
            if method.endswith("/Range"):
                return pb.RangeResponse(kvs=[{"key": b"acme\0foo", "value": b"v"}])
            return pb.PutResponse()

        api = make_api(Cluster(a=handler))
        kv = UpstreamKV(api)
        self.run_coroutine(kv.put(pb.PutRequest(key=b"foo", value=b"v"), Context("acme")))
        response = self.run_coroutine(
            kv.range(pb.RangeRequest(key=b"f", range_end=b"\0"), Context("acme"))
        )
        put, get = seen
        assert isinstance(put, pb.PutRequest) and isinstance(get, pb.RangeRequest)
        self.assertEqual(put.key, b"acme\0foo")
        self.assertEqual((get.key, get.range_end), (b"acme\0f", b"acme\1"))
        self.assertEqual(response.kvs[0].key, b"foo")

    def test_unavailable_is_counted(self) -> None:
        """The mapped error reaches the client and the error metric."""
        api = make_api(Cluster(a=raising(StatusCode.UNAVAILABLE, "etcdserver: no leader")))
        error = self.fail_coroutine(UpstreamKV(api).put(pb.PutRequest(key=b"k"), Context()))
        self.assertEqual(error.code, StatusCode.UNAVAILABLE)
        assert api.metrics is not None
        self.assertEqual(api.metrics.errors.labels("Put", "UNAVAILABLE")._value.get(), 1)

    def test_lease_ttl_bounds(self) -> None:
        """TTL 0 becomes the default; a TTL above the maximum never reaches the cluster."""
        cluster = Cluster(a=answering(pb.LeaseGrantResponse(ID=5, TTL=30)))
        api = make_api(cluster, lease_ttl_default=30, lease_ttl_max=100)
        leases = UpstreamLease(api)
        self.run_coroutine(leases.lease_grant(pb.LeaseGrantRequest(TTL=0), Context("t")))
        error = self.fail_coroutine(leases.lease_grant(pb.LeaseGrantRequest(TTL=101), Context("t")))
        self.assertEqual(error.message, "etcdserver: too large lease TTL")
        calls = cluster.channels["a"].calls
        self.assertEqual(len(calls), 1)
        request = calls[0][1]
        assert isinstance(request, pb.LeaseGrantRequest)
        self.assertEqual(request.TTL, 30)
        # Another tenant cannot revoke it.
        error = self.fail_coroutine(
            leases.lease_revoke(pb.LeaseRevokeRequest(ID=5), Context("other"))
        )
        self.assertEqual(error.code, StatusCode.NOT_FOUND)


class FakeWatchStream:
    """An upstream Watch call: records sent requests; the test feeds responses."""

    def __init__(self) -> None:
        self.sent: list[pb.WatchRequest] = []

    async def send(self, message: pb.WatchRequest) -> None:
        self.sent.append(message)


class Subscriber:
    def __init__(self) -> None:
        self.got: list[tuple[int, pb.WatchResponse]] = []

    def deliver(self, watch_id: int, response: pb.WatchResponse) -> None:
        self.got.append((watch_id, response))


class WatchMuxTests(UpstreamTestCase):
    """Client watches share upstream watches."""

    def test_shared_upstream_watch(self) -> None:
        """Two client watches on one range use one upstream watch; events fan out, stripped."""
        mux = WatchMux(Cluster(a=None).pool(Clock()))
        stream = FakeWatchStream()
        mux._call = stream  # type: ignore[assignment]
        mux._running = Deferred()  # the stream is "open"
        first, second = Subscriber(), Subscriber()
        key = (b"t\0a", b"t\0b", (), False, False)
        d1 = Deferred.fromCoroutine(mux.subscribe(first, 1, key, 0, 2))
        d2 = Deferred.fromCoroutine(mux.subscribe(second, 7, key, 0, 2))
        self.assertEqual(len(stream.sent), 1)
        upstream_id = stream.sent[0].create_request.watch_id
        created = pb.WatchResponse(watch_id=upstream_id, created=True)
        created.header.revision = 10
        mux._received(created)
        self.assertTrue(self.successResultOf(d1)[1].created)
        self.assertTrue(self.successResultOf(d2)[1].created)
        events = pb.WatchResponse(watch_id=upstream_id)
        events.header.revision = 11
        events.events.add().kv.CopyFrom(pb.WatchResponse().events.add().kv)
        events.events[0].kv.key = b"t\0a1"
        events.events[0].kv.mod_revision = 11
        mux._received(events)
        self.assertEqual([(i, r.events[0].kv.key) for i, r in first.got], [(1, b"a1")])
        self.assertEqual([(i, r.events[0].kv.key) for i, r in second.got], [(7, b"a1")])
        # A reconnection resumes after the last delivered revision.
        (shared,) = mux.by_id.values()
        self.assertEqual(shared.request().create_request.start_revision, 12)
        # The last client watch cancels the upstream one.
        self.run_coroutine(mux.unsubscribe(shared, first, 1))
        self.assertEqual(len(stream.sent), 1)
        self.run_coroutine(mux.unsubscribe(shared, second, 7))
        self.assertEqual(stream.sent[-1].cancel_request.watch_id, upstream_id)
        self.assertEqual(len(mux), 0)


class SlowUpstreamWatchTests(UpstreamTestCase):
    """A client watch that does not read leaves the shared upstream watch, then catches up."""

    def test_caught_up_from_its_revision(self) -> None:
        """
        Past the bound the client watch stops queueing and leaves the shared upstream
        watch; once the client read, it re-subscribes from the first revision it missed,
        so it gets every event once, in order.
        """
        self.patch(_api, "SLOW_WATCH_BYTES", 3000)
        api = make_api(Cluster(a=None))
        upstream = FakeWatchStream()
        api.mux._call = upstream  # type: ignore[assignment]
        api.mux._running = Deferred()  # the stream is "open"
        context = SlowContext()
        stream = _UpstreamWatchStream(api, api.caller(context), context)
        sender = Deferred.fromCoroutine(stream.send_loop())
        created = Deferred.fromCoroutine(
            stream.create(pb.WatchCreateRequest(key=b"k", range_end=b"l"))
        )
        shared_id = upstream.sent[-1].create_request.watch_id
        answer = pb.WatchResponse(watch_id=shared_id, created=True)
        answer.header.revision = 1
        api.mux._received(answer)
        self.successResultOf(created)

        def revision(watch_id: int, rev: int) -> pb.WatchResponse:
            response = pb.WatchResponse(watch_id=watch_id)
            response.header.revision = rev
            kv = response.events.add().kv
            kv.key, kv.value, kv.mod_revision = b"default\0k", b"%03d" % rev + b"x" * 997, rev
            return response

        for rev in range(2, 12):
            api.mux._received(revision(shared_id, rev))
        self.assertLessEqual(stream.queued_bytes, 3000 + 1100)
        ((watch_id, missed),) = stream.suspended.items()
        self.assertEqual(watch_id, 0)
        # it left the shared upstream watch (its only subscriber: cancelled upstream)
        self.assertEqual(upstream.sent[-1].cancel_request.watch_id, shared_id)
        while context.gate:
            context.gate.pop(0).callback(None)
        again = upstream.sent[-1].create_request
        self.assertEqual((again.start_revision, again.key), (missed, b"default\0k"))
        answer = pb.WatchResponse(watch_id=again.watch_id, created=True)
        answer.header.revision = 11
        api.mux._received(answer)
        for rev in range(missed, 14):
            # a client that now reads as fast as events come
            api.mux._received(revision(again.watch_id, rev))
            while context.gate:
                context.gate.pop(0).callback(None)
        values = [e.kv.value[:3] for r in context.sent for e in r.events]
        self.assertEqual(values, [b"%03d" % rev for rev in range(2, 14)])
        self.assertEqual([bool(r.created) for r in context.sent].count(True), 1)
        self.assertEqual((stream.suspended, stream.queued_bytes), ({}, 0))
        self.run_coroutine(stream.close())
        while context.gate:
            context.gate.pop(0).callback(None)
        self.successResultOf(sender)

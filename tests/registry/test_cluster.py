"""
Tests for L{lattice.registry._cluster.ClusterStoreAdapter}: the registry's store over the
shared etcd cluster, against fake members (the real cluster is in
C{tests.integration.test_registry_cluster}).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf.message import Message
from twisted.internet.defer import Deferred

from lattice.grpc import GrpcError, StatusCode
from lattice.kv._proto import kv_pb2
from lattice.kv._proto import rpc_pb2 as pb
from lattice.kv._upstream import REQUIRE_LEADER
from lattice.registry._cluster import ClusterStoreAdapter
from lattice.registry._store import StoredValue, StoreEvent
from tests.kv.test_upstream import (
    Cluster,
    FakeChannel,
    FakeWatchStream,
    Handler,
    UpstreamTestCase,
    make_api,
)


class KeepAliveCall:
    """A one-request C{LeaseKeepAlive} stream answered with C{ttl}."""

    def __init__(self, ttl: int) -> None:
        self.ttl = ttl
        self.sent: list[pb.LeaseKeepAliveRequest] = []
        self.cancelled = False

    async def send(self, message: pb.LeaseKeepAliveRequest) -> None:
        self.sent.append(message)

    async def receive(self) -> pb.LeaseKeepAliveResponse:
        return pb.LeaseKeepAliveResponse(ID=self.sent[-1].ID, TTL=self.ttl)

    def cancel(self) -> None:
        self.cancelled = True


class Member:
    """A fake member's unary answers, by method name, recording each request."""

    def __init__(self, **answers: Message | GrpcError) -> None:
        self.answers = answers
        self.requests: list[tuple[str, Message, tuple[tuple[str, str], ...]]] = []

    def __call__(self, method: str, request: Message, metadata: Sequence[tuple[str, str]]) -> Any:
        name = method.rsplit("/", 1)[1]
        self.requests.append((name, request, tuple(metadata)))
        answer = self.answers[name]
        if isinstance(answer, GrpcError):
            raise answer
        return answer


def kv(key: bytes, value: bytes, revision: int) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(
        key=key, value=value, mod_revision=revision, create_revision=revision - 1, version=2
    )


class ClusterStoreAdapterTests(UpstreamTestCase):
    """Reads, writes, watches and leases in the registry tenant's keyspace upstream."""

    def adapter(self, handler: Handler, *others: Handler | None) -> ClusterStoreAdapter:
        members: dict[str, Handler | None] = {"a": handler}
        members.update({f"m{i}": h for i, h in enumerate(others)})
        self.cluster = Cluster(**members)
        return ClusterStoreAdapter(make_api(self.cluster), tenant="default")

    def test_reads_strip_the_tenant_prefix(self) -> None:
        """C{get} and C{range} ask for the prefixed keys and hand back the bare ones."""
        range_response = pb.RangeResponse(kvs=[kv(b"default\0/services/irc/config", b"{}", 7)])
        range_response.header.revision = 9
        member = Member(Range=range_response)
        adapter = self.adapter(member)
        self.assertEqual(
            self.run_coroutine(adapter.get(b"/services/irc/config")),
            StoredValue(b"/services/irc/config", b"{}", 7, 6, 2),
        )
        values, revision = self.run_coroutine(adapter.range(b"/services/", limit=5))
        self.assertEqual([v.key for v in values], [b"/services/irc/config"])
        self.assertEqual(revision, 9)
        (_, get, get_metadata), (_, scan, _) = member.requests
        assert isinstance(get, pb.RangeRequest) and isinstance(scan, pb.RangeRequest)
        self.assertEqual((get.key, get.range_end), (b"default\0/services/irc/config", b""))
        self.assertEqual(
            (scan.key, scan.range_end, scan.limit),
            (b"default\0/services/", b"default\0/services0", 5),
        )
        # Linearizable: etcd refuses it without a leader instead of answering stale data.
        self.assertEqual(get_metadata, REQUIRE_LEADER)

    def test_get_missing(self) -> None:
        """A key the cluster does not have is C{None}."""
        adapter = self.adapter(Member(Range=pb.RangeResponse()))
        self.assertIsNone(self.run_coroutine(adapter.get(b"/nothing")))

    def test_writes(self) -> None:
        """C{put} (with its lease) and C{delete} (one key or a prefix) go to the prefixed keys."""
        put = pb.PutResponse()
        put.header.revision = 12
        member = Member(Put=put, DeleteRange=pb.DeleteRangeResponse(deleted=3))
        adapter = self.adapter(member)
        self.assertEqual(self.run_coroutine(adapter.put(b"/ads/x", b"v", lease=0x55)), 12)
        self.assertEqual(self.run_coroutine(adapter.delete(b"/ads/", prefix=True)), 3)
        (_, sent_put, _), (_, sent_delete, _) = member.requests
        assert isinstance(sent_put, pb.PutRequest)
        assert isinstance(sent_delete, pb.DeleteRangeRequest)
        self.assertEqual((sent_put.key, sent_put.lease), (b"default\0/ads/x", 0x55))
        self.assertEqual(
            (sent_delete.key, sent_delete.range_end), (b"default\0/ads/", b"default\0/ads0")
        )

    def test_ambiguous_write_is_not_retried(self) -> None:
        """
        A put that may have reached the cluster is not sent to another member: the caller
        gets UNAVAILABLE "linearizability unavailable" and decides.
        """
        first = Member(Put=GrpcError(StatusCode.DEADLINE_EXCEEDED, "context deadline exceeded"))
        second = Member(Put=pb.PutResponse())
        adapter = self.adapter(first, second)
        error = self.fail_coroutine(adapter.put(b"/k", b"v"))
        self.assertEqual(error.code, StatusCode.UNAVAILABLE)
        self.assertIn("linearizability unavailable", error.message)
        self.assertEqual(second.requests, [])

    def test_reads_fail_over(self) -> None:
        """A read that a member cannot serve is asked of the next one."""
        refusing = Member(Range=GrpcError(StatusCode.UNAVAILABLE, "etcdserver: no leader"))
        answering = Member(Range=pb.RangeResponse(kvs=[kv(b"default\0/k", b"v", 3)]))
        adapter = self.adapter(refusing, answering)
        value = self.run_coroutine(adapter.get(b"/k"))
        assert value is not None
        self.assertEqual(value.value, b"v")

    def test_lease_grant_and_revoke(self) -> None:
        """
        Leases belong to the registry's tenant (as if granted through the listener); a
        revoked lease that the cluster no longer knows is not an error.
        """
        member = Member(
            LeaseGrant=pb.LeaseGrantResponse(ID=0x77, TTL=10),
            LeaseRevoke=GrpcError(StatusCode.NOT_FOUND, "etcdserver: requested lease not found"),
        )
        adapter = self.adapter(member)
        self.assertEqual(self.run_coroutine(adapter.lease_grant(10)), 0x77)
        self.assertEqual(adapter.api.lease_tenants[0x77], "default")
        self.run_coroutine(adapter.lease_revoke(0x77))
        self.assertNotIn(0x77, adapter.api.lease_tenants)

    def test_lease_revoke_errors_pass_through(self) -> None:
        """Other revocation failures reach the caller."""
        member = Member(LeaseRevoke=GrpcError(StatusCode.PERMISSION_DENIED, "denied"))
        adapter = self.adapter(member)
        self.assertEqual(
            self.fail_coroutine(adapter.lease_revoke(1)).code, StatusCode.PERMISSION_DENIED
        )

    def keepalive_adapter(self, ttl: int | None) -> tuple[ClusterStoreAdapter, list[Any]]:
        calls: list[Any] = []

        def stream_stream(*args: Any, **kwargs: Any) -> Any:
            if ttl is None:
                raise GrpcError(StatusCode.UNAVAILABLE, "etcdserver: no leader")
            call = KeepAliveCall(ttl)
            calls.append(call)
            return call

        adapter = self.adapter(Member())
        channel = self.run_coroutine(adapter.api.pool.channel(0))
        assert isinstance(channel, FakeChannel)
        channel.stream_stream = stream_stream  # type: ignore[method-assign]
        return adapter, calls

    def test_lease_keepalive(self) -> None:
        """A renewed lease is alive; the stream is closed after the one answer."""
        adapter, calls = self.keepalive_adapter(ttl=10)
        self.assertTrue(self.run_coroutine(adapter.lease_keepalive(0x42)))
        (call,) = calls
        self.assertEqual([r.ID for r in call.sent], [0x42])
        self.assertTrue(call.cancelled)

    def test_lease_gone(self) -> None:
        """A TTL of zero means the cluster dropped the lease: the registry must re-advertise."""
        adapter, _ = self.keepalive_adapter(ttl=0)
        adapter.api.lease_tenants[0x42] = "default"
        self.assertFalse(self.run_coroutine(adapter.lease_keepalive(0x42)))
        self.assertNotIn(0x42, adapter.api.lease_tenants)

    def test_lease_unknown_while_unreachable(self) -> None:
        """
        While no member answers, the lease may still be alive: C{True}, and the next
        renewal tells.
        """
        adapter, _ = self.keepalive_adapter(ttl=None)
        self.assertTrue(self.run_coroutine(adapter.lease_keepalive(0x42)))

    def test_watch(self) -> None:
        """
        A watch shares the listener's upstream watch stream, delivers events without the
        prefix (deletions as C{None}), and its cancel function unsubscribes.
        """
        adapter = self.adapter(Member())
        mux = adapter.api.mux
        stream = FakeWatchStream()
        mux._call = stream  # type: ignore[assignment]
        mux._running = Deferred()
        got: list[list[StoreEvent]] = []
        cancel = adapter.watch(b"/services/", 5, got.append)
        (create,) = stream.sent
        self.assertEqual(
            (create.create_request.key, create.create_request.range_end),
            (b"default\0/services/", b"default\0/services0"),
        )
        self.assertEqual(create.create_request.start_revision, 5)
        upstream_id = create.create_request.watch_id
        mux._received(pb.WatchResponse(watch_id=upstream_id, created=True))
        events = pb.WatchResponse(watch_id=upstream_id)
        put = events.events.add()
        put.kv.CopyFrom(kv(b"default\0/services/irc/config", b"{}", 6))
        deleted = events.events.add(type=kv_pb2.Event.DELETE)
        deleted.kv.CopyFrom(kv(b"default\0/services/old/config", b"", 6))
        mux._received(events)
        self.assertEqual(
            got,
            [
                [
                    StoreEvent(b"/services/irc/config", b"{}", 6),
                    StoreEvent(b"/services/old/config", None, 6),
                ]
            ],
        )
        cancel()
        self.assertEqual(stream.sent[-1].cancel_request.watch_id, upstream_id)
        # Nothing more is delivered after the cancel.
        mux._received(events)
        self.assertEqual(len(got), 1)

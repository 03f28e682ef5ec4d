"""Tests for lattice.kv._api: validation, tenants, auth, quotas and error mapping."""

from __future__ import annotations

from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry
from twisted.internet.defer import CancelledError, Deferred
from twisted.trial.unittest import SynchronousTestCase

from lattice.grpc import GrpcError, Metadata, StatusCode
from lattice.kv import KVStore, _api
from lattice.kv._api import (
    AuthService,
    ClusterService,
    EtcdApi,
    KVService,
    LeaseService,
    Limits,
    MaintenanceService,
    WatchService,
)
from lattice.kv._auth import AuthStore
from lattice.kv._metrics import KVMetrics
from lattice.kv._proto import auth_pb2
from lattice.kv._proto import rpc_pb2 as pb
from lattice.kv._quota import Quotas
from lattice.kv.testing import MemoryStorage
from lattice.tls import PeerIdentity

T = TypeVar("T")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Context:
    """The parts of a ServerContext the boundary uses."""

    def __init__(self, cn: str | None = None, token: str | None = None) -> None:
        self.peer_identity = PeerIdentity(cn, (), (), (), "00" * 32) if cn is not None else None
        self.invocation_metadata = Metadata([("token", token)] if token else [])
        self.sent: list[Any] = []

    async def send(self, message: Any) -> None:
        self.sent.append(message)


class Requests:
    """A client stream the test feeds and ends."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.waiting: Deferred[None] | None = None
        self.ended = False

    def feed(self, item: Any) -> None:
        self.items.append(item)
        self._wake()

    def end(self) -> None:
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        if self.waiting is not None:
            waiting, self.waiting = self.waiting, None
            waiting.callback(None)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            while self.items:
                yield self.items.pop(0)
            if self.ended:
                return
            self.waiting = Deferred()
            await self.waiting


class ApiTestCase(SynchronousTestCase):
    def end_watch(self, done: Deferred[None]) -> None:
        """
        The client cancels its Watch call (ending its requests keeps the watches, as
        with etcd), which ends.
        """
        self.assertNoResult(done)
        done.cancel()
        self.failureResultOf(done, CancelledError)

    def setUp(self) -> None:
        self.clock = Clock()
        self.storage = MemoryStorage()
        self.store = KVStore(self.storage, self.clock, cluster_id=1, member_id=2)
        self.store.restore(self.storage.load())
        self.registry = CollectorRegistry()
        self.metrics = KVMetrics(self.registry, lambda: self.store.revision, lambda: 0)
        self.api = self.make_api()
        self.kv = KVService(self.api)
        self.lease = LeaseService(self.api)
        self.watch = WatchService(self.api)
        self.auth = AuthService(self.api)

    def make_api(self, qps: int = 0, size: int = 0) -> EtcdApi:
        return EtcdApi(
            self.store,
            AuthStore(self.clock),
            Quotas(qps, size, self.clock),
            Limits(max_request_bytes=4096, lease_ttl_default=30, lease_ttl_max=600),
            self.metrics,
            client_urls=lambda: ["http://127.0.0.1:2379"],
        )

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.successResultOf(Deferred.fromCoroutine(coroutine))

    def fails(self, coroutine: Coroutine[Any, Any, Any]) -> GrpcError:
        failure = self.failureResultOf(Deferred.fromCoroutine(coroutine), GrpcError)
        error = failure.value
        assert isinstance(error, GrpcError)
        return error

    def put(
        self, key: bytes, value: bytes = b"v", context: Context | None = None, **kw: Any
    ) -> pb.PutResponse:
        return self.call(
            self.kv.put(pb.PutRequest(key=key, value=value, **kw), context or Context())
        )

    def keys(self, context: Context, key: bytes = b"\0", end: bytes = b"\0") -> list[bytes]:
        response = self.call(self.kv.range(pb.RangeRequest(key=key, range_end=end), context))
        return [kv.key for kv in response.kvs]


class KVBoundaryTests(ApiTestCase):
    """The KV service's validation and error mapping."""

    def test_round_trip(self) -> None:
        """A put is read back with the header filled in."""
        self.put(b"a", b"1")
        response = self.call(self.kv.range(pb.RangeRequest(key=b"a"), Context()))
        self.assertEqual([(kv.key, kv.value) for kv in response.kvs], [(b"a", b"1")])
        self.assertEqual((response.header.cluster_id, response.header.member_id), (1, 2))

    def test_empty_key(self) -> None:
        """An empty key is INVALID_ARGUMENT with etcd's message."""
        error = self.fails(self.kv.range(pb.RangeRequest(), Context()))
        self.assertEqual(
            (error.code, error.message),
            (StatusCode.INVALID_ARGUMENT, "etcdserver: key is not provided"),
        )

    def test_request_too_large(self) -> None:
        """A put above max_request_bytes is refused."""
        error = self.fails(self.kv.put(pb.PutRequest(key=b"k", value=b"x" * 5000), Context()))
        self.assertEqual(error.message, "etcdserver: request is too large")
        self.assertEqual(self.store.revision, 1)

    def test_compacted(self) -> None:
        """A compacted revision is OUT_OF_RANGE with etcd's message."""
        self.put(b"a")
        self.put(b"a")
        self.call(self.kv.compact(pb.CompactionRequest(revision=3), Context()))
        error = self.fails(self.kv.range(pb.RangeRequest(key=b"a", revision=2), Context()))
        self.assertEqual(error.code, StatusCode.OUT_OF_RANGE)

    def test_too_many_ops(self) -> None:
        """More than 128 ops in a txn is refused."""
        ops = [pb.RequestOp(request_put=pb.PutRequest(key=b"k%d" % i)) for i in range(129)]
        error = self.fails(self.kv.txn(pb.TxnRequest(success=ops), Context()))
        self.assertEqual(error.message, "etcdserver: too many operations in txn request")

    def test_waits_for_durability(self) -> None:
        """A put is answered only once storage has committed it."""
        self.storage.auto_commit = False
        answer = Deferred.fromCoroutine(self.kv.put(pb.PutRequest(key=b"a"), Context()))
        self.assertNoResult(answer)
        self.storage.commit()
        self.assertEqual(self.successResultOf(answer).header.revision, 2)

    def test_nospace_alarm(self) -> None:
        """While the NOSPACE alarm is raised, writes fail and reads work."""
        maintenance = MaintenanceService(self.api)
        self.call(
            maintenance.alarm(
                pb.AlarmRequest(action=pb.AlarmRequest.ACTIVATE, alarm=pb.NOSPACE), Context()
            )
        )
        error = self.fails(self.kv.put(pb.PutRequest(key=b"a"), Context()))
        self.assertEqual(error.code, StatusCode.RESOURCE_EXHAUSTED)
        self.assertEqual(self.keys(Context()), [])

    def test_metrics(self) -> None:
        """Requests and errors are counted per method."""
        self.put(b"a")
        self.fails(self.kv.put(pb.PutRequest(), Context()))
        value = self.registry.get_sample_value
        self.assertEqual(value("lattice_adapter_etcd_requests_total", {"method": "Put"}), 2)
        self.assertEqual(
            value(
                "lattice_adapter_etcd_errors_total", {"method": "Put", "code": "INVALID_ARGUMENT"}
            ),
            1,
        )
        self.assertEqual(value("lattice_kv_revision"), 2)
        self.assertEqual(
            value("lattice_adapter_etcd_request_duration_seconds_count", {"method": "Put"}), 2
        )


class TenantTests(ApiTestCase):
    """Each tenant sees only its own keyspace, through every API."""

    def setUp(self) -> None:
        super().setUp()
        self.alice, self.bob = Context(cn="alice"), Context(cn="bob")
        self.put(b"k1", b"a", self.alice)
        self.put(b"k2", b"a", self.alice)
        self.put(b"k1", b"b", self.bob)

    def test_ranges(self) -> None:
        """All-keys, prefix and from-key ranges stay inside the tenant, with its own keys."""
        self.assertEqual(self.keys(self.alice), [b"k1", b"k2"])
        self.assertEqual(self.keys(self.bob), [b"k1"])
        self.assertEqual(self.keys(Context()), [])
        self.assertEqual(self.keys(self.alice, b"k", b"l"), [b"k1", b"k2"])
        self.assertEqual(self.keys(self.bob, b"k2", b"\0"), [])

    def test_delete_from_key(self) -> None:
        """A from-key delete removes only the tenant's keys."""
        response = self.call(
            self.kv.delete_range(
                pb.DeleteRangeRequest(key=b"\0", range_end=b"\0", prev_kv=True), self.bob
            )
        )
        self.assertEqual([kv.key for kv in response.prev_kvs], [b"k1"])
        self.assertEqual(self.keys(self.alice), [b"k1", b"k2"])

    def test_txn(self) -> None:
        """Txn compares, writes and reads are all inside the tenant."""
        request = pb.TxnRequest(
            compare=[
                pb.Compare(key=b"k2", target=pb.Compare.VERSION, result=pb.Compare.EQUAL, version=0)
            ],
            success=[
                pb.RequestOp(request_put=pb.PutRequest(key=b"k2", value=b"b", prev_kv=True)),
                pb.RequestOp(request_range=pb.RangeRequest(key=b"\0", range_end=b"\0")),
            ],
        )
        response = self.call(self.kv.txn(request, self.bob))
        self.assertTrue(response.succeeded)
        keys = [kv.key for kv in response.responses[1].response_range.kvs]
        self.assertEqual(keys, [b"k1", b"k2"])
        self.assertEqual(
            self.call(self.kv.range(pb.RangeRequest(key=b"k2"), self.alice)).kvs[0].value, b"a"
        )

    def test_watch(self) -> None:
        """A watch on every key sees only the tenant's events, with its own key names."""
        requests = Requests()
        done = Deferred.fromCoroutine(self.watch.watch(requests, self.bob))
        requests.feed(
            pb.WatchRequest(
                create_request=pb.WatchCreateRequest(
                    key=b"\0", range_end=b"\0", start_revision=1, prev_kv=True
                )
            )
        )
        self.put(b"k1", b"again", self.alice)
        self.put(b"k1", b"again", self.bob)
        self.end_watch(done)
        sent = self.bob_watch_sent = self._sent(self.bob)
        self.assertTrue(sent[0].created)
        events = [(e.kv.key, e.kv.value, e.prev_kv.value) for r in sent[1:] for e in r.events]
        self.assertEqual(events, [(b"k1", b"b", b""), (b"k1", b"again", b"b")])

    def test_half_closed_watch_goes_on(self) -> None:
        """
        A client that ends its requests (half-closes) keeps receiving events, as from
        etcd, until it cancels the call.
        """
        requests = Requests()
        done = Deferred.fromCoroutine(self.watch.watch(requests, self.bob))
        requests.feed(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"later")))
        requests.end()
        self.put(b"later", b"1", self.bob)
        self.assertNoResult(done)
        sent = self._sent(self.bob)
        self.assertEqual([e.kv.value for r in sent for e in r.events], [b"1"])
        self.end_watch(done)
        self.assertEqual(self.api.watch_streams, set())

    def _sent(self, context: Context) -> list[pb.WatchResponse]:
        return [m for m in context.sent if m.ByteSize()]

    def test_leases(self) -> None:
        """A tenant cannot see, use or revoke another tenant's lease."""
        grant = self.call(self.lease.lease_grant(pb.LeaseGrantRequest(TTL=60), self.alice))
        self.put(b"held", b"v", self.alice, lease=grant.ID)
        error = self.fails(self.kv.put(pb.PutRequest(key=b"x", lease=grant.ID), self.bob))
        self.assertEqual(error.code, StatusCode.NOT_FOUND)
        error = self.fails(self.lease.lease_revoke(pb.LeaseRevokeRequest(ID=grant.ID), self.bob))
        self.assertEqual(error.message, "etcdserver: requested lease not found")
        self.assertEqual(
            len(self.call(self.lease.lease_leases(pb.LeaseLeasesRequest(), self.bob)).leases), 0
        )
        ttl = self.call(
            self.lease.lease_time_to_live(
                pb.LeaseTimeToLiveRequest(ID=grant.ID, keys=True), self.alice
            )
        )
        self.assertEqual((list(ttl.keys), ttl.grantedTTL), ([b"held"], 60))
        other = self.call(
            self.lease.lease_time_to_live(pb.LeaseTimeToLiveRequest(ID=grant.ID), self.bob)
        )
        self.assertEqual(other.TTL, -1)


class LeaseBoundaryTests(ApiTestCase):
    """Lease TTL bounds and keep-alives."""

    def test_default_and_maximum(self) -> None:
        """TTL 0 gets the configured default; above the maximum is refused."""
        grant = self.call(self.lease.lease_grant(pb.LeaseGrantRequest(TTL=0), Context()))
        self.assertEqual(grant.TTL, 30)
        error = self.fails(self.lease.lease_grant(pb.LeaseGrantRequest(TTL=601), Context()))
        self.assertEqual(error.message, "etcdserver: too large lease TTL")

    def test_time_to_live_drops_the_fraction(self) -> None:
        """As etcd 3.4: whole seconds left, rounded down (59 just after a grant of 60)."""
        grant = self.call(self.lease.lease_grant(pb.LeaseGrantRequest(TTL=10), Context()))
        seen = []
        for elapsed in (0.25, 9.0, 1.0):
            self.clock.now += elapsed
            seen.append(
                self.call(
                    self.lease.lease_time_to_live(pb.LeaseTimeToLiveRequest(ID=grant.ID), Context())
                ).TTL
            )
        self.assertEqual(seen, [9, 0, -1])

    def test_keep_alive(self) -> None:
        """Keep-alives renew live leases and answer TTL 0 for unknown ones."""
        grant = self.call(self.lease.lease_grant(pb.LeaseGrantRequest(TTL=10), Context()))
        context = Context()
        requests = Requests()
        done = Deferred.fromCoroutine(self.lease.lease_keep_alive(requests, context))
        self.clock.now += 8
        requests.feed(pb.LeaseKeepAliveRequest(ID=grant.ID))
        requests.feed(pb.LeaseKeepAliveRequest(ID=12345))
        requests.end()
        self.successResultOf(done)
        self.assertEqual([(r.ID, r.TTL) for r in context.sent], [(grant.ID, 10), (12345, 0)])
        self.clock.now += 9
        self.assertEqual(self.store.expire_leases(), [])


class QuotaTests(ApiTestCase):
    """Per-tenant rate limits."""

    def test_qps(self) -> None:
        """Over the request rate a tenant gets RESOURCE_EXHAUSTED; other tenants do not."""
        self.api = self.make_api(qps=2)
        self.kv = KVService(self.api)
        self.put(b"a")
        self.put(b"a")
        error = self.fails(self.kv.put(pb.PutRequest(key=b"a"), Context()))
        self.assertEqual(error.code, StatusCode.RESOURCE_EXHAUSTED)
        self.assertIn("'default' is over its limit of 2 requests/s", error.message)
        self.put(b"a", context=Context(cn="other"))
        self.clock.now += 1
        self.put(b"a")

    def test_bytes(self) -> None:
        """Over the byte rate a tenant gets RESOURCE_EXHAUSTED."""
        self.api = self.make_api(size=100)
        self.kv = KVService(self.api)
        self.put(b"a", b"x" * 80)
        error = self.fails(self.kv.put(pb.PutRequest(key=b"a", value=b"x" * 80), Context()))
        self.assertIn("bytes/s", error.message)


class AuthBoundaryTests(ApiTestCase):
    """Authentication and permissions through the Auth and KV services."""

    def admin(self, method: str, request: Any, context: Context | None = None) -> Any:
        return self.call(getattr(self.auth, method)(request, context or Context()))

    def enable(self) -> None:
        self.admin("user_add", pb.AuthUserAddRequest(name="root", password="pw"))
        self.admin("role_add", pb.AuthRoleAddRequest(name="root"))
        self.admin("user_grant_role", pb.AuthUserGrantRoleRequest(user="root", role="root"))
        self.admin("user_add", pb.AuthUserAddRequest(name="carol", password="cpw"))
        self.admin("role_add", pb.AuthRoleAddRequest(name="app"))
        self.admin(
            "role_grant_permission",
            pb.AuthRoleGrantPermissionRequest(
                name="app",
                perm=auth_pb2.Permission(
                    permType=auth_pb2.Permission.READWRITE, key=b"app/", range_end=b"app0"
                ),
            ),
        )
        self.admin("user_grant_role", pb.AuthUserGrantRoleRequest(user="carol", role="app"))
        self.admin("auth_enable", pb.AuthEnableRequest())

    def token(self, name: str, password: str) -> str:
        response = self.call(
            self.auth.authenticate(pb.AuthenticateRequest(name=name, password=password), Context())
        )
        return response.token

    def test_own_entries_and_password_change(self) -> None:
        """
        As etcd: a user reads its own entry and the roles it has, nothing else; changing
        its password ends its tokens; the root role cannot be deleted while auth is on.
        """
        self.enable()
        carol = Context(token=self.token("carol", "cpw"))
        own = self.call(self.auth.user_get(pb.AuthUserGetRequest(name="carol"), carol))
        self.assertEqual(list(own.roles), ["app"])
        role = self.call(self.auth.role_get(pb.AuthRoleGetRequest(role="app"), carol))
        self.assertEqual([p.key for p in role.perm], [b"app/"])
        for call in (
            self.auth.user_get(pb.AuthUserGetRequest(name="root"), carol),
            self.auth.role_get(pb.AuthRoleGetRequest(role="root"), carol),
        ):
            self.assertEqual(self.fails(call).code, StatusCode.PERMISSION_DENIED)
        root = Context(token=self.token("root", "pw"))
        error = self.fails(self.auth.role_delete(pb.AuthRoleDeleteRequest(role="root"), root))
        self.assertEqual(error.message, "etcdserver: invalid auth management")
        self.admin(
            "user_change_password",
            pb.AuthUserChangePasswordRequest(name="carol", password="new"),
            root,
        )
        error = self.fails(self.kv.range(pb.RangeRequest(key=b"app/1"), carol))
        self.assertEqual(error.message, "etcdserver: invalid auth token")
        self.keys(Context(token=self.token("carol", "new")), b"app/", b"app0")

    def test_status_and_members_without_a_valid_token(self) -> None:
        """As etcd: Status and MemberList answer without a token or with a stale one."""
        self.enable()
        maintenance, cluster = MaintenanceService(self.api), ClusterService(self.api)
        for context in (Context(), Context(token="stale")):
            status = self.call(maintenance.status(pb.StatusRequest(), context))
            self.assertEqual(status.version, "3.4.0")
            members = self.call(cluster.member_list(pb.MemberListRequest(), context))
            self.assertEqual(len(members.members), 1)
        error = self.fails(self.kv.range(pb.RangeRequest(key=b"a"), Context(token="stale")))
        self.assertEqual(error.code, StatusCode.UNAUTHENTICATED)

    def test_enable_needs_root(self) -> None:
        """Enabling without root, or without the root role, gives etcd's errors."""
        error = self.fails(self.auth.auth_enable(pb.AuthEnableRequest(), Context()))
        self.assertEqual(error.message, "etcdserver: root user does not exist")
        self.admin("user_add", pb.AuthUserAddRequest(name="root", password="pw"))
        error = self.fails(self.auth.auth_enable(pb.AuthEnableRequest(), Context()))
        self.assertEqual(error.message, "etcdserver: root user does not have root role")

    def test_tokens_and_permissions(self) -> None:
        """A token identifies the user; permissions cover key ranges; no token is refused."""
        self.enable()
        carol = Context(token=self.token("carol", "cpw"))
        self.put(b"app/1", b"v", carol)
        error = self.fails(self.kv.put(pb.PutRequest(key=b"other"), carol))
        self.assertEqual(error.code, StatusCode.PERMISSION_DENIED)
        error = self.fails(self.kv.range(pb.RangeRequest(key=b"app/", range_end=b"\0"), carol))
        self.assertEqual(error.code, StatusCode.PERMISSION_DENIED)
        self.assertEqual(self.keys(carol, b"app/", b"app0"), [b"app/1"])
        error = self.fails(self.kv.range(pb.RangeRequest(key=b"a"), Context()))
        self.assertEqual(error.message, "etcdserver: user name is empty")
        error = self.fails(self.kv.range(pb.RangeRequest(key=b"a"), Context(token="bogus")))
        self.assertEqual(error.code, StatusCode.UNAUTHENTICATED)
        error = self.fails(
            self.auth.authenticate(pb.AuthenticateRequest(name="carol", password="x"), Context())
        )
        self.assertEqual(
            error.message, "etcdserver: authentication failed, invalid user ID or password"
        )
        error = self.fails(self.auth.user_list(pb.AuthUserListRequest(), carol))
        self.assertEqual(error.code, StatusCode.PERMISSION_DENIED)

    def test_auth_state_persists(self) -> None:
        """The users and roles are saved with the store's metadata."""
        self.enable()
        restored = AuthStore(self.clock)
        restored.load_json(self.storage.load().meta["auth"])
        self.assertTrue(restored.enabled)
        self.assertEqual(restored.user_get("carol"), ["app"])


class ClusterTests(ApiTestCase):
    """The Cluster service of a standalone node."""

    def test_member_list(self) -> None:
        """One member: this node, with its client URL."""
        cluster = ClusterService(self.api)
        response = self.call(cluster.member_list(pb.MemberListRequest(), Context()))
        self.assertEqual(
            [(m.ID, list(m.clientURLs)) for m in response.members], [(2, ["http://127.0.0.1:2379"])]
        )

    def test_member_remove(self) -> None:
        """Removing an unknown member is etcd's member-not-found."""
        cluster = ClusterService(self.api)
        error = self.fails(cluster.member_remove(pb.MemberRemoveRequest(ID=99), Context()))
        self.assertEqual(
            (error.code, error.message), (StatusCode.NOT_FOUND, "etcdserver: member not found")
        )


class ProgressTests(ApiTestCase):
    """Progress notifications for quiet watchers."""

    def test_progress_notify(self) -> None:
        """A quiet progress_notify watcher gets an empty response with the current revision."""
        context = Context()
        requests = Requests()
        done = Deferred.fromCoroutine(self.watch.watch(requests, context))
        create = pb.WatchCreateRequest(key=b"a", progress_notify=True)
        requests.feed(pb.WatchRequest(create_request=create))
        requests.feed(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"b")))
        self.api.progress_tick()
        self.assertEqual(len(context.sent), 2)
        self.put(b"z")
        self.api.progress_tick()
        progress = context.sent[2:]
        self.assertEqual(
            [(r.watch_id, r.header.revision, len(r.events)) for r in progress], [(0, 2, 0)]
        )
        self.end_watch(done)


class SlowContext(Context):
    """A client that takes each response only when the test fires its Deferred in C{gate}."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: list[Deferred[None]] = []

    async def send(self, message: Any) -> None:
        self.sent.append(message)
        waiting: Deferred[None] = Deferred()
        self.gate.append(waiting)
        await waiting


class SlowWatcherTests(ApiTestCase):
    """A watcher that reads slowly gets its queued events merged, in order."""

    def stalled_watch(self, **create: Any) -> tuple[SlowContext, Deferred[None], Any]:
        """
        A watch on C{k} whose client takes nothing until the test opens its gate, with a
        queue bound of 5000 bytes, after 30 puts of 1000 bytes.
        """
        self.patch(_api, "SLOW_WATCH_BYTES", 5000)
        context = SlowContext()
        requests = Requests()
        done = Deferred.fromCoroutine(self.watch.watch(requests, context))
        requests.feed(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"k", **create)))
        for i in range(30):
            self.put(b"k", b"%02d" % i + b"x" * 998)
        (stream,) = self.api.watch_streams
        return context, done, stream

    def drain(self, context: SlowContext) -> None:
        while context.gate:
            context.gate.pop(0).callback(None)

    def test_bounded_then_caught_up(self) -> None:
        """
        A client that does not read makes its watchers stop queueing past the bound (as
        etcd's unsynced watchers) and no progress is reported meanwhile; once it reads,
        every event arrives, in order, once.
        """
        context, done, stream = self.stalled_watch(progress_notify=True)
        self.assertLessEqual(stream.queued_bytes, 5000 + 1100)
        # watch 0 stopped queueing at the first revision that did not fit
        ((watch_id, revision),) = stream.suspended.items()
        self.assertEqual(watch_id, 0)
        self.assertIn(revision, range(3, 31))
        stream.progress()
        self.api.progress_tick()
        self.api.progress_tick()
        self.drain(context)
        values = [e.kv.value[:2] for r in context.sent for e in r.events]
        self.assertEqual(values, [b"%02d" % i for i in range(30)])
        self.assertEqual([r.watch_id for r in context.sent if not r.events and not r.created], [])
        self.assertEqual((stream.suspended, stream.queued_bytes), ({}, 0))
        self.put(b"k", b"live")
        self.drain(context)
        self.assertEqual(context.sent[-1].events[0].kv.value, b"live")
        self.end_watch(done)

    def test_compacted_while_behind(self) -> None:
        """History compacted past a stalled watcher's position cancels it, as etcd."""
        context, done, stream = self.stalled_watch()
        self.call(self.kv.compact(pb.CompactionRequest(revision=20), Context()))
        self.drain(context)
        last = context.sent[-1]
        self.assertEqual((last.canceled, last.compact_revision, last.watch_id), (True, 20, 0))
        values = [e.kv.value[:2] for r in context.sent for e in r.events]
        self.assertEqual(values, [b"%02d" % i for i in range(len(values))])
        self.assertEqual(stream.watchers, {})
        self.end_watch(done)

    def test_merged(self) -> None:
        """Events queued behind a pending send are merged into one response."""
        context = SlowContext()
        gate = context.gate
        requests = Requests()
        done = Deferred.fromCoroutine(self.watch.watch(requests, context))
        requests.feed(pb.WatchRequest(create_request=pb.WatchCreateRequest(key=b"k")))
        for value in (b"1", b"2", b"3"):
            self.put(b"k", value)
        self.assertEqual(len(context.sent), 1)  # the "created" response, not yet taken
        gate.pop(0).callback(None)
        merged = context.sent[1]
        self.assertEqual([e.kv.value for e in merged.events], [b"1", b"2", b"3"])
        self.assertEqual(merged.header.revision, 4)
        while gate:
            gate.pop(0).callback(None)
        self.end_watch(done)


class FragmentTests(ApiTestCase):
    """
    Watch responses larger than the request limit (4096 bytes here): fragmented when the
    watch asks for it, as etcd does; never grown past the limit by merging.
    """

    def watch_all(self, fragment: bool, context: Context) -> tuple[Requests, Deferred[None]]:
        requests = Requests()
        done = Deferred.fromCoroutine(self.watch.watch(requests, context))
        requests.feed(
            pb.WatchRequest(
                create_request=pb.WatchCreateRequest(
                    key=b"\0", range_end=b"\0", fragment=fragment, prev_kv=True
                )
            )
        )
        return requests, done

    def big_revision(self) -> pb.DeleteRangeResponse:
        """
        One revision of about 10 kB of events: deleting 10 keys of 1000 bytes each, seen
        with their previous values.
        """
        return self.call(
            self.kv.delete_range(pb.DeleteRangeRequest(key=b"k", range_end=b"l"), Context())
        )

    def setUp(self) -> None:
        super().setUp()
        for i in range(10):
            self.put(b"k%d" % i, b"x" * 1000)

    def test_fragmented(self) -> None:
        """
        With C{fragment}, one revision arrives in responses under the limit, all but the
        last marked as fragments; joined, they are the revision's events in order.
        """
        context = Context()
        _, done = self.watch_all(True, context)
        deleted = self.big_revision()
        self.end_watch(done)
        parts = [m for m in context.sent if m.events]
        self.assertGreater(len(parts), 1)
        self.assertEqual([p.fragment for p in parts], [True] * (len(parts) - 1) + [False])
        for part in parts:
            self.assertLessEqual(part.ByteSize(), 4096)
            self.assertEqual(part.header.revision, deleted.header.revision)
        keys = [(e.kv.key, len(e.prev_kv.value)) for p in parts for e in p.events]
        self.assertEqual(keys, [(b"k%d" % i, 1000) for i in range(10)])

    def test_not_fragmented_unless_asked(self) -> None:
        """Without C{fragment}, a revision is one response, however large (as etcd)."""
        context = Context()
        _, done = self.watch_all(False, context)
        self.big_revision()
        self.end_watch(done)
        (response,) = [m for m in context.sent if m.events]
        self.assertEqual(len(response.events), 10)
        self.assertFalse(response.fragment)

    def test_merging_is_bounded(self) -> None:
        """A slow reader's queued revisions are merged only while under the limit."""
        context = SlowContext()
        gate = context.gate
        _, done = self.watch_all(False, context)
        for i in range(12):
            self.put(b"m%d" % i, b"x" * 1000)
        while gate:
            gate.pop(0).callback(None)
        responses = [m for m in context.sent if m.events]
        self.assertEqual(
            [e.kv.key for r in responses for e in r.events], [b"m%d" % i for i in range(12)]
        )
        self.assertGreater(len(responses), 1)
        for response in responses:
            self.assertLessEqual(response.ByteSize(), 4096 + 1100)
        while gate:
            gate.pop(0).callback(None)
        self.end_watch(done)

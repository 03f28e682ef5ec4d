"""
The etcd v3 API in front of an etcd cluster (``[kv] backend = etcd``).

The boundary stays Lattice's: the caller's identity and tenant, quotas, request size and
lease TTL bounds, metrics.  Keys are mapped into the tenant's prefix exactly as for the
embedded store (:mod:`lattice.kv._api`), then each call is forwarded with Lattice's own gRPC
client to one member of the cluster, failing over to the next.  Storage, revisions, leases
and watches are the cluster's.  Client watches on the same range share one upstream watch.

Failures map to the errors of ``spec/kv.md``: a linearizable call that the cluster cannot
serve (no quorum, no leader, deadline) fails with ``UNAVAILABLE`` "linearizability
unavailable"; serializable ranges are retried on any member that answers.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

from google.protobuf.message import Message
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

from lattice.grpc import (
    ClientCall,
    GrpcChannel,
    GrpcClientOptions,
    GrpcError,
    StatusCode,
    connect_channel,
    method_path,
)
from lattice.kv._api import (
    DUPLICATE_WATCH_ID,
    CallContext,
    Caller,
    EtcdApi,
    Limits,
    WatchResponseQueue,
    _check_txn_permissions,
    _map_delete,
    _map_range,
    _map_txn,
    _strip_kvs,
    _strip_txn,
)
from lattice.kv._auth import AuthStore
from lattice.kv._errors import KVError, empty_key
from lattice.kv._metrics import KVMetrics
from lattice.kv._proto import rpc_pb2
from lattice.kv._quota import Quotas
from lattice.kv._store import check_put, check_txn
from lattice.tls import client_tls_options

__all__ = [
    "LINEARIZABILITY_UNAVAILABLE",
    "ChannelLike",
    "UpstreamApi",
    "UpstreamPool",
    "parse_endpoint",
    "upstream_services",
]

_log = Logger()

T = TypeVar("T", bound=Message)

LINEARIZABILITY_UNAVAILABLE = "linearizability unavailable"
# etcd rejects a call at once, before proposing it, when this metadata is set and the
# member knows no leader ("etcdserver: no leader"): such a call is safe to retry elsewhere.
REQUIRE_LEADER = (("hasleader", "true"),)
# Messages of etcd errors meaning "this member cannot serve it linearizably now".
_NO_LEADER = ("no leader", "leader changed", "not capable", "stopped")
_TIMED_OUT = ("request timed out", "timed out", "too many requests")
HEALTH_KEY = b"\0lattice/health"
RECONNECT_DELAY = 0.2
RECONNECT_DELAY_MAX = 2.0

_KV = rpc_pb2.DESCRIPTOR.services_by_name["KV"]
_WATCH = rpc_pb2.DESCRIPTOR.services_by_name["Watch"]
_LEASE = rpc_pb2.DESCRIPTOR.services_by_name["Lease"]
_CLUSTER = rpc_pb2.DESCRIPTOR.services_by_name["Cluster"]
_MAINTENANCE = rpc_pb2.DESCRIPTOR.services_by_name["Maintenance"]


def _path(service: Any, name: str) -> str:
    return method_path(service.methods_by_name[name])


@dataclass(frozen=True)
class UpstreamEndpoint:
    """One member's client URL."""

    url: str
    scheme: str
    host: str
    port: int


def parse_endpoint(url: str) -> UpstreamEndpoint:
    """``http://host:port`` or ``https://host:port`` (a bare ``host:port`` is http)."""
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an etcd client URL: {url!r}")
    port = parts.port or 2379
    return UpstreamEndpoint(url, parts.scheme, parts.hostname, port)


class ChannelLike(Protocol):
    """What the pool uses of a :class:`lattice.grpc.GrpcChannel` (fakes in tests)."""

    async def unary_unary(
        self,
        method: str,
        request: Message,
        response_type: type[T],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (gRPC's per-call timeout)
        metadata: Sequence[tuple[str, str]] = (),
    ) -> T:
        """A unary call."""

    def stream_stream(
        self,
        method: str,
        response_type: type[T],
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> ClientCall[T]:
        """A bidirectional call."""

    @property
    def closed(self) -> bool:
        """Whether the connection is gone."""

    def close(self) -> Deferred[None]:
        """Close the connection."""


class _Channel:
    """A :class:`GrpcChannel` with the ``closed`` property the pool checks."""

    def __init__(self, channel: GrpcChannel) -> None:
        self._channel = channel

    @property
    def closed(self) -> bool:
        return bool(self._channel.protocol.closed)

    def unary_unary(
        self,
        method: str,
        request: Message,
        response_type: type[T],
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> Coroutine[Any, Any, T]:
        # The channel's coroutine itself: one frame less on every call's await chain.
        return self._channel.unary_unary(
            method, request, response_type, timeout=timeout, metadata=metadata
        )

    def stream_stream(
        self,
        method: str,
        response_type: type[T],
        *,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
    ) -> ClientCall[T]:
        return self._channel.stream_stream(
            method, response_type, timeout=timeout, metadata=metadata
        )

    def close(self) -> Deferred[None]:
        return self._channel.close()


Connect = Callable[[UpstreamEndpoint], Awaitable[ChannelLike]]


def grpc_connector(
    reactor: Any,
    *,
    ca: str | None = None,
    certificate: str | None = None,
    private_key: str | None = None,
    connect_timeout: float = 2.0,
) -> Connect:
    """Connects to members with :func:`lattice.grpc.connect_channel` (TLS for https)."""
    options = GrpcClientOptions(
        max_receive_message_size=2**31 - 1,  # as etcd's own client: members send whole ranges
        user_agent="lattice-kv-upstream",
        keepalive_interval=30.0,
        keepalive_timeout=10.0,
    )

    async def connect(endpoint: UpstreamEndpoint) -> ChannelLike:
        client: Any = HostnameEndpoint(
            reactor, endpoint.host, endpoint.port, timeout=connect_timeout
        )
        if endpoint.scheme == "https":
            tls: Any = client_tls_options(
                endpoint.host, ca=ca, certificate=certificate, private_key=private_key
            )
            client = wrapClientTLS(tls, client)
        channel = await connect_channel(
            reactor,
            client,
            f"{endpoint.host}:{endpoint.port}",
            options,
            scheme=endpoint.scheme,
        )
        with contextlib.suppress(Exception):
            channel.protocol.transport.setTcpNoDelay(True)  # type: ignore[union-attr]
        return _Channel(channel)

    return connect


def _unavailable(detail: str | None = None) -> GrpcError:
    message = LINEARIZABILITY_UNAVAILABLE
    if detail:
        message = f"{message}: {detail}"
    return GrpcError(StatusCode.UNAVAILABLE, message)


def _rejected_before_proposal(error: GrpcError) -> bool:
    """etcd refused the call without applying it (safe to retry on another member)."""
    text = error.message.lower()
    return error.code == StatusCode.UNAVAILABLE and any(m in text for m in _NO_LEADER)


def _not_linearizable(error: GrpcError) -> bool:
    """The cluster could not serve the call linearizably (maybe it was applied, for writes)."""
    text = error.message.lower()
    if error.code in (StatusCode.UNAVAILABLE, StatusCode.DEADLINE_EXCEEDED):
        return True
    return any(m in text for m in _NO_LEADER + _TIMED_OUT)


class UpstreamPool:
    """
    Connections to the members of one etcd cluster.  Calls go to the current member; a
    member that cannot be reached (or knows no leader) passes the call to the next one.
    ``on_state(can_linearize, reachable, detail)`` reports what the last calls saw.
    """

    def __init__(
        self,
        clock: IReactorTime,
        endpoints: Sequence[str],
        connect: Connect,
        *,
        timeout: float = 5.0,
        on_state: Callable[[bool, bool, str], None] | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoints")
        self.clock = clock
        self.endpoints = [parse_endpoint(e) for e in endpoints]
        self._connect = connect
        self.timeout = timeout
        self._on_state = on_state
        self._channels: dict[int, ChannelLike] = {}
        self._connecting: dict[int, list[Deferred[ChannelLike]]] = {}
        self.current = 0
        self.can_linearize: bool | None = None
        self.reachable: bool | None = None
        self.closed = False

    def _report(self, can_linearize: bool | None, reachable: bool, detail: str) -> None:
        changed = (can_linearize, reachable) != (self.can_linearize, self.reachable)
        if can_linearize is not None:
            self.can_linearize = can_linearize
        self.reachable = reachable
        if self._on_state is not None and (changed or not reachable):
            self._on_state(bool(self.can_linearize), reachable, detail)

    async def channel(self, index: int) -> ChannelLike:
        """The connection to member ``index``, opened if needed."""
        channel = self._channels.get(index)
        if channel is not None and not channel.closed:
            return channel
        waiters = self._connecting.get(index)
        if waiters is not None:
            waiter: Deferred[ChannelLike] = Deferred()
            waiters.append(waiter)
            return await waiter
        waiters = self._connecting[index] = []
        try:
            channel = await self._connect(self.endpoints[index])
            if self.closed:
                channel.close()
                raise GrpcError(StatusCode.UNAVAILABLE, "lattice: upstream pool closed")
        except Exception as e:
            for w in self._connecting.pop(index, []):
                w.errback(e)
            raise
        self._channels[index] = channel
        for w in self._connecting.pop(index, []):
            w.callback(channel)
        return channel

    def order(self) -> list[int]:
        """Member indexes, current first."""
        n = len(self.endpoints)
        return [(self.current + i) % n for i in range(n)]

    async def call(
        self,
        method: str,
        request: Message,
        response_type: type[T],
        *,
        linearizable: bool = True,
        idempotent: bool = False,
    ) -> T:
        """
        Forward one unary call.  Linearizable calls carry etcd's require-leader metadata;
        calls that fail because no member can serve them raise UNAVAILABLE
        "linearizability unavailable" (serializable reads: "etcdserver: no member reachable").
        Errors of the call itself (bad argument, lease not found...) pass through.
        """
        deadline = self.clock.seconds() + self.timeout
        metadata = REQUIRE_LEADER if linearizable else ()
        last: str = "no member reachable"
        reached = False
        for index in self.order():
            remaining = deadline - self.clock.seconds()
            if remaining <= 0:
                break
            endpoint = self.endpoints[index]
            channel = self._channels.get(index)
            if channel is None or channel.closed:
                try:
                    channel = await self.channel(index)
                except Exception as e:
                    last = f"{endpoint.url}: {e}"
                    continue
            try:
                response = await channel.unary_unary(
                    method, request, response_type, timeout=remaining, metadata=metadata
                )
            except GrpcError as e:
                if not _not_linearizable(e):
                    if linearizable:
                        self._report(True, True, f"linearizable via {endpoint.url}")
                    raise
                last = f"{endpoint.url}: {e.message}"
                reached = reached or not channel.closed
                if channel.closed:
                    self._channels.pop(index, None)
                if self.current == index:
                    self.current = (index + 1) % len(self.endpoints)
                # A write that may have reached the cluster is not retried elsewhere: it may
                # still apply.  The client sees UNAVAILABLE and decides.
                if linearizable and not idempotent and not _rejected_before_proposal(e):
                    self._report(False, not channel.closed, last)
                    raise _unavailable(last) from None
                continue
            self.current = index
            if linearizable:
                if self.can_linearize is not True or self.reachable is not True:
                    self._report(True, True, f"linearizable via {endpoint.url}")
            elif self.reachable is not True:
                self._report(None, True, f"reachable via {endpoint.url}")
            return response
        if linearizable:
            self._report(False, reached, last)
            raise _unavailable(last)
        self._report(False, False, last)
        raise GrpcError(StatusCode.UNAVAILABLE, f"etcdserver: no member reachable ({last})")

    async def probe(self) -> None:
        """One linearizable read, to keep the state (metrics, readiness) current."""
        request = rpc_pb2.RangeRequest(key=HEALTH_KEY, count_only=True)
        try:
            await self.call(_path(_KV, "Range"), request, rpc_pb2.RangeResponse, idempotent=True)
        except GrpcError:
            if not self.reachable:
                return
            # Is any member answering serializable reads?
            request.serializable = True
            with contextlib.suppress(GrpcError):
                await self.call(
                    _path(_KV, "Range"), request, rpc_pb2.RangeResponse, linearizable=False
                )

    async def keep_alive(self, lease_id: int) -> int:
        """
        Renew a lease once (a one-request ``LeaseKeepAlive`` stream), failing over like
        :meth:`call`; returns the TTL the cluster granted, ``0`` if the lease is gone.
        """
        path = _path(_LEASE, "LeaseKeepAlive")
        last = "no member reachable"
        for index in self.order():
            endpoint = self.endpoints[index]
            call: ClientCall[rpc_pb2.LeaseKeepAliveResponse] | None = None
            try:
                channel = await self.channel(index)
                call = channel.stream_stream(
                    path,
                    rpc_pb2.LeaseKeepAliveResponse,
                    timeout=self.timeout,
                    metadata=REQUIRE_LEADER,
                )
                await call.send(rpc_pb2.LeaseKeepAliveRequest(ID=lease_id))
                response = await call.receive()
            except (GrpcError, ConnectionError, OSError) as e:
                last = f"{endpoint.url}: {e}"
                if self.current == index:
                    self.current = (index + 1) % len(self.endpoints)
                continue
            finally:
                if call is not None:
                    call.cancel()
            if response is None:
                last = f"{endpoint.url}: keep-alive stream ended"
                continue
            self.current = index
            return int(response.TTL)
        raise _unavailable(f"lease keep-alive: {last}")

    def close(self) -> None:
        """Close every connection."""
        self.closed = True
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()


# -- shared upstream watches -----------------------------------------------------------------

WatchKey = tuple[bytes, bytes, tuple[int, ...], bool, bool]


class _Subscriber(Protocol):
    def deliver(self, watch_id: int, response: rpc_pb2.WatchResponse) -> None:
        """Queue one response for the client."""


class _Shared:
    """One upstream watch and the client watches it feeds."""

    def __init__(self, key: WatchKey, upstream_id: int, start_revision: int, strip: int) -> None:
        self.key = key
        self.upstream_id = upstream_id
        self.start_revision = start_revision
        self.strip = strip
        self.subscribers: dict[tuple[int, int], tuple[_Subscriber, int]] = {}
        self.last_revision = 0
        self.waiters: list[Deferred[rpc_pb2.WatchResponse]] = []
        self.created_response: rpc_pb2.WatchResponse | None = None

    def request(self) -> rpc_pb2.WatchRequest:
        key, end, filters, prev_kv, progress = self.key
        start = self.last_revision + 1 if self.last_revision else self.start_revision
        return rpc_pb2.WatchRequest(
            create_request=rpc_pb2.WatchCreateRequest(
                key=key,
                range_end=end,
                start_revision=start,
                filters=list(filters),  # type: ignore[arg-type]
                prev_kv=prev_kv,
                progress_notify=progress,
                watch_id=self.upstream_id,
            )
        )


class WatchMux:
    """
    Client watches multiplexed onto one upstream Watch stream.  Watches from revision 0 on
    the same (range, filters) share one upstream watch; a watch from an older revision has
    its own.  When the stream breaks, it is reopened on another member and every upstream
    watch resumes after the last revision it delivered.
    """

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.shared: dict[WatchKey, _Shared] = {}
        self.by_id: dict[int, _Shared] = {}
        self.next_id = 1
        self.revision = 0
        self._call: ClientCall[rpc_pb2.WatchResponse] | None = None
        self._running: Deferred[None] | None = None
        self._stopped = False

    def __len__(self) -> int:
        return len(self.by_id)

    async def subscribe(
        self,
        subscriber: _Subscriber,
        client_id: int,
        key: WatchKey,
        start_revision: int,
        strip: int,
    ) -> tuple[_Shared, rpc_pb2.WatchResponse]:
        """Attach a client watch; returns its upstream watch and the 'created' response."""
        shared = self.shared.get(key) if start_revision == 0 else None
        if shared is None:
            shared = _Shared(key, self.next_id, start_revision, strip)
            self.next_id += 1
            self.by_id[shared.upstream_id] = shared
            if start_revision == 0:
                self.shared[key] = shared
            self._ensure_running()
            if self._call is not None:
                # If the stream just broke, the reconnection re-creates every watch.
                with contextlib.suppress(GrpcError):
                    await self._call.send(shared.request())
        shared.subscribers[(id(subscriber), client_id)] = (subscriber, client_id)
        if shared.created_response is not None:
            return shared, shared.created_response
        waiter: Deferred[rpc_pb2.WatchResponse] = Deferred()
        shared.waiters.append(waiter)
        return shared, await waiter

    async def unsubscribe(self, shared: _Shared, subscriber: _Subscriber, client_id: int) -> None:
        """Detach a client watch; the last one cancels the upstream watch."""
        shared.subscribers.pop((id(subscriber), client_id), None)
        if shared.subscribers or shared.upstream_id not in self.by_id:
            return
        self._drop(shared)
        call = self._call
        if call is not None:
            with contextlib.suppress(GrpcError):
                await call.send(
                    rpc_pb2.WatchRequest(
                        cancel_request=rpc_pb2.WatchCancelRequest(watch_id=shared.upstream_id)
                    )
                )

    def _drop(self, shared: _Shared) -> None:
        self.by_id.pop(shared.upstream_id, None)
        if self.shared.get(shared.key) is shared:
            del self.shared[shared.key]

    def _ensure_running(self) -> None:
        if self._running is None and not self._stopped:
            self._running = Deferred.fromCoroutine(self._run())

    async def _run(self) -> None:
        delay = RECONNECT_DELAY
        try:
            while self.by_id and not self._stopped:
                index = self.pool.current
                endpoint = self.pool.endpoints[index]
                try:
                    channel = await self.pool.channel(index)
                    call = channel.stream_stream(
                        _path(_WATCH, "Watch"), rpc_pb2.WatchResponse, metadata=REQUIRE_LEADER
                    )
                    sent: set[int] = set()
                    while pending := [s for s in self.by_id.values() if s.upstream_id not in sent]:
                        for shared in pending:
                            sent.add(shared.upstream_id)
                            await call.send(shared.request())
                    # From here on, new watches are sent by subscribe().
                    self._call = call
                    async for response in call:
                        delay = RECONNECT_DELAY
                        self._received(response)
                        if not self.by_id:
                            break
                    if not self.by_id or self._stopped:
                        call.cancel()
                        break
                    _log.info("Upstream watch stream to {url} ended", url=endpoint.url)
                except (GrpcError, ConnectionError, OSError) as e:
                    _log.info(
                        "Upstream watch stream to {url} failed: {error}",
                        url=endpoint.url,
                        error=str(e),
                    )
                except CancelledError:
                    break
                except Exception:
                    _log.failure("Upstream watch stream failed")
                self._call = None
                self.pool.current = (index + 1) % len(self.pool.endpoints)
                await deferLater(self.pool.clock, delay)
                delay = min(delay * 2, RECONNECT_DELAY_MAX)
        finally:
            self._call = None
            self._running = None

    def _received(self, response: rpc_pb2.WatchResponse) -> None:
        self.revision = max(self.revision, response.header.revision)
        shared = self.by_id.get(response.watch_id)
        if shared is None:
            return
        if response.created:
            if shared.created_response is None:
                shared.last_revision = max(shared.last_revision, response.header.revision)
                if response.canceled:
                    self._drop(shared)
                shared.created_response = response
                waiters, shared.waiters = shared.waiters, []
                for waiter in waiters:
                    waiter.callback(response)
            elif response.canceled:
                self._cancelled(shared, response)
            return
        if response.canceled:
            self._cancelled(shared, response)
            return
        if response.events:
            shared.last_revision = max(shared.last_revision, response.events[-1].kv.mod_revision)
            for event in response.events:
                event.kv.key = event.kv.key[shared.strip :]
                if event.HasField("prev_kv"):
                    event.prev_kv.key = event.prev_kv.key[shared.strip :]
        else:
            shared.last_revision = max(shared.last_revision, response.header.revision)
        for subscriber, client_id in list(shared.subscribers.values()):
            out = rpc_pb2.WatchResponse()
            out.CopyFrom(response)
            out.watch_id = client_id
            subscriber.deliver(client_id, out)

    def _cancelled(self, shared: _Shared, response: rpc_pb2.WatchResponse) -> None:
        self._drop(shared)
        for subscriber, client_id in list(shared.subscribers.values()):
            out = rpc_pb2.WatchResponse()
            out.CopyFrom(response)
            out.watch_id = client_id
            out.created = False
            subscriber.deliver(client_id, out)
        shared.subscribers.clear()

    def stop(self) -> None:
        """Stop the upstream stream."""
        self._stopped = True
        if self._call is not None:
            self._call.cancel()
        if self._running is not None:
            self._running.cancel()


# -- the API state ---------------------------------------------------------------------------


class UpstreamApi(EtcdApi):
    """
    The boundary's state for the etcd backend: identity, tenants, quotas, limits and metrics
    as for the embedded store (the inherited :meth:`caller` and :meth:`unary`), no store.
    """

    def __init__(
        self,
        pool: UpstreamPool,
        quotas: Quotas,
        limits: Limits,
        metrics: KVMetrics | None,
        clock: IReactorTime,
    ) -> None:
        # Deliberately not EtcdApi.__init__: there is no local store.
        self.pool = pool
        self.auth = AuthStore(clock.seconds)
        self.quotas = quotas
        self.limits = limits
        self.metrics = metrics
        self.alarms = set()
        self.watch_streams = set()
        self._callers = {}
        self.mux = WatchMux(pool)
        self.lease_tenants: dict[int, str] = {}

    def progress_tick(self) -> None:
        """Progress notifications come from the cluster."""


# -- services --------------------------------------------------------------------------------


class UpstreamKV:
    """``etcdserverpb.KV`` forwarded to the cluster."""

    def __init__(self, api: UpstreamApi) -> None:
        self._api = api

    async def range(
        self, request: rpc_pb2.RangeRequest, context: CallContext
    ) -> rpc_pb2.RangeResponse:
        api = self._api

        async def handle(caller: Caller) -> rpc_pb2.RangeResponse:
            if not request.key:
                raise empty_key()
            _map_range(caller, request)
            response = await api.pool.call(
                _path(_KV, "Range"),
                request,
                rpc_pb2.RangeResponse,
                linearizable=not request.serializable,
                idempotent=True,
            )
            _strip_kvs(caller, response.kvs)
            return response

        return await api.unary("Range", request, context, handle)

    async def put(self, request: rpc_pb2.PutRequest, context: CallContext) -> rpc_pb2.PutResponse:
        api = self._api

        async def handle(caller: Caller) -> rpc_pb2.PutResponse:
            check_put(request)
            request.key = caller.key(request.key)
            response = await api.pool.call(_path(_KV, "Put"), request, rpc_pb2.PutResponse)
            if response.HasField("prev_kv"):
                _strip_kvs(caller, [response.prev_kv])
            return response

        return await api.unary("Put", request, context, handle, size_limited=True)

    async def delete_range(
        self, request: rpc_pb2.DeleteRangeRequest, context: CallContext
    ) -> rpc_pb2.DeleteRangeResponse:
        api = self._api

        async def handle(caller: Caller) -> rpc_pb2.DeleteRangeResponse:
            if not request.key:
                raise empty_key()
            _map_delete(caller, request)
            response = await api.pool.call(
                _path(_KV, "DeleteRange"), request, rpc_pb2.DeleteRangeResponse
            )
            _strip_kvs(caller, response.prev_kvs)
            return response

        return await api.unary("DeleteRange", request, context, handle, size_limited=True)

    async def txn(self, request: rpc_pb2.TxnRequest, context: CallContext) -> rpc_pb2.TxnResponse:
        api = self._api

        async def handle(caller: Caller) -> rpc_pb2.TxnResponse:
            check_txn(request)
            _check_txn_permissions(api, caller, request)
            _map_txn(caller, request)
            response = await api.pool.call(_path(_KV, "Txn"), request, rpc_pb2.TxnResponse)
            _strip_txn(caller, response)
            return response

        return await api.unary("Txn", request, context, handle, size_limited=True)

    async def compact(
        self, request: rpc_pb2.CompactionRequest, context: CallContext
    ) -> rpc_pb2.CompactionResponse:
        api = self._api

        async def handle(caller: Caller) -> rpc_pb2.CompactionResponse:
            return await api.pool.call(
                _path(_KV, "Compact"), request, rpc_pb2.CompactionResponse, idempotent=True
            )

        return await api.unary("Compact", request, context, handle)


class _UpstreamWatchStream(WatchResponseQueue):
    """One client Watch call: its watches, fed by the shared upstream watches."""

    def __init__(self, api: UpstreamApi, caller: Caller, context: CallContext) -> None:
        super().__init__(context)
        self.api = api
        self.caller = caller
        self.watches: dict[int, Any] = {}
        # Client watches created with ``fragment`` (the shared upstream watch is not: its
        # responses are split here, for the clients that asked).
        self.fragment: set[int] = set()
        self.next_id = 0
        # Each client watch's upstream key, to catch a slow one up.
        self.keys: dict[int, WatchKey] = {}

    def deliver(self, watch_id: int, response: rpc_pb2.WatchResponse) -> None:
        if watch_id not in self.watches or watch_id in self.suspended:
            return
        if response.canceled:
            self._forget(watch_id)
        elif response.events and self.behind:
            # a client that does not read: leave the shared upstream watch, and catch up
            # from this revision on an upstream watch of its own once it has read
            self.suspended[watch_id] = response.events[0].kv.mod_revision
            _spawn(self.api.mux.unsubscribe(self.watches[watch_id], self, watch_id))
            return
        limit = self.api.limits.max_request_bytes
        size = response.ByteSize()
        if watch_id in self.fragment and len(response.events) > 1 and size > limit:
            parts = self.fragments(response, limit)
        else:
            parts = [(response, size)]
        for part, part_size in parts:
            self.push(part, part_size if part.events else 0)

    def resume(self, suspended: dict[int, int]) -> None:
        _spawn(self._resume(suspended))

    async def _resume(self, suspended: dict[int, int]) -> None:
        """Re-subscribe caught-up watches from the first revision they did not get."""
        for watch_id, revision in sorted(suspended.items()):
            if watch_id not in self.watches or self.done:
                continue
            created = await self._subscribe(watch_id, revision, announce=False)
            if created is not None and created.canceled:
                # e.g. the revision was compacted meanwhile: cancelled as etcd does
                self._forget(watch_id)
                response = rpc_pb2.WatchResponse()
                response.CopyFrom(created)
                response.watch_id = watch_id
                response.created = False
                self.push(response)

    async def _subscribe(
        self, watch_id: int, start_revision: int, announce: bool
    ) -> rpc_pb2.WatchResponse | None:
        """
        Attach client watch ``watch_id`` upstream from ``start_revision``; returns the
        upstream's created answer, or ``None`` when the watch ended meanwhile or could not
        be attached (the client is told why, its ``created`` flag set when ``announce``).
        """
        try:
            shared, created = await self.api.mux.subscribe(
                self, watch_id, self.keys[watch_id], start_revision, len(self.caller.prefix)
            )
        except Exception as e:
            self._forget(watch_id)
            self.push(
                rpc_pb2.WatchResponse(
                    watch_id=watch_id,
                    created=announce,
                    canceled=True,
                    cancel_reason=f"{LINEARIZABILITY_UNAVAILABLE}: {e}",
                )
            )
            return None
        if watch_id not in self.watches or self.done:
            await self.api.mux.unsubscribe(shared, self, watch_id)
            return None
        self.watches[watch_id] = shared
        return created

    async def create(self, request: rpc_pb2.WatchCreateRequest) -> None:
        caller = self.caller
        watch_id = request.watch_id or self.next_id
        while not request.watch_id and watch_id in self.watches:
            watch_id += 1
        if watch_id in self.watches:
            self.push(
                rpc_pb2.WatchResponse(
                    watch_id=-1, created=True, canceled=True, cancel_reason=DUPLICATE_WATCH_ID
                )
            )
            return
        self.next_id = max(self.next_id, watch_id + 1)
        key: WatchKey = (
            caller.key(request.key),
            caller.end(request.range_end),
            tuple(sorted(set(request.filters))),
            request.prev_kv,
            request.progress_notify,
        )
        self.watches[watch_id] = None
        self.keys[watch_id] = key
        if request.fragment:
            self.fragment.add(watch_id)
        created = await self._subscribe(watch_id, request.start_revision, announce=True)
        if created is None:
            return
        response = rpc_pb2.WatchResponse()
        response.CopyFrom(created)
        response.watch_id = watch_id
        if response.canceled:
            self._forget(watch_id)
        self.push(response)

    def _forget(self, watch_id: int) -> Any:
        """Drop one client watch's state; returns its shared upstream watch (or None)."""
        self.fragment.discard(watch_id)
        self.keys.pop(watch_id, None)
        self.suspended.pop(watch_id, None)
        return self.watches.pop(watch_id, None)

    async def cancel(self, watch_id: int) -> None:
        shared = self._forget(watch_id)
        if shared is None:
            return
        await self.api.mux.unsubscribe(shared, self, watch_id)
        response = rpc_pb2.WatchResponse(watch_id=watch_id, canceled=True)
        response.header.revision = self.api.mux.revision
        self.push(response)

    def progress(self) -> None:
        if self.suspended:
            # etcd answers a progress request only when every watcher is up to date
            return
        response = rpc_pb2.WatchResponse(watch_id=-1)
        response.header.revision = self.api.mux.revision
        self.push(response)

    async def close(self) -> None:
        self.done = True
        watches, self.watches = self.watches, {}
        for watch_id, shared in watches.items():
            if shared is not None:
                await self.api.mux.unsubscribe(shared, self, watch_id)
        self.push(rpc_pb2.WatchResponse())


def _spawn(coroutine: Coroutine[Any, Any, None]) -> None:
    """Run ``coroutine`` on its own; a failure is logged."""
    Deferred.fromCoroutine(coroutine).addErrback(
        lambda failure: _log.failure("Upstream watch change failed", failure)
    )


class UpstreamWatch:
    """``etcdserverpb.Watch``: client watches on shared upstream watches."""

    def __init__(self, api: UpstreamApi) -> None:
        self._api = api

    async def watch(self, requests: AsyncIterable[Any], context: CallContext) -> None:
        api = self._api
        if api.metrics is not None:
            api.metrics.request("Watch")
        stream = _UpstreamWatchStream(api, api.stream_caller(context), context)
        await stream.serve(requests, api.metrics)


class UpstreamLease:
    """``etcdserverpb.Lease`` forwarded to the cluster, with Lattice's TTL bounds."""

    def __init__(self, api: UpstreamApi) -> None:
        self._api = api

    async def lease_grant(
        self, request: rpc_pb2.LeaseGrantRequest, context: CallContext
    ) -> rpc_pb2.LeaseGrantResponse:
        api = self._api

        async def handle(caller: Caller) -> rpc_pb2.LeaseGrantResponse:
            request.TTL = api.limits.lease_ttl(request)
            response = await api.pool.call(
                _path(_LEASE, "LeaseGrant"), request, rpc_pb2.LeaseGrantResponse
            )
            api.lease_tenants[response.ID] = caller.tenant
            return response

        return await api.unary("LeaseGrant", request, context, handle)

    async def lease_revoke(
        self, request: rpc_pb2.LeaseRevokeRequest, context: CallContext
    ) -> rpc_pb2.LeaseRevokeResponse:
        api = self._api

        async def handle(caller: Caller) -> rpc_pb2.LeaseRevokeResponse:
            _check_lease_tenant(api, caller, request.ID)
            response = await api.pool.call(
                _path(_LEASE, "LeaseRevoke"), request, rpc_pb2.LeaseRevokeResponse, idempotent=True
            )
            api.lease_tenants.pop(request.ID, None)
            return response

        return await api.unary("LeaseRevoke", request, context, handle)

    async def lease_keep_alive(self, requests: AsyncIterable[Any], context: CallContext) -> None:
        api = self._api
        caller = api.stream_caller(context)
        path = _path(_LEASE, "LeaseKeepAlive")
        upstream: ClientCall[rpc_pb2.LeaseKeepAliveResponse] | None = None
        try:
            async for request in requests:
                if api.metrics is not None:
                    api.metrics.request("LeaseKeepAlive")
                owner = api.lease_tenants.get(request.ID)
                if owner is not None and owner != caller.tenant:
                    await context.send(rpc_pb2.LeaseKeepAliveResponse(ID=request.ID, TTL=0))
                    continue
                response: rpc_pb2.LeaseKeepAliveResponse | None = None
                for _ in api.pool.endpoints:
                    index = api.pool.current
                    try:
                        if upstream is None:
                            channel = await api.pool.channel(index)
                            upstream = channel.stream_stream(
                                path, rpc_pb2.LeaseKeepAliveResponse, metadata=REQUIRE_LEADER
                            )
                        await upstream.send(rpc_pb2.LeaseKeepAliveRequest(ID=request.ID))
                        response = await upstream.receive()
                    except Exception as e:
                        _log.debug("Lease keep-alive upstream failed: {error}", error=str(e))
                        response = None
                    if response is not None:
                        break
                    if upstream is not None:
                        upstream.cancel()
                        upstream = None
                    api.pool.current = (index + 1) % len(api.pool.endpoints)
                if response is None:
                    raise _unavailable("lease keep-alive")
                await context.send(response)
        finally:
            if upstream is not None:
                upstream.cancel()

    async def lease_time_to_live(
        self, request: rpc_pb2.LeaseTimeToLiveRequest, context: CallContext
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        api = self._api

        async def handle(caller: Caller) -> rpc_pb2.LeaseTimeToLiveResponse:
            _check_lease_tenant(api, caller, request.ID)
            response = await api.pool.call(
                _path(_LEASE, "LeaseTimeToLive"),
                request,
                rpc_pb2.LeaseTimeToLiveResponse,
                idempotent=True,
            )
            keys = [caller.strip(k) for k in response.keys if k.startswith(caller.prefix)]
            del response.keys[:]
            response.keys.extend(keys)
            return response

        return await api.unary("LeaseTimeToLive", request, context, handle)

    async def lease_leases(
        self, request: rpc_pb2.LeaseLeasesRequest, context: CallContext
    ) -> rpc_pb2.LeaseLeasesResponse:
        api = self._api

        async def handle(caller: Caller) -> rpc_pb2.LeaseLeasesResponse:
            response = await api.pool.call(
                _path(_LEASE, "LeaseLeases"),
                request,
                rpc_pb2.LeaseLeasesResponse,
                idempotent=True,
            )
            mine = [
                lease
                for lease in response.leases
                if api.lease_tenants.get(lease.ID) == caller.tenant
            ]
            del response.leases[:]
            response.leases.extend(mine)
            return response

        return await api.unary("LeaseLeases", request, context, handle)


def _check_lease_tenant(api: UpstreamApi, caller: Caller, lease_id: int) -> None:
    owner = api.lease_tenants.get(lease_id)
    if owner is not None and owner != caller.tenant:
        raise KVError("NOT_FOUND", "etcdserver: requested lease not found")


class UpstreamCluster:
    """``etcdserverpb.Cluster``: the cluster's members (read-only)."""

    def __init__(self, api: UpstreamApi) -> None:
        self._api = api

    async def member_list(
        self, request: rpc_pb2.MemberListRequest, context: CallContext
    ) -> rpc_pb2.MemberListResponse:
        api = self._api

        async def handle(caller: Caller) -> rpc_pb2.MemberListResponse:
            return await api.pool.call(
                _path(_CLUSTER, "MemberList"),
                request,
                rpc_pb2.MemberListResponse,
                linearizable=False,
            )

        return await api.unary("MemberList", request, context, handle)


class UpstreamMaintenance:
    """``etcdserverpb.Maintenance``: Status of the member Lattice is talking to."""

    def __init__(self, api: UpstreamApi) -> None:
        self._api = api

    async def status(
        self, request: rpc_pb2.StatusRequest, context: CallContext
    ) -> rpc_pb2.StatusResponse:
        api = self._api

        async def handle(caller: Caller) -> rpc_pb2.StatusResponse:
            return await api.pool.call(
                _path(_MAINTENANCE, "Status"),
                request,
                rpc_pb2.StatusResponse,
                linearizable=False,
            )

        return await api.unary("Status", request, context, handle)


def upstream_services(api: UpstreamApi) -> dict[str, object]:
    """The etcd services served in front of a cluster, by service name (no Auth)."""
    return {
        "KV": UpstreamKV(api),
        "Watch": UpstreamWatch(api),
        "Lease": UpstreamLease(api),
        "Cluster": UpstreamCluster(api),
        "Maintenance": UpstreamMaintenance(api),
    }

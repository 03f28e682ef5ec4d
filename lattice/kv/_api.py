"""
The etcd v3 gRPC boundary: validates, identifies the caller, maps its keys into its tenant's
keyspace, calls the store, waits for durability and maps errors to etcd's statuses.  Nothing
else: the semantics live in :mod:`lattice.kv._store`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from google.protobuf.message import Message
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from lattice.grpc import GrpcError, Metadata, StatusCode
from lattice.kv._auth import AuthStore, Permission
from lattice.kv._errors import (
    KVError,
    empty_key,
    lease_ttl_too_large,
    member_not_found,
    permission_denied,
    request_too_large,
    user_empty,
)
from lattice.kv._metrics import KVMetrics
from lattice.kv._mvcc import DELETE, Event, KeyRange, prefix_end
from lattice.kv._proto import kv_pb2, rpc_pb2
from lattice.kv._quota import Quotas
from lattice.kv._snapshot import Member, build_backend, with_hash
from lattice.kv._storage import StoredState
from lattice.kv._store import KVStore, check_put, check_txn
from lattice.kv._watch import WatchCompacted, Watcher
from lattice.tls import PeerIdentity

__all__ = ["CallContext", "Caller", "EtcdApi", "Limits", "services"]

_log = Logger()

M = TypeVar("M", bound=Message)

ETCD_VERSION = "3.4.0"
DUPLICATE_WATCH_ID = "mvcc: duplicate watch ID provided on the WatchStream"
SNAPSHOT_CHUNK = 32 * 1024
MERGE_EVENTS = 1000  # most events merged into one queued watch response
# Event bytes one Watch stream may hold for a client that does not read; past it, its
# watchers stop queueing and catch up from history once the queue is half drained.
SLOW_WATCH_BYTES = 32 * 1024 * 1024
# Queued watch responses grow by merging only up to the request size limit, so a slow
# reader's responses stay far below the gRPC send limit.


class CallContext(Protocol):
    """What the boundary uses of a call (``lattice.grpc.ServerContext`` provides it)."""

    @property
    def peer_identity(self) -> PeerIdentity | None:
        """The verified client certificate, if any."""

    @property
    def invocation_metadata(self) -> Metadata:
        """The request metadata."""

    async def send(self, message: Message) -> None:
        """Send one message of a streamed response."""


@dataclass(frozen=True)
class Limits:
    """The API's bounds: request size, lease TTLs (seconds), the default tenant."""

    max_request_bytes: int = 1536 * 1024
    lease_ttl_default: int = 60
    lease_ttl_max: int = 86400
    default_tenant: str = "default"

    def lease_ttl(self, request: rpc_pb2.LeaseGrantRequest) -> int:
        """
        The TTL a LeaseGrant gets: the default when it asks for none, refused above the
        maximum; a negative lease ID is refused too.

        :raises KVError: etcd's errors for either.
        """
        ttl = request.TTL if request.TTL > 0 else self.lease_ttl_default
        if ttl > self.lease_ttl_max:
            raise lease_ttl_too_large()
        if request.ID < 0:
            raise KVError("INVALID_ARGUMENT", "etcdserver: lease ID must be positive")
        return int(ttl)


@dataclass(frozen=True)
class Caller:
    """Who is calling: the tenant whose keyspace they see and their auth user, if any."""

    tenant: str
    user: str | None
    prefix: bytes

    def key(self, key: bytes) -> bytes:
        """A client key in the tenant's keyspace."""
        return self.prefix + key

    def end(self, end: bytes) -> bytes:
        """A client range end in the tenant's keyspace."""
        if not end:
            return b""
        if end == b"\0":
            return prefix_end(self.prefix)
        return self.prefix + end

    def strip(self, key: bytes) -> bytes:
        """A stored key as the client knows it."""
        return key[len(self.prefix) :]


def _tenant_prefix(tenant: str) -> bytes:
    return tenant.encode() + b"\0"


class EtcdApi:
    """State shared by the etcd services of one listener."""

    def __init__(
        self,
        store: KVStore,
        auth: AuthStore,
        quotas: Quotas,
        limits: Limits,
        metrics: KVMetrics | None,
        *,
        member_name: str = "lattice",
        client_urls: Callable[[], list[str]] = list,
    ) -> None:
        self.store = store
        self.auth = auth
        self.quotas = quotas
        self.limits = limits
        self.metrics = metrics
        self.member_name = member_name
        self.client_urls = client_urls
        self.alarms: set[int] = set()
        self.watch_streams: set[_WatchStream] = set()
        self._encoded: dict[tuple[object, ...], tuple[bytes, list[Event]]] = {}
        self._encoded_revision = -1
        self._callers: dict[tuple[str, str | None], Caller] = {}

    # -- callers -------------------------------------------------------------------------

    def stream_caller(self, context: CallContext) -> Caller:
        """:meth:`caller` for a streaming call: a refusal ends the call with its status."""
        try:
            return self.caller(context)
        except KVError as e:
            raise GrpcError(StatusCode[e.code], e.message) from None

    def caller(self, context: CallContext, anonymous: bool = False) -> Caller:
        """
        Identify the caller from its certificate and token.  ``anonymous``: a call that
        etcd answers without checking the token (Status, MemberList) goes on without a
        user when the token is missing or no longer valid.
        """
        identity = context.peer_identity
        common_name = identity.common_name if identity is not None else None
        user: str | None = None
        if self.auth.enabled:
            token = context.invocation_metadata.get("token")
            if isinstance(token, str) and token:
                try:
                    user = self.auth.user_of(token)
                except KVError:
                    if not anonymous:
                        raise
            elif common_name and common_name in self.auth.user_list():
                user = common_name
            elif not anonymous:
                raise user_empty()
        if common_name:
            tenant = common_name
        elif user is not None and user != "root":
            tenant = user
        else:
            tenant = self.limits.default_tenant
        key = (tenant, user)
        caller = self._callers.get(key)
        if caller is None:
            if "\0" in tenant:
                raise permission_denied()
            caller = self._callers[key] = Caller(tenant, user, _tenant_prefix(tenant))
        return caller

    # -- plumbing ------------------------------------------------------------------------

    def durable(self, seq: int) -> Deferred[None]:
        """Fires once ``seq`` is committed (fails if storage failed)."""
        result: Deferred[None] = Deferred()

        def done(error: BaseException | None) -> None:
            if error is None:
                result.callback(None)
            else:
                result.errback(KVError("UNAVAILABLE", f"etcdserver: storage failed: {error}"))

        self.store.when_durable(seq, done)
        return result

    async def unary(
        self,
        method: str,
        request: Message,
        context: CallContext,
        handler: Callable[[Caller], Awaitable[M]],
        *,
        size_limited: bool = False,
        anonymous: bool = False,
    ) -> M:
        """Run one unary call with metrics, limits and error mapping."""
        metrics = self.metrics
        started = time.perf_counter()
        if metrics is not None:
            metrics.request(method)
        try:
            size = request.ByteSize()
            if size_limited and size > self.limits.max_request_bytes:
                raise request_too_large()
            caller = self.caller(context, anonymous)
            self.quotas.charge(caller.tenant, size)
            return await handler(caller)
        except KVError as e:
            if metrics is not None:
                metrics.errors.labels(method, e.code).inc()
            raise GrpcError(StatusCode[e.code], e.message) from None
        except GrpcError as e:
            if metrics is not None:
                metrics.errors.labels(method, e.code.name).inc()
            raise
        finally:
            if metrics is not None:
                metrics.observe(method, time.perf_counter() - started)

    def header(self, header: rpc_pb2.ResponseHeader, revision: int | None = None) -> None:
        """Fill a response header."""
        self.store.header(header, revision)

    def encoded_events(self, events: list[Event], strip: int, with_prev: bool) -> bytes:
        """
        A serialized WatchResponse (header and events, no watch ID) for ``events``, with
        ``strip`` bytes of tenant prefix removed from keys; cached for the current revision.
        """
        published = self.store.hub.published
        if published != self._encoded_revision:
            self._encoded.clear()
            self._encoded_revision = published
        key = (strip, with_prev, *map(id, events))
        cached = self._encoded.get(key)
        if cached is not None:
            return cached[0]
        response = rpc_pb2.WatchResponse()
        self.header(response.header, published)
        for event in events:
            out = response.events.add()
            out.type = kv_pb2.Event.DELETE if event.type == DELETE else kv_pb2.Event.PUT
            kv = event.kv
            target = out.kv
            target.key = kv.key[strip:]
            target.mod_revision = kv.mod_revision
            if event.type != DELETE:
                target.create_revision = kv.create_revision
                target.version = kv.version
                target.value = kv.value
                target.lease = kv.lease
            prev = event.prev_kv
            if with_prev and prev is not None:
                p = out.prev_kv
                p.key = prev.key[strip:]
                p.create_revision = prev.create_revision
                p.mod_revision = prev.mod_revision
                p.version = prev.version
                p.value = prev.value
                p.lease = prev.lease
        encoded = response.SerializeToString()
        # Keep the events referenced so that their ids stay unique while cached.
        self._encoded[key] = (encoded, events)
        return encoded

    def progress_tick(self) -> None:
        """
        Send a progress notification to every ``progress_notify`` watcher that got no
        event since the last tick (etcd does this every 10 minutes).
        """
        for stream in list(self.watch_streams):
            stream.progress_tick()

    def check_writable(self) -> None:
        """Refuse writes while the NOSPACE alarm is raised."""
        if rpc_pb2.NOSPACE in self.alarms:
            raise KVError("RESOURCE_EXHAUSTED", "etcdserver: mvcc: database space exceeded")


# -- mapping requests into a tenant's keyspace -----------------------------------------------


def _map_range(caller: Caller, request: rpc_pb2.RangeRequest) -> None:
    request.key = caller.key(request.key)
    request.range_end = caller.end(request.range_end)


def _map_delete(caller: Caller, request: rpc_pb2.DeleteRangeRequest) -> None:
    request.key = caller.key(request.key)
    request.range_end = caller.end(request.range_end)


def _map_txn(caller: Caller, request: rpc_pb2.TxnRequest) -> None:
    for compare in request.compare:
        compare.key = caller.key(compare.key)
        compare.range_end = caller.end(compare.range_end)
    for ops in (request.success, request.failure):
        for op in ops:
            kind = op.WhichOneof("request")
            if kind == "request_range":
                _map_range(caller, op.request_range)
            elif kind == "request_put":
                op.request_put.key = caller.key(op.request_put.key)
            elif kind == "request_delete_range":
                _map_delete(caller, op.request_delete_range)
            elif kind == "request_txn":
                _map_txn(caller, op.request_txn)


def _strip_kvs(caller: Caller, kvs: Iterable[kv_pb2.KeyValue]) -> None:
    n = len(caller.prefix)
    for kv in kvs:
        kv.key = kv.key[n:]


def _strip_txn(caller: Caller, response: rpc_pb2.TxnResponse) -> None:
    for out in response.responses:
        kind = out.WhichOneof("response")
        if kind == "response_range":
            _strip_kvs(caller, out.response_range.kvs)
        elif kind == "response_put":
            if out.response_put.HasField("prev_kv"):
                _strip_kvs(caller, [out.response_put.prev_kv])
        elif kind == "response_delete_range":
            _strip_kvs(caller, out.response_delete_range.prev_kvs)
        elif kind == "response_txn":
            _strip_txn(caller, out.response_txn)


def _check_txn_permissions(api: EtcdApi, caller: Caller, request: rpc_pb2.TxnRequest) -> None:
    auth = api.auth
    if not auth.enabled:
        return
    for compare in request.compare:
        auth.check(caller.user, KeyRange(compare.key, compare.range_end), write=False)
    for ops in (request.success, request.failure):
        for op in ops:
            kind = op.WhichOneof("request")
            if kind == "request_range":
                r = op.request_range
                auth.check(caller.user, KeyRange(r.key, r.range_end), write=False)
            elif kind == "request_put":
                auth.check(caller.user, KeyRange(op.request_put.key), write=True)
            elif kind == "request_delete_range":
                d = op.request_delete_range
                auth.check(caller.user, KeyRange(d.key, d.range_end), write=True)
            elif kind == "request_txn":
                _check_txn_permissions(api, caller, op.request_txn)


def _has_writes(request: rpc_pb2.TxnRequest) -> bool:
    for ops in (request.success, request.failure):
        for op in ops:
            kind = op.WhichOneof("request")
            if kind in ("request_put", "request_delete_range"):
                return True
            if kind == "request_txn" and _has_writes(op.request_txn):
                return True
    return False


# -- services --------------------------------------------------------------------------------


class KVService:
    """``etcdserverpb.KV``."""

    def __init__(self, api: EtcdApi) -> None:
        self._api = api

    async def range(
        self, request: rpc_pb2.RangeRequest, context: CallContext
    ) -> rpc_pb2.RangeResponse:
        api = self._api

        async def handle(caller: Caller) -> rpc_pb2.RangeResponse:
            if not request.key:
                raise empty_key()
            api.auth.check(caller.user, KeyRange(request.key, request.range_end), write=False)
            _map_range(caller, request)
            response = api.store.range(request)
            await api.durable(api.store.read_barrier())
            _strip_kvs(caller, response.kvs)
            return response

        return await api.unary("Range", request, context, handle)

    async def put(self, request: rpc_pb2.PutRequest, context: CallContext) -> rpc_pb2.PutResponse:
        api = self._api

        async def handle(caller: Caller) -> rpc_pb2.PutResponse:
            check_put(request)
            api.check_writable()
            api.auth.check(caller.user, KeyRange(request.key), write=True)
            request.key = caller.key(request.key)
            response, seq = api.store.put(request, caller.tenant)
            await api.durable(seq)
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
            api.check_writable()
            api.auth.check(caller.user, KeyRange(request.key, request.range_end), write=True)
            _map_delete(caller, request)
            response, seq = api.store.delete_range(request)
            await api.durable(seq)
            _strip_kvs(caller, response.prev_kvs)
            return response

        return await api.unary("DeleteRange", request, context, handle, size_limited=True)

    async def txn(self, request: rpc_pb2.TxnRequest, context: CallContext) -> rpc_pb2.TxnResponse:
        api = self._api

        async def handle(caller: Caller) -> rpc_pb2.TxnResponse:
            check_txn(request)
            if _has_writes(request):
                api.check_writable()
            _check_txn_permissions(api, caller, request)
            _map_txn(caller, request)
            response, seq = api.store.txn(request, caller.tenant)
            await api.durable(seq)
            _strip_txn(caller, response)
            return response

        return await api.unary("Txn", request, context, handle, size_limited=True)

    async def compact(
        self, request: rpc_pb2.CompactionRequest, context: CallContext
    ) -> rpc_pb2.CompactionResponse:
        api = self._api

        async def handle(caller: Caller) -> rpc_pb2.CompactionResponse:
            response, seq = api.store.compact(request)
            await api.durable(seq)
            return response

        return await api.unary("Compact", request, context, handle)


class WatchResponseQueue:
    """
    The responses of one Watch call, sent in order by L{send_loop}; an empty
    response pushed after C{done} is set ends the call.  Shared by the
    embedded and the upstream (etcd cluster) Watch services.

    It also bounds what a client that does not read costs: the event bytes
    queued are counted until sent; once they reach C{SLOW_WATCH_BYTES} the
    subclass stops queueing a watch's events (L{behind}, recording it in
    C{suspended}: watch ID -> the first revision not queued) and L{resume}
    catches those watches up once half of it was sent, as etcd's unsynced
    watchers.
    """

    def __init__(self, context: CallContext) -> None:
        self.context = context
        self.outgoing: deque[rpc_pb2.WatchResponse] = deque()
        self.wake: Deferred[None] | None = None
        self.done = False
        self.queued_bytes = 0
        self._sizes: dict[int, int] = {}
        self.suspended: dict[int, int] = {}

    def push(self, response: rpc_pb2.WatchResponse, size: int = 0) -> None:
        """Queue ``response``; ``size``: the event bytes it holds, counted until it is sent."""
        if size:
            # counted before it is queued: a waiting sender may send it at once
            self.counted(response, size)
        self.outgoing.append(response)
        if self.wake is not None:
            wake, self.wake = self.wake, None
            wake.callback(None)

    def counted(self, response: rpc_pb2.WatchResponse, size: int) -> None:
        """``size`` more event bytes in the queued ``response`` (pushed, or merged into)."""
        self.queued_bytes += size
        self._sizes[id(response)] = self._sizes.get(id(response), 0) + size

    @property
    def behind(self) -> bool:
        """The client does not read: the events queued reached ``SLOW_WATCH_BYTES``."""
        return self.queued_bytes >= SLOW_WATCH_BYTES

    def sent(self, response: rpc_pb2.WatchResponse) -> None:
        """``response`` went to the client: resume the suspended watches once half is sent."""
        self.queued_bytes -= self._sizes.pop(id(response), 0)
        if self.suspended and self.queued_bytes <= SLOW_WATCH_BYTES // 2:
            suspended, self.suspended = self.suspended, {}
            self.resume(suspended)

    def resume(self, suspended: dict[int, int]) -> None:
        """Catch up ``suspended`` watches (watch ID -> the first revision they missed)."""
        raise NotImplementedError

    @staticmethod
    def fragments(
        response: rpc_pb2.WatchResponse, limit: int
    ) -> list[tuple[rpc_pb2.WatchResponse, int]]:
        """
        As etcd does for a watch created with ``fragment``: ``response``'s events in
        responses of at most ``limit`` bytes (or one event each, if an event alone is
        larger), every one but the last marked ``fragment``; the client joins them.
        Each comes with an upper bound of its size.
        """
        base = rpc_pb2.WatchResponse(watch_id=response.watch_id)
        base.header.CopyFrom(response.header)
        empty = base.ByteSize()
        parts: list[tuple[rpc_pb2.WatchResponse, int]] = []
        part = rpc_pb2.WatchResponse()
        part.CopyFrom(base)
        size = empty
        for event in response.events:
            # An event costs its length, its tag and its length prefix (at most 1 + 5 bytes).
            cost = event.ByteSize() + 6
            if part.events and size + cost > limit:
                part.fragment = True
                parts.append((part, size))
                part = rpc_pb2.WatchResponse()
                part.CopyFrom(base)
                size = empty
            part.events.append(event)
            size += cost
        parts.append((part, size))
        return parts

    async def create(self, request: rpc_pb2.WatchCreateRequest) -> None:
        """Start one watch (or answer why not)."""
        raise NotImplementedError

    async def cancel(self, watch_id: int) -> None:
        """Cancel one watch."""
        raise NotImplementedError

    def progress(self) -> None:
        """Answer a progress request."""
        raise NotImplementedError

    async def close(self) -> None:
        """The call ended: drop every watch and end the responses."""
        raise NotImplementedError

    async def serve(self, requests: AsyncIterable[Any], metrics: KVMetrics | None) -> None:
        """Run one Watch call: its requests in order, its responses until the end."""
        sender = Deferred.fromCoroutine(self.send_loop())
        if metrics is not None:
            metrics.watch_streams.inc()
        try:
            async for request in requests:
                kind = request.WhichOneof("request_union")
                if kind == "create_request":
                    await self.create(request.create_request)
                elif kind == "cancel_request":
                    await self.cancel(request.cancel_request.watch_id)
                elif kind == "progress_request":
                    self.progress()
            # As etcd: a client that half-closes its side keeps its watches until it
            # cancels the call or goes away (the HTTP gateway relies on it).
            await sender
        finally:
            await self.close()
            if metrics is not None:
                metrics.watch_streams.dec()
        await sender

    async def send_loop(self) -> None:
        while True:
            while self.outgoing:
                response = self.outgoing.popleft()
                if self.done and not self.outgoing and response.ByteSize() == 0:
                    return
                await self.context.send(response)
                self.sent(response)
            if self.done:
                return
            self.wake = Deferred()
            await self.wake


class _WatchStream(WatchResponseQueue):
    """One Watch call: its watchers and the queue of responses to send, in order."""

    def __init__(self, api: EtcdApi, caller: Caller, context: CallContext) -> None:
        super().__init__(context)
        self.api = api
        self.caller = caller
        self.watchers: dict[int, Watcher] = {}
        self.prev_kv: dict[int, bool] = {}
        self.progress_notify: set[int] = set()
        self.fragment: set[int] = set()
        # The last queued events response and an upper bound of its size, so that merging
        # into it never has to measure a growing message.
        self._tail: rpc_pb2.WatchResponse | None = None
        self._tail_bytes = 0
        self.quiet: set[int] = set()
        self.next_id = 0

    def events(self, watcher: Watcher, events: list[Event]) -> None:
        watch_id = watcher.tag
        assert isinstance(watch_id, int)
        if watch_id in self.suspended:
            return
        if self.behind:
            # A client that does not read: stop queueing (as etcd's unsynced watchers),
            # catch up from history later (resume()).
            self.api.store.hub.cancel(watcher)
            self.suspended[watch_id] = events[0].kv.mod_revision
            return
        self.quiet.discard(watch_id)
        with_prev = self.prev_kv.get(watch_id, False)
        # Many watchers usually receive the same events: encode them once per revision.
        encoded = self.api.encoded_events(events, len(self.caller.prefix), with_prev)
        limit = self.api.limits.max_request_bytes
        outgoing = self.outgoing
        if outgoing:
            # Not sent yet: append to the previous response of this watcher (a slow reader
            # gets fewer, larger responses; revisions are never split).
            tail = outgoing[-1]
            if (
                tail is self._tail
                and tail.watch_id == watch_id
                and not tail.fragment
                and len(tail.events) < MERGE_EVENTS
                and self._tail_bytes + len(encoded) <= limit
            ):
                tail.MergeFromString(encoded)
                self._tail_bytes += len(encoded)
                self.counted(tail, len(encoded))
                return
        response = rpc_pb2.WatchResponse.FromString(encoded)
        response.watch_id = watch_id
        parts = (
            self.fragments(response, limit)
            if watch_id in self.fragment and len(encoded) > limit and len(response.events) > 1
            else [(response, len(encoded) + 12)]
        )
        for part, size in parts:
            self._tail, self._tail_bytes = part, size
            self.push(part, size)

    def resume(self, suspended: dict[int, int]) -> None:
        """Catch the suspended watchers up from history, then live, as from a start revision."""
        hub = self.api.store.hub
        for watch_id, revision in sorted(suspended.items()):
            old = self.watchers.get(watch_id)
            if old is None:
                continue
            try:
                watcher = hub.watch(
                    old.key_range,
                    revision,
                    self.events,
                    no_put=old.no_put,
                    no_delete=old.no_delete,
                    tag=watch_id,
                )
            except WatchCompacted as e:
                # compacted meanwhile: cancelled as etcd cancels such a watcher
                del self.watchers[watch_id]
                self._compacted(watch_id, e.compact_revision)
                continue
            self.watchers[watch_id] = watcher
            if watch_id in self.suspended:
                # the history alone filled the queue again: wait for the next drain
                hub.cancel(watcher)

    async def create(self, request: rpc_pb2.WatchCreateRequest) -> None:
        api = self.api
        caller = self.caller
        watch_id = request.watch_id or self.next_id
        while not request.watch_id and watch_id in self.watchers:
            watch_id += 1
        response = rpc_pb2.WatchResponse(watch_id=watch_id, created=True)
        api.header(response.header, api.store.hub.published)
        # Refusals as etcd words them (an empty key is not one: etcd watches it, and it
        # never changes).
        try:
            api.auth.check(caller.user, KeyRange(request.key, request.range_end), write=False)
        except KVError as e:
            response.watch_id = request.watch_id
            response.canceled = True
            response.cancel_reason = e.message
            self.push(response)
            return
        if watch_id in self.watchers:
            response.watch_id = -1
            response.canceled = True
            response.cancel_reason = DUPLICATE_WATCH_ID
            self.push(response)
            return
        self.next_id = max(self.next_id, watch_id + 1)
        filters = set(request.filters)
        compact_revision = api.store.mvcc.compact_revision
        if 0 < request.start_revision < compact_revision:
            self.push(response)
            self._compacted(watch_id, compact_revision)
            return
        self.push(response)
        self.prev_kv[watch_id] = request.prev_kv
        if request.progress_notify:
            self.progress_notify.add(watch_id)
        if request.fragment:
            self.fragment.add(watch_id)
        try:
            watcher = api.store.hub.watch(
                KeyRange(caller.key(request.key), caller.end(request.range_end)),
                request.start_revision,
                self.events,
                no_put=rpc_pb2.WatchCreateRequest.NOPUT in filters,
                no_delete=rpc_pb2.WatchCreateRequest.NODELETE in filters,
                tag=watch_id,
            )
        except WatchCompacted as e:  # pragma: no cover - checked above
            self._compacted(watch_id, e.compact_revision)
            return
        self.watchers[watch_id] = watcher
        if watch_id in self.suspended:
            # its history filled the queue: the rest comes once the client has read
            api.store.hub.cancel(watcher)

    def _compacted(self, watch_id: int, compact_revision: int) -> None:
        """
        Cancel a watch whose start is compacted, as etcd answers it: no revision in the
        header, no reason (clients read ``compact_revision``).
        """
        cancelled = rpc_pb2.WatchResponse(
            watch_id=watch_id, canceled=True, compact_revision=compact_revision
        )
        self.api.header(cancelled.header)
        cancelled.header.ClearField("revision")
        self.push(cancelled)

    async def cancel(self, watch_id: int) -> None:
        watcher = self.watchers.pop(watch_id, None)
        self.progress_notify.discard(watch_id)
        self.fragment.discard(watch_id)
        self.suspended.pop(watch_id, None)
        if watcher is None:
            return
        self.api.store.hub.cancel(watcher)
        response = rpc_pb2.WatchResponse(watch_id=watch_id, canceled=True)
        self.api.header(response.header)
        self.push(response)

    def progress_tick(self) -> None:
        for watch_id in sorted(self.progress_notify & self.quiet):
            # not for a watcher behind the published revision (suspended), as etcd
            if watch_id in self.watchers and watch_id not in self.suspended:
                response = rpc_pb2.WatchResponse(watch_id=watch_id)
                self.api.header(response.header, self.api.store.hub.published)
                self.push(response)
        self.quiet = set(self.progress_notify)

    def progress(self) -> None:
        if self.suspended:
            # etcd answers a progress request only when every watcher is up to date
            return
        response = rpc_pb2.WatchResponse(watch_id=-1)
        self.api.header(response.header, self.api.store.hub.published)
        self.push(response)

    async def close(self) -> None:
        self.api.watch_streams.discard(self)
        for watcher in self.watchers.values():
            self.api.store.hub.cancel(watcher)
        self.watchers.clear()
        self.done = True
        self.push(rpc_pb2.WatchResponse())


class WatchService:
    """``etcdserverpb.Watch``."""

    def __init__(self, api: EtcdApi) -> None:
        self._api = api

    async def watch(self, requests: AsyncIterable[Any], context: CallContext) -> None:
        api = self._api
        if api.metrics is not None:
            api.metrics.request("Watch")
        stream = _WatchStream(api, api.stream_caller(context), context)
        api.watch_streams.add(stream)
        await stream.serve(requests, api.metrics)


class LeaseService:
    """``etcdserverpb.Lease``."""

    def __init__(self, api: EtcdApi) -> None:
        self._api = api

    async def lease_grant(
        self, request: rpc_pb2.LeaseGrantRequest, context: CallContext
    ) -> rpc_pb2.LeaseGrantResponse:
        api = self._api

        async def handle(caller: Caller) -> rpc_pb2.LeaseGrantResponse:
            ttl = api.limits.lease_ttl(request)
            lease, seq = api.store.lease_grant(request.ID, ttl, caller.tenant)
            await api.durable(seq)
            response = rpc_pb2.LeaseGrantResponse(ID=lease.id, TTL=lease.ttl)
            api.header(response.header)
            return response

        return await api.unary("LeaseGrant", request, context, handle)

    async def lease_revoke(
        self, request: rpc_pb2.LeaseRevokeRequest, context: CallContext
    ) -> rpc_pb2.LeaseRevokeResponse:
        api = self._api

        async def handle(caller: Caller) -> rpc_pb2.LeaseRevokeResponse:
            seq = api.store.lease_revoke(request.ID, caller.tenant)
            await api.durable(seq)
            response = rpc_pb2.LeaseRevokeResponse()
            api.header(response.header)
            return response

        return await api.unary("LeaseRevoke", request, context, handle)

    async def lease_keep_alive(self, requests: AsyncIterable[Any], context: CallContext) -> None:
        api = self._api
        caller = api.stream_caller(context)
        async for request in requests:
            if api.metrics is not None:
                api.metrics.request("LeaseKeepAlive")
            response = rpc_pb2.LeaseKeepAliveResponse(ID=request.ID)
            try:
                lease = api.store.lessor.renew(request.ID, caller.tenant)
                response.TTL = lease.ttl
            except KVError:
                response.TTL = 0
            api.header(response.header)
            await context.send(response)

    async def lease_time_to_live(
        self, request: rpc_pb2.LeaseTimeToLiveRequest, context: CallContext
    ) -> rpc_pb2.LeaseTimeToLiveResponse:
        api = self._api

        async def handle(caller: Caller) -> rpc_pb2.LeaseTimeToLiveResponse:
            response = rpc_pb2.LeaseTimeToLiveResponse(ID=request.ID)
            api.header(response.header)
            try:
                lease = api.store.lessor.lookup(request.ID, caller.tenant)
            except KVError:
                response.TTL = -1
                return response
            response.TTL = lease.remaining(api.store.lessor.now())
            response.grantedTTL = lease.ttl
            if request.keys:
                response.keys.extend(sorted(caller.strip(key) for key in lease.keys))
            return response

        return await api.unary("LeaseTimeToLive", request, context, handle)

    async def lease_leases(
        self, request: rpc_pb2.LeaseLeasesRequest, context: CallContext
    ) -> rpc_pb2.LeaseLeasesResponse:
        api = self._api

        async def handle(caller: Caller) -> rpc_pb2.LeaseLeasesResponse:
            response = rpc_pb2.LeaseLeasesResponse()
            api.header(response.header)
            for lease in api.store.lessor.leases():
                if lease.tenant == caller.tenant:
                    response.leases.add(ID=lease.id)
            return response

        return await api.unary("LeaseLeases", request, context, handle)


class ClusterService:
    """``etcdserverpb.Cluster``: one member, this node; membership does not change."""

    def __init__(self, api: EtcdApi) -> None:
        self._api = api

    def _member(self) -> rpc_pb2.Member:
        api = self._api
        urls = api.client_urls()
        # A standalone node has no peer port: its peer URLs are the URLs it is reached at
        # (clients and tools expect a member to have some).
        return rpc_pb2.Member(
            ID=api.store.member_id, name=api.member_name, clientURLs=urls, peerURLs=urls
        )

    async def member_list(
        self, request: rpc_pb2.MemberListRequest, context: CallContext
    ) -> rpc_pb2.MemberListResponse:
        api = self._api

        async def handle(caller: Caller) -> rpc_pb2.MemberListResponse:
            response = rpc_pb2.MemberListResponse(members=[self._member()])
            api.header(response.header)
            return response

        return await api.unary("MemberList", request, context, handle, anonymous=True)

    async def member_add(
        self, request: rpc_pb2.MemberAddRequest, context: CallContext
    ) -> rpc_pb2.MemberAddResponse:
        async def handle(caller: Caller) -> rpc_pb2.MemberAddResponse:
            raise KVError(
                "UNIMPLEMENTED", "lattice: a standalone node does not add cluster members"
            )

        return await self._api.unary("MemberAdd", request, context, handle)

    async def _other_member(
        self, method: str, request: Any, context: CallContext, own: KVError
    ) -> Any:
        api = self._api

        async def handle(caller: Caller) -> Any:
            if api.store.member_id != request.ID:
                raise member_not_found()
            raise own

        return await api.unary(method, request, context, handle)

    async def member_remove(
        self, request: rpc_pb2.MemberRemoveRequest, context: CallContext
    ) -> rpc_pb2.MemberRemoveResponse:
        own = KVError(
            "FAILED_PRECONDITION",
            "etcdserver: re-configuration failed due to not enough started members",
        )
        result: rpc_pb2.MemberRemoveResponse = await self._other_member(
            "MemberRemove", request, context, own
        )
        return result

    async def member_update(
        self, request: rpc_pb2.MemberUpdateRequest, context: CallContext
    ) -> rpc_pb2.MemberUpdateResponse:
        own = KVError("UNIMPLEMENTED", "lattice: a standalone node has no peer URLs to update")
        result: rpc_pb2.MemberUpdateResponse = await self._other_member(
            "MemberUpdate", request, context, own
        )
        return result

    async def member_promote(
        self, request: rpc_pb2.MemberPromoteRequest, context: CallContext
    ) -> rpc_pb2.MemberPromoteResponse:
        own = KVError("FAILED_PRECONDITION", "etcdserver: can only promote a learner member")
        result: rpc_pb2.MemberPromoteResponse = await self._other_member(
            "MemberPromote", request, context, own
        )
        return result


class MaintenanceService:
    """``etcdserverpb.Maintenance``."""

    def __init__(self, api: EtcdApi) -> None:
        self._api = api

    async def status(
        self, request: rpc_pb2.StatusRequest, context: CallContext
    ) -> rpc_pb2.StatusResponse:
        api = self._api

        async def handle(caller: Caller) -> rpc_pb2.StatusResponse:
            store = api.store
            size, in_use = store.storage.size()
            response = rpc_pb2.StatusResponse(
                version=ETCD_VERSION,
                dbSize=size,
                dbSizeInUse=in_use,
                leader=store.member_id,
                raftIndex=store.revision,
                raftTerm=1,
                raftAppliedIndex=store.revision,
                errors=[f"alarm:{rpc_pb2.AlarmType.Name(a)}" for a in sorted(api.alarms)],
            )
            api.header(response.header)
            return response

        return await api.unary("Status", request, context, handle, anonymous=True)

    async def alarm(
        self, request: rpc_pb2.AlarmRequest, context: CallContext
    ) -> rpc_pb2.AlarmResponse:
        api = self._api

        async def handle(caller: Caller) -> rpc_pb2.AlarmResponse:
            action = request.action
            if action != rpc_pb2.AlarmRequest.GET:
                api.auth.check_admin(caller.user)
            if action == rpc_pb2.AlarmRequest.ACTIVATE and request.alarm != rpc_pb2.NONE:
                api.alarms.add(request.alarm)
            elif action == rpc_pb2.AlarmRequest.DEACTIVATE:
                api.alarms.discard(request.alarm)
            response = rpc_pb2.AlarmResponse()
            for alarm in sorted(api.alarms):
                if request.alarm in (rpc_pb2.NONE, alarm):
                    response.alarms.add(memberID=api.store.member_id, alarm=alarm)
            api.header(response.header)
            return response

        return await api.unary("Alarm", request, context, handle)

    async def defragment(
        self, request: rpc_pb2.DefragmentRequest, context: CallContext
    ) -> rpc_pb2.DefragmentResponse:
        api = self._api

        async def handle(caller: Caller) -> rpc_pb2.DefragmentResponse:
            api.auth.check_admin(caller.user)
            done: Deferred[None] = Deferred()

            def finished(error: BaseException | None) -> None:
                if error is None:
                    done.callback(None)
                else:
                    done.errback(KVError("INTERNAL", f"lattice: defragment failed: {error}"))

            api.store.storage.defragment(finished)
            await done
            response = rpc_pb2.DefragmentResponse()
            api.header(response.header)
            return response

        return await api.unary("Defragment", request, context, handle)

    async def hash(
        self, request: rpc_pb2.HashRequest, context: CallContext
    ) -> rpc_pb2.HashResponse:
        api = self._api

        async def handle(caller: Caller) -> rpc_pb2.HashResponse:
            value, _ = api.store.mvcc.hash()
            response = rpc_pb2.HashResponse(hash=value)
            api.header(response.header)
            return response

        return await api.unary("Hash", request, context, handle)

    async def hash_kv(
        self, request: rpc_pb2.HashKVRequest, context: CallContext
    ) -> rpc_pb2.HashKVResponse:
        api = self._api

        async def handle(caller: Caller) -> rpc_pb2.HashKVResponse:
            value, at = api.store.mvcc.hash(request.revision)
            response = rpc_pb2.HashKVResponse(
                hash=value,
                compact_revision=api.store.mvcc.compact_revision,
                hash_revision=at,
            )
            api.header(response.header)
            return response

        return await api.unary("HashKV", request, context, handle)

    async def snapshot(self, request: rpc_pb2.SnapshotRequest, context: CallContext) -> None:
        api = self._api
        if api.metrics is not None:
            api.metrics.request("Snapshot")
        try:
            caller = api.caller(context)
            api.auth.check_admin(caller.user)
        except KVError as e:
            raise GrpcError(StatusCode[e.code], e.message) from None
        got: Deferred[bytes] = Deferred()

        def done(result: bytes | BaseException) -> None:
            if isinstance(result, BaseException):
                got.errback(GrpcError(StatusCode.INTERNAL, f"lattice: snapshot failed: {result}"))
            else:
                got.callback(result)

        # The caller's keyspace in etcd's backend layout, read and built on the storage's
        # thread; etcd appends the database's SHA-256, which etcdctl checks on restore.
        member = Member(api.store.member_id, api.member_name, (), tuple(api.client_urls()))
        tenant, alarms = caller.tenant, tuple(api.alarms)

        def build(state: StoredState) -> bytes:
            return with_hash(build_backend(state, tenant=tenant, member=member, alarms=alarms))

        api.store.storage.snapshot(done, build)
        blob = await got
        header = rpc_pb2.ResponseHeader()
        api.header(header)
        for offset in range(0, len(blob), SNAPSHOT_CHUNK):
            chunk = blob[offset : offset + SNAPSHOT_CHUNK]
            remaining = len(blob) - offset - len(chunk)
            await context.send(
                rpc_pb2.SnapshotResponse(
                    header=header, remaining_bytes=remaining, blob=chunk, version=ETCD_VERSION
                )
            )

    async def move_leader(
        self, request: rpc_pb2.MoveLeaderRequest, context: CallContext
    ) -> rpc_pb2.MoveLeaderResponse:
        api = self._api

        async def handle(caller: Caller) -> rpc_pb2.MoveLeaderResponse:
            api.auth.check_admin(caller.user)
            if request.targetID != api.store.member_id:
                raise KVError("FAILED_PRECONDITION", "etcdserver: bad leader transferee")
            response = rpc_pb2.MoveLeaderResponse()
            api.header(response.header)
            return response

        return await api.unary("MoveLeader", request, context, handle)


class AuthService:
    """``etcdserverpb.Auth``."""

    def __init__(self, api: EtcdApi) -> None:
        self._api = api

    async def _admin(
        self,
        method: str,
        request: Message,
        context: CallContext,
        change: Callable[[AuthStore], None],
        response: M,
    ) -> M:
        api = self._api

        async def handle(caller: Caller) -> M:
            api.auth.check_admin(caller.user)
            change(api.auth)
            await api.durable(api.store.save_meta("auth", api.auth.to_json()))
            api.header(response.header)  # type: ignore[attr-defined]
            return response

        return await api.unary(method, request, context, handle)

    async def _read(
        self,
        method: str,
        request: Message,
        context: CallContext,
        build: Callable[[], M],
        own: Callable[[str], bool] = lambda user: False,
    ) -> M:
        """
        An admin read; ``own(user)`` says whether a non-admin caller may read it anyway (as
        etcd: a user reads its own entry and the roles it has).
        """
        api = self._api

        async def handle(caller: Caller) -> M:
            if caller.user is None or not own(caller.user):
                api.auth.check_admin(caller.user)
            response = build()
            api.header(response.header)  # type: ignore[attr-defined]
            return response

        return await api.unary(method, request, context, handle)

    async def auth_enable(
        self, request: rpc_pb2.AuthEnableRequest, context: CallContext
    ) -> rpc_pb2.AuthEnableResponse:
        return await self._admin(
            "AuthEnable", request, context, AuthStore.enable, rpc_pb2.AuthEnableResponse()
        )

    async def auth_disable(
        self, request: rpc_pb2.AuthDisableRequest, context: CallContext
    ) -> rpc_pb2.AuthDisableResponse:
        return await self._admin(
            "AuthDisable", request, context, AuthStore.disable, rpc_pb2.AuthDisableResponse()
        )

    async def auth_status(
        self, request: rpc_pb2.AuthStatusRequest, context: CallContext
    ) -> rpc_pb2.AuthStatusResponse:
        auth = self._api.auth
        return await self._read(
            "AuthStatus",
            request,
            context,
            lambda: rpc_pb2.AuthStatusResponse(enabled=auth.enabled, authRevision=auth.revision),
        )

    async def authenticate(
        self, request: rpc_pb2.AuthenticateRequest, context: CallContext
    ) -> rpc_pb2.AuthenticateResponse:
        api = self._api
        if api.metrics is not None:
            api.metrics.request("Authenticate")
        try:
            token = api.auth.authenticate(request.name, request.password)
        except KVError as e:
            if api.metrics is not None:
                api.metrics.errors.labels("Authenticate", e.code).inc()
            raise GrpcError(StatusCode[e.code], e.message) from None
        response = rpc_pb2.AuthenticateResponse(token=token)
        api.header(response.header)
        return response

    async def user_add(
        self, request: rpc_pb2.AuthUserAddRequest, context: CallContext
    ) -> rpc_pb2.AuthUserAddResponse:
        no_password = request.options.no_password

        def change(auth: AuthStore) -> None:
            auth.user_add(request.name, request.password, no_password)

        return await self._admin("UserAdd", request, context, change, rpc_pb2.AuthUserAddResponse())

    async def user_get(
        self, request: rpc_pb2.AuthUserGetRequest, context: CallContext
    ) -> rpc_pb2.AuthUserGetResponse:
        auth = self._api.auth
        return await self._read(
            "UserGet",
            request,
            context,
            lambda: rpc_pb2.AuthUserGetResponse(roles=auth.user_get(request.name)),
            own=lambda user: user == request.name,
        )

    async def user_list(
        self, request: rpc_pb2.AuthUserListRequest, context: CallContext
    ) -> rpc_pb2.AuthUserListResponse:
        auth = self._api.auth
        return await self._read(
            "UserList",
            request,
            context,
            lambda: rpc_pb2.AuthUserListResponse(users=auth.user_list()),
        )

    async def user_delete(
        self, request: rpc_pb2.AuthUserDeleteRequest, context: CallContext
    ) -> rpc_pb2.AuthUserDeleteResponse:
        return await self._admin(
            "UserDelete",
            request,
            context,
            lambda auth: auth.user_delete(request.name),
            rpc_pb2.AuthUserDeleteResponse(),
        )

    async def user_change_password(
        self, request: rpc_pb2.AuthUserChangePasswordRequest, context: CallContext
    ) -> rpc_pb2.AuthUserChangePasswordResponse:
        return await self._admin(
            "UserChangePassword",
            request,
            context,
            lambda auth: auth.user_change_password(request.name, request.password),
            rpc_pb2.AuthUserChangePasswordResponse(),
        )

    async def user_grant_role(
        self, request: rpc_pb2.AuthUserGrantRoleRequest, context: CallContext
    ) -> rpc_pb2.AuthUserGrantRoleResponse:
        return await self._admin(
            "UserGrantRole",
            request,
            context,
            lambda auth: auth.user_grant_role(request.user, request.role),
            rpc_pb2.AuthUserGrantRoleResponse(),
        )

    async def user_revoke_role(
        self, request: rpc_pb2.AuthUserRevokeRoleRequest, context: CallContext
    ) -> rpc_pb2.AuthUserRevokeRoleResponse:
        return await self._admin(
            "UserRevokeRole",
            request,
            context,
            lambda auth: auth.user_revoke_role(request.name, request.role),
            rpc_pb2.AuthUserRevokeRoleResponse(),
        )

    async def role_add(
        self, request: rpc_pb2.AuthRoleAddRequest, context: CallContext
    ) -> rpc_pb2.AuthRoleAddResponse:
        return await self._admin(
            "RoleAdd",
            request,
            context,
            lambda auth: auth.role_add(request.name),
            rpc_pb2.AuthRoleAddResponse(),
        )

    async def role_get(
        self, request: rpc_pb2.AuthRoleGetRequest, context: CallContext
    ) -> rpc_pb2.AuthRoleGetResponse:
        auth = self._api.auth

        def build() -> rpc_pb2.AuthRoleGetResponse:
            response = rpc_pb2.AuthRoleGetResponse()
            for perm in auth.role_get(request.role):
                response.perm.add(permType=perm.type, key=perm.key, range_end=perm.range_end)
            return response

        def has_role(user: str) -> bool:
            try:
                return request.role in auth.user_get(user)
            except KVError:
                return False

        return await self._read("RoleGet", request, context, build, own=has_role)

    async def role_list(
        self, request: rpc_pb2.AuthRoleListRequest, context: CallContext
    ) -> rpc_pb2.AuthRoleListResponse:
        auth = self._api.auth
        return await self._read(
            "RoleList",
            request,
            context,
            lambda: rpc_pb2.AuthRoleListResponse(roles=auth.role_list()),
        )

    async def role_delete(
        self, request: rpc_pb2.AuthRoleDeleteRequest, context: CallContext
    ) -> rpc_pb2.AuthRoleDeleteResponse:
        return await self._admin(
            "RoleDelete",
            request,
            context,
            lambda auth: auth.role_delete(request.role),
            rpc_pb2.AuthRoleDeleteResponse(),
        )

    async def role_grant_permission(
        self, request: rpc_pb2.AuthRoleGrantPermissionRequest, context: CallContext
    ) -> rpc_pb2.AuthRoleGrantPermissionResponse:
        perm = request.perm

        def change(auth: AuthStore) -> None:
            if not perm.key:
                raise KVError(
                    "INVALID_ARGUMENT", "etcdserver: permission is not granted to the role"
                )
            auth.role_grant_permission(
                request.name, Permission(perm.permType, perm.key, perm.range_end)
            )

        return await self._admin(
            "RoleGrantPermission",
            request,
            context,
            change,
            rpc_pb2.AuthRoleGrantPermissionResponse(),
        )

    async def role_revoke_permission(
        self, request: rpc_pb2.AuthRoleRevokePermissionRequest, context: CallContext
    ) -> rpc_pb2.AuthRoleRevokePermissionResponse:
        return await self._admin(
            "RoleRevokePermission",
            request,
            context,
            lambda auth: auth.role_revoke_permission(request.role, request.key, request.range_end),
            rpc_pb2.AuthRoleRevokePermissionResponse(),
        )


def services(api: EtcdApi) -> dict[str, object]:
    """Every etcd service implementation, by service name."""
    return {
        "KV": KVService(api),
        "Watch": WatchService(api),
        "Lease": LeaseService(api),
        "Cluster": ClusterService(api),
        "Maintenance": MaintenanceService(api),
        "Auth": AuthService(api),
    }

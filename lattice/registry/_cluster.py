"""
:class:`~lattice.registry._store.KeyValueStore` over the shared etcd cluster
(``[kv] backend = etcd``).

The node has no local store then: the registry reads and watches ``/services/`` and keeps its
advertisements' lease alive in the cluster, through the same connections (member failover,
shared upstream watch stream) as the node's KV listener.  Keys live in one tenant's
namespace (``tenant + NUL + key`` upstream), as the listener maps them, so that
``etcdctl put /services/...`` through any node's listener is what every registry reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from lattice.grpc import GrpcError, StatusCode, method_path
from lattice.kv import prefix_end
from lattice.kv._proto import kv_pb2, rpc_pb2
from lattice.kv._upstream import UpstreamApi, WatchKey
from lattice.registry._store import StoredValue, StoreEvent, WatchCallback

__all__ = ["ClusterStoreAdapter"]

_KV = rpc_pb2.DESCRIPTOR.services_by_name["KV"]
_LEASE = rpc_pb2.DESCRIPTOR.services_by_name["Lease"]


def _path(service: Any, name: str) -> str:
    return method_path(service.methods_by_name[name])


class _Watch:
    """One registry watch on the upstream watch multiplexer."""

    _log = Logger()

    def __init__(self, adapter: ClusterStoreAdapter, callback: WatchCallback) -> None:
        self._adapter = adapter
        self._callback = callback
        self._shared: Any = None
        self.cancelled = False

    def deliver(self, watch_id: int, response: rpc_pb2.WatchResponse) -> None:
        if self.cancelled:
            return
        if response.canceled:
            self._log.warn(
                "Registry watch cancelled by the etcd cluster: {reason}",
                reason=response.cancel_reason or "no reason given",
            )
            return
        events = [
            StoreEvent(
                event.kv.key,
                None if event.type == kv_pb2.Event.DELETE else event.kv.value,
                event.kv.mod_revision,
            )
            for event in response.events
        ]
        if events:
            self._callback(events)

    async def start(self, key: WatchKey, start_revision: int) -> None:
        mux = self._adapter.api.mux
        shared, created = await mux.subscribe(
            self, 0, key, start_revision, len(self._adapter.prefix)
        )
        if self.cancelled:
            await mux.unsubscribe(shared, self, 0)
            return
        self._shared = shared
        if created.canceled:
            self._log.warn(
                "Registry watch refused by the etcd cluster: {reason}",
                reason=created.cancel_reason or "no reason given",
            )

    def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        if self._shared is not None:
            Deferred.fromCoroutine(self._adapter.api.mux.unsubscribe(self._shared, self, 0))


class ClusterStoreAdapter:
    """
    :class:`~lattice.registry._store.KeyValueStore` over the etcd cluster behind the KV
    listener: writes and reads are linearizable calls (acknowledged once a quorum has them),
    watches share the listener's upstream watch stream, leases are the cluster's.

    :param api: the KV service's :class:`~lattice.kv._upstream.UpstreamApi`.
    :param tenant: the KV tenant whose keyspace and leases the registry uses (the etcd
        API's default tenant).
    """

    _log = Logger()

    def __init__(self, api: UpstreamApi, tenant: str = "default") -> None:
        self.api = api
        self.tenant = tenant
        self.prefix = tenant.encode() + b"\0"

    def _value(self, kv: Any) -> StoredValue:
        return StoredValue(
            kv.key[len(self.prefix) :], kv.value, kv.mod_revision, kv.create_revision, kv.version
        )

    async def get(self, key: bytes) -> StoredValue | None:
        response = await self.api.pool.call(
            _path(_KV, "Range"),
            rpc_pb2.RangeRequest(key=self.prefix + key),
            rpc_pb2.RangeResponse,
            idempotent=True,
        )
        for kv in response.kvs:
            return self._value(kv)
        return None

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        response = await self.api.pool.call(
            _path(_KV, "Put"),
            rpc_pb2.PutRequest(key=self.prefix + key, value=value, lease=lease),
            rpc_pb2.PutResponse,
        )
        return int(response.header.revision)

    async def delete(self, key: bytes, prefix: bool = False) -> int:
        key = self.prefix + key
        response = await self.api.pool.call(
            _path(_KV, "DeleteRange"),
            rpc_pb2.DeleteRangeRequest(key=key, range_end=prefix_end(key) if prefix else b""),
            rpc_pb2.DeleteRangeResponse,
        )
        return int(response.deleted)

    async def range(self, prefix: bytes, limit: int = 0) -> tuple[list[StoredValue], int]:
        key = self.prefix + prefix
        response = await self.api.pool.call(
            _path(_KV, "Range"),
            rpc_pb2.RangeRequest(key=key, range_end=prefix_end(key), limit=limit),
            rpc_pb2.RangeResponse,
            idempotent=True,
        )
        return [self._value(kv) for kv in response.kvs], int(response.header.revision)

    def watch(
        self, prefix: bytes, start_revision: int, callback: WatchCallback
    ) -> Callable[[], None]:
        key = self.prefix + prefix
        watch = _Watch(self, callback)
        starting = Deferred.fromCoroutine(
            watch.start((key, prefix_end(key), (), False, False), start_revision)
        )
        starting.addErrback(
            lambda f: self._log.failure("Cannot watch {prefix!r}", f, prefix=prefix)
        )
        return watch.cancel

    async def lease_grant(self, ttl: int) -> int:
        response = await self.api.pool.call(
            _path(_LEASE, "LeaseGrant"),
            rpc_pb2.LeaseGrantRequest(TTL=ttl),
            rpc_pb2.LeaseGrantResponse,
        )
        # Listed by LeaseLeases, and kept from other tenants, like a lease granted through
        # the listener.
        self.api.lease_tenants[response.ID] = self.tenant
        return int(response.ID)

    async def lease_keepalive(self, lease_id: int) -> bool:
        """
        ``False`` only when the cluster says the lease is gone; while no member answers the
        lease may still be alive, so this says ``True`` and the next renewal tells.
        """
        try:
            ttl = await self.api.pool.keep_alive(lease_id)
        except GrpcError as e:
            self._log.warn(
                "Cannot renew lease {lease:x} now: {error}", lease=lease_id, error=e.message
            )
            return True
        if ttl <= 0:
            self.api.lease_tenants.pop(lease_id, None)
            return False
        return True

    async def lease_revoke(self, lease_id: int) -> None:
        try:
            await self.api.pool.call(
                _path(_LEASE, "LeaseRevoke"),
                rpc_pb2.LeaseRevokeRequest(ID=lease_id),
                rpc_pb2.LeaseRevokeResponse,
                idempotent=True,
            )
        except GrpcError as e:
            if e.code != StatusCode.NOT_FOUND:
                raise
        self.api.lease_tenants.pop(lease_id, None)

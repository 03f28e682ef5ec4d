"""
What the registry and LSP need from a store, and an adapter over the embedded KV engine.

:class:`KeyValueStore` is the seam: ``get``/``put``/``delete``/``range``, a watch from a
revision, and leases (grant, keep-alive, revoke).  :class:`KVStoreAdapter` implements it over
``lattice.kv.KVStore`` (the node's embedded MVCC store); a shared etcd cluster (issue 9) can
implement it over an etcd client, one store per ``store_id``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from lattice.kv import DELETE, Event, KeyRange, KVError, KVStore, Watcher, prefix_end
from lattice.kv._proto import rpc_pb2

__all__ = [
    "KVStoreAdapter",
    "KeyValueStore",
    "StoreEvent",
    "StoredValue",
    "WatchCallback",
]


@dataclass(frozen=True, slots=True)
class StoredValue:
    """One key's current value."""

    key: bytes
    value: bytes
    mod_revision: int
    create_revision: int
    version: int


@dataclass(frozen=True, slots=True)
class StoreEvent:
    """A put (``value`` set) or a delete (``value`` is ``None``) at ``revision``."""

    key: bytes
    value: bytes | None
    revision: int


WatchCallback = Callable[[list[StoreEvent]], None]


class KeyValueStore(Protocol):
    """A node-local view of one store (``store_id``)."""

    async def get(self, key: bytes) -> StoredValue | None:
        """The current value of ``key``."""

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        """Write ``key``; returns the revision once durable."""

    async def delete(self, key: bytes, prefix: bool = False) -> int:
        """Delete ``key`` (or every key under it); returns how many were deleted."""

    async def range(self, prefix: bytes, limit: int = 0) -> tuple[list[StoredValue], int]:
        """Every key under ``prefix`` in key order, and the revision they were read at."""

    def watch(
        self, prefix: bytes, start_revision: int, callback: WatchCallback
    ) -> Callable[[], None]:
        """
        Call ``callback`` with the events under ``prefix`` from ``start_revision`` on (0: from
        now), history first; returns a function that cancels the watch.
        """

    async def lease_grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; returns its id."""

    async def lease_keepalive(self, lease_id: int) -> bool:
        """Renew a lease; ``False`` if it no longer exists."""

    async def lease_revoke(self, lease_id: int) -> None:
        """Revoke a lease, deleting its keys."""


def _durable(store: KVStore, seq: int) -> Deferred[None]:
    done: Deferred[None] = Deferred()

    def committed(error: BaseException | None) -> None:
        if error is None:
            done.callback(None)
        else:
            done.errback(error)

    store.when_durable(seq, committed)
    return done


class KVStoreAdapter:
    """
    :class:`KeyValueStore` over the embedded ``lattice.kv.KVStore``; writes complete once
    durable, reads wait for what they could observe to be durable.

    :param tenant: the KV tenant whose keyspace and leases the registry uses: the etcd API's
        default tenant, so that ``etcdctl put /services/...`` writes what the registry reads.
        Keys are stored as ``tenant + NUL + key``, as the etcd API maps them.
    """

    def __init__(self, store: KVStore, tenant: str = "default") -> None:
        self.store = store
        self._tenant = tenant
        self._prefix = tenant.encode() + b"\0"

    def _value(self, kv: Any) -> StoredValue:
        return StoredValue(
            kv.key[len(self._prefix) :], kv.value, kv.mod_revision, kv.create_revision, kv.version
        )

    async def get(self, key: bytes) -> StoredValue | None:
        response = self.store.range(rpc_pb2.RangeRequest(key=self._prefix + key))
        await _durable(self.store, self.store.read_barrier())
        for kv in response.kvs:
            return self._value(kv)
        return None

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        response, seq = self.store.put(
            rpc_pb2.PutRequest(key=self._prefix + key, value=value, lease=lease), self._tenant
        )
        await _durable(self.store, seq)
        return int(response.header.revision)

    async def delete(self, key: bytes, prefix: bool = False) -> int:
        key = self._prefix + key
        request = rpc_pb2.DeleteRangeRequest(key=key, range_end=prefix_end(key) if prefix else b"")
        response, seq = self.store.delete_range(request)
        await _durable(self.store, seq)
        return int(response.deleted)

    async def range(self, prefix: bytes, limit: int = 0) -> tuple[list[StoredValue], int]:
        key = self._prefix + prefix
        response = self.store.range(
            rpc_pb2.RangeRequest(key=key, range_end=prefix_end(key), limit=limit)
        )
        await _durable(self.store, self.store.read_barrier())
        values = [self._value(kv) for kv in response.kvs]
        return values, int(response.header.revision)

    def watch(
        self, prefix: bytes, start_revision: int, callback: WatchCallback
    ) -> Callable[[], None]:
        hub = self.store.hub
        strip = len(self._prefix)

        def send(watcher: Watcher, events: list[Event]) -> None:
            callback(
                [
                    StoreEvent(
                        event.kv.key[strip:],
                        None if event.type == DELETE else event.kv.value,
                        event.kv.mod_revision,
                    )
                    for event in events
                ]
            )

        key = self._prefix + prefix
        watcher = hub.watch(KeyRange(key, prefix_end(key)), start_revision, send)
        return lambda: hub.cancel(watcher)

    async def lease_grant(self, ttl: int) -> int:
        lease, seq = self.store.lease_grant(0, ttl, self._tenant)
        await _durable(self.store, seq)
        return lease.id

    async def lease_keepalive(self, lease_id: int) -> bool:
        try:
            self.store.lessor.renew(lease_id, self._tenant)
        except KVError:
            return False
        return True

    async def lease_revoke(self, lease_id: int) -> None:
        try:
            seq = self.store.lease_revoke(lease_id, self._tenant)
        except KVError:
            return
        await _durable(self.store, seq)

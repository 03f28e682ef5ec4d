"""
Service discovery: each supervised instance is advertised in its store at
``/nodes/{node_id}/services/{service_id}`` as ``{status, endpoints, uptime, ...}``, attached to
a lease the node keeps alive, so that a dead node's entries expire by themselves.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from lattice.registry._store import KeyValueStore
from lattice.registry._supervisor import Child, InstanceKey

__all__ = ["Advertiser", "advert_key", "advertisement"]

_STATUS = {
    "starting": "Starting",
    "ready": "Running",
    "backoff": "Restarting",
    "stopping": "Stopping",
}


def advert_key(node_id: str, service_id: str) -> bytes:
    """``/nodes/{node_id}/services/{service_id}``."""
    return f"/nodes/{node_id}/services/{service_id}".encode()


def advertisement(child: Child, now: float) -> dict[str, Any]:
    """The JSON document advertising ``child``."""
    endpoints = list(child.endpoints)
    uptime = int(now - child.ready_at) if child.ready_at is not None else 0
    return {
        "status": _STATUS.get(child.state, child.state),
        "endpoints": endpoints,
        "uptime": uptime,
        "port": child.port,
        "store": child.key[0],
        "restarts": child.restarts,
    }


class Advertiser:
    """
    Keeps one lease per store alive and the advertisements of its instances current.

    :param clock: ``IReactorTime``.
    :param ttl: the lease's time to live (seconds); kept alive every third of it.
    :param refresh: how often ``uptime`` is rewritten (seconds).
    """

    _log = Logger()

    def __init__(
        self,
        clock: Any,
        stores: Mapping[str, KeyValueStore],
        node_id: Callable[[], str],
        ttl: int = 15,
        refresh: float = 60.0,
    ) -> None:
        self._clock = clock
        self._stores = stores
        self._node_id = node_id
        self.ttl = ttl
        self._refresh_every = max(1, round(refresh / max(ttl / 3, 0.1)))
        self._ticks = 0
        self.leases: dict[str, int] = {}
        self._children: dict[InstanceKey, Child] = {}
        self._keepalive: LoopingCall | None = None
        self._running = False

    def start(self) -> None:
        """Start keeping leases alive."""
        self._running = True
        self._keepalive = LoopingCall(self._tick)
        self._keepalive.clock = self._clock
        self._keepalive.start(max(self.ttl / 3, 0.1), now=False).addErrback(
            lambda f: self._log.failure("Advertisement keep-alive failed", f)
        )

    async def stop(self) -> None:
        """Stop, revoking the leases (which deletes the advertisements at once)."""
        self._running = False
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        leases, self.leases = self.leases, {}
        for store_id, lease in leases.items():
            try:
                await self._stores[store_id].lease_revoke(lease)
            except Exception as e:
                self._log.warn("Cannot revoke advertisement lease: {error}", error=e)

    def changed(self, key: InstanceKey, child: Child | None) -> None:
        """An instance changed state (``None``: it is gone)."""
        if child is None or child.state == "stopped":
            self._children.pop(key, None)
        else:
            self._children[key] = child
        if self._running:
            Deferred.fromCoroutine(self._write(key)).addErrback(
                lambda f: self._log.failure("Cannot write the advertisement of {key}", f, key=key)
            )

    async def _lease(self, store_id: str) -> int:
        lease = self.leases.get(store_id)
        if lease is None:
            lease = await self._stores[store_id].lease_grant(self.ttl)
            self.leases[store_id] = lease
        return lease

    async def _write(self, key: InstanceKey) -> None:
        store_id, service_id = key
        store = self._stores.get(store_id)
        if store is None:
            return
        name = advert_key(self._node_id(), service_id)
        child = self._children.get(key)
        if child is None:
            await store.delete(name)
            return
        lease = await self._lease(store_id)
        document = advertisement(child, self._clock.seconds())
        await store.put(name, json.dumps(document, sort_keys=True).encode(), lease=lease)

    def _tick(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._keep_alive())

    async def _keep_alive(self) -> None:
        self._ticks += 1
        rewrite_all = self._ticks % self._refresh_every == 0
        for store_id, lease in list(self.leases.items()):
            if not await self._stores[store_id].lease_keepalive(lease):
                self._log.warn(
                    "Advertisement lease of store {store} lost; re-advertising", store=store_id
                )
                self.leases.pop(store_id, None)
                rewrite_all = True
        if rewrite_all:
            for key in list(self._children):
                await self._write(key)

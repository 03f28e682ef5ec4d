"""
A stand-in owner of the node's embedded KV store, used until the ``kv`` subsystem's service
owns it: opens ``lattice.kv.KVStore`` over SQLite (loaded in a thread), expires leases on a
timer, and closes it on stop.  When the KV service exists, the registry is given its store
instead and this goes away.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from lattice.kv import KVStore, SQLiteStorage
from lattice.registry._store import KVStoreAdapter

__all__ = ["EmbeddedStore"]


class EmbeddedStore(Service):
    """
    The node's embedded store as a service; :meth:`when_ready` fires with the adapter.

    :param reactor: ``IReactorThreads`` and ``IReactorTime``.
    """

    _log = Logger()

    def __init__(self, reactor: Any, path: Path, threadpool: ThreadPool | None = None) -> None:
        self._reactor = reactor
        self._path = path
        self._threadpool = threadpool
        self.adapter: KVStoreAdapter | None = None
        self._waiters: list[Deferred[KVStoreAdapter]] = []
        self._expiry: LoopingCall | None = None
        self._storage: SQLiteStorage | None = None

    def when_ready(self) -> Deferred[KVStoreAdapter]:
        """Fires with the store once loaded (errbacks if it cannot be)."""
        waiter: Deferred[KVStoreAdapter] = Deferred()
        if self.adapter is not None:
            waiter.callback(self.adapter)
        else:
            self._waiters.append(waiter)
        return waiter

    def startService(self) -> None:
        super().startService()
        storage = SQLiteStorage(self._path, self._reactor.callFromThread)
        self._storage = storage
        pool = self._threadpool or self._reactor.getThreadPool()
        loading: Deferred[Any] = deferToThreadPool(self._reactor, pool, storage.load)
        loading.addCallbacks(self._loaded, self._failed)

    def _loaded(self, state: Any) -> None:
        assert self._storage is not None
        store = KVStore(self._storage, self._reactor.seconds)
        store.restore(state)
        self.adapter = KVStoreAdapter(store)
        self._expiry = LoopingCall(store.expire_leases)
        self._expiry.clock = self._reactor
        self._expiry.start(0.5, now=False)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(self.adapter)

    def _failed(self, failure: Any) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(failure)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        if self._expiry is not None and self._expiry.running:
            self._expiry.stop()
        storage, self._storage = self._storage, None
        if storage is None:
            return None
        closed: Deferred[None] = Deferred()
        storage.close(lambda: closed.callback(None))
        return closed

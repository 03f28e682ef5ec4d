"""
Clusters of discovery cores on an in-memory network, for unit tests.
"""

from __future__ import annotations

import random
import sqlite3
from dataclasses import replace
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from lattice.discovery._node import DiscoveryNode, Settings
from lattice.discovery._store import SQLStore
from lattice.discovery.testing import MemoryNetwork, MemoryWebhook, synchronous_runner
from lattice.identity import NodeIdentity

T = TypeVar("T")

START = 1_800_000_000.0


def memory_store() -> SQLStore:
    """
    A fresh SQLite store in memory.
    """
    store = SQLStore(sqlite3.connect(":memory:", isolation_level=None), "sqlite")
    store.create()
    return store


def run(test: SynchronousTestCase, coroutine: Any) -> Any:
    """
    Run a coroutine that completes synchronously on the fakes; return its result.
    """
    if isinstance(coroutine, Deferred):
        return test.successResultOf(coroutine)
    return test.successResultOf(Deferred.fromCoroutine(coroutine))


class Cluster:
    """
    N cores named C{s0..s(N-1)} at C{http://sN.test}, each bootstrapping from s0.
    """

    def __init__(self, n: int, seed: int = 7, **overrides: Any):
        self.clock = Clock()
        self.clock.advance(START)
        self.network = MemoryNetwork()
        self.nodes: list[DiscoveryNode] = []
        self.webhooks: list[MemoryWebhook] = []
        self.stores: list[SQLStore] = []
        self.identities: list[NodeIdentity] = []
        self._rng = random.Random(seed)
        self._overrides = overrides
        for i in range(n):
            self.add(f"s{i}")

    def endpoint(self, name: str) -> str:
        return f"http://{name}.test"

    def add(
        self,
        name: str,
        identity: NodeIdentity | None = None,
        store: SQLStore | None = None,
        bootstrap: tuple[tuple[str, str | None], ...] | None = None,
        webhook: MemoryWebhook | None = None,
    ) -> DiscoveryNode:
        identity = identity or NodeIdentity.generate()
        store = store or memory_store()
        webhook = webhook or MemoryWebhook()
        endpoint = self.endpoint(name)
        if bootstrap is None:
            bootstrap = () if not self.nodes else ((self.endpoint("s0"), None),)
        settings = Settings(server_name=name, endpoints=(endpoint,), bootstrap=bootstrap)
        settings = replace(settings, **self._overrides)
        holder: list[DiscoveryNode] = []
        node = DiscoveryNode(
            identity=identity,
            public_key=identity.public_key,
            settings=settings,
            clock=self.clock,
            store=store,
            run=synchronous_runner,
            transport=self.network.transport(lambda: holder[0]),
            webhook=webhook,
            rng=random.Random(self._rng.random()),
        )
        holder.append(node)
        self.network.add(endpoint, node)
        started = Deferred.fromCoroutine(node.start())
        failures: list[Any] = []
        started.addErrback(failures.append)
        assert started.called and not failures, failures
        self.nodes.append(node)
        self.webhooks.append(webhook)
        self.stores.append(store)
        self.identities.append(identity)
        return node

    def rounds(self, test: SynchronousTestCase, count: int) -> None:
        for _ in range(count):
            self.clock.advance(600)
            for node in self.nodes:
                run(test, node.gossip_round())

    def converged(self) -> bool:
        n = len(self.nodes)
        return all(len(node.table.records) == n - 1 for node in self.nodes)

"""Tests for lattice.kv.service: start-up, listening, readiness, lease expiry, shutdown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from lattice.config import KvConfig, config_from_string
from lattice.kv import KVService
from lattice.kv._proto import rpc_pb2 as pb
from lattice.kv.testing import MemoryStorage
from lattice.readiness import Readiness
from lattice.service import make_lattice_service


class Reactor(MemoryReactorClock):
    def callFromThread(self, f: Any, *args: Any, **kw: Any) -> None:
        f(*args, **kw)


class InlinePool:
    def callInThread(self, f: Any, *args: Any, **kw: Any) -> None:
        f(*args, **kw)


class Node:
    def __init__(self) -> None:
        self.mounted: dict[str, Any] = {}
        self.admin = self

    def mount(self, name: str, resource: Any) -> None:
        self.mounted[name] = resource

    def node_id(self) -> str:
        return "testnode"


class BrokenStorage(MemoryStorage):
    def load(self) -> Any:
        raise OSError("disk on fire")


class KVServiceTests(SynchronousTestCase):
    """The KV service's life cycle with an in-memory reactor and storage."""

    def make(self, storage: MemoryStorage | None = None) -> tuple[KVService, Reactor, list[str]]:
        reactor = Reactor()
        failures: list[str] = []
        self.readiness = Readiness()
        self.node = Node()
        service = KVService(
            KvConfig(listen="tcp:0:interface=127.0.0.1"),
            reactor,
            state_dir=Path("/nonexistent"),
            node=self.node,
            readiness=self.readiness,
            metrics=CollectorRegistry(),
            fail=failures.append,
            storage=storage or MemoryStorage(),
            thread_pool=InlinePool(),
        )
        return service, reactor, failures

    def test_start_listens_and_is_ready(self) -> None:
        """Starting loads the store, listens on the configured endpoint and becomes ready."""
        service, reactor, failures = self.make()
        self.assertFalse(self.readiness.ready)
        service.startService()
        self.assertEqual(failures, [])
        self.assertEqual(len(reactor.tcpServers), 1)
        self.assertEqual(reactor.tcpServers[0][3], "127.0.0.1")
        self.assertTrue(self.readiness.ready)
        self.assertIn("kv", self.node.mounted)
        self.assertEqual(service.status()["revision"], 1)

    def test_lease_expiry_runs(self) -> None:
        """Expired leases are revoked by the periodic check."""
        service, reactor, _ = self.make()
        service.startService()
        assert service.store is not None
        service.store.lease_grant(7, 2, "default")
        service.store.put(pb.PutRequest(key=b"default\0k", lease=7), "default")
        reactor.advance(1.0)
        self.assertEqual(len(service.store.lessor), 1)
        reactor.advance(1.5)
        self.assertEqual(len(service.store.lessor), 0)
        self.assertEqual(len(service.store.mvcc), 0)

    def test_load_failure_is_fatal(self) -> None:
        """A database that cannot be loaded stops the node with a message naming it."""
        service, _, failures = self.make(BrokenStorage())
        service.startService()
        self.assertEqual(len(failures), 1)
        self.assertIn("disk on fire", failures[0])
        self.assertIn("kv.sqlite", failures[0])

    def test_stop_closes_storage(self) -> None:
        """Stopping closes the storage after the listener."""
        storage = MemoryStorage()
        service, _, _ = self.make(storage)
        service.startService()
        self.successResultOf(service.stopService())
        self.assertTrue(storage.closed)


class WiringTests(SynchronousTestCase):
    """make_lattice_service includes the KV store when enabled."""

    def test_enabled(self) -> None:
        """With [kv] enabled the node has a kv child; without, it has none."""
        base = "[node]\nstate_dir = /nonexistent\n"
        on = config_from_string(base + "[kv]\nenabled = true\n")
        service = make_lattice_service(on, Reactor(), environ={})
        self.assertIsInstance(service.getServiceNamed("kv"), KVService)
        service = make_lattice_service(config_from_string(base), Reactor(), environ={})
        self.assertNotIn("kv", [child.name for child in service])

"""Tests for the registry service: wiring of store, reconciler, LSP tokens, advertisements."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import IResource

from lattice.config import NodeConfig, RegistryConfig
from lattice.readiness import Readiness
from lattice.registry import Consent, RegistryService
from lattice.registry.testing import FakeNodeReactor, SynchronousThreadPool, memory_store
from tests.registry._helpers import DESCRIPTORS, entry


class _Admin:
    def __init__(self) -> None:
        self.mounted: dict[str, IResource] = {}

    def mount(self, segment: str, resource: IResource) -> None:
        self.mounted[segment] = resource


class _Node:
    def __init__(self) -> None:
        self.admin = _Admin()

    def node_id(self) -> str | None:
        return "node-a"


class _Kv:
    def __init__(self, store: Any) -> None:
        self.store = store


class RegistryServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = FakeNodeReactor()
        self.adapter = memory_store(self.reactor)
        self.kv = _Kv(self.adapter.store)
        self.readiness = Readiness()
        self.metrics = CollectorRegistry()
        self.failures: list[str] = []
        self.node = _Node()
        state_dir = Path(self.mktemp())
        state_dir.mkdir()
        self.state_dir = state_dir
        self.service = RegistryService(
            RegistryConfig(enabled=True, kill_timeout=5, advertise_ttl=9),
            self.reactor,
            node_config=NodeConfig(state_dir=state_dir, tags=("gw",)),
            node=self.node,
            readiness=self.readiness,
            metrics=self.metrics,
            fail=self.failures.append,
            kv=self.kv,
            descriptors=DESCRIPTORS,
            python="/usr/bin/python3",
            environ={"PATH": "/bin", "CREDENTIALS_DIRECTORY": "/secret"},
            threadpool=SynchronousThreadPool(),  # type: ignore[arg-type]
        )

    def put(self, key: str, value: bytes) -> None:
        self.successResultOf(Deferred.fromCoroutine(self.adapter.put(key.encode(), value)))

    def get(self, key: str) -> Any:
        return self.successResultOf(Deferred.fromCoroutine(self.adapter.get(key.encode())))

    def start(self) -> None:
        self.service.startService()
        self.successResultOf(self.service.when_ready())

    def test_ready_after_start(self) -> None:
        """Once the LSP listener is bound and the registry read, both components are ready."""
        self.start()
        states = self.readiness.snapshot()
        self.assertTrue(states["lsp"].ready, states)
        self.assertTrue(states["registry"].ready, states)
        self.assertTrue(self.service.lsp_address.startswith("unix:"))
        self.assertEqual(self.failures, [])

    def test_entry_without_consent_starts_nothing(self) -> None:
        """A registry entry alone (consent Manual) starts nothing."""
        self.put("/services/test.echo/config", entry())
        self.start()
        self.assertEqual(self.reactor.processes, [])
        [row] = self.service.describe()["instances"]
        self.assertIn("Manual", row["why"])

    def test_consent_starts_with_token_and_environment(self) -> None:
        """Consent starts the daemon with its token and settings, and nothing secret."""
        self.put("/services/test.echo/config", entry(port=0, greeting="hi"))
        self.start()
        self.successResultOf(
            Deferred.fromCoroutine(self.service.set_consent("test.echo", Consent.FOLLOW_MESH))
        )
        [process] = self.reactor.processes
        self.assertEqual(process.argv, ["/usr/bin/python3", "-m", "tests.registry.echo_daemon"])
        env = process.env
        self.assertNotIn("CREDENTIALS_DIRECTORY", env)
        self.assertEqual(env["LATTICE_PORT"], "0")
        self.assertEqual(json.loads(env["LATTICE_SERVICE_CONFIG"]), {"greeting": "hi"})
        grant = self.service.tokens.lookup(env["LATTICE_LSP_TOKEN"])
        assert grant is not None
        self.assertEqual(grant.prefixes, (b"/echo/",))
        saved = json.loads((self.state_dir / "service-consent.json").read_text())
        self.assertEqual(saved["consent"], {"test.echo": "FollowMesh"})
        self.assertEqual(
            oct((self.state_dir / "service-consent.json").stat().st_mode & 0o777), "0o600"
        )

    def test_watch_starts_and_stops(self) -> None:
        """Registry writes after start are seen through the watch (no polling)."""
        self.start()
        self.successResultOf(
            Deferred.fromCoroutine(self.service.set_consent("test.echo", Consent.ALWAYS_ALLOW))
        )
        self.put("/services/test.echo/config", entry())
        self.assertEqual(len(self.reactor.alive()), 1)
        self.successResultOf(
            Deferred.fromCoroutine(self.adapter.delete(b"/services/test.echo/config"))
        )
        self.assertEqual(self.reactor.alive(), [])
        self.assertEqual(len(self.service.tokens), 0)

    def test_advertisement(self) -> None:
        """A ready daemon is advertised under the node with its port, on a lease."""
        self.start()
        self.successResultOf(
            Deferred.fromCoroutine(self.service.set_consent("test.echo", Consent.ALWAYS_ALLOW))
        )
        self.put("/services/test.echo/config", entry(port=0))
        self.reactor.processes[0].output(
            b"LATTICE-READY port=40123 endpoint=tcp://127.0.0.1:40123\n"
        )
        value = self.get("/nodes/node-a/services/test.echo")
        document = json.loads(value.value)
        self.assertEqual(document["status"], "Running")
        self.assertEqual(document["endpoints"], ["tcp://127.0.0.1:40123"])
        self.assertEqual(document["port"], 40123)
        store = self.adapter.store
        [lease] = store.lessor.leases()
        self.assertEqual(lease.ttl, 9)
        # Kept alive while the node runs...
        for _ in range(10):
            self.reactor.advance(3)
            store.expire_leases()
        self.assertIsNotNone(self.get("/nodes/node-a/services/test.echo"))
        # ...and gone once the node stops keeping it alive.
        self.service.advertiser._keepalive.stop()  # type: ignore[union-attr]
        self.reactor.advance(10)
        store.expire_leases()
        self.assertIsNone(self.get("/nodes/node-a/services/test.echo"))

    def test_stop(self) -> None:
        """Stopping the service stops the daemons and withdraws the advertisements."""
        self.start()
        self.successResultOf(
            Deferred.fromCoroutine(self.service.set_consent("test.echo", Consent.ALWAYS_ALLOW))
        )
        self.put("/services/test.echo/config", entry())
        self.reactor.processes[0].output(b"LATTICE-READY\n")
        self.assertIsNotNone(self.get("/nodes/node-a/services/test.echo"))
        self.successResultOf(self.service.stopService())
        self.assertEqual(self.reactor.processes[0].signals, ["TERM"])
        self.assertIsNone(self.get("/nodes/node-a/services/test.echo"))

    def test_invalid_entry_in_readiness(self) -> None:
        """Invalid configuration is named in the /readyz detail."""
        self.put("/services/test.echo/config", entry(port="many"))
        self.start()
        detail = self.readiness.snapshot()["registry"].detail
        self.assertIn("invalid configuration: local/test.echo", detail)
        self.flushLoggedErrors()

    def test_bad_consent_file_fails_startup(self) -> None:
        """A consent file that cannot be trusted stops the node."""
        (self.state_dir / "service-consent.json").write_text("{nope")
        self.service.startService()
        self.assertEqual(len(self.failures), 1)
        self.assertIn("consent", self.failures[0])

    def test_admin_routes(self) -> None:
        """The admin surface lists instances and changes consent and ports."""
        self.put("/services/test.echo/config", entry())
        self.start()
        treq: Any = StubTreq(self.node.admin.mounted["services"])
        response = self.successResultOf(treq.get("http://admin/"))
        body = self.successResultOf(response.json())
        self.assertEqual(body["instances"][0]["service"], "test.echo")
        response = self.successResultOf(
            treq.post("http://admin/consent/test.echo", json={"consent": "always-allow"})
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(len(self.reactor.alive()), 1)
        response = self.successResultOf(
            treq.post("http://admin/consent/test.echo", json={"consent": "sure"})
        )
        self.assertEqual(response.code, 400)
        response = self.successResultOf(
            treq.post("http://admin/port/local/test.echo", json={"port": 7100})
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(self.service.local.ports, {("local", "test.echo"): 7100})
        self.assertEqual(self.reactor.alive()[0].env["LATTICE_PORT"], "7100")

    def test_metrics(self) -> None:
        """The registry's metrics are exported."""
        self.start()
        self.successResultOf(
            Deferred.fromCoroutine(self.service.set_consent("test.echo", Consent.ALWAYS_ALLOW))
        )
        self.put("/services/test.echo/config", entry())
        self.reactor.processes[0].exit(1)
        text = generate_latest(self.metrics).decode()
        self.assertIn('lattice_registry_instances{state="backoff"} 1.0', text)
        self.assertIn("lattice_registry_desired 1.0", text)
        self.assertIn("lattice_registry_restarts_total 1.0", text)
        self.assertIn('lattice_lsp_denied_total{reason="permission_denied"} 0.0', text)

    def test_lease_lost_readvertises(self) -> None:
        """If the advertisement lease is lost, a new one is granted and the entry rewritten."""
        self.start()
        self.successResultOf(
            Deferred.fromCoroutine(self.service.set_consent("test.echo", Consent.ALWAYS_ALLOW))
        )
        self.put("/services/test.echo/config", entry())
        self.reactor.processes[0].output(b"LATTICE-READY\n")
        store = self.adapter.store
        [lease] = store.lessor.leases()
        store.lease_revoke(lease.id, None)
        self.assertIsNone(self.get("/nodes/node-a/services/test.echo"))
        self.reactor.advance(3)
        self.assertIsNotNone(self.get("/nodes/node-a/services/test.echo"))
        [renewed] = store.lessor.leases()
        self.assertNotEqual(renewed.id, lease.id)

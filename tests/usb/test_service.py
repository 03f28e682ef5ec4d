"""Tests for ``lattice.usb.service``: wiring, persistence, admin routes, status, metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from lattice.admin import AdminSurface
from lattice.config import UsbConfig, config_from_string
from lattice.readiness import Readiness
from lattice.service import make_lattice_service
from lattice.usb import EchoDevice, UsbService, approval_id

from ._helpers import op_import


class SyncPool:
    """A thread pool that runs work at once, on the calling thread."""

    def callInThreadWithCallback(self, on_result: Any, function: Any, *a: Any, **kw: Any) -> None:
        try:
            result = function(*a, **kw)
        except Exception as e:
            on_result(False, e)
        else:
            on_result(True, result)


class ThreadlessReactor(MemoryReactorClock):
    """A memory reactor whose callFromThread runs at once."""

    def callFromThread(self, function: Any, *args: Any, **kwargs: Any) -> None:
        function(*args, **kwargs)


class FakeNode:
    """The node as the USB service sees it: an admin surface and a status line."""

    def __init__(self, readiness: Readiness):
        self.admin = AdminSurface()
        self._readiness = readiness

    def status_line(self) -> str:
        parts = [f"{n}: {s.detail}" for n, s in self._readiness.snapshot().items()]
        return "Ready; " + "; ".join(parts)


class RecordingNotifier:
    """Records STATUS lines."""

    def __init__(self) -> None:
        self.statuses: list[str] = []

    def status(self, status: str) -> None:
        self.statuses.append(status)


class ServiceFixture(SynchronousTestCase):
    """Builds a UsbService on a memory reactor with emulated devices."""

    def make(self, **settings: Any) -> UsbService:
        self.state_dir = Path(self.mktemp())
        self.state_dir.mkdir()
        self.reactor = ThreadlessReactor()
        self.readiness = Readiness()
        self.failures: list[str] = []
        self.node = FakeNode(self.readiness)
        self.notifier = RecordingNotifier()
        self.metrics = CollectorRegistry()
        config = UsbConfig(
            **{"enabled": True, "backend": "emulated", "auto_share": True, **settings}
        )
        service = UsbService(
            config,
            self.reactor,
            state_dir=self.state_dir,
            readiness=self.readiness,
            fail=self.failures.append,
            node=self.node,
            metrics=self.metrics,
            notifier=self.notifier,
            threadpool=SyncPool(),  # type: ignore[arg-type]
        )
        return service

    def start(self, service: UsbService) -> None:
        service.startService()
        self.addCleanup(service.stopService)
        [(port, _, _, interface)] = self.reactor.tcpServers
        self.assertEqual((port, interface), (3240, "127.0.0.1"))


class ServiceTests(ServiceFixture):
    """UsbService on a memory reactor with emulated devices."""

    def test_no_io_in_constructor(self) -> None:
        """Building the service listens on nothing and reads no file."""
        self.make()
        self.assertEqual(self.reactor.tcpServers, [])

    def test_start_exports_devices(self) -> None:
        """Started, it listens on [usb] listen and exports the emulated devices."""
        service = self.make()
        self.start(service)
        self.assertEqual(sorted(service.registry.exports), ["1-1", "1-2"])
        state = self.readiness.snapshot()["usb"]
        self.assertTrue(state.ready)
        self.assertIn("2 devices exported, 0 clients", state.detail)

    def test_ready_after_first_scan(self) -> None:
        """The usb component is ready only once bound and the first scan finished."""
        from twisted.internet.defer import Deferred

        from lattice.usb import EmulatedBackend

        scan: Deferred[list[Any]] = Deferred()

        class SlowBackend(EmulatedBackend):
            def enumerate(self) -> Any:
                return scan

        service = self.make()
        service.backend = service.registry.backend = SlowBackend()
        self.start(service)
        state = self.readiness.snapshot()["usb"]
        self.assertEqual(
            (state.ready, state.detail.endswith("scanning for devices")), (False, True)
        )
        scan.callback(list(EmulatedBackend().devices))
        self.assertTrue(self.readiness.snapshot()["usb"].ready)

    def test_bad_client_is_fatal(self) -> None:
        """An approved_clients entry that is neither fingerprint nor IP stops start-up."""
        service = self.make(approved_clients=("alice",))
        service.startService()
        [failure] = self.failures
        self.assertIn("[usb]", failure)
        self.assertIn("'alice'", failure)

    def test_tls_needs_files(self) -> None:
        """tls_listen without certificate, key and client CA stops start-up."""
        service = self.make(tls_listen="tcp:3241:interface=127.0.0.1")
        service.startService()
        [failure] = self.failures
        self.assertIn("tls_listen needs tls_certificate, tls_key, tls_client_ca", failure)

    def test_approvals_persist(self) -> None:
        """An approval is written atomically (0600) and read back by a new service."""
        service = self.make()
        self.start(service)
        self.successResultOf(_deferred(service.registry.approve("10.1.2.3")))
        path = self.state_dir / "usb-approvals.json"
        self.assertEqual(path.stat().st_mode & 0o777, 0o600)
        self.assertEqual(json.loads(path.read_text())["approved"], ["10.1.2.3"])
        again = UsbService(
            service.config,
            self.reactor,
            state_dir=self.state_dir,
            readiness=Readiness(),
            fail=self.failures.append,
            threadpool=SyncPool(),  # type: ignore[arg-type]
        )
        again.startService()
        self.addCleanup(again.stopService)
        self.assertIn("10.1.2.3", again.approvals.approved)

    def test_corrupt_approvals_file(self) -> None:
        """An approvals file that is not ours stops start-up with its path."""
        service = self.make()
        (self.state_dir / "usb-approvals.json").write_text('{"version": 9}')
        service.startService()
        [failure] = self.failures
        self.assertIn("usb-approvals.json", failure)

    def test_stop_releases_devices(self) -> None:
        """Stopping disconnects clients and gives held devices back first."""
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        service = self.make(approved_clients=("127.0.0.1",))
        service.startService()
        protocol = service.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
        protocol.makeConnection(transport)
        protocol.dataReceived(op_import("1-1"))
        export = service.registry.exports["1-1"]
        self.assertIs(export.holder, protocol)
        self.successResultOf(service.stopService())
        self.assertIsNone(export.holder)
        self.assertTrue(transport.disconnecting)
        device = export.device
        assert isinstance(device, EchoDevice)
        self.assertFalse(device.opened)

    def test_status_and_metrics(self) -> None:
        """A pending approval updates STATUS= and the metrics."""
        service = self.make(approved_clients=())
        self.start(service)
        factory = service.factory
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        protocol = factory.buildProtocol(IPv4Address("TCP", "10.0.0.7", 1))
        protocol.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.7", 1)))
        protocol.dataReceived(op_import("1-1"))
        self.assertIn("1 pending approval", self.notifier.statuses[-1])
        text = generate_latest(self.metrics).decode()
        self.assertIn("lattice_usb_devices_exported 2.0", text)
        self.assertIn("lattice_usb_pending_approvals 1.0", text)
        self.assertIn('lattice_usb_urbs_total{result="ok"} 0.0', text)


def _deferred(coroutine: Any) -> Any:
    from twisted.internet.defer import Deferred

    return Deferred.fromCoroutine(coroutine)


class AdminTests(ServiceFixture):
    """The admin routes mounted at /usb/ on the node's admin surface."""

    def setUp(self) -> None:
        self.service = self.make(approved_clients=())
        self.start(self.service)
        self.client: Any = StubTreq(self.node.admin.root)

    def get(self, path: str) -> tuple[int, Any]:
        response = self.successResultOf(self.client.get(f"http://node{path}"))
        return response.code, self.successResultOf(response.json())

    def post(self, path: str) -> tuple[int, Any]:
        response = self.successResultOf(self.client.post(f"http://node{path}"))
        return response.code, self.successResultOf(response.json())

    def request_import(self, host: str) -> None:
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        protocol = self.service.factory.buildProtocol(IPv4Address("TCP", host, 1))
        protocol.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", host, 1)))
        protocol.dataReceived(op_import("1-2"))

    def test_list(self) -> None:
        """GET /usb/ lists devices, holders and pending approvals."""
        self.request_import("10.0.0.7")
        code, body = self.get("/usb/")
        self.assertEqual(code, 200)
        self.assertEqual([d["busid"] for d in body["devices"]], ["1-1", "1-2"])
        self.assertEqual(body["pending"][0]["id"], approval_id("10.0.0.7"))
        self.assertEqual(body["pending"][0]["busid"], "1-2")

    def test_approve(self) -> None:
        """POST /usb/approve/ID approves the pending client and persists it."""
        self.request_import("10.0.0.7")
        code, body = self.post(f"/usb/approve/{approval_id('10.0.0.7')}")
        self.assertEqual((code, body["approved"]), (200, "10.0.0.7"))
        self.assertEqual(self.get("/usb/")[1]["pending"], [])
        saved = json.loads((self.state_dir / "usb-approvals.json").read_text())
        self.assertEqual(saved["approved"], ["10.0.0.7"])

    def test_deny(self) -> None:
        """POST /usb/deny/ID denies the client."""
        self.request_import("10.0.0.7")
        code, body = self.post(f"/usb/deny/{approval_id('10.0.0.7')}")
        self.assertEqual((code, body["denied"]), (200, "10.0.0.7"))
        self.assertEqual(self.get("/usb/")[1]["denied"], ["10.0.0.7"])

    def test_unknown_id(self) -> None:
        """An id that matches nothing is a 404 with a message."""
        code, body = self.post("/usb/approve/deadbeef")
        self.assertEqual(code, 404)
        self.assertIn("deadbeef", body["error"])

    def test_share_unshare(self) -> None:
        """With auto_share off, share and unshare export and withdraw a device."""
        self.service.registry.policy = type(self.service.registry.policy)(auto_share=False)
        self.successResultOf(self.service.registry.rescan())
        self.assertEqual(self.service.registry.exports, {})
        code, body = self.post("/usb/share/1-1")
        self.assertEqual((code, body["exported"]), (200, True))
        saved = json.loads((self.state_dir / "usb-approvals.json").read_text())
        self.assertEqual(saved["shared"], ["1-1"])
        code, body = self.post("/usb/unshare/1-1")
        self.assertEqual((code, body["exported"]), (200, False))
        self.assertEqual(self.post("/usb/share/9-9")[0], 404)


class CompositionTests(SynchronousTestCase):
    """make_lattice_service wires the usb subsystem when enabled."""

    def test_enabled(self) -> None:
        """[usb] enabled adds a "usb" child; the default leaves it out."""
        state = Path(self.mktemp()).absolute()
        base = f"[node]\nstate_dir = {state}\n"
        root = make_lattice_service(config_from_string(base), ThreadlessReactor(), environ={})
        self.assertNotIn("usb", [child.name for child in root])
        config = config_from_string(base + "[usb]\nenabled = true\nbackend = emulated\n")
        root = make_lattice_service(config, ThreadlessReactor(), environ={})
        self.assertIsInstance(root.getServiceNamed("usb"), UsbService)

"""
Tests for L{lattice.telemetry.TelemetryApp}.
"""

from __future__ import annotations

import json

from prometheus_client import Counter
from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from lattice.readiness import Readiness
from lattice.telemetry import TelemetryApp, new_registry


class TelemetryAppTests(SynchronousTestCase):
    """
    /metrics, /healthz and /readyz.
    """

    def setUp(self) -> None:
        self.readiness = Readiness()
        self.registry = new_registry(self.readiness)
        self.app = TelemetryApp(self.registry, self.readiness, lambda: "node1")
        self.treq = StubTreq(self.app.app.resource())

    def _get(self, path: str) -> tuple[int, bytes, bytes]:
        request = self.treq.get(f"http://node{path}")  # type: ignore[attr-defined]
        response = self.successResultOf(request)
        body = self.successResultOf(response.content())
        content_type = response.headers.getRawHeaders(b"content-type", [b""])[0]
        return response.code, content_type, body

    def test_metrics(self) -> None:
        """
        Prometheus text with process metrics and subsystem metrics.
        """
        counter = Counter("lattice_test_things", "Things.", registry=self.registry)
        counter.inc(3)
        self.readiness.register("kv")
        code, content_type, body = self._get("/metrics")
        self.assertEqual(code, 200)
        self.assertTrue(content_type.startswith(b"text/plain"))
        text = body.decode()
        self.assertIn("lattice_test_things_total 3.0", text)
        self.assertIn('lattice_subsystem_ready{subsystem="kv"} 0.0', text)
        self.assertIn("process_resident_memory_bytes", text)

    def test_healthz(self) -> None:
        """
        /healthz answers 200 whenever it is served.
        """
        code, _, body = self._get("/healthz")
        self.assertEqual(code, 200)
        self.assertEqual(json.loads(body), {"status": "ok"})

    def test_readyz(self) -> None:
        """
        /readyz is 503 with details until every component is ready, then 200.
        """
        kv = self.readiness.register("kv")
        usb = self.readiness.register("usb")
        kv.set_ready("listening on 127.0.0.1:2379")
        code, _, body = self._get("/readyz")
        self.assertEqual(code, 503)
        report = json.loads(body)
        self.assertFalse(report["ready"])
        self.assertEqual(report["node_id"], "node1")
        self.assertEqual(
            report["subsystems"]["kv"], {"ready": True, "detail": "listening on 127.0.0.1:2379"}
        )
        self.assertEqual(report["subsystems"]["usb"], {"ready": False, "detail": "starting"})
        usb.set_ready("2 devices")
        code, _, body = self._get("/readyz")
        self.assertEqual(code, 200)
        self.assertTrue(json.loads(body)["ready"])

    def test_unknown_path(self) -> None:
        """
        Other paths are 404.
        """
        self.assertEqual(self._get("/admin")[0], 404)


class ReadinessTests(SynchronousTestCase):
    """
    The readiness board.
    """

    def test_when_ready(self) -> None:
        """
        when_ready fires once all registered components are ready, not before.
        """
        readiness = Readiness()
        a = readiness.register("a")
        b = readiness.register("b")
        waiting = readiness.when_ready()
        a.set_ready("x")
        self.assertNoResult(waiting)
        b.set_ready("y")
        self.successResultOf(waiting)
        self.successResultOf(readiness.when_ready())

    def test_twice(self) -> None:
        """
        A component name is registered once.
        """
        readiness = Readiness()
        readiness.register("a")
        self.assertRaises(ValueError, readiness.register, "a")

"""The registry is wired into the node by ``make_lattice_service`` (pure, no I/O)."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from lattice.config import config_from_string
from lattice.registry import RegistryService
from lattice.service import make_lattice_service


class WiringTests(SynchronousTestCase):
    def test_enabled(self) -> None:
        """With [registry] enabled, the node has a registry child and /services admin routes."""
        config = config_from_string(
            "[node]\nstate_dir = state\n[kv]\nenabled = false\n[registry]\nenabled = true\n",
            base=Path("/nonexistent"),
        )
        root = make_lattice_service(config, MemoryReactorClock(), environ={})
        registry = root.getServiceNamed("registry")
        self.assertIsInstance(registry, RegistryService)
        node = root.getServiceNamed("node")
        self.assertIn(b"services", node.admin.root.children)
        self.assertIn("registry", root.readiness.snapshot())
        self.assertEqual(
            config.registry.lsp_endpoint(config.node.state_dir),
            "unix:/nonexistent/state/lsp.sock:mode=600:lockfile=1",
        )

    def test_disabled_by_default(self) -> None:
        """The registry is off unless enabled."""
        config = config_from_string("[kv]\nenabled = false\n")
        root = make_lattice_service(config, MemoryReactorClock(), environ={})
        self.assertNotIn("registry", [child.name for child in root])

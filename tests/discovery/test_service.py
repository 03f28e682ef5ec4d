"""
Tests for L{lattice.discovery.DiscoveryService} wiring and configuration.
"""

from __future__ import annotations

from dataclasses import fields

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from lattice.config import ConfigError, config_from_string, section_classes
from lattice.discovery.service import default_server_name, settings_from_config
from lattice.service import make_lattice_service


def only_discovery(enabled: bool, extra: str = "") -> str:
    """
    INI text with every other optional subsystem switched off.
    """
    lines = []
    for name, section in section_classes().items():
        if "enabled" in {f.name for f in fields(section)}:
            value = enabled if name == "discovery" else False
            lines.append(f"[{name}]\nenabled = {str(value).lower()}\n")
            if name == "discovery":
                lines.append(extra)
    return "".join(lines)


class WiringTests(SynchronousTestCase):
    """
    The subsystem plugs into the node without I/O.
    """

    def test_enabled(self) -> None:
        """
        With C{enabled = true}, a C{discovery} service is wired, registers
        readiness and mounts its admin routes on the node's admin surface.
        """
        config = config_from_string(only_discovery(True))
        reactor = MemoryReactorClock()
        root = make_lattice_service(config, reactor, environ={})
        service = root.getServiceNamed("discovery")
        self.assertIsNotNone(service)
        self.assertIn("discovery", root.readiness.snapshot())
        node = root.getServiceNamed("node")
        self.assertIn(b"api", node.admin.root.children)
        self.assertIn(b"health", node.admin.root.children)
        self.assertEqual(reactor.tcpServers, [])

    def test_metrics(self) -> None:
        """
        The subsystem's metrics are in the node's registry.
        """
        from prometheus_client import generate_latest

        config = config_from_string(only_discovery(True))
        root = make_lattice_service(config, MemoryReactorClock(), environ={})
        text = generate_latest(root.metrics).decode()
        self.assertIn("lattice_discovery_peers 0.0", text)
        self.assertIn("lattice_discovery_neighbors", text)

    def test_webhook_secret_sources(self) -> None:
        """
        The webhook secret comes from C{$CREDENTIALS_DIRECTORY/webhook_secret}
        first, then from C{webhook_secret_file}.
        """
        import os

        from lattice.discovery.service import DiscoveryService

        directory = self.mktemp()
        os.makedirs(os.path.join(directory, "credentials"))
        secret_file = os.path.join(directory, "secret")
        with open(secret_file, "w") as f:
            f.write("from-file\n")
        config = config_from_string(only_discovery(True, f"webhook_secret_file = {secret_file}\n"))
        root = make_lattice_service(config, MemoryReactorClock(), environ={})
        service = root.getServiceNamed("discovery")
        assert isinstance(service, DiscoveryService)
        self.assertEqual(service._read_secret(), b"from-file")
        with open(os.path.join(directory, "credentials", "webhook_secret"), "w") as f:
            f.write("from-credentials")
        service._environ = {"CREDENTIALS_DIRECTORY": os.path.join(directory, "credentials")}
        self.assertEqual(service._read_secret(), b"from-credentials")

    def test_disabled(self) -> None:
        """
        With C{enabled = false} (the default), there is no discovery service.
        """
        root = make_lattice_service(
            config_from_string(only_discovery(False)), MemoryReactorClock(), environ={}
        )
        self.assertNotIn("discovery", [s.name for s in root])


class ConfigTests(SynchronousTestCase):
    """
    The C{[discovery]} section.
    """

    def test_thresholds_default_to_predecessor(self) -> None:
        """
        The predecessor's thresholds are the defaults.
        """
        config = config_from_string(
            "[discovery]\nenabled = true\npublic_url = https://chat.example.org/discovery\n"
        )
        settings = settings_from_config(
            config.discovery,
            ("https://chat.example.org/discovery",),
            default_server_name(config.discovery),
        )
        self.assertEqual(settings.server_name, "chat.example.org")
        self.assertEqual(
            (
                settings.max_neighbors,
                settings.fanout,
                settings.max_attempts,
                settings.breaker_threshold,
            ),
            (8, 3, 5, 5),
        )
        self.assertEqual(settings.neighbor_eligible_ms, 7 * 86_400_000)
        self.assertEqual(settings.neighbor_demote_ms, 30 * 86_400_000)
        self.assertEqual(settings.peer_delete_ms, 90 * 86_400_000)
        self.assertEqual(settings.message_ttl_ms, 86_400_000)
        self.assertEqual(settings.breaker_open_ms, 15 * 60_000)
        self.assertEqual((settings.retry_base_ms, settings.retry_max_ms), (60_000, 3_600_000))
        self.assertEqual(settings.route_cache_ms, 86_400_000)
        self.assertEqual(config.discovery.peer_rate_limit, 100)
        self.assertEqual(
            (
                config.discovery.gossip_interval,
                config.discovery.delivery_interval,
                config.discovery.neighbor_interval,
                config.discovery.cleanup_interval,
            ),
            (600.0, 60.0, 21600.0, 86400.0),
        )

    def test_bootstrap_pins_from_environment(self) -> None:
        """
        C{LATTICE_BOOTSTRAP_SERVERS} entries may pin a fingerprint.
        """
        config = config_from_string(
            "[discovery]\n",
            environ={
                "LATTICE_BOOTSTRAP_SERVERS": "https://a.example/, https://b.example#" + "ab" * 32
            },
        )
        settings = settings_from_config(config.discovery, ("http://x",), "x")
        self.assertEqual(
            settings.bootstrap, (("https://a.example", None), ("https://b.example", "ab" * 32))
        )

    def test_bad_values(self) -> None:
        """
        Bad values are reported with section and key.
        """
        error = self.assertRaises(
            ConfigError, config_from_string, "[discovery]\nfanout = 0\nlisten = nope:1\n"
        )
        self.assertEqual(len(error.errors), 2)
        self.assertIn("[discovery] fanout", error.errors[0] + error.errors[1])

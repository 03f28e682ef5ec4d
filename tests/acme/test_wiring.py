"""
The node wires the certificate service as child ``tls`` when ``[tls] enabled``.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lattice.acme import CertificateService
from lattice.acme.testing import ThreadlessReactor
from lattice.config import config_from_string
from lattice.service import make_lattice_service


class WiringTests(SynchronousTestCase):
    """
    make_lattice_service and [tls].
    """

    def names(self, text: str) -> list[str]:
        config = config_from_string(f"[node]\nstate_dir = {self.mktemp()}\n" + text)
        root = make_lattice_service(config, ThreadlessReactor(), environ={})
        return [child.name for child in root]

    def test_enabled(self) -> None:
        """
        With [tls] enabled, a CertificateService named tls starts before the listeners.
        """
        config = config_from_string(
            f"[node]\nstate_dir = {self.mktemp()}\n[tls]\nenabled = true\n[usb]\nenabled = true\n"
            "backend = emulated\n"
        )
        root = make_lattice_service(config, ThreadlessReactor(), environ={})
        names = [child.name for child in root]
        self.assertIsInstance(root.getServiceNamed("tls"), CertificateService)
        self.assertLess(names.index("tls"), names.index("usb"))
        self.assertEqual(names[:2], ["node", "telemetry"])

    def test_disabled(self) -> None:
        """
        By default there is no tls child.
        """
        self.assertNotIn("tls", self.names(""))

"""
etcdctl over TLS with client certificates: the certificate's common name selects the tenant.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from lattice.tls.testing import TestingCA

from .test_kv_etcdctl import KVDaemon, require


class TlsTenantTests(SynchronousTestCase):
    """Mutual TLS, and one keyspace per client certificate."""

    def setUp(self) -> None:
        require("etcdctl")
        directory = Path(tempfile.mkdtemp(prefix="lattice-kv-tls-"))
        self.addCleanup(shutil.rmtree, directory, True)
        ca = TestingCA()
        self.ca = ca.write(directory)
        server_cert, server_key = ca.issue(
            "localhost", dns_names=("localhost",), ip_addresses=("127.0.0.1",)
        ).write(directory, "server")
        self.clients = {
            name: ca.issue(name, client=True).write(directory, name) for name in ("alpha", "beta")
        }
        self.kv = KVDaemon(
            directory,
            tls_certificate=server_cert,
            tls_key=server_key,
            tls_client_ca=self.ca,
        )
        self.addCleanup(self.kv.stop)
        self.kv.start()

    def ctl(self, client: str, *args: str, check: bool = True) -> str:
        cert, key = self.clients[client]
        return self.kv.etcdctl(
            f"--cacert={self.ca}", f"--cert={cert}", f"--key={key}", *args, check=check
        )

    def test_tenants_by_certificate(self) -> None:
        """Each certificate's CN has its own keyspace, for reads, prefixes and deletes."""
        self.assertEqual(self.ctl("alpha", "put", "shared/k", "from-alpha"), "OK\n")
        self.assertEqual(self.ctl("beta", "put", "shared/k", "from-beta"), "OK\n")
        self.assertEqual(self.ctl("alpha", "get", "shared/k", "--print-value-only"), "from-alpha\n")
        self.assertEqual(self.ctl("beta", "get", "", "--from-key"), "shared/k\nfrom-beta\n")
        self.assertEqual(self.ctl("beta", "del", "", "--from-key"), "1\n")
        self.assertEqual(
            self.ctl("alpha", "get", "shared/", "--prefix", "--keys-only"), "shared/k\n\n"
        )

    def test_client_certificate_required(self) -> None:
        """Without a client certificate the TLS handshake is refused."""
        out = self.kv.etcdctl(
            f"--cacert={self.ca}", "--dial-timeout=2s", "--command-timeout=3s", "get", "k",
            check=False,
        )  # fmt: skip
        self.assertNotIn("OK", out)
        self.assertIn("Error", out)

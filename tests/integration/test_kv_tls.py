"""
etcdctl over TLS with client certificates: the certificate's common name selects the tenant.
"""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import ssl
import tempfile
from pathlib import Path
from typing import Any

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

    def gateway(self, client: str, route: str, body: dict[str, str]) -> dict[str, Any]:
        """``POST /v3/<route>`` to etcd's JSON gateway, over TLS with ``client``'s cert."""
        context = ssl.create_default_context(cafile=self.ca)
        context.load_cert_chain(*self.clients[client])
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.kv.port, context=context, timeout=10
        )
        try:
            connection.request("POST", f"/v3/{route}", body=json.dumps(body))
            response = connection.getresponse()
            answer: dict[str, Any] = json.loads(response.read())
            self.assertEqual(response.status, 200, answer)
            return answer
        finally:
            connection.close()

    def test_gateway_tenants_by_certificate(self) -> None:
        """The JSON gateway over TLS puts each certificate's CN in its own keyspace too."""
        key = base64.b64encode(b"gw/k").decode()
        for client in ("alpha", "beta"):
            value = base64.b64encode(client.encode()).decode()
            self.gateway(client, "kv/put", {"key": key, "value": value})
        answer = self.gateway("alpha", "kv/range", {"key": key})
        self.assertEqual(base64.b64decode(answer["kvs"][0]["value"]), b"alpha")
        self.assertEqual(self.ctl("beta", "get", "gw/k", "--print-value-only"), "beta\n")

    def test_client_certificate_required(self) -> None:
        """Without a client certificate the TLS handshake is refused."""
        out = self.kv.etcdctl(
            f"--cacert={self.ca}", "--dial-timeout=2s", "--command-timeout=3s", "get", "k",
            check=False,
        )  # fmt: skip
        self.assertNotIn("OK", out)
        self.assertIn("Error", out)

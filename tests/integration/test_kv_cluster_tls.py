"""
A Lattice node in front of a real etcd member that serves clients only over TLS and
requires client certificates (Debian's ``etcd-server``, etcd 3.4): ``etcd_tls_ca``,
``etcd_tls_certificate`` and ``etcd_tls_key``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc
from twisted.trial.unittest import SynchronousTestCase

from lattice.kv._proto import rpc_pb2
from lattice.tls.testing import TestingCA

from ._etcd_cluster import EtcdCluster, EtcdTls, free_port
from .test_kv_cluster import Client, readyz
from .test_kv_etcdctl import READY, KVDaemon

UNREACHABLE = re.compile(rb"etcd cluster: no member reachable")


class UpstreamTlsTests(SynchronousTestCase):
    """Mutual TLS between Lattice and the etcd members."""

    def setUp(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="lattice-etcd-tls-"))
        self.addCleanup(shutil.rmtree, directory, True)
        self.directory = directory
        ca = TestingCA()
        self.ca = ca.write(directory)
        server = ca.issue("etcd", dns_names=("localhost",), ip_addresses=("127.0.0.1",))
        certificate, key = server.write(directory, "etcd")
        self.client_certificate, self.client_key = ca.issue("lattice", client=True).write(
            directory, "lattice"
        )
        tls = EtcdTls(self.ca, certificate, key, self.client_certificate, self.client_key)
        (directory / "etcd").mkdir()
        self.cluster = EtcdCluster(directory / "etcd", size=1, tls=tls)
        self.addCleanup(self.cluster.stop)
        self.cluster.start_all()

    def node(self, name: str, *, ready: bool = True, **tls: str) -> KVDaemon:
        """
        A node in front of the member; unless ``ready``, one that is expected never to
        reach it: started on a known port, and returned once it has said why it cannot.
        """
        node_dir = self.directory / name
        node_dir.mkdir()
        port = free_port()
        daemon = KVDaemon(
            node_dir,
            backend="etcd",
            etcd_endpoints=", ".join(self.cluster.endpoints),
            upstream_timeout="1s",
            listen=f"tcp:{port}:interface=127.0.0.1",
            **tls,
        )
        self.addCleanup(daemon.stop)
        daemon.port = port
        daemon.start(ready=READY if ready else UNREACHABLE)
        return daemon

    def client(self, daemon: KVDaemon) -> Client:
        client = Client(daemon.endpoint)
        self.addCleanup(client.close)
        return client

    def test_mutual_tls(self) -> None:
        """
        With the CA and a client certificate, calls reach the member over TLS; the key is
        stored upstream under the default tenant's prefix.
        """
        daemon = self.node(
            "a",
            etcd_tls_ca=self.ca,
            etcd_tls_certificate=self.client_certificate,
            etcd_tls_key=self.client_key,
        )
        client = self.client(daemon)
        put = client.put(b"tls/key", b"secret")
        self.assertGreater(put.header.revision, 1)
        self.assertEqual(client.get(b"tls/key"), b"secret")
        self.assertEqual(readyz(daemon.port)[0], 200)
        status = subprocess.run(
            [sys.executable, "-m", "lattice.cli", "kv", "status", "--config", str(daemon.config)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        self.assertIn("backend:            etcd cluster", status)
        self.assertIn(f"current member:     {self.cluster.endpoints[0]}", status)
        self.assertIn("linearizable:       yes", status)

        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(self.ca).read_bytes(),
            private_key=Path(self.client_key).read_bytes(),
            certificate_chain=Path(self.client_certificate).read_bytes(),
        )
        target = self.cluster.endpoints[0].removeprefix("https://")
        with grpc.secure_channel(target, credentials) as channel:
            get = channel.unary_unary(
                "/etcdserverpb.KV/Range",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=rpc_pb2.RangeResponse.FromString,
            )
            response = get(rpc_pb2.RangeRequest(key=b"default\0tls/key"), timeout=10)
        self.assertEqual([kv.value for kv in response.kvs], [b"secret"])

    def test_without_client_certificate(self) -> None:
        """
        The member refuses a node without a client certificate: linearizable calls fail
        with UNAVAILABLE "linearizability unavailable" and the node is not ready.
        """
        daemon = self.node("b", ready=False, etcd_tls_ca=self.ca)
        client = self.client(daemon)
        with self.assertRaises(grpc.RpcError) as caught:
            client.put(b"tls/key", b"x")
        self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertIn("linearizability unavailable", caught.exception.details())
        self.assertEqual(readyz(daemon.port)[0], 503)

    def test_untrusted_member(self) -> None:
        """A member whose certificate the configured CA does not sign is never used."""
        other = TestingCA("Another CA").write(self.directory, "other")
        daemon = self.node(
            "c",
            ready=False,
            etcd_tls_ca=other,
            etcd_tls_certificate=self.client_certificate,
            etcd_tls_key=self.client_key,
        )
        client = self.client(daemon)
        with self.assertRaises(grpc.RpcError) as caught:
            client.range(b"tls/key")
        self.assertEqual(caught.exception.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertIn("linearizability unavailable", caught.exception.details())
        # The operator is told why, once.
        self.assertEqual(daemon.log().count("certificate verify failed"), 1)

"""
The Node.js ``etcd3`` client (npm, on ``@grpc/grpc-js``: another HTTP/2 and gRPC stack
than grpcio's and Go's) against a Lattice daemon, with the same script run against a real
etcd 3.4 as the reference, and through a node with ``backend = etcd`` in front of that
etcd.  The test command installs the package under ``.venv/node``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from ._etcd_cluster import EtcdCluster
from .test_kv_etcdctl import running_daemon

ROOT = Path(__file__).resolve().parents[2]
MODULES = ROOT / ".venv" / "node" / "node_modules"
SCRIPT = Path(__file__).with_name("etcd3_node.js")


def run_script(endpoint: str) -> Any:
    """Run the Node script against ``endpoint``; its JSON output."""
    result = subprocess.run(
        ["node", str(SCRIPT), endpoint],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NODE_PATH": str(MODULES)},
    )
    if result.returncode != 0:
        raise AssertionError(f"etcd3 (Node) against {endpoint} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout)


class NodeEtcd3Tests(SynchronousTestCase):
    """KV, prefix reads, watch, lease, lock, election, Txn and STM through Node's etcd3."""

    def test_same_as_etcd(self) -> None:
        """The script's results from Lattice equal those from a real etcd."""
        if shutil.which("node") is None or not (MODULES / "etcd3").is_dir():
            raise SkipTest("node or the npm package etcd3 is missing (scripts/test installs it)")
        directory = Path(tempfile.mkdtemp(prefix="lattice-node-"))
        self.addCleanup(shutil.rmtree, directory, True)
        etcd = EtcdCluster(directory, size=1)
        self.addCleanup(etcd.stop)
        etcd.start_all()
        kv = running_daemon(self)
        # the same, through a node in front of that etcd (backend = etcd, its own tenant
        # prefix there)
        front = running_daemon(self, backend="etcd", etcd_endpoints=etcd.endpoints[0])
        reference = run_script(etcd.endpoints[0].removeprefix("http://"))
        ours = run_script(kv.endpoint)
        self.assertEqual(ours, reference)
        self.assertEqual(dict((r[0], r[1:]) for r in ours)["watch"][0][-1], ["delete", "w/1"])
        self.assertEqual(run_script(front.endpoint), reference)

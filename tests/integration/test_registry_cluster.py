"""
The registry on a shared etcd cluster (``[kv] backend = etcd``): two real nodes in front of
a real three-member etcd cluster, ``etcdctl`` writing the registry through one node's KV
listener, the ``lattice service`` CLI for consent, and a cheap real daemon.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from ._daemon import ROOT, child_environment, start_twistd
from ._etcd_cluster import EtcdCluster

SERVICE = "test.cheap"
PLUGIN = f"""
from lattice.registry import ServiceDescriptor

cheap = ServiceDescriptor(
    id={SERVICE!r},
    description="connects to LSP, reports ready, waits",
    prefixes=("/cheap/",),
    argv=("{{python}}", {str(ROOT / "bench" / "_registry_daemon.py")!r}),
)
"""
ENTRY = {"enabled": True, "policy": "TaggedNodes(gateway)"}
KV_READY = re.compile(rb"kv: listening on 127\.0\.0\.1:(\d+)")
ADVERTISE_TTL = 3


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise SkipTest(f"{tool} is not installed")
    return path


class RegistryNode:
    """``twistd -n lattice`` with the KV listener in front of the cluster and the registry."""

    def __init__(self, directory: Path, endpoints: list[str], tags: str, plugins: Path) -> None:
        self.directory = directory
        self.config = directory / "lattice.ini"
        self.config.write_text(
            f"[node]\nstate_dir = {directory / 'state'}\ntags = {tags}\n"
            "[telemetry]\nenabled = false\n"
            "[discovery]\nenabled = false\n"
            "[kv]\nenabled = true\nlisten = tcp:0:interface=127.0.0.1\nbackend = etcd\n"
            f"etcd_endpoints = {', '.join(endpoints)}\nupstream_timeout = 1s\n"
            "[registry]\nenabled = true\n"
            f"advertise_ttl = {ADVERTISE_TTL}\nrestart_min = 0.2s\nkill_timeout = 2s\n"
        )
        self.environ = child_environment(PYTHONPATH=f"{plugins}:{ROOT}")
        self.process: subprocess.Popen[bytes] | None = None
        self.output: list[bytes] = []
        self.port = 0

    def start(self, timeout: float = 30.0) -> None:
        """Start the node; return once its KV listener is bound."""
        self.process, match = start_twistd(
            self.config, KV_READY, self.output, self.environ, timeout
        )
        self.port = int(match.group(1))

    def log(self) -> str:
        return b"".join(self.output).decode("utf-8", "replace")[-6000:]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        process, self.process = self.process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(sig)
            process.wait(timeout=30)

    def stop(self) -> None:
        self.kill(signal.SIGTERM)

    def cli(self, *argv: str) -> str:
        """Run ``lattice --config ... argv``; its stdout."""
        result = subprocess.run(
            [str(Path(sys.executable).parent / "lattice"), "--config", str(self.config), *argv],
            check=False,
            capture_output=True,
            env=self.environ,
            timeout=30,
        )
        if result.returncode != 0:
            raise AssertionError(f"lattice {' '.join(argv)}: {result.stderr.decode()}")
        return result.stdout.decode()

    def instances(self) -> dict[str, Any]:
        """``lattice service list --json``."""
        listing: dict[str, Any] = json.loads(self.cli("service", "list", "--json"))
        return listing

    def etcdctl(self, *argv: str) -> str:
        """``etcdctl`` against this node's KV listener; its stdout."""
        result = subprocess.run(
            [_require("etcdctl"), f"--endpoints=127.0.0.1:{self.port}", *argv],
            check=False,
            capture_output=True,
            env={"ETCDCTL_API": "3", "PATH": os.environ.get("PATH", "")},
            timeout=30,
        )
        if result.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(argv)}: {result.stderr.decode()}")
        return result.stdout.decode()


def wait_for(
    check: Callable[[], Any],
    timeout: float = 15.0,
    what: str = "condition",
    log: Callable[[], str] = str,
) -> Any:
    """Retry ``check`` until it returns a true value, up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout}s\n{log()}")
        time.sleep(0.1)


class RegistryClusterTests(SynchronousTestCase):
    """Two nodes' registries share the cluster: policy, consent and advertisements."""

    def setUp(self) -> None:
        _require("etcdctl")
        directory = Path(tempfile.mkdtemp(prefix="lattice-reg-"))
        self.addCleanup(shutil.rmtree, directory, True)
        (directory / "etcd").mkdir()
        self.cluster = EtcdCluster(directory / "etcd")
        self.addCleanup(self.cluster.stop)
        self.cluster.start_all()
        # A third party's plugin: lattice/plugins/ without __init__.py on the path.
        plugins = directory / "thirdparty"
        (plugins / "lattice" / "plugins").mkdir(parents=True)
        (plugins / "lattice" / "plugins" / "cheap_plugin.py").write_text(PLUGIN)
        self.nodes: list[RegistryNode] = []
        for name, tags in (("a", "gateway"), ("b", "")):
            (directory / name).mkdir()
            node = RegistryNode(directory / name, self.cluster.endpoints, tags, plugins)
            self.addCleanup(node.stop)
            node.start()
            self.nodes.append(node)
        self.a, self.b = self.nodes

    def _row(self, node: RegistryNode) -> dict[str, Any] | None:
        for row in node.instances()["instances"]:
            if row["service"] == SERVICE:
                found: dict[str, Any] = row
                return found
        return None

    def test_tagged_service_and_lease_expiry(self) -> None:
        """The service runs on the tagged node only; its advertisement dies with that node."""
        for node in self.nodes:
            node.cli("service", "consent", SERVICE, "FollowMesh")
        self.a.etcdctl("put", f"/services/{SERVICE}/config", json.dumps(ENTRY))

        # Node A (tagged gateway) runs the daemon; node B saw the entry and declines.
        row = wait_for(
            lambda: (r := self._row(self.a)) is not None and r["state"] == "ready" and r,
            what="the daemon ready on A",
            log=self.a.log,
        )
        self.addCleanup(_kill_pid, row["pid"])
        self.assertTrue(row["desired"])
        row_b = wait_for(lambda: self._row(self.b), what="the entry seen by B")
        self.assertEqual((row_b["desired"], row_b["state"]), (False, "stopped"))
        self.assertIn("gateway", row_b["why"])

        # A's advertisement is in the shared cluster: B's listener shows it.
        node_a = self.a.instances()["node_id"]
        key = f"/nodes/{node_a}/services/{SERVICE}"
        out = wait_for(
            lambda: self.b.etcdctl("get", key, "--print-value-only").strip(),
            what="the advertisement through B",
        )
        self.assertEqual(json.loads(out)["status"], "Running")
        self.assertEqual(self.b.etcdctl("get", "--prefix", "/nodes/", "--keys-only").split(), [key])

        # Node A dies without withdrawing anything: the lease expires, the advertisement goes.
        killed = time.monotonic()
        self.a.kill(signal.SIGKILL)
        wait_for(
            lambda: self.b.etcdctl("get", key).strip() == "",
            timeout=ADVERTISE_TTL + 10,
            what="the advertisement's expiry",
        )
        self.assertGreaterEqual(time.monotonic() - killed, 1.0)


def _kill_pid(pid: int | None) -> None:
    """Kill a daemon its killed node left behind."""
    if pid is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)

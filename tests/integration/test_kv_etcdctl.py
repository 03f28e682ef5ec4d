"""
Debian's ``etcdctl`` (etcd 3.4) against a real Lattice daemon, through every command group.

Also the home of :class:`KVDaemon`, which the other ``test_kv_*`` modules share.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from ._daemon import start_twistd

READY = re.compile(rb"kv: listening on 127\.0\.0\.1:(\d+)")


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise SkipTest(f"{tool} is not installed (Debian package etcd-client / etcd-server)")
    return path


class KVDaemon:
    """``twistd -n lattice`` with only the KV store, on a free loopback port."""

    def __init__(self, directory: Path, **kv: str) -> None:
        self.directory = directory
        self.config = directory / "lattice.ini"
        settings = {"enabled": "true", "listen": "tcp:0:interface=127.0.0.1", **kv}
        lines = [
            "[node]",
            f"state_dir = {directory / 'state'}",
            "[telemetry]",
            "enabled = false",
            "[discovery]",
            "enabled = false",
            "[kv]",
            *(f"{key} = {value}" for key, value in settings.items()),
        ]
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.output: list[bytes] = []

    def start(self, timeout: float = 30.0, ready: re.Pattern[bytes] = READY) -> int:
        """
        Start the daemon; return the KV port once a line matches ``ready`` (by default,
        once the node is ready).  A pattern without a group leaves ``port`` as the caller
        set it (for a node that is expected never to become ready).
        """
        self.output = []
        self.process, match = start_twistd(self.config, ready, self.output, timeout=timeout)
        if match.groups():
            self.port = int(match.group(1))
        return self.port

    def log(self) -> str:
        return b"".join(self.output).decode("utf-8", "replace")

    def kill(self, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` and wait for the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        status = self.process.wait(timeout=30)
        self.process = None
        return status

    def stop(self) -> None:
        if self.process is not None:
            self.kill(signal.SIGTERM)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def etcdctl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        """Run ``etcdctl`` against the daemon; return its stdout."""
        result = subprocess.run(
            [require("etcdctl"), f"--endpoints={self.endpoint}", *args],
            input=stdin.encode() if stdin is not None else None,
            capture_output=True,
            env={**os.environ, "ETCDCTL_API": "3"},
            timeout=30,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"etcdctl {' '.join(args)} failed ({result.returncode}): {result.stderr.decode()}"
            )
        if not check:
            return result.stdout.decode() + result.stderr.decode()
        return result.stdout.decode()


def running_daemon(test: Any, **kv: str) -> KVDaemon:
    """A started daemon in a fresh directory, stopped and removed after ``test``."""
    directory = Path(tempfile.mkdtemp(prefix="lattice-kv-"))
    test.addCleanup(shutil.rmtree, directory, True)
    daemon = KVDaemon(directory, **kv)
    test.addCleanup(daemon.stop)
    daemon.start()
    return daemon


class EtcdctlKVTests(SynchronousTestCase):
    """put/get/del/txn/compaction through etcdctl."""

    def setUp(self) -> None:
        require("etcdctl")
        self.kv = running_daemon(self)

    def json(self, *args: str) -> Any:
        return json.loads(self.kv.etcdctl(*args, "-w", "json"))

    def test_put_get(self) -> None:
        """A put is read back, with etcd's revisions and versions."""
        self.assertEqual(self.kv.etcdctl("put", "foo", "bar"), "OK\n")
        self.assertEqual(self.kv.etcdctl("get", "foo"), "foo\nbar\n")
        self.kv.etcdctl("put", "foo", "baz")
        body = self.json("get", "foo")
        kv = body["kvs"][0]
        self.assertEqual(base64.b64decode(kv["value"]), b"baz")
        self.assertEqual((kv["create_revision"], kv["mod_revision"], kv["version"]), (2, 3, 2))
        self.assertEqual(body["header"]["revision"], 3)
        self.assertIn("cluster_id", body["header"])
        self.assertIn("member_id", body["header"])

    def test_large_range(self) -> None:
        """
        A range answer over gRPC's usual 4 MiB reaches etcdctl whole: like etcd, the
        server does not limit what it sends (only what it receives).
        """
        value = "v" * (1024 * 1024)
        for i in range(6):
            self.kv.etcdctl("put", f"big/{i}", stdin=value)
        keys = self.kv.etcdctl("get", "big/", "--prefix", "--keys-only").split()
        self.assertEqual(keys, [f"big/{i}" for i in range(6)])
        self.assertEqual(len(self.kv.etcdctl("get", "big/", "--prefix")), 6 * (len(value) + 7))

    def test_get_flags(self) -> None:
        """--prefix, --from-key, --limit, --sort-by/--order, --keys-only, --rev and friends."""
        for key, value in (("a/1", "3"), ("a/2", "1"), ("a/3", "2"), ("b", "x")):
            self.kv.etcdctl("put", key, value)
        self.assertEqual(
            self.kv.etcdctl("get", "a/", "--prefix", "--keys-only"), "a/1\n\na/2\n\na/3\n\n"
        )
        self.assertEqual(
            self.kv.etcdctl("get", "a/2", "--from-key", "--print-value-only"), "1\n2\nx\n"
        )
        self.assertEqual(
            self.kv.etcdctl(
                "get", "a/", "--prefix", "--sort-by=VALUE", "--order=DESCEND", "--limit=1"
            ),
            "a/1\n3\n",
        )
        self.assertEqual(self.kv.etcdctl("get", "a/1", "a/3"), "a/1\n3\na/2\n1\n")
        self.assertEqual(self.kv.etcdctl("get", "a/1", "--rev=2"), "a/1\n3\n")
        self.assertEqual(self.kv.etcdctl("get", "a/1", "--rev=1"), "")
        body = self.json("get", "a/", "--prefix", "--limit=2")
        self.assertEqual((body["count"], body["more"]), (3, True))
        self.assertEqual(self.kv.etcdctl("get", "a/1", "--consistency=s"), "a/1\n3\n")

    def test_put_flags(self) -> None:
        """--prev-kv, --ignore-value and --ignore-lease."""
        self.kv.etcdctl("put", "k", "one")
        self.assertEqual(self.kv.etcdctl("put", "k", "two", "--prev-kv"), "OK\nk\none\n")
        self.kv.etcdctl("put", "k", "--ignore-value")
        self.assertEqual(self.kv.etcdctl("get", "k", "--print-value-only"), "two\n")
        out = self.kv.etcdctl("put", "missing", "--ignore-value", check=False)
        self.assertIn("etcdserver: key not found", out)
        lease = self.kv.etcdctl("lease", "grant", "100").split()[1]
        self.kv.etcdctl("put", "k", "three", f"--lease={lease}")
        self.kv.etcdctl("put", "k", "four", "--ignore-lease")
        body = self.json("get", "k")
        self.assertEqual(base64.b64decode(body["kvs"][0]["value"]), b"four")
        self.assertEqual(format(body["kvs"][0]["lease"], "016x"), lease)

    def test_del(self) -> None:
        """del of one key, a prefix with --prev-kv, and --from-key."""
        for key in ("a", "b/1", "b/2", "c"):
            self.kv.etcdctl("put", key, "v")
        self.assertEqual(self.kv.etcdctl("del", "a"), "1\n")
        self.assertEqual(
            self.kv.etcdctl("del", "b/", "--prefix", "--prev-kv"), "2\nb/1\nv\nb/2\nv\n"
        )
        self.assertEqual(self.kv.etcdctl("del", "c", "--from-key"), "1\n")
        self.assertEqual(self.kv.etcdctl("get", "", "--from-key"), "")

    def test_txn(self) -> None:
        """An interactive-format txn takes the success branch at one revision."""
        self.kv.etcdctl("put", "k1", "v1")
        out = self.kv.etcdctl(
            "txn", stdin='value("k1") = "v1"\n\nput k2 yes\nget k1\n\nput k2 no\n\n'
        )
        self.assertEqual(out, "SUCCESS\n\nOK\n\nk1\nv1\n")
        out = self.kv.etcdctl(
            "txn", stdin='mod("k1") > "100"\n\nput k2 never\n\ndel k2\nput k3 else\n\n'
        )
        self.assertEqual(out, "FAILURE\n\n1\n\nOK\n")
        self.assertEqual(self.json("get", "k3")["kvs"][0]["mod_revision"], 4)

    def test_compaction(self) -> None:
        """After compaction, older revisions fail with etcd's message."""
        for value in ("1", "2", "3"):
            self.kv.etcdctl("put", "k", value)
        self.assertEqual(self.kv.etcdctl("compaction", "3"), "compacted revision 3\n")
        self.assertEqual(self.kv.etcdctl("get", "k", "--rev=3", "--print-value-only"), "2\n")
        out = self.kv.etcdctl("get", "k", "--rev=2", check=False)
        self.assertIn("etcdserver: mvcc: required revision has been compacted", out)
        out = self.kv.etcdctl("get", "k", "--rev=99", check=False)
        self.assertIn("etcdserver: mvcc: required revision is a future revision", out)


class EtcdctlLeaseTests(SynchronousTestCase):
    """lease grant/keep-alive/timetolive/list/revoke through etcdctl."""

    def setUp(self) -> None:
        require("etcdctl")
        self.kv = running_daemon(self)

    def test_lease_lifecycle(self) -> None:
        """A granted lease holds keys until revoked, then reports expired."""
        out = self.kv.etcdctl("lease", "grant", "100")
        match = re.match(r"lease ([0-9a-f]+) granted with TTL\(100s\)", out)
        assert match, out
        lease = match.group(1)
        self.kv.etcdctl("put", "held", "v", f"--lease={lease}")
        out = self.kv.etcdctl("lease", "timetolive", lease, "--keys")
        self.assertRegex(
            out,
            rf"lease {lease} granted with TTL\(100s\), remaining\(\d+s\), "
            rf"attached keys\(\[held\]\)",
        )
        self.assertIn(lease, self.kv.etcdctl("lease", "list"))
        self.assertEqual(
            self.kv.etcdctl("lease", "keep-alive", "--once", lease),
            f"lease {lease} keepalived with TTL(100)\n",
        )
        self.assertEqual(self.kv.etcdctl("lease", "revoke", lease), f"lease {lease} revoked\n")
        self.assertEqual(self.kv.etcdctl("get", "held"), "")
        self.assertEqual(
            self.kv.etcdctl("lease", "timetolive", lease), f"lease {lease} already expired\n"
        )

    def test_unknown_lease(self) -> None:
        """A put with an unknown lease fails with etcd's message."""
        out = self.kv.etcdctl("put", "k", "v", "--lease=1234", check=False)
        self.assertIn("etcdserver: requested lease not found", out)


class EtcdctlWatchTests(SynchronousTestCase):
    """watch with history and prev-kv through etcdctl."""

    def setUp(self) -> None:
        require("etcdctl")
        self.kv = running_daemon(self)

    def test_watch_history_prev_kv(self) -> None:
        """A watch from revision 1 replays every event with previous values, then goes live."""
        self.kv.etcdctl("put", "w", "1")
        self.kv.etcdctl("put", "w", "2")
        watcher = subprocess.Popen(
            [require("etcdctl"), f"--endpoints={self.kv.endpoint}", "watch", "w", "--prefix",
             "--rev=1", "--prev-kv"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "ETCDCTL_API": "3"},
        )  # fmt: skip
        self.addCleanup(watcher.wait)
        self.addCleanup(watcher.kill)
        assert watcher.stdout is not None
        expected = ["PUT", "w", "1", "PUT", "w", "1", "w", "2"]
        got = [watcher.stdout.readline().decode().rstrip("\n") for _ in expected]
        self.assertEqual(got, expected)
        self.kv.etcdctl("del", "w")
        expected = ["DELETE", "w", "2", "w", ""]
        got = [watcher.stdout.readline().decode().rstrip("\n") for _ in expected]
        self.assertEqual(got, expected)

    def test_watch_compacted(self) -> None:
        """Watching from a compacted revision is cancelled with etcd's message."""
        for value in ("1", "2", "3"):
            self.kv.etcdctl("put", "w", value)
        self.kv.etcdctl("compaction", "3")
        out = self.kv.etcdctl("watch", "w", "--rev=1", check=False)
        self.assertIn("required revision has been compacted", out)


class EtcdctlClusterTests(SynchronousTestCase):
    """endpoint status/health/hashkv, member list, snapshot save, alarms, defrag."""

    def setUp(self) -> None:
        require("etcdctl")
        self.kv = running_daemon(self)

    def test_endpoint(self) -> None:
        """endpoint status, health and hashkv answer like a one-member etcd."""
        self.kv.etcdctl("put", "k", "v")
        status = json.loads(self.kv.etcdctl("endpoint", "status", "-w", "json"))[0]["Status"]
        self.assertEqual(status["header"]["revision"], 2)
        self.assertEqual(status["leader"], status["header"]["member_id"])
        health = self.kv.etcdctl("endpoint", "health", check=False)
        self.assertIn("is healthy: successfully committed proposal", health)
        hashes = json.loads(self.kv.etcdctl("endpoint", "hashkv", "-w", "json"))
        self.assertIn("hash", hashes[0]["HashKV"])

    def test_member_list(self) -> None:
        """member list shows this node, started, with its client URL as its peer URL too."""
        out = self.kv.etcdctl("member", "list")
        url = f"http://{self.kv.endpoint}"
        _, status, _, peer_urls, client_urls, *_ = (f.strip() for f in out.strip().split(","))
        self.assertEqual((status, peer_urls, client_urls), ("started", url, url))

    def test_member_add_refused(self) -> None:
        """A standalone node refuses membership changes with a clear error."""
        out = self.kv.etcdctl("member", "add", "x", "--peer-urls=http://127.0.0.1:1", check=False)
        self.assertIn("standalone node", out)

    def test_snapshot_save(self) -> None:
        """snapshot save writes a file holding a consistent copy of the database."""
        self.kv.etcdctl("put", "k", "v")
        path = self.kv.directory / "snap.db"
        out = self.kv.etcdctl("snapshot", "save", str(path))
        self.assertIn(f"Snapshot saved at {path}", out)
        self.assertGreater(path.stat().st_size, 1024)

    def test_alarm_and_defrag(self) -> None:
        """alarm list is empty and defrag succeeds."""
        self.assertEqual(self.kv.etcdctl("alarm", "list"), "")
        self.assertIn("Finished defragmenting etcd member", self.kv.etcdctl("defrag"))

    def test_health_over_http(self) -> None:
        """The gRPC port answers /healthz and /readyz over HTTP/1.1."""
        import urllib.request

        with urllib.request.urlopen(f"http://{self.kv.endpoint}/healthz", timeout=10) as r:
            self.assertEqual(json.loads(r.read())["health"], "true")
        with urllib.request.urlopen(f"http://{self.kv.endpoint}/readyz", timeout=10) as r:
            self.assertTrue(json.loads(r.read())["ready"])


class EtcdctlAuthTests(SynchronousTestCase):
    """user/role/auth through etcdctl, and tenants by auth user."""

    def setUp(self) -> None:
        require("etcdctl")
        self.kv = running_daemon(self)

    def test_auth(self) -> None:
        """Users, roles and key-range permissions are enforced once auth is enabled."""
        e = self.kv.etcdctl
        self.assertEqual(e("user", "add", "root:rootpw"), "User root created\n")
        e("user", "add", "alice:alicepw")
        e("role", "add", "app")
        e("role", "grant-permission", "--prefix", "app", "readwrite", "app/")
        e("user", "grant-role", "alice", "app")
        self.assertIn("[app/, app0) (prefix app/)", e("role", "get", "app"))
        self.assertEqual(e("user", "get", "alice"), "User: alice\nRoles: app\n")
        self.assertEqual(e("user", "list"), "alice\nroot\n")
        self.assertEqual(e("auth", "enable"), "Authentication Enabled\n")
        self.assertIn("user name is empty", e("get", "x", check=False))
        self.assertEqual(e("--user=alice:alicepw", "put", "app/1", "v"), "OK\n")
        self.assertIn(
            "permission denied", e("--user=alice:alicepw", "put", "other", "v", check=False)
        )
        self.assertIn("authentication failed", e("--user=alice:nope", "get", "app/1", check=False))
        # alice is her own tenant: root (the default tenant) does not see her keys.
        self.assertEqual(e("--user=root:rootpw", "get", "app/1"), "")
        self.assertEqual(e("--user=alice:alicepw", "get", "app/1"), "app/1\nv\n")
        self.assertEqual(e("--user=root:rootpw", "auth", "disable"), "Authentication Disabled\n")
        self.assertEqual(e("get", "app/1"), "")

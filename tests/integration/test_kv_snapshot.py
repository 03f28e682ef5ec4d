"""
etcd snapshots between Lattice and a real etcd 3.4 (Debian's ``etcd`` and ``etcdctl``).

Lattice's ``Maintenance.Snapshot`` is saved with ``etcdctl snapshot save``, inspected with
``etcdctl snapshot status`` (which opens it with the real bbolt and runs its consistency check),
restored with ``etcdctl snapshot restore`` and served by a real ``etcd``; the other way, a real
etcd's snapshot goes through ``lattice kv restore`` into a Lattice daemon.  The bbolt writer's
files are also checked page by page by the real bbolt.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from lattice.cli import main as lattice_main
from lattice.kv._bbolt import Bucket, write_db

from ._etcd_cluster import free_port
from .test_kv_etcdctl import KVDaemon, require, running_daemon

Run = Callable[..., str]


def etcdctl(*args: str, stdin: str | None = None, check: bool = True) -> str:
    """Run ``etcdctl`` (API v3); return its stdout (and stderr when not checked)."""
    result = subprocess.run(
        [require("etcdctl"), *args],
        input=stdin.encode() if stdin is not None else None,
        capture_output=True,
        env={**os.environ, "ETCDCTL_API": "3"},
        timeout=60,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"etcdctl {' '.join(args)} failed: {result.stderr.decode()}")
    if not check:
        return result.stdout.decode() + result.stderr.decode()
    return result.stdout.decode()


class EtcdMember:
    """One real ``etcd`` on loopback ports, on a data directory of its own."""

    def __init__(self, directory: Path) -> None:
        self.etcd = require("etcd")
        self.directory = directory
        self.data = directory / "etcd-data"
        self.client = f"http://127.0.0.1:{free_port()}"
        self.peer = f"http://127.0.0.1:{free_port()}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return self.client.removeprefix("http://")

    def restore(self, snapshot: Path) -> str:
        """``etcdctl snapshot restore`` into this member's (new) data directory."""
        return etcdctl(
            "snapshot",
            "restore",
            str(snapshot),
            f"--data-dir={self.data}",
            "--name=m0",
            f"--initial-cluster=m0={self.peer}",
            f"--initial-advertise-peer-urls={self.peer}",
            "--initial-cluster-token=lattice-snapshot",
        )

    def start(self, timeout: float = 30.0) -> None:
        log = (self.directory / "etcd.log").open("ab")
        self.process = subprocess.Popen(
            [
                self.etcd,
                "--name=m0",
                f"--data-dir={self.data}",
                f"--listen-client-urls={self.client}",
                f"--advertise-client-urls={self.client}",
                f"--listen-peer-urls={self.peer}",
                f"--initial-advertise-peer-urls={self.peer}",
                f"--initial-cluster=m0={self.peer}",
                "--initial-cluster-token=lattice-snapshot",
                "--logger=zap",
                "--log-level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"etcd exited: {self.log()}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"{self.client}/health", timeout=1) as response,
            ):
                if b'"true"' in response.read():
                    return
            time.sleep(0.05)
        raise AssertionError(f"etcd not healthy: {self.log()}")

    def log(self) -> str:
        return (self.directory / "etcd.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=30)
            self.process = None

    def etcdctl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        return etcdctl(f"--endpoints={self.endpoint}", *args, stdin=stdin, check=check)


def temporary_directory(test: SynchronousTestCase) -> Path:
    directory = Path(tempfile.mkdtemp(prefix="lattice-snap-"))
    test.addCleanup(shutil.rmtree, directory, True)
    return directory


def running_etcd(test: SynchronousTestCase, snapshot: Path | None = None) -> EtcdMember:
    """A started etcd (restored from ``snapshot`` if given), stopped after ``test``."""
    member = EtcdMember(temporary_directory(test))
    if snapshot is not None:
        member.restore(snapshot)
    test.addCleanup(member.stop)
    member.start()
    return member


def workload(run: Run) -> str:
    """
    Writes with history, a deletion, a lease, a value larger than a bbolt page, two
    transactions of 100 keys (enough for branch pages) and a compaction; returns the lease ID.

    Revisions: a=1 (2), a=2 (3), b (4), del b (5), c with the lease (6), big (7),
    many/000-099 (8), many/100-199 (9), a=3 (10), compaction at 5, d (11).
    """
    run("put", "a", "1")
    run("put", "a", "2")
    run("put", "b", "x")
    run("del", "b")
    lease = run("lease", "grant", "600").split()[1]
    run("put", "c", "3", f"--lease={lease}")
    run("put", "big", "v" * 10_000)
    for start in (0, 100):
        ops = "".join(f'put many/{i:03d} "value {i}"\n' for i in range(start, start + 100))
        run("txn", stdin=f"\n{ops}\n\n")
    run("put", "a", "3")
    run("compaction", "5")
    run("put", "d", "4")
    return lease


def key_values(run: Run) -> list[dict[str, Any]]:
    """Every key with its value, revisions, version and lease, as etcdctl prints them."""
    body = json.loads(run("get", "", "--from-key", "-w", "json"))
    return [
        {
            "key": base64.b64decode(kv["key"]),
            "value": base64.b64decode(kv.get("value", "")),
            "create_revision": kv["create_revision"],
            "mod_revision": kv["mod_revision"],
            "version": kv["version"],
            "lease": kv.get("lease", 0),
        }
        for kv in body.get("kvs", [])
    ]


def status(snapshot: Path) -> dict[str, int]:
    result: dict[str, int] = json.loads(etcdctl("snapshot", "status", str(snapshot), "-w", "json"))
    return result


class LatticeToEtcdTests(SynchronousTestCase):
    """A Lattice snapshot is an etcd snapshot: status, restore, served by a real etcd."""

    def setUp(self) -> None:
        require("etcdctl")
        require("etcd")
        self.kv = running_daemon(self)

    def test_status_matches_etcd(self) -> None:
        """snapshot status reports the same revision and entry count as a real etcd's
        snapshot after the same writes."""
        workload(self.kv.etcdctl)
        ours = self.kv.directory / "lattice.db"
        self.kv.etcdctl("snapshot", "save", str(ours))
        etcd = running_etcd(self)
        workload(etcd.etcdctl)
        theirs = etcd.directory / "etcd.db"
        etcd.etcdctl("snapshot", "save", str(theirs))
        mine, reference = status(ours), status(theirs)
        self.assertEqual(mine["revision"], 11)
        self.assertEqual(
            (mine["revision"], mine["totalKey"]), (reference["revision"], reference["totalKey"])
        )

    def test_restore_into_etcd(self) -> None:
        """etcdctl snapshot restore accepts it and etcd serves the same keys, values,
        revisions, versions, lease, history and compaction."""
        lease = workload(self.kv.etcdctl)
        expected = key_values(self.kv.etcdctl)
        self.assertEqual(len(expected), 204)
        snapshot = self.kv.directory / "lattice.db"
        out = self.kv.etcdctl("snapshot", "save", str(snapshot))
        self.assertIn("Snapshot saved", out)
        etcd = running_etcd(self, snapshot)
        self.assertEqual(key_values(etcd.etcdctl), expected)
        header = json.loads(etcd.etcdctl("get", "a", "-w", "json"))["header"]
        self.assertEqual(header["revision"], 11)
        self.assertEqual(etcd.etcdctl("get", "a", "--rev=5"), "a\n2\n")
        self.assertIn("compacted", etcd.etcdctl("get", "a", "--rev=4", check=False))
        self.assertIn(lease, etcd.etcdctl("lease", "list"))
        ttl = etcd.etcdctl("lease", "timetolive", lease, "--keys")
        self.assertIn("attached keys([c])", ttl)
        # The restored etcd keeps working from there.
        etcd.etcdctl("put", "a", "4")
        body = json.loads(etcd.etcdctl("get", "a", "-w", "json"))
        self.assertEqual(body["kvs"][0]["version"], 4)
        self.assertEqual(body["kvs"][0]["mod_revision"], 12)

    def test_corrupt_snapshot_refused(self) -> None:
        """etcdctl refuses a Lattice snapshot with a flipped byte (the SHA-256 is checked)."""
        self.kv.etcdctl("put", "k", "v")
        snapshot = self.kv.directory / "lattice.db"
        self.kv.etcdctl("snapshot", "save", str(snapshot))
        data = bytearray(snapshot.read_bytes())
        data[len(data) // 2] ^= 0xFF
        snapshot.write_bytes(bytes(data))
        member = EtcdMember(temporary_directory(self))
        out = etcdctl(
            "snapshot", "restore", str(snapshot), f"--data-dir={member.data}", check=False
        )
        self.assertIn("expected sha256", out)


class EtcdToLatticeTests(SynchronousTestCase):
    """A real etcd's snapshot restored with ``lattice kv restore`` serves the same data."""

    def setUp(self) -> None:
        require("etcdctl")
        self.etcd = running_etcd(self)

    def restore(self, snapshot: Path, directory: Path) -> tuple[int, str]:
        """``lattice kv restore`` with a node configuration; exit status and output."""
        daemon = KVDaemon(directory)
        output = io.StringIO()
        arguments = ["kv", "restore", str(snapshot), "--config", str(daemon.config)]
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            code = lattice_main(arguments)
        return code, output.getvalue()

    def test_restore_into_lattice(self) -> None:
        """Keys, values, revisions, versions, the lease, history and compaction come over;
        and a snapshot of the result is etcd's again."""
        lease = workload(self.etcd.etcdctl)
        self.etcd.etcdctl("user", "add", "alice:secret")
        expected = key_values(self.etcd.etcdctl)
        snapshot = self.etcd.directory / "etcd.db"
        self.etcd.etcdctl("snapshot", "save", str(snapshot))
        directory = temporary_directory(self)
        code, output = self.restore(snapshot, directory)
        self.assertEqual(code, 0)
        self.assertIn("revision 11, compacted at 5, 204 keys, 205 versions, 1 leases", output)
        self.assertIn("passwords not carried over", output)
        daemon = KVDaemon(directory)
        self.addCleanup(daemon.stop)
        daemon.start()
        self.assertEqual(key_values(daemon.etcdctl), expected)
        self.assertEqual(daemon.etcdctl("get", "a", "--rev=5"), "a\n2\n")
        self.assertIn("compacted", daemon.etcdctl("get", "a", "--rev=4", check=False))
        self.assertIn(lease, daemon.etcdctl("lease", "list"))
        self.assertIn("attached keys([c])", daemon.etcdctl("lease", "timetolive", lease, "--keys"))
        self.assertIn("alice", daemon.etcdctl("user", "list"))
        daemon.etcdctl("put", "a", "4")
        body = json.loads(daemon.etcdctl("get", "a", "-w", "json"))
        self.assertEqual((body["kvs"][0]["version"], body["kvs"][0]["mod_revision"]), (4, 12))
        again = directory / "again.db"
        daemon.etcdctl("snapshot", "save", str(again))
        self.assertEqual(status(again)["revision"], 12)

    def test_refusals(self) -> None:
        """A damaged snapshot and an existing database are refused with a clear error."""
        self.etcd.etcdctl("put", "k", "v")
        snapshot = self.etcd.directory / "etcd.db"
        self.etcd.etcdctl("snapshot", "save", str(snapshot))
        damaged = self.etcd.directory / "damaged.db"
        data = bytearray(snapshot.read_bytes())
        data[5000] ^= 1
        damaged.write_bytes(bytes(data))
        directory = temporary_directory(self)
        code, output = self.restore(damaged, directory)
        self.assertEqual(code, 1)
        self.assertIn("SHA-256 does not match", output)
        self.assertFalse((directory / "state" / "kv.sqlite").exists())
        self.assertEqual(self.restore(snapshot, directory)[0], 0)
        code, output = self.restore(snapshot, directory)
        self.assertEqual(code, 1)
        self.assertIn("refusing to overwrite", output)


# -- the writer's files, checked by the real bbolt ----------------------------------------------


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def expected_status(root: Bucket) -> tuple[int, int]:
    """The hash and entry count etcdctl snapshot status computes (etcd's v3_snapshot.go)."""
    crc = count = 0
    for name in sorted(root.buckets):
        crc = crc32c(name, crc)
        bucket = root.buckets[name]
        entries = {**bucket.values, **dict.fromkeys(bucket.buckets, b"")}
        for key in sorted(entries):
            crc = crc32c(entries[key], crc32c(key, crc))
            count += 1
    return crc, count


class BboltFileTests(SynchronousTestCase):
    """Files from lattice.kv._bbolt open in the real bbolt and pass its consistency check."""

    def setUp(self) -> None:
        require("etcdctl")
        self.directory = temporary_directory(self)

    def check(self, root: Bucket) -> None:
        path = self.directory / "file.db"
        data = write_db(root)
        path.write_bytes(data)
        result = status(path)
        self.assertEqual((result["hash"], result["totalKey"]), expected_status(root))
        self.assertEqual(result["totalSize"], len(data))

    def test_shapes(self) -> None:
        """Empty, inline, nested, overflowing and multi-level trees all check out."""
        rng = random.Random(4)
        self.check(Bucket())
        root = Bucket()
        root.bucket(b"inline").values[b"k"] = b"v"
        root.bucket(b"empty")
        nested = root.bucket(b"nested")
        nested.bucket(b"child").values.update({b"x": b"1", b"y": b"2"})
        nested.values[b"plain"] = b"value"
        big = root.bucket(b"big")
        big.values.update({b"huge": rng.randbytes(50_000), b"small": b"s", b"\xff": b""})
        many = root.bucket(b"many")
        for _ in range(20_000):
            many.values[rng.randbytes(rng.randint(1, 30))] = rng.randbytes(rng.randint(0, 40))
        self.check(root)

    def test_random(self) -> None:
        """Random buckets of random sizes check out."""
        rng = random.Random(11)
        for _ in range(8):
            root = Bucket()
            for b in range(rng.randint(1, 4)):
                bucket = root.bucket(b"bucket%d" % b)
                for _ in range(rng.choice([0, 1, 10, 500, 3000])):
                    size = rng.choice([0, 10, 100, 5000])
                    bucket.values[rng.randbytes(rng.randint(1, 64))] = rng.randbytes(size)
            self.check(root)
